"""Event Grid events: the sample events give the documented decisions; bad events are dropped."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_core.azure.events import MAX_EVENT_BYTES, decide, load_events
from sync_core.azure.handlers import events_messages
from sync_core.azure.messages import parse_message
from sync_core.config.load import load_config
from sync_core.errors import InvalidContent
from tests.harness.paths import EVENTS


def sample(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "sync.yaml"
    path.write_text(
        """
source_registry: gsoci.azurecr.io
source_namespace: giantswarm
tag_exclude: ".*-dev"
targets:
  - {name: dockerhub, registry: docker.io, namespace: giantswarm}
  - {name: aliyun, registry: registry.cn-shanghai.aliyuncs.com, namespace: giantswarm, tag_include: "1\\\\..*"}
"""
    )
    return load_config({}, str(path))


def test_pushed_index_event_enqueues_one_message_per_target(config):
    event = sample("image-pushed.eventgrid.json")
    decision = decide(event, config)
    assert decision.action == "copy"
    assert [w.target for w in decision.work] == ["dockerhub", "aliyun"]
    messages = [parse_message(m, config) for m in events_messages(json.dumps(event), config)]
    assert {(m.kind, m.repository, m.tag, m.digest, m.target) for m in messages} == {
        ("tag", "giantswarm/example-app", "1.4.2", event["data"]["target"]["digest"], "dockerhub"),
        ("tag", "giantswarm/example-app", "1.4.2", event["data"]["target"]["digest"], "aliyun"),
    }


def test_cloudevent_schema_is_understood(config):
    decision = decide(sample("image-pushed.cloudevent.json"), config)
    assert decision.action == "copy" and decision.tag == "1.4.3"


def test_untagged_push_is_handed_to_the_worker_which_looks_for_a_subject(config):
    # An untagged push is an index child or a referrer: only the manifest (its subject) tells,
    # so the handler enqueues a referrer message and the worker fetches the manifest once.
    event = sample("image-pushed-child.eventgrid.json")
    decision = decide(event, config)
    assert decision.action == "copy" and decision.tag is None
    assert {(w.kind, w.tag, w.digest) for w in decision.work} == {
        ("referrer", None, event["data"]["target"]["digest"])
    }
    parsed = [parse_message(m, config) for m in events_messages(json.dumps(event), config)]
    assert {(m.kind, m.digest, m.target) for m in parsed} == {
        ("referrer", event["data"]["target"]["digest"], "dockerhub"),
        ("referrer", event["data"]["target"]["digest"], "aliyun"),
    }


def test_untagged_docker_manifest_push_is_ignored(config):
    event = sample("image-pushed-child.eventgrid.json")
    event["data"]["target"]["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    decision = decide(event, config)  # a Docker schema 2 manifest cannot carry a subject
    assert decision.action == "ignore" and "untagged" in decision.reason


def test_delete_is_not_propagated(config):
    decision = decide(sample("image-deleted.eventgrid.json"), config)
    assert decision.action == "ignore" and "ImageDeleted" in decision.reason


def test_all_samples_in_one_array(config):
    events = [sample(p.name) for p in sorted(EVENTS.glob("*.json"))]
    messages = events_messages(json.dumps(events), config)
    assert len(messages) == 6  # the two tagged pushes and the untagged one x two targets


@pytest.mark.parametrize(
    "mutate, action, words",
    [
        (lambda e: e["data"]["request"].__setitem__("host", "evil.example.com"), "ignore", "not the source"),
        (lambda e: e["data"]["request"].pop("host"), "ignore", "not the source"),
        (
            lambda e: e["data"]["target"].__setitem__("repository", "other/app"),
            "ignore",
            "outside the source namespace",
        ),
        (
            lambda e: e["data"]["target"].__setitem__("repository", "giantswarm/../etc"),
            "error",
            "invalid repository",
        ),
        (
            lambda e: e["data"]["target"].__setitem__("repository", "giantswarm//x"),
            "error",
            "invalid repository",
        ),
        (lambda e: e["data"]["target"].__setitem__("tag", "../../x"), "error", "invalid tag"),  # not a path
        (lambda e: e["data"]["target"].__setitem__("tag", 12), "error", "invalid tag"),
        (lambda e: e["data"]["target"].__setitem__("tag", "1.4.2-dev"), "ignore", "filtered out"),
        (lambda e: e["data"]["target"].__setitem__("digest", "md5:abc"), "error", "invalid digest"),
        (lambda e: e.__setitem__("data", "x"), "error", "no data"),
        (lambda e: e["data"].pop("target"), "error", "no target"),
        (lambda e: e.__setitem__("eventType", None), "error", "eventType"),
        (
            lambda e: e.__setitem__("eventType", "Microsoft.ContainerRegistry.ChartPushed"),
            "ignore",
            "not propagated",
        ),
    ],
)
def test_hostile_and_malformed_events_enqueue_nothing(config, mutate, action, words):
    event = copy.deepcopy(sample("image-pushed.eventgrid.json"))
    mutate(event)
    decision = decide(event, config)
    assert decision.action == action and words in decision.reason
    assert events_messages(json.dumps(event), config) == []


def test_oversized_and_non_json_payloads_are_dropped(config):
    assert events_messages(b"{not json", config) == []
    assert events_messages(b"[" + b" " * (2 * 1024 * 1024) + b"]", config) == []
    with pytest.raises(
        InvalidContent, match=rf"^event payload is {2 * 1024 * 1024} bytes, over {MAX_EVENT_BYTES}$"
    ):
        load_events(b"x" * (2 * 1024 * 1024))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=json_values)
def test_arbitrary_json_never_raises_or_enqueues_foreign_work(config, garbage):
    messages = events_messages(json.dumps(garbage), config)
    for text in messages:  # only a well-formed push in the namespace from the source can get here
        message = parse_message(text, config)
        assert message.repository.startswith("giantswarm/")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    repository=st.text(max_size=40),
    tag=st.one_of(st.none(), st.text(max_size=140)),
    host=st.one_of(st.just("gsoci.azurecr.io"), st.text(max_size=20)),
)
def test_fuzzed_fields_only_produce_valid_messages(config, repository, tag, host):
    event = copy.deepcopy(sample("image-pushed.eventgrid.json"))
    event["data"]["target"].update(repository=repository, tag=tag)
    event["data"]["request"]["host"] = host
    for text in events_messages(json.dumps(event), config):
        message = parse_message(text, config)
        assert message.repository == repository and message.tag == tag and host == "gsoci.azurecr.io"
