"""The chunk cache on its own and inside the engine: survives restarts, recovers from every
crash window, keeps LRU order, and read-ahead that grows for sequential readers and resets
on random access."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
import trio

from bakfs.config import Config
from bakfs.read.cachefile import file_size
from bakfs.read.engine import open_engine
from bakfs.store.s3 import S3Store
from tests.read.conftest import OBJECT, CountingStore, make_versions, read_backup, write_chain

SIZE = 20 * OBJECT + 100


def test_cache_survives_restart_and_serves_without_gets(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=40), "vol-s")
    config = engine_config()

    async def read_all() -> tuple[bytes, int]:
        async with open_engine(config, counting) as engine:
            data = await read_backup(engine, chain.ids[1], 0, SIZE)
            return data, engine.cache.stats.disk_hits

    data, _hits = trio.run(read_all)
    assert data == chain.images[1]
    first = sum(counting.data_gets().values())
    assert first > 0
    data, hits = trio.run(read_all)
    assert data == chain.images[1]
    assert sum(counting.data_gets().values()) == first  # no GET after the restart
    assert hits > 0


def test_cache_recovers_from_crash_windows(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=41), "vol-w")
    config = engine_config()
    cache_dir = Path(config.cache.path)

    async def read_all() -> bytes:
        async with open_engine(config, counting) as engine:
            return await read_backup(engine, chain.ids[0], 0, SIZE)

    assert trio.run(read_all) == chain.images[0]
    files = sorted((cache_dir / "objects").rglob("*-*"))
    assert len(files) >= 3
    # 1. a file renamed into place whose record never committed: an orphan to delete
    orphan = files[0].with_name("0" * 32 + "-12345")
    orphan.write_bytes(b"x" * 12345)
    # 2. a record whose file is gone (crash between record and... or someone deleted it)
    files[1].unlink()
    # 3. a file whose size differs from its record (damaged): not trusted
    files[2].write_bytes(b"short")
    # 4. a temp file left by a crash during a fill
    (cache_dir / "tmp" / "leftover.1234").write_bytes(b"partial")
    before = sum(counting.data_gets().values())
    assert trio.run(read_all) == chain.images[0]
    assert not orphan.exists()
    assert list((cache_dir / "tmp").iterdir()) == []
    # the two lost entries were fetched again, nothing else
    assert sum(counting.data_gets().values()) == before + 2
    env = lmdb.open(str(cache_dir / "lru"), max_dbs=2, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            db = env.open_db(b"entries", txn=txn)
            records = {bytes(k).decode(): struct.unpack(">QQ", v)[0]
                       for k, v in txn.cursor(db=db)}
    finally:
        env.close()
    on_disk = {p.name: p.stat().st_size for p in (cache_dir / "objects").rglob("*-*")}
    assert records == on_disk


def test_lru_evicts_least_recently_used_and_survives_restart(
        s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    # random data only, so every object is fetched and cached whole (64 KiB each)
    image = os.urandom(6 * OBJECT)
    chain = write_chain(s3_store, [image], "vol-l", "none")
    config = engine_config(max_size=4 * file_size(OBJECT), memory_size=0, readahead_max=0)
    bid = chain.ids[0]

    async def run(offsets: list[int]) -> list[str]:
        async with open_engine(config, s3_store) as engine:
            for off in offsets:
                assert await read_backup(engine, bid, off, 10) == image[off:off + 10]
                await engine.cache.settle()
            return list(engine.cache._disk)

    order = trio.run(run, [0, OBJECT, 2 * OBJECT, 3 * OBJECT, 0])  # object 0 used again
    assert len(order) == 4
    # the restart keeps the order: object 0 was used last, object 1 is the oldest
    order2 = trio.run(run, [4 * OBJECT])  # evicts the oldest: object 1
    assert order2[-1] not in order and order[0] not in order2
    assert set(order2) == (set(order) - {order[0]}) | {order2[-1]}


def test_readahead_grows_for_sequential_readers_and_resets_on_random(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    image = os.urandom(40 * OBJECT)
    chain = write_chain(s3_store, [image], "vol-ra", "none")
    config = engine_config(readahead_max=8 * OBJECT, memory_size=32 * OBJECT)
    bid = chain.ids[0]

    async def main() -> None:
        async with open_engine(config, counting) as engine:
            stream = object()
            windows = []
            for n in range(6):
                off = n * OBJECT // 2
                assert await read_backup(engine, bid, off, OBJECT // 2, stream) == \
                    image[off:off + OBJECT // 2]
                windows.append(engine.readahead._streams[(bid, stream)].window)
            assert windows[0] == 0
            assert windows[1] > 0
            assert windows == sorted(windows) and windows[-1] == engine.readahead.limit
            await trio.sleep(0.5)
            # objects ahead of the reader were fetched before it asked for them
            assert engine.readahead.scheduled >= 4
            ahead = engine.cache.stats.fetches
            assert ahead > 3
            # a random access resets the window
            await read_backup(engine, bid, 30 * OBJECT, 10, stream)
            assert engine.readahead._streams[(bid, stream)].window == 0
            # the prefetched objects are served without new GETs
            fetches = engine.cache.stats.fetches
            for n in range(6, 2 * ahead - 2):
                off = n * OBJECT // 2
                await read_backup(engine, bid, off, OBJECT // 2, object())
            assert engine.cache.stats.fetches == fetches

    trio.run(main)
    assert set(counting.data_gets().values()) == {1}


def test_a_damaged_cache_file_is_never_served(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    """A byte changed in a cache file between two runs (bit rot, a stray write): the next
    run checks the file before serving from it, deletes it and fetches the object again."""
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=43), "vol-d")
    config = engine_config()

    async def read(offset: int, size: int) -> tuple[bytes, int, int]:
        async with open_engine(config, counting) as engine:
            data = await read_backup(engine, chain.ids[0], offset, size)
            return data, engine.cache.stats.damaged, engine.cache.stats.disk_hits

    assert trio.run(read, 0, SIZE)[0] == chain.images[0]
    files = sorted((Path(config.cache.path) / "objects").rglob("*-*"), key=lambda p: p.name)
    victim = next(f for f in files if f.stat().st_size == file_size(OBJECT))
    with open(victim, "r+b") as f:  # flip one bit in the middle
        f.seek(OBJECT // 2)
        byte = f.read(1)
        f.seek(OBJECT // 2)
        f.write(bytes([byte[0] ^ 1]))
    before = sum(counting.data_gets().values())
    data, damaged, hits = trio.run(read, 0, SIZE)
    assert data == chain.images[0]
    assert damaged == 1 and hits > 0  # the others still served from disk
    assert sum(counting.data_gets().values()) == before + 1  # only the damaged one again
    assert "fails its checksum" in caplog.text
    # a small read inside another object is checked just the same before it is served
    data, damaged, _hits = trio.run(read, OBJECT // 2, 4096)
    assert data == chain.images[0][OBJECT // 2:OBJECT // 2 + 4096] and damaged == 0


def test_a_cache_file_damaged_while_the_engine_runs_is_never_served(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    """The files this process wrote are checked on every read too: a byte flipped under a
    running engine is caught by the block checksum, logged, and the object fetched again."""
    image = os.urandom(4 * OBJECT)
    chain = write_chain(s3_store, [image], "vol-live", "none")
    config = engine_config(memory_size=0, readahead_max=0)  # every read goes to the disk

    async def main() -> None:
        async with open_engine(config, counting) as engine:
            record = await engine.catalog.find(chain.ids[0])
            for off in range(0, len(image), OBJECT):  # one random-looking read per object
                assert bytes(await engine.read(record, off + 5, 10)) == image[off + 5:off + 15]
            await engine.cache.settle()
            files = sorted((Path(config.cache.path) / "objects").rglob("*-*"))
            assert len(files) == 4
            await trio.to_thread.run_sync(_flip_bit, files[0], 100)
            before = sum(counting.data_gets().values())
            for off in range(0, len(image), OBJECT):
                assert bytes(await engine.read(record, off, OBJECT)) == image[off:off + OBJECT]
            assert engine.cache.stats.damaged == 1
            assert sum(counting.data_gets().values()) == before + 1

    trio.run(main)
    assert "fails its checksum" in caplog.text


@pytest.mark.parametrize("keep_sequential", [False, True])
def test_sequential_streams_do_not_evict_the_disk_cache_unless_asked(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        keep_sequential: bool) -> None:
    """A dd of a whole volume reads each object once: its fetches stay in memory, so the
    objects random readers use stay on disk (scan resistance); `cache.keep_sequential`
    keeps them too. Random reads are kept either way."""
    image = os.urandom(12 * OBJECT)
    chain = write_chain(s3_store, [image], "vol-scan", "none")
    config = engine_config(keep_sequential=keep_sequential)

    async def main() -> tuple[int, int]:
        async with open_engine(config, counting) as engine:
            record = await engine.catalog.find(chain.ids[0])
            assert bytes(await engine.read(record, 3 * OBJECT + 1, 10)) == \
                image[3 * OBJECT + 1:3 * OBJECT + 11]  # a random read: kept on disk
            stream = object()
            for off in range(0, len(image), OBJECT // 2):  # then a sequential scan
                got = await engine.read(record, off, OBJECT // 2, stream)
                assert bytes(got) == image[off:off + OBJECT // 2]
            await engine.cache.settle()
            return len(engine.cache._disk), engine.cache.stats.fetches

    on_disk, fetches = trio.run(main)
    assert fetches == 12  # each object fetched once all the same
    # the random read's object always; the scanned ones (its first object is read before
    # the stream is known to be sequential) only with keep_sequential
    assert on_disk == 12 if keep_sequential else on_disk <= 2


def _flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
