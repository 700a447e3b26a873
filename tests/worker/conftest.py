"""Worker-contract tier: fixtures. Runs only in .venv-worker (``make worker-test``).

Session fixtures:
  acr        ACR stand-in (tests/harness/acr.py) in front of a real docker-registry, seeded below
  target     token_registry_dst: an empty real docker-registry, the mirror
  started    the WorkerInitResponse of the real worker indexing function_app.py
  worker     the started worker (fails every test that needs it when start-up failed), its
             functions listed (FunctionsMetadataRequest) and loaded (FunctionLoadRequest)
  rpc_logs   RpcLogs handler on the root logger (INFO, as the worker sets it)
  azurite_queues, azurite_tables   the app's storage account (Azurite): queues, the timer's state
"""

from __future__ import annotations

import logging
import os

import pytest

from tests.harness.acr import AcrStandIn
from tests.harness.azurite import Azurite
from tests.harness.azurite import connection_string as azurite_connection_string
from tests.harness.images import oci_image, oci_index
from tests.worker.host import RpcLogs, Worker, ok

ROOT_USER = ("sync-token", "sync-token-password")
MIRROR = ("pusher", "pusher-pass")
NAMESPACE = "giantswarm"
TARGET_NAMESPACE = "wk-mirror"
#: repository -> {tag: manifest} pushed to the ACR stand-in
SEEDED = {
    "giantswarm/example-app": {
        "1.4.2": oci_index("wk-example", ["linux/amd64", "linux/arm64"], [2048]),
        "1.4.3": oci_image("wk-example-143", [1024]),
    },
    "giantswarm/tools/deep": {"1.0": oci_image("wk-deep", [1024])},
    "giantswarm/multi": {f"2.{i}": oci_image(f"wk-multi-{i}", [4096, 1024]) for i in range(6)},
    "giantswarm/budget": {"0.1": oci_image("wk-budget-1", [512]), "0.2": oci_image("wk-budget-2", [512])},
    "other/thing": {"1.0": oci_image("wk-other", [512])},
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Nothing in this tier may be skipped: a skip would hide a broken contract."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"the worker tier does not skip: {report.longrepr}"


@pytest.fixture(scope="session")
def acr(token_issuer):
    users = {ROOT_USER[0]: (ROOT_USER[1], {"*": ["pull", "push", "metadata_read", "delete"]})}
    with AcrStandIn(users=users, issuer=token_issuer) as stand_in:
        pusher = stand_in.pusher()
        for repository, tags in SEEDED.items():
            for tag, manifest in tags.items():
                pusher.push(repository, manifest, tag)
        yield stand_in


@pytest.fixture(scope="session")
def target(token_registry_dst):
    return token_registry_dst


@pytest.fixture(scope="session")
def azurite_queues():
    """A real Azurite queue service: the poison queue the timer reads the depth of."""
    with Azurite() as server:
        yield server


@pytest.fixture(scope="session")
def app_settings(acr, target, azurite_tables, azurite_queues) -> dict[str, str]:
    """The app settings of a deployment that mirrors the ACR stand-in's giantswarm/ to the target."""
    return {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        # the app's storage account: its queues and the timer's state table (Azurite)
        "AzureWebJobsStorage": azurite_connection_string(azurite_queues, azurite_tables),
        "SYNC_SCHEDULE": "0 */15 * * * *",
        "SYNC_QUEUE": "sync-work",
        "SYNC_EVENT_QUEUE": "sync-events",
        "SOURCE_REGISTRY": acr.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": NAMESPACE,
        "SOURCE_USERNAME": ROOT_USER[0],
        "SOURCE_PASSWORD": ROOT_USER[1],
        "TARGET_REGISTRY": target.url,
        "TARGET_NAMESPACE": TARGET_NAMESPACE,
        "TARGET_USERNAME": MIRROR[0],
        "TARGET_PASSWORD": MIRROR[1],
        "SYNC_CONCURRENCY": "4",
        "SYNC_COMPARE": "digest",
        # the daily check's requests would fall on whichever tick crosses midnight UTC: the tick
        # tests count requests; tests/azure/test_daily_check.py tests the check itself
        "SYNC_DAILY_CHECK": "false",
    }


@pytest.fixture(scope="session")
def rpc_logs():
    handler = RpcLogs()
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture(scope="session")
def _worker(app_settings):
    """Started once per process, like the worker the host launches with the app settings as its environment."""
    saved = dict(os.environ)
    os.environ.update(app_settings)
    worker = Worker()
    response = worker.start()
    try:
        yield worker, response
    finally:
        worker.close()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def started(_worker):
    return _worker[1]


@pytest.fixture(scope="session")
def worker(_worker, rpc_logs):
    worker, response = _worker
    if not ok(response.result):
        pytest.fail(f"the worker refused the app at start-up: {response.result.exception.message}")
    metadata = worker.metadata()
    assert ok(metadata.result)
    for name in worker.functions:
        loaded = worker.load(name)
        assert ok(loaded.result), loaded.result.exception.message
    return worker
