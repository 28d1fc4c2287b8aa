"""8 concurrent readers, of one backup and of different backups: right bytes, each object
fetched once, and the on-disk cache never above its bound."""

from __future__ import annotations

import random
from collections.abc import Callable

import trio
import trio.lowlevel

from bakfs.catalog.discovery import load_chain
from bakfs.cinder.chain import overlay
from bakfs.cinder.zeros import ZERO_DIGESTS
from bakfs.config import Config
from bakfs.read.engine import Engine, open_engine
from bakfs.store.s3 import S3Store
from tests.read.conftest import Chain, CountingStore, make_versions, read_backup, write_chain

SIZE = 24 * 64 * 1024 + 4321


def _needed(store: S3Store, chain: Chain, level: int) -> set[str]:
    """Names of the objects that serve some byte of the backup and are not all zeros."""
    layers = [m for _r, m in load_chain(store, chain.refs[level])]
    return {e.entry.name for e in overlay(layers)
            if e.entry is not None and not ZERO_DIGESTS.is_zero(e.entry.length, e.entry.md5)}


async def _reader(engine: Engine, chain: Chain, level: int, seed: int, sequential: bool,
                  errors: list[str]) -> None:
    rng = random.Random(seed)
    image = chain.images[level]
    offsets = (list(range(0, SIZE, 50_000)) if sequential
               else [rng.randrange(SIZE) for _ in range(60)])
    for offset in offsets:
        size = 50_000 if sequential else rng.randrange(1, 150_000)
        data = await read_backup(engine, chain.ids[level], offset, size, stream=seed)
        if data != image[offset:offset + size]:
            errors.append(f"reader {seed}: wrong bytes at {offset}+{size}")


def test_eight_readers_same_backup_fetch_each_object_once(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=11), "vol-8")
    errors: list[str] = []

    async def main() -> None:
        async with open_engine(engine_config(), counting) as engine:
            async with trio.open_nursery() as nursery:
                for n in range(8):
                    nursery.start_soon(_reader, engine, chain, 1, n, n % 2 == 0, errors)
            # every byte once more, to be sure all objects were needed
            assert await read_backup(engine, chain.ids[1], 0, SIZE) == chain.images[1]

    trio.run(main)
    assert errors == []
    gets = counting.data_gets()
    assert set(gets) == _needed(s3_store, chain, 1)
    assert set(gets.values()) == {1}


def test_eight_readers_of_different_backups(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    chains = [write_chain(s3_store, make_versions(SIZE, 3, seed=20 + v), f"vol-m{v}", codec)
              for v, codec in enumerate(["zstd", "zlib"])]
    errors: list[str] = []

    async def main() -> None:
        # every fetch kept on disk: this is about single flight, not the scan policy
        async with open_engine(engine_config(keep_sequential=True), counting) as engine:
            async with trio.open_nursery() as nursery:
                for n in range(8):
                    chain = chains[n % 2]
                    nursery.start_soon(_reader, engine, chain, n % 3, 100 + n, n < 4, errors)
            for chain in chains:
                for level in range(3):
                    got = await read_backup(engine, chain.ids[level], 0, SIZE)
                    assert got == chain.images[level]

    trio.run(main)
    assert errors == []
    gets = counting.data_gets()
    needed = set().union(*(_needed(s3_store, c, lv) for c in chains for lv in range(3)))
    assert set(gets) <= needed
    assert set(gets.values()) == {1}


def test_cache_bound_holds_under_concurrent_readers(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    chains = [write_chain(s3_store, make_versions(SIZE, 2, seed=30 + v), f"vol-b{v}", "none")
              for v in range(2)]
    bound = 300 * 1024  # under 5 objects of 64 KiB, far below what the readers touch
    config = engine_config(max_size=bound, memory_size=128 * 1024, readahead_max=256 * 1024)
    errors: list[str] = []
    samples: list[int] = []

    books: list[int] = []  # what the cache counts, at every scheduling point

    async def main() -> None:
        async with open_engine(config, counting) as engine:
            cache = engine.cache

            async def sampler() -> None:
                while True:
                    books.append(cache._used)
                    if len(books) % 20 == 1:  # the files themselves, now and then
                        samples.append(await cache.disk_usage())
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as outer:
                outer.start_soon(sampler)
                async with trio.open_nursery() as nursery:
                    for n in range(8):
                        nursery.start_soon(_reader, engine, chains[n % 2], n % 2, 200 + n,
                                           n % 3 == 0, errors)
                outer.cancel_scope.cancel()
            assert cache.stats.evictions > 0
            await cache.settle()
            # the books hold every file (a read-ahead may still be reserving more): a file
            # they lost would let the bound slip
            samples.append(await cache.disk_usage())
            assert samples[-1] <= cache._used

    trio.run(main)
    assert errors == []
    assert len(books) > 10 and len(samples) > 1
    assert max(books) <= bound and max(samples) <= bound
    # after a restart the cache is still within its bound and serves reads without GETs
    before = sum(counting.gets.values())

    async def restart() -> None:
        async with open_engine(config, counting) as engine:
            usage = await engine.cache.disk_usage()
            assert 0 < usage <= bound
            keys = list(engine.cache._disk)
            assert keys
            assert engine.cache.stats.disk_hits == 0

    trio.run(restart)
    assert sum(counting.gets.values()) == before


def test_refreshes_while_readers_read(s3_store: S3Store, counting: CountingStore,
                                      engine_config: Callable[..., Config]) -> None:
    """The mount refreshes the catalog now and then while files are read: reads stay right,
    and a backup added meanwhile becomes readable."""
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=50), "vol-rf")
    errors: list[str] = []

    async def main() -> None:
        async with open_engine(engine_config(), counting) as engine:
            async def refresher() -> None:
                for _ in range(5):
                    await engine.catalog.refresh()
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(refresher)
                for n in range(4):
                    nursery.start_soon(_reader, engine, chain, n % 2, 300 + n, n < 2, errors)
            late = await trio.to_thread.run_sync(
                write_chain, s3_store, make_versions(SIZE, 1, seed=51), "vol-late")
            await engine.catalog.refresh()
            assert await read_backup(engine, late.ids[0], 0, SIZE) == late.images[0]

    trio.run(main)
    assert errors == []
