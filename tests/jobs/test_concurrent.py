"""At-least-once delivery: six processes copy the same content at once (issue 16, item 5).

In Azure the same tag arrives from an event and from the timer, and queue messages are
redelivered: concurrent copies of one repository are normal. Here three ``sync`` and three
``copy REPO:TAG`` processes (``python -m sync_core``, one configuration file) start together
over six repositories of a plain ``distribution`` 2.8 source: three tags each, every tag with
three referrers listed in its referrers tag (the OCI fallback), images sharing a base layer. The
target is a plain ``distribution`` 2.8 too (no referrers API: the copies write referrers tags,
all of them the same ones). distribution rewrites a blob's or manifest's link file in place when
another client pushes it, so the copies meet answers that contradict what they just verified.

Every process must exit 0; every tag (referrers tags included) must have the source's digest at
the target and every referrer be listed in its subject's referrers tag, as the harness's own
client reads them; and the next ``sync`` must copy nothing and write nothing (the target's
access log).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.harness import PUSHER, images
from tests.harness.images import digest_tag, sha256_digest
from tests.harness.paths import ROOT

REPOSITORIES = [f"gs/app{i}" for i in range(6)]
TAGS = ("1.0", "1.1", "2.0")
KINDS = ("application/vnd.example.signature", "application/spdx+json", "application/vnd.in-toto+json")
DEADLINE = 120.0  # seconds for all six; they take well under a minute


def seed(pusher) -> dict[str, dict[str, str]]:
    """The source content; ``{repository: {tag: digest}}`` of every tag, referrers tags included."""
    base = images.layer("concurrent-base", 64 * 1024)
    expected: dict[str, dict[str, str]] = {}
    for repository in REPOSITORIES:
        tags = expected.setdefault(repository, {})
        for tag in TAGS:
            image = images.oci_image(f"{repository}:{tag}", (3000, 700), base_layer=base)
            tags[tag] = pusher.push(repository, image, tag)
            referrers = [images.signature(f"{repository}:{tag}:{kind}", image, kind) for kind in KINDS]
            listing = images.referrers_index(referrers)  # pushes the referrers first, by digest
            tags[digest_tag(image.digest, "")] = pusher.push(
                repository, listing, digest_tag(image.digest, "")
            )
    return expected


def start(command: list[str], env: dict[str, str], config: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sync_core", *command, "--json", "--config", config],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
    )


def test_three_syncs_and_three_copies_at_once_all_succeed_and_leave_every_tag_exact(fresh_registry, tmp_path):
    source, target = fresh_registry(name="conc-src"), fresh_registry(name="conc-dst")
    expected = seed(source.pusher())
    config = tmp_path / "sync.json"
    config.write_text(
        json.dumps(
            {
                "source_registry": source.url,
                "source_kind": "oci",
                "source_namespace": "gs",
                "source_repositories": ",".join(REPOSITORIES),
                "target_registry": target.url,
                "target_namespace": "mirror",
            }
        )
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SOURCE_USERNAME": PUSHER[0],
        "SOURCE_PASSWORD": PUSHER[1],
        "TARGET_USERNAME": PUSHER[0],
        "TARGET_PASSWORD": PUSHER[1],
    }
    commands = [["sync"]] * 3 + [["copy", f"{repository}:1.0"] for repository in REPOSITORIES[:3]]
    started = time.monotonic()
    with open(tmp_path / "stderr.log", "wb") as log:
        processes = [start(command, env, str(config), log) for command in commands]
        outputs = [p.communicate(timeout=DEADLINE)[0] for p in processes]
    seconds = time.monotonic() - started
    codes = [p.returncode for p in processes]
    summaries = [json.loads(out) if out.strip() else {} for out in outputs]
    failures = [f for s in summaries for f in s.get("failures", ())]
    assert codes == [0] * 6 and not failures, (codes, failures, (tmp_path / "stderr.log").read_text()[-4000:])
    assert seconds < DEADLINE

    check = target.pusher()
    for repository, tags in expected.items():
        mirror = repository.replace("gs/", "mirror/", 1)
        held = {tag: sha256_digest(check.fetch_manifest(mirror, tag)[0]) for tag in check.tags(mirror)}
        assert held == tags, repository  # every tag, referrers tags included, with the source digest
        for tag in TAGS:
            listed = json.loads(check.fetch_manifest(mirror, digest_tag(tags[tag], ""))[0])["manifests"]
            assert len(listed) == len(KINDS) and all(
                check.exists_manifest(mirror, m["digest"]) for m in listed
            )

    mark = len(target.access_log())
    again = subprocess.run(
        [sys.executable, "-m", "sync_core", "sync", "--json", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-2000:]
    summary = json.loads(again.stdout)
    assert (summary["tags"]["copied"], summary["manifests_pushed"]) == (0, 0), summary
    assert target.writes(mark) == []
