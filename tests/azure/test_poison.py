"""Poison queue tooling (sync_core.azure.poison, ``python -m sync_core poison ...``) against a real Azurite.

One ``azurite-queue`` per module (tests/harness/azurite.py); each test uses its own queue names.
Messages are stored base64-encoded, as the Functions host stores them (host.json
``messageEncoding``). Failures come from the real emulator: requests refused through a
FaultProxy, or the emulator stopped in the middle of a replay.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import subprocess
import sys
import time

import pytest
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

from sync_core.azure import poison, runtime
from sync_core.azure.messages import MessageKind, WorkMessage, parse_message
from sync_core.cli import main as cli
from sync_core.config.load import load_config
from tests.harness.azurite import ACCOUNT_KEY, Azurite, connection_string
from tests.harness.faultproxy import FaultProxy
from tests.harness.function_context import Collect, Context
from tests.harness.paths import ROOT

_names = itertools.count(1)


@pytest.fixture(scope="module")
def azurite():
    with Azurite() as server:
        yield server


@pytest.fixture
def queue_name() -> str:
    return f"t{next(_names)}-work"


def settings(queue: str) -> dict[str, str]:
    """An app configuration (never contacted here) whose targets validate the messages."""
    return {
        "SOURCE_REGISTRY": "http://127.0.0.1:9",
        "SOURCE_NAMESPACE": "giantswarm",
        "TARGET_REGISTRY": "http://127.0.0.1:9",
        "SYNC_QUEUE": queue,
    }


class Queues:
    """The work and poison queues of one test, seen with the SDK directly (no encoding policy)."""

    def __init__(self, azurite: Azurite, queue: str, *, create_work: bool = True):
        self.connection_string = azurite.connection_string()
        self.name = queue
        self.work = QueueClient.from_connection_string(self.connection_string, queue)
        self.poison = QueueClient.from_connection_string(self.connection_string, f"{queue}-poison")
        self.poison.create_queue()
        if create_work:
            self.work.create_queue()
        self.config = load_config(settings(queue))

    def put(self, body: str | bytes, *, encode: bool = True) -> str:
        """Store a poison message as the host does (base64 of the body); its id."""
        raw = body.encode() if isinstance(body, str) else body
        content = base64.b64encode(raw).decode() if encode else raw.decode()
        return self.poison.send_message(content).id

    def poison_bodies(self) -> list[str]:
        return sorted(
            base64.b64decode(m.content).decode() for m in self.poison.peek_messages(max_messages=32)
        )

    def work_contents(self) -> list[str]:
        return [m.content for m in self.work.peek_messages(max_messages=32)]

    def open(self, **kwargs) -> poison.PoisonQueue:
        access = kwargs.pop("access", poison.StorageAccess(connection_string=self.connection_string))
        return poison.PoisonQueue(access, self.name, self.config, **kwargs)

    def env(self, **extra: str) -> dict[str, str]:
        return {**settings(self.name), "AZURE_STORAGE_CONNECTION_STRING": self.connection_string, **extra}


def repo_message(repository: str = "giantswarm/app", target: str = "target") -> str:
    return WorkMessage(MessageKind.REPOSITORY, repository, target).dumps()


def tag_message(repository: str = "giantswarm/app", tag: str = "1.0.0") -> str:
    return WorkMessage(MessageKind.TAG, repository, "target", tag).dumps()


def run_cli(queues: Queues, capsys, *args: str, **env: str) -> tuple[int, str, str]:
    code = cli.main(["poison", *args], environ=queues.env(**env))
    out, err = capsys.readouterr()
    assert ACCOUNT_KEY not in out + err
    assert "Traceback" not in out + err
    return code, out, err


# ------------------------------------------------------------------------------------------
# list
# ------------------------------------------------------------------------------------------


def test_the_events_queue_has_its_own_poison_queue_and_the_tools_reach_it(azurite, queue_name, capsys):
    work = Queues(azurite, queue_name)
    events = Queues(azurite, f"{queue_name}-ev")  # SYNC_EVENT_QUEUE below
    pushed = events.put(tag_message())
    code, out, _ = run_cli(work, capsys, "list", "--json", "--queue", "events", SYNC_EVENT_QUEUE=events.name)
    assert code == 0
    listing = json.loads(out)
    assert listing["poison_queue"] == f"{events.name}-poison" and [m["id"] for m in listing["messages"]] == [
        pushed
    ]
    code, out, _ = run_cli(work, capsys, "replay", "--all", "--queue", "events", SYNC_EVENT_QUEUE=events.name)
    assert code == 0 and events.poison_bodies() == [] and len(events.work_contents()) == 1
    assert work.work_contents() == []  # back to the queue it came from, not the timer's


def test_list_decodes_validates_and_explains(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    valid = q.put(repo_message())
    tagged = q.put(tag_message())
    not_json = q.put("{not json")
    future = q.put(
        json.dumps({"v": 2, "kind": "repository", "repository": "giantswarm/app", "target": "target"})
    )
    unknown_target = q.put(repo_message(target="elsewhere"))
    plain = q.put(repo_message(), encode=False)  # plain text: accepted, in case the host stores that
    garbage = q.put("plain {text}", encode=False)

    code, out, _ = run_cli(q, capsys, "list", "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["poison_queue"] == f"{queue_name}-poison"
    assert listing["approximate_count"] == 7 and listing["complete"] is False
    by_id = {m["id"]: m for m in listing["messages"]}
    assert by_id[valid]["status"] == "valid" and by_id[valid]["problem"] is None
    assert (by_id[valid]["repository"], by_id[valid]["target"], by_id[valid]["kind"]) == (
        "giantswarm/app",
        "target",
        "repository",
    )
    assert (by_id[tagged]["status"], by_id[tagged]["tag"]) == ("valid", "1.0.0")
    assert by_id[not_json]["problem"] == "message: not valid JSON"
    assert by_id[future]["problem"] == "message version 2 is not supported (expected 1)"
    assert by_id[future]["repository"] == "giantswarm/app", "fields shown even when invalid"
    assert "'elsewhere' is not a configured target" in by_id[unknown_target]["problem"]
    assert (by_id[plain]["status"], by_id[plain]["stored_as"]) == ("valid", "text")
    assert by_id[valid]["stored_as"] == "base64"
    assert by_id[garbage]["problem"] == "not base64, and as plain text: message: not valid JSON"

    # a peek has no side effect: nothing hidden, no dequeue counted
    assert {m.dequeue_count for m in q.poison.peek_messages(max_messages=32)} == {0}
    code, out, _ = run_cli(q, capsys, "list")
    assert code == 0
    assert out.splitlines()[0] == f"poison queue {queue_name}-poison: about 7 message(s), 7 shown"
    assert re.search(rf"{plain}\s.*ok \(stored as plain text\)$", out, re.M)
    assert re.search(rf"{valid}\s+\S+ \S+\s+repository\s+giantswarm/app\s+target\s+ok$", out, re.M)
    assert re.search(rf"{future}\s.*message version 2 is not supported", out)


def test_list_peeks_at_32_and_scans_all(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    for n in range(40):
        q.put(tag_message(tag=f"1.0.{n}"))
    with q.open() as queues:
        peeked = queues.listing()
        assert (len(peeked.messages), peeked.approximate_count, peeked.complete) == (32, 40, False)
        assert "`poison list --all` scans them all" in peeked.render()
        scanned = queues.listing(scan=True)
    assert len({m.id for m in scanned.messages}) == 40 and scanned.complete
    # the scan made every message visible again at once
    assert len(q.poison.peek_messages(max_messages=32)) == 32
    assert q.poison.get_queue_properties().approximate_message_count == 40


# ------------------------------------------------------------------------------------------
# replay
# ------------------------------------------------------------------------------------------


def test_replay_moves_valid_messages_unchanged_and_skips_invalid(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    bodies = [repo_message(), tag_message(), tag_message(tag="2.0.0")]
    ids = [q.put(b) for b in bodies]
    stored = sorted(m.content for m in q.poison.peek_messages(max_messages=32))
    plain_body = tag_message(tag="3.0.0")
    ids.append(q.put(plain_body, encode=False))
    stored = sorted([*stored, base64.b64encode(plain_body.encode()).decode()])  # sent base64-encoded
    bodies.append(plain_body)
    q.put("{not json")
    q.put(json.dumps({"v": 99}))

    code, out, _ = run_cli(q, capsys, "replay", "--all", "--dry-run")
    assert code == 0
    assert "(dry run: nothing sent or deleted)" in out
    assert out.count("  would replay  ") == 4 and out.count("  skipped  ") == 2
    assert out.rstrip().endswith("OK: 4 would replay, 2 skipped")
    assert q.work_contents() == [] and q.poison.get_queue_properties().approximate_message_count == 6, (
        "a dry run changes nothing"
    )

    code, out, _ = run_cli(q, capsys, "replay", "--all", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["ok"] is True and result["counts"] == {"replayed": 4, "skipped": 2}
    assert {r["id"] for r in result["results"] if r["action"] == "replayed"} == set(ids)
    # sent as stored (base64 text, what the host decodes), and valid for the worker
    assert sorted(q.work_contents()) == stored
    decoded = [parse_message(base64.b64decode(c), q.config) for c in q.work_contents()]
    assert sorted(m.dumps() for m in decoded) == sorted(bodies)
    assert q.poison_bodies() == sorted(["{not json", json.dumps({"v": 99})])


def test_replay_is_idempotent(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    message_id = q.put(tag_message())
    code, out, _ = run_cli(q, capsys, "replay", message_id)
    assert code == 0 and re.search(rf"{message_id}\s+replayed", out)
    code, out, _ = run_cli(q, capsys, "replay", message_id)
    assert code == 0
    assert re.search(rf"{message_id}\s+not found", out)
    assert len(q.work_contents()) == 1, "replayed once"
    assert q.poison_bodies() == []


def test_selectors(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    app = q.put(repo_message("giantswarm/app"))
    tool = q.put(repo_message("giantswarm/tool"))
    other = q.put(tag_message("giantswarm/other"))
    bad = q.put("garbage")

    code, _, err = run_cli(q, capsys, "replay")
    assert code == 2 and "name the messages" in err, "no selector: nothing happens"
    code, _, err = run_cli(q, capsys, "replay", "--target", "nope", "--all")
    assert code == 2 and "nope" in err, "a target selector names a configured target"

    with q.open() as queues:
        result = queues.replay(poison.Selector(repositories=frozenset({"giantswarm/tool"})))
        assert [(o.id, o.action) for o in result.outcomes] == [(tool, poison.Action.REPLAYED)]
        result = queues.drop(poison.Selector(ids=frozenset({app, bad}), invalid_only=True))
        assert [(o.id, o.action) for o in result.outcomes] == [(bad, poison.Action.DROPPED)]
        result = queues.drop(
            poison.Selector(targets=frozenset({"target"}), repositories=frozenset({"giantswarm/app"})),
            dry_run=True,
        )
        assert [(o.id, o.action) for o in result.outcomes] == [(app, poison.Action.WOULD_DROP)]
    assert sorted(m.id for m in q.poison.peek_messages(max_messages=32)) == sorted([app, other])

    code, out, _ = run_cli(q, capsys, "drop", "--all")
    assert code == 0 and "OK: 2 dropped" in out
    assert q.poison_bodies() == [] and len(q.work_contents()) == 1


# ------------------------------------------------------------------------------------------
# nothing is lost
# ------------------------------------------------------------------------------------------


def test_send_refused_leaves_the_message_in_the_poison_queue(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    first, second = q.put(tag_message(tag="1.0.0")), q.put(tag_message(tag="2.0.0"))
    with FaultProxy(azurite.url.rsplit("/", 1)[0]) as proxy:
        proxy.fail_next(100, "status", method="POST", path=rf"/{queue_name}/messages", status=503)
        connection = azurite.connection_string(proxy.url)
        code, out, err = run_cli(q, capsys, "replay", "--all", AZURE_STORAGE_CONNECTION_STRING=connection)
        assert not any(r.method == "DELETE" for r in proxy.log), "nothing deleted after a failed send"
    assert code == 1
    assert re.search(rf"({first}|{second})\s+failed.*not sent; still in the poison queue", out)
    assert f"stopped: sending on queue {queue_name}" in out and "HTTP 503" in out
    assert q.work_contents() == []
    # the failed message and the one not tried are both visible again at once
    assert sorted(m.id for m in q.poison.peek_messages(max_messages=32)) == sorted([first, second])


def test_delete_refused_after_the_send_keeps_a_copy_in_both_queues(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name)
    message_id = q.put(tag_message())
    with FaultProxy(azurite.url.rsplit("/", 1)[0]) as proxy:
        proxy.fail_next(100, "status", method="DELETE", path=rf"/{queue_name}-poison/messages", status=500)
        connection = azurite.connection_string(proxy.url)
        code, out, _ = run_cli(q, capsys, "replay", message_id, AZURE_STORAGE_CONNECTION_STRING=connection)
    assert code == 1
    assert "sent to" in out and "but still in the poison queue too: drop it by id" in out
    assert len(q.work_contents()) == 1
    assert [m.id for m in q.poison.peek_messages()] == [message_id]


class StopsAfterFirst(poison.PoisonQueue):
    """Stops the emulator once the first message has been replayed (a real outage mid-way)."""

    def __init__(self, azurite: Azurite, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.azurite = azurite

    def _replay_one(self, raw, message, result):
        outcome = super()._replay_one(raw, message, result)
        if outcome.action is poison.Action.REPLAYED:
            self.azurite.stop_process()
        return outcome


def test_emulator_stopped_mid_way_loses_nothing(queue_name):
    with Azurite() as own:  # its own emulator: this test stops it
        q = Queues(own, queue_name)
        bodies = sorted([tag_message(tag="1.0.0"), tag_message(tag="2.0.0"), tag_message(tag="3.0.0")])
        for body in bodies:
            q.put(body)
        access = poison.StorageAccess(connection_string=q.connection_string)
        started = time.monotonic()
        with StopsAfterFirst(own, access, queue_name, q.config, retries=1, visibility_timeout=2) as queues:
            result = queues.replay(poison.Selector(everything=True))
        assert time.monotonic() - started < 60
        assert not result.ok
        assert [o.action for o in result.outcomes] == [poison.Action.REPLAYED, poison.Action.FAILED]
        assert "cannot reach the storage account" in (result.error or "")
        assert "Connection refused" in (result.error or "")

        own.start()
        time.sleep(2.5)  # the scan could not make the rest visible again: the visibility timeout does
        moved = [base64.b64decode(c).decode() for c in q.work_contents()]
        left = q.poison_bodies()
        assert len(moved) == 1 and sorted(moved + left) == bodies, "every message is in exactly one queue"


# ------------------------------------------------------------------------------------------
# errors: clear, exit 1/2, no key, no traceback
# ------------------------------------------------------------------------------------------


def test_errors_are_clear_and_name_no_key(azurite, queue_name, capsys):
    q = Queues(azurite, queue_name, create_work=False)
    q.put(tag_message())

    code, _, err = run_cli(q, capsys, "replay", "--all")
    assert code == 2 and f"checking the work queue on queue {queue_name}" in err and "QueueNotFound" in err

    wrong = q.connection_string.replace(ACCOUNT_KEY, base64.b64encode(b"x" * 64).decode())
    code, _, err = run_cli(q, capsys, "list", AZURE_STORAGE_CONNECTION_STRING=wrong)
    assert code == 2 and "refused (403" in err and "Storage Queue Data Contributor" in err
    assert base64.b64encode(b"x" * 64).decode() not in err

    closed = azurite.connection_string("http://127.0.0.1:9")
    started = time.monotonic()
    code, _, err = run_cli(q, capsys, "list", AZURE_STORAGE_CONNECTION_STRING=closed)
    assert code == 1 and "cannot reach the storage account" in err and "Connection refused" in err
    assert "http://127.0.0.1:9/devstoreaccount1" in err
    assert time.monotonic() - started < 30

    code, _, err = run_cli(q, capsys, "list", AZURE_STORAGE_CONNECTION_STRING="AccountKey=abc;nonsense")
    assert code == 2 and "malformed" in err and "abc" not in err

    code, _, err = run_cli(q, capsys, "list", "--account-url", "https://x.queue.core.windows.net/?sig=secret")
    assert code == 2 and "no SAS token" in err and "secret" not in err

    env = {k: v for k, v in q.env().items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    assert cli.main(["poison", "list"], environ=env) == 2
    assert "give --account-name" in capsys.readouterr().err

    assert cli.main(["poison", "list"], environ={"SYNC_QUEUE": queue_name}) == 2
    assert "SOURCE_REGISTRY" in capsys.readouterr().err, "the configuration validates the messages"


def test_storage_access_from_the_environment():
    def where(env: dict[str, str]) -> str | None:
        access = poison.access_from_env(env)
        return access.where() if access else None

    assert where({}) is None
    conn = f"DefaultEndpointsProtocol=https;AccountName=stx;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
    assert where({"AZURE_STORAGE_CONNECTION_STRING": conn}) == "storage account stx"
    assert where({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}).startswith(
        "the local storage emulator"
    )
    assert (
        where({"AzureWebJobsStorage__accountName": "stregsync"}) == "https://stregsync.queue.core.windows.net"
    )
    assert where({"AZURE_STORAGE_ACCOUNT": "other", "AzureWebJobsStorage__accountName": "stregsync"}) == (
        "https://other.queue.core.windows.net"
    )
    identity = poison.access_from_env(
        {
            "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net",
            "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
        }
    )
    assert identity is not None and identity.client_id == "00000000-0000-0000-0000-000000000001"
    assert ACCOUNT_KEY not in repr(poison.StorageAccess(connection_string=conn))
    with pytest.raises(poison.ConfigError):
        poison.StorageAccess.for_account("Not_An_Account")


# ------------------------------------------------------------------------------------------
# the timer's signal
# ------------------------------------------------------------------------------------------


def test_poison_depth_is_logged_for_the_alert(azurite, queue_name, caplog):
    caplog.set_level(logging.INFO, logger="sync_core.poison")
    q = Queues(azurite, queue_name)
    env = {"AzureWebJobsStorage": q.connection_string}
    assert poison.poison_depth(queue_name, env) == 0
    q.put(tag_message())
    q.put("garbage")
    assert poison.poison_depth(queue_name, env) == 2
    empty, full = [r for r in caplog.records if "decision=poison_depth" in r.getMessage()]
    assert empty.levelno == logging.INFO and full.levelno == logging.WARNING
    assert full.custom_dimensions == {"decision": "poison_depth", "queue": f"{queue_name}-poison", "count": 2}
    # what the alert query extracts from the message text (infra/modules/alerts.bicep)
    assert re.search(r"\bcount=(\d+)", full.getMessage()).group(1) == "2"
    assert re.search(r"\bqueue=(\S+)", full.getMessage()).group(1) == f"{queue_name}-poison"

    assert poison.poison_depth("t-missing-work", env) == 0, "no poison queue yet"

    caplog.clear()
    started = time.monotonic()
    assert (
        poison.poison_depth(
            queue_name, {"AzureWebJobsStorage": azurite.connection_string("http://127.0.0.1:9")}
        )
        is None
    )
    assert poison.poison_depth(queue_name, {}) is None
    assert time.monotonic() - started < 20, "the timer is not held up"
    unknown = [r for r in caplog.records if "decision=poison_depth" in r.getMessage()]
    assert len(unknown) == 2 and all(
        r.levelno == logging.WARNING and "count=" not in r.getMessage() for r in unknown
    )


def test_the_timer_logs_the_poison_depth(
    azurite, azurite_tables, queue_name, anon_registry, monkeypatch, caplog
):
    import function_app

    caplog.set_level(logging.INFO)
    q = Queues(azurite, queue_name)
    q.put(tag_message())
    env = {
        **settings(queue_name),
        "SOURCE_REGISTRY": anon_registry.url,
        "TARGET_REGISTRY": anon_registry.url,
        "TARGET_NAMESPACE": "mirror",
        "SOURCE_ALLOW_EMPTY": "true",
        "AzureWebJobsStorage": connection_string(azurite, azurite_tables),  # its queues and the timer's state
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    try:
        # the decorated function itself: app.get_functions() indexes once per process (as the
        # host does), and tests/azure/test_function_app.py may have done it already
        timer = function_app.sync_schedule._function.get_user_function()
        timer(TimerRequest(past_due=False), Collect(), Context())
    finally:
        runtime.reset()
    lines = [r.getMessage() for r in caplog.records if "decision=poison_depth" in r.getMessage()]
    assert len(lines) == 2  # the timer's work queue and the events' queue, each logged
    assert any(f"queue={queue_name}-poison count=1" in line for line in lines), lines


def test_cli_in_a_real_process(azurite, queue_name):
    q = Queues(azurite, queue_name)
    q.put(tag_message())
    result = subprocess.run(
        [sys.executable, "-m", "sync_core", "poison", "list"],
        env={**q.env(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "about 1 message(s), 1 shown" in result.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "sync_core", "poison", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    for action in ("list", "replay", "drop"):
        assert action in help_text
