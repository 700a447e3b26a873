"""One source read for several targets (``stream.Tee``), and the bound on what a bad target costs the others.

The :class:`~sync_core.registry.stream.Tee` is driven first on its own, with uploads that read slowly,
fail or stop, over a real :class:`~sync_core.registry.stream.VerifyingReader`. Then the copier fans one
image out to three real ``distribution`` registries: with fewer blob threads than uploads (the
uploads fed by one source read must all run at once), and with one target behind a
bandwidth-capped link (``bench.latency_proxy``), which is dropped from the shared read and
finishes on its own.
"""

from __future__ import annotations

import collections
import hashlib
import io
import threading
import time

import pytest

from bench.latency_proxy import LatencyProxy
from sync_core.engine.copier import Copier
from sync_core.engine.destination import Destination, Placement
from sync_core.engine.results import CopyStatus
from sync_core.errors import SourceStreamError
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor
from sync_core.registry.stream import READ_SIZE, Tee, VerifyingReader
from tests.harness import PUSHER, READER, images
from tests.harness.recording import RecordingTransport, Waits

MIB = 1024 * 1024


class Raw(io.BytesIO):
    """A source body as urllib3 offers it (``read(n, decode_content=False)``), counting what is read."""

    def read(self, n: int = -1, decode_content: bool = False) -> bytes:  # type: ignore[override]
        return super().read(n)


def reader(data: bytes) -> tuple[VerifyingReader, Raw]:
    raw = Raw(data)
    blob = Descriptor("application/octet-stream", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    return VerifyingReader(raw, blob, "blob under test"), raw


def consume(tee: Tee, index: int, out: dict, pause: float = 0.0, fail_after: int | None = None) -> None:
    """An upload: reads its body to the end (``pause`` per block), or stops after ``fail_after`` blocks."""
    body = tee.body(index)
    got = bytearray()
    try:
        while True:
            if fail_after is not None and len(got) >= fail_after * READ_SIZE:
                raise ConnectionResetError("the target hung up")
            block = body.read_at_most(READ_SIZE)
            if not block:
                break
            got.extend(block)
            time.sleep(pause)
        out[index] = ("done", bytes(got), time.monotonic())
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        out[index] = (exc, bytes(got), time.monotonic())
    finally:
        tee.drop(index)


def run(tee: Tee, consumers: list[dict]) -> tuple[dict, BaseException | None, float]:
    out: dict = {}
    threads = [
        threading.Thread(target=consume, args=(tee, i, out), kwargs=kw) for i, kw in enumerate(consumers)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    error = None
    try:
        tee.pump()
    except Exception as exc:  # noqa: BLE001
        error = exc
    for thread in threads:
        thread.join(30)
    return out, error, started


def test_a_slow_but_steady_upload_is_dropped_once_it_held_the_others_back_for_the_stall_time():
    data = bytes(range(256)) * (32 * MIB // 256)  # 128 blocks
    tee = Tee(reader(data)[0], 2, depth=4, stall=0.5)
    # the slow upload alone would take 128 x 0.1 = 12.8 s; it is never *stalled*, only slow
    out, error, started = run(tee, [{}, {"pause": 0.1}])
    assert error is None
    status, got, finished = out[0]
    assert status == "done" and got == data  # the fast upload got every byte
    assert isinstance(out[1][0], SourceStreamError) and "fell behind" in str(out[1][0])
    assert tee.held_back[1] <= 0.5 + 1.0  # the bound, with room for a busy scheduler
    assert finished - started < 12.8 / 2  # at its own pace, not the slow one's


def test_a_failed_upload_costs_the_others_nothing_and_the_read_stops_when_all_have_stopped():
    data = b"x" * (8 * MIB)
    tee = Tee(reader(data)[0], 2, depth=4, stall=5.0)
    out, error, _ = run(tee, [{}, {"fail_after": 2}])
    assert error is None and out[0][0] == "done" and out[0][1] == data
    assert isinstance(out[1][0], ConnectionResetError)
    assert tee.held_back[1] < 1.0  # dropped when it stopped, not after the stall time

    verifying, raw = reader(data)
    tee = Tee(verifying, 3, depth=4, stall=5.0)
    out, error, _ = run(tee, [{"fail_after": 1}, {"fail_after": 2}, {"fail_after": 3}])
    assert isinstance(error, SourceStreamError) and "every upload stopped" in str(error)
    assert raw.tell() < len(data) // 2  # nobody left to read for: the source read ended early


def test_an_upload_that_waits_for_data_outlasts_the_others_stall_bound():
    # with two uploads stalled the shared read may wait 2 x stall; the third must not give up first
    data = b"y" * (4 * MIB)
    tee = Tee(reader(data)[0], 3, depth=2, stall=0.6)
    out, error, _ = run(tee, [{}, {"pause": 5.0}, {"pause": 5.0}])
    assert error is None and out[0][0] == "done" and out[0][1] == data


# -- the copier: three real targets ------------------------------------------------------------------


def client(url: str, user, actions: str) -> RegistryClient:
    return RegistryClient(
        url,
        StaticCredentials(Credentials(*user)),
        actions=actions,
        transport=RecordingTransport(sleep=Waits()),
    )


def blob_gets(source: RegistryClient) -> collections.Counter:
    return collections.Counter(
        url.rsplit("/", 1)[-1]
        for method, url, *_ in source.transport.log
        if method == "GET" and "/blobs/" in url
    )


@pytest.fixture
def big_image(fresh_registry):
    source = fresh_registry(name="fan-src")
    image = images.oci_image("fan-big", (6 * MIB, 5 * MIB, 4 * MIB, 3 * MIB))
    source.pusher().push("team/big", image, "1.0")
    return source, image


def test_uploads_fed_by_one_read_all_run_even_with_fewer_blob_threads_than_targets(big_image, fresh_registry):
    source, image = big_image
    targets = [fresh_registry(name=f"fan-{i}") for i in range(3)]
    src = client(source.url, READER, "pull")
    placements = [
        Placement(Destination(f"t{i}", client(t.url, PUSHER, "pull,push")), "mirror/big", "1.0")
        for i, t in enumerate(targets)
    ]
    with Copier(src, blob_concurrency=1, stall=5.0) as copier:
        results = copier.copy_to("team/big", "1.0", placements)
    assert [r.status for r in results] == [CopyStatus.COPIED] * 3, [r.error for r in results]
    reads = blob_gets(src)
    assert set(reads.values()) == {1} and len(reads) == len(image.blobs), reads  # each blob read once for all
    for target in targets:
        assert target.pusher().fetch_manifest("mirror/big", "1.0")[2] == image.digest


def test_a_target_behind_a_slow_link_is_dropped_from_the_shared_read_and_finishes_alone(fresh_registry):
    source, fast, slow = (fresh_registry(name=f"fan-{n}") for n in ("src2", "fast", "slow"))
    image = images.oci_image("fan-huge", (24 * MIB,))
    source.pusher().push("team/huge", image, "1.0")
    host, port = slow.url.removeprefix("http://").split(":")
    # 8 MiB/s: past what the socket buffers and the Tee's own buffer absorb, the slow target holds
    # the shared read back; it must be dropped after 0.5 s of that and upload the layer alone
    with LatencyProxy(
        host,
        int(port),
        delay_ms=1,
        bandwidth_bytes_per_s=8 * MIB,
        max_buffer_bytes=256 * 1024,
        connect_rtt=False,
    ) as link:
        src = client(source.url, READER, "pull")
        placements = [
            Placement(Destination("fast", client(fast.url, PUSHER, "pull,push")), "mirror/huge", "1.0"),
            Placement(Destination("slow", client(link.url, PUSHER, "pull,push")), "mirror/huge", "1.0"),
        ]
        with Copier(src, blob_concurrency=4, stall=0.5) as copier:
            results = copier.copy_to("team/huge", "1.0", placements)
    assert [r.status for r in results] == [CopyStatus.COPIED] * 2, [r.error for r in results]
    for target in (fast, slow):
        assert target.pusher().fetch_manifest("mirror/huge", "1.0")[2] == image.digest
    layer = image.blobs[-1]
    assert blob_gets(src)[layer.digest] == 2, blob_gets(src)  # the shared read, then the slow one's own
