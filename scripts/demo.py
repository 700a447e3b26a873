"""make demo: a local ACR-like source and a mirror, seeded images, check, a full sync, then the no-op.

Everything runs on 127.0.0.1 and is removed at the end. Each step is the real CLI
(`python -m sync_core check|plan|sync`) with credentials passed through the environment; the
demo fails when `check` finds anything that would fail (tests/jobs/test_check.py runs the same
world through `check`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import CATALOG, TokenIssuer  # noqa: E402
from tests.harness.acr import AcrStandIn  # noqa: E402
from tests.harness.images import docker_image, helm_chart, layer, oci_image, oci_index  # noqa: E402
from tests.harness.registry import Registry  # noqa: E402

SOURCE_USER, SOURCE_PASS = "demo-sync-token", "demo-source-password"
MIRROR_USER, MIRROR_PASS = "mirror-bot", "demo-mirror-password"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def seed(acr: AcrStandIn) -> None:
    pusher = acr.pusher()
    base = layer("demo-base", 2 * 1024 * 1024)
    now = dt.datetime.now(dt.timezone.utc)
    images = {
        ("giantswarm/alpine", "3.19"): oci_image("alpine-3.19", [512 * 1024], base_layer=base),
        ("giantswarm/alpine", "3.20"): oci_image("alpine-3.20", [512 * 1024], base_layer=base),
        ("giantswarm/example-app", "1.4.2"): oci_index(
            "app-1.4.2", ["linux/amd64", "linux/arm64"], [256 * 1024], base_layer=base
        ),
        ("giantswarm/example-app", "1.4.3-dev"): oci_index(
            "app-1.4.3", ["linux/amd64", "linux/arm64"], [256 * 1024], base_layer=base
        ),
        ("giantswarm/legacy/tool", "v1"): docker_image("legacy-v1", [300 * 1024], base_layer=base),
        ("giantswarm/charts/hello", "0.1.0"): helm_chart("hello-0.1.0"),
    }
    for age, ((repo, tag), manifest) in enumerate(images.items()):
        pusher.push(repo, manifest, tag)
        acr.set_tag_times(repo, tag, now - dt.timedelta(days=age * 10))
        print(f"  pushed {repo}:{tag}  {manifest.digest[:19]}…")


def run_cli(env: dict, *args: str) -> int:
    command = [sys.executable, "-m", "sync_core", *args]
    print("$ " + " ".join(["python -m sync_core", *args]), flush=True)
    return subprocess.call(command, env=env, cwd=ROOT)


@contextlib.contextmanager
def demo_world(
    environ: dict[str, str] | None = None,
) -> Iterator[tuple[AcrStandIn, Registry, dict[str, str]]]:
    """The source (seeded), the mirror and the settings of a sync between them; removed on exit."""
    users = {SOURCE_USER: (SOURCE_PASS, {"*": ["pull", "push", "metadata_read", "delete"]})}
    with (
        AcrStandIn(users=users) as acr,
        TokenIssuer(users={MIRROR_USER: (MIRROR_PASS, {"*": ["pull", "push"], CATALOG: ["*"]})}) as issuer,
        Registry(token_issuer=issuer, name="mirror") as mirror,
    ):
        banner(f"source: ACR stand-in at {acr.url}   mirror: registry with token auth at {mirror.url}")
        seed(acr)
        env = dict(
            os.environ if environ is None else environ,
            SOURCE_REGISTRY=acr.url,
            SOURCE_KIND="acr",
            SOURCE_NAMESPACE="giantswarm",
            SOURCE_USERNAME=SOURCE_USER,
            SOURCE_PASSWORD=SOURCE_PASS,
            TARGET_REGISTRY=mirror.url,
            TARGET_NAMESPACE="mirror",
            TARGET_USERNAME=MIRROR_USER,
            TARGET_PASSWORD=MIRROR_PASS,
            TAG_EXCLUDE=".*-dev",
            PYTHONPATH=str(ROOT),
        )
        yield acr, mirror, env


def main() -> int:
    with demo_world() as (acr, mirror, env):
        banner("check: what the source and the mirror allow, before anything is copied (writes nothing)")
        checked = run_cli(env, "check")
        if checked != 0:
            banner("check found something that would fail: stopping here")
            return 1
        banner("plan: what the first sync will copy (tags ending in -dev are excluded)")
        run_cli(env, "plan")
        banner("full sync")
        acr.reset_log()
        first = run_cli(env, "sync")
        banner("second sync: nothing to do")
        acr.reset_log()
        second = run_cli(env, "sync")
        kinds = sorted({e.kind for e in acr.log})
        print(
            f"source requests in the no-op run: {len(acr.log)} ({', '.join(kinds)}); "
            f"manifest or blob requests: {acr.count(kind={'manifest', 'blob'})}"
        )
        banner("cleaning up")
    return 0 if first == 0 and second == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
