"""Damaged stores: a corrupted object and a deleted object fail the reads of their ranges with
an error naming the object, other ranges still read, and no wrong byte is ever returned."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import trio

from bakfs.catalog.discovery import load_metadata
from bakfs.cinder import codec
from bakfs.cinder.metadata import ObjectEntry
from bakfs.config import Config
from bakfs.errors import BakfsError, IntegrityError, ObjectMissing, StoreUnreachable
from bakfs.read.engine import Engine, open_engine
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.read.conftest import Chain, CountingStore, make_versions, read_backup, write_chain

SIZE = 16 * 64 * 1024 + 999


def _non_zero_objects(store: S3Store, chain: Chain) -> list[ObjectEntry]:
    entries = load_metadata(store, chain.refs[-1]).objects
    return [e for e in entries if chain.images[-1][e.offset:e.end] != bytes(e.length)]


async def _check_rest(engine: Engine, chain: Chain, bad: ObjectEntry) -> None:
    """Every 4 KiB outside the bad object reads right; inside it fails."""
    image = chain.images[-1]
    for offset in range(0, SIZE, 4096):
        size = min(4096, SIZE - offset)
        if offset + size <= bad.offset or offset >= bad.end:
            got = await read_backup(engine, chain.ids[-1], offset, size)
            assert got == image[offset:offset + size]
        else:
            with pytest.raises(BakfsError) as info:
                await read_backup(engine, chain.ids[-1], offset, size)
            assert bad.name in str(info.value)


@pytest.mark.parametrize("compression", ["zstd", "none", "zlib"])
def test_corrupted_object_fails_naming_it(s3_store: S3Store, counting: CountingStore,
                                          engine_config: Callable[..., Config],
                                          compression: str) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=3), "vol-c", compression)
    # an object of the incremental: its range is served by the newest layer
    bad = _non_zero_objects(s3_store, chain)[0]
    body = bytearray(s3_store.get(bad.name))
    body[len(body) // 2] ^= 0x40
    body[-1] ^= 0x01
    s3_store.put(bad.name, bytes(body))

    async def main() -> None:
        async with open_engine(engine_config(), counting) as engine:
            with pytest.raises(IntegrityError) as info:
                await read_backup(engine, chain.ids[-1], bad.offset, bad.length)
            assert info.value.key == bad.name
            assert bad.name in str(info.value)
            # a read spanning good and bad objects fails whole, never partly right
            with pytest.raises(IntegrityError):
                await read_backup(engine, chain.ids[-1], 0, SIZE)
            await _check_rest(engine, chain, bad)

    trio.run(main)
    # the corrupt bytes were never cached: a fresh engine fetches and fails again
    before = counting.gets[bad.name]

    async def again() -> None:
        async with open_engine(engine_config(), counting) as engine:
            with pytest.raises(IntegrityError):
                await read_backup(engine, chain.ids[-1], bad.offset, 1)

    trio.run(again)
    assert counting.gets[bad.name] == before + 1


def test_an_object_that_decodes_but_is_not_the_recorded_one_is_never_served(
        s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    """A well-formed zstd frame of other bytes, of the recorded length: only the md5 check
    tells. It is made in batches beside the read-ahead's objects (bakfs.store.md5batch), so
    the sequential read below checks the bad object among good ones."""
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=4), "vol-s", "zstd")
    bad = _non_zero_objects(s3_store, chain)[1]
    other = bytes(b ^ 0x5A for b in chain.images[-1][bad.offset:bad.end])
    s3_store.put(bad.name, codec.compress(other, "zstd")[0])

    async def main() -> None:
        async with open_engine(engine_config(), s3_store) as engine:
            with pytest.raises(IntegrityError, match="md5") as info:
                for offset in range(0, SIZE, 1 << 20):  # sequential: read-ahead in play
                    await read_backup(engine, chain.ids[-1], offset,
                                      min(1 << 20, SIZE - offset))
            assert info.value.key == bad.name
            await _check_rest(engine, chain, bad)

    trio.run(main)


def test_deleted_object_fails_naming_it(s3_store: S3Store,
                                        engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=4), "vol-d")
    bad = _non_zero_objects(s3_store, chain)[3]
    s3_store.delete(bad.name)

    async def main() -> None:
        async with open_engine(engine_config(), s3_store) as engine:
            with pytest.raises(ObjectMissing) as info:
                await read_backup(engine, chain.ids[-1], bad.offset + 10, 100)
            assert info.value.key == bad.name
            assert bad.name in str(info.value)
            await _check_rest(engine, chain, bad)

    trio.run(main)


def test_missing_parent_is_reported(s3_store: S3Store,
                                    engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=5), "vol-p")
    s3_store.delete(chain.refs[0].metadata_key)

    async def main() -> None:
        async with open_engine(engine_config(), s3_store) as engine:
            with pytest.raises(BakfsError, match="not in the store"):
                await read_backup(engine, chain.ids[-1], 0, 10)

    trio.run(main)


def test_unreachable_store_fails_naming_the_object_and_cache_still_serves(
        rgw: S3Server, s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=6), "vol-u")
    objects = _non_zero_objects(s3_store, chain)
    config = engine_config()
    cached, lost = objects[0], objects[1]

    async def warm() -> None:
        async with open_engine(config, s3_store, refresh=True) as engine:
            await read_backup(engine, chain.ids[0], cached.offset, cached.length)

    trio.run(warm)
    # the same bucket through an endpoint where nothing listens
    dead = S3Store(dataclasses.replace(rgw.options(s3_store.bucket), retry_max_attempts=1,
                                       timeout=2, endpoint_url="http://127.0.0.1:9"))

    async def main() -> None:
        async with open_engine(config, dead) as engine:
            got = await read_backup(engine, chain.ids[0], cached.offset, cached.length)
            assert got == chain.images[0][cached.offset:cached.end]
            with pytest.raises(StoreUnreachable) as info:
                await read_backup(engine, chain.ids[0], lost.offset, 10)
            assert info.value.key == lost.name and lost.name in str(info.value)

    try:
        trio.run(main)
    finally:
        dead.close()
