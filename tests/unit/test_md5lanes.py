"""The md5 lanes (native/md5lanes.c) against OpenSSL, on every length that matters to MD5's
padding and on every lane width this CPU has; and the batches that feed them."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest
import trio

from bakfs.cinder import md5lanes
from bakfs.errors import BakfsError
from bakfs.store.md5batch import Md5Batches
from bakfs.threads import Bridge


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


FLAGS = _cpu_flags()
WIDTHS = [w for w, flag in ((16, "avx512f"), (8, "avx2")) if flag in FLAGS]
# lengths around MD5's padding: one block, one with no room for the length, two, more
LENGTHS = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 65537]


def openssl(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def test_the_native_lanes_are_built_where_the_cpu_has_them() -> None:
    """scripts/install builds them: a failed build must not pass unnoticed as OpenSSL."""
    if not WIDTHS:
        pytest.skip("this CPU has neither AVX-512F nor AVX2: OpenSSL alone is right")
    assert md5lanes.NATIVE is not None, "run scripts/build-native"
    assert WIDTHS[0] == md5lanes.LANES


@pytest.mark.skipif(not WIDTHS, reason="no AVX2 or AVX-512F")
@pytest.mark.parametrize("width", WIDTHS)
def test_every_digest_equals_openssl(width: int) -> None:
    assert md5lanes.NATIVE is not None
    rnd = random.Random(width)
    for count in (1, 2, 3, width - 1, width, width + 1, 2 * width + 3):
        buffers = [rnd.randbytes(rnd.choice(LENGTHS)) for _ in range(count)]
        assert md5lanes.NATIVE.digests(buffers, width) == [openssl(b) for b in buffers]
    # lanes recycled many times over, long and short buffers mixed
    buffers = [rnd.randbytes(rnd.randrange(0, 300_000)) for _ in range(5 * width)]
    assert md5lanes.NATIVE.digests(buffers, width) == [openssl(b) for b in buffers]


@pytest.mark.skipif(not WIDTHS, reason="no AVX2 or AVX-512F")
def test_buffers_of_every_kind_and_wrong_arguments() -> None:
    assert md5lanes.NATIVE is not None
    data = bytearray(random.Random(1).randbytes(10_000))
    buffers = [bytes(data), data, memoryview(data)[17:9000], b""]
    assert md5lanes.digests(buffers) == [openssl(b) for b in buffers]
    assert md5lanes.NATIVE.digests([]) == []
    with pytest.raises(TypeError):
        md5lanes.NATIVE.digests([b"a", "not a buffer"])
    with pytest.raises(BufferError):
        md5lanes.NATIVE.digests([b"a", memoryview(data)[::2]])  # not contiguous
    with pytest.raises(ValueError):
        md5lanes.NATIVE.digests([b"a", b"b"], 4)


def test_without_lanes_every_digest_is_openssl_s() -> None:
    buffers = [b"", b"x" * 100, bytearray(5000)]
    assert md5lanes.digests(buffers) == [openssl(b) for b in buffers]


@pytest.mark.skipif(not WIDTHS, reason="no AVX2 or AVX-512F")
def test_batches_wait_for_company_unless_someone_waits() -> None:
    """Jobs nobody hurries go together after the linger; an urgent one starts its batch at
    once, with everything queued by then; hurry() makes a queued job urgent."""
    rnd = random.Random(3)
    data = [rnd.randbytes(rnd.randrange(1, 200_000)) for _ in range(7)]

    async def main() -> None:
        bridge = Bridge.create()
        async with trio.open_nursery() as nursery:
            batches = Md5Batches(bridge, nursery, linger=0.5)
            results: dict[int, list[bytes]] = {}

            async def one(i: int, urgent: bool) -> None:
                results[i] = await batches.digests([data[i]], urgent)

            started = time.monotonic()
            async with trio.open_nursery() as jobs:
                for i in range(3):
                    jobs.start_soon(one, i, False)
                await trio.sleep(0.05)
                jobs.start_soon(one, 3, True)
            assert time.monotonic() - started < 0.4  # the urgent one did not linger
            assert (batches.batches, batches.buffers) == (1, 4)

            started = time.monotonic()
            async with trio.open_nursery() as jobs:
                jobs.start_soon(one, 4, False)
                jobs.start_soon(one, 5, False)
            assert time.monotonic() - started >= 0.45  # lingered, then went together
            assert (batches.batches, batches.buffers) == (2, 6)

            job = batches.queue([data[6]], urgent=False)
            await trio.sleep(0.05)
            batches.hurry(job)
            with trio.fail_after(0.4):
                results[6] = await batches.wait(job)
            assert results == {i: [openssl(d)] for i, d in enumerate(data)}

    trio.run(main)


@pytest.mark.skipif(not WIDTHS, reason="no AVX2 or AVX-512F")
def test_a_batch_that_cannot_be_hashed_fails_its_jobs_and_nothing_hangs() -> None:
    async def main() -> None:
        bridge = Bridge.create()
        async with trio.open_nursery() as nursery:
            batches = Md5Batches(bridge, nursery, linger=0.01)
            with pytest.raises(BakfsError, match="md5 could not be computed"):
                await batches.digests([b"ok", "not a buffer"], urgent=True)  # type: ignore[list-item]
            assert await batches.digests([b"ok"], urgent=True) == [openssl(b"ok")]
            # a waiter cancelled while queued leaves the queue
            with trio.move_on_after(0.001):
                await batches.digests([b"late"])
            assert await batches.digests([b"next"]) == [openssl(b"next")]

    trio.run(main)
