"""`restore` and reads of chains bakfs wrote (4 levels, every codec, zeroed regions, an
unaligned tail), against radosgw."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bakfs.config import Config
from bakfs.errors import TargetError
from bakfs.read.engine import open_engine
from bakfs.read.restore import restore_with
from bakfs.store.s3 import S3Store
from tests.read.conftest import CountingStore, make_versions, read_backup, sha256, write_chain

SIZE = 21 * 64 * 1024 + 12345  # not a multiple of the block or object size


@pytest.mark.parametrize("compression", ["none", "zlib", "bz2", "zstd"])
def test_restore_equals_source_at_every_level(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        tmp_path: Path, compression: str) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 4, seed=len(compression)), "vol-r",
                        compression)
    config = engine_config()
    for level, (backup_id, image) in enumerate(zip(chain.ids, chain.images, strict=True)):
        target = tmp_path / f"restored-{level}"
        result = trio.run(lambda b=backup_id, t=target: restore_with(  # type: ignore[misc]
            config, b, str(t), store=counting))
        assert target.read_bytes() == image
        assert result.sha256 == sha256(image)
        assert result.bytes == SIZE
        assert result.sparse
        # zero windows were skipped: the new file has holes
        assert result.written_bytes < SIZE
        assert os.stat(target).st_blocks * 512 < SIZE
    # every data object fetched at most once over the four restores (the cache serves repeats)
    assert max(counting.data_gets().values()) == 1


def test_restore_into_existing_file_overwrites_everything(
        s3_store: S3Store, engine_config: Callable[..., Config], tmp_path: Path) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2), "vol-e")
    target = tmp_path / "existing"
    target.write_bytes(b"\xff" * (SIZE + 5000))
    result = trio.run(lambda: restore_with(engine_config(), chain.ids[-1], str(target)))
    assert not result.sparse
    assert target.read_bytes() == chain.images[-1]


def test_random_reads_match_source(s3_store: S3Store, engine_config: Callable[..., Config]
                                   ) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 3), "vol-x", "zlib")
    rng = random.Random(7)

    async def main() -> None:
        async with open_engine(engine_config(), s3_store) as engine:
            for _ in range(300):
                level = rng.randrange(3)
                offset = rng.randrange(SIZE + 100)
                size = rng.choice([1, 512, 4096, 65536, 200_000, rng.randrange(1, 300_000)])
                data = await read_backup(engine, chain.ids[level], offset, size)
                assert data == chain.images[level][offset:offset + size]

    trio.run(main)


def test_restore_to_a_block_device(s3_store: S3Store, engine_config: Callable[..., Config],
                                   tmp_path: Path) -> None:
    """A loop device over a file bigger than the volume: every byte is written (no holes are
    assumed on a device), nothing past the volume is touched."""
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=9), "vol-blk")
    backing = tmp_path / "backing.img"
    device_size = SIZE - SIZE % 4096 + 3 * 4096
    backing.write_bytes(b"\xee" * device_size)
    attach = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                            text=True)
    if attach.returncode != 0:
        pytest.fail(f"losetup failed (the test needs root and loop devices): {attach.stderr}")
    device = attach.stdout.strip()
    try:
        result = trio.run(lambda: restore_with(engine_config(), chain.ids[-1], device))
        assert not result.sparse and result.written_bytes == SIZE
        with open(device, "rb") as f:
            content = f.read()
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    assert content[:SIZE] == chain.images[-1]
    assert content[SIZE:] == b"\xee" * (device_size - SIZE)
    assert result.sha256 == sha256(chain.images[-1])


def test_restore_and_cache_on_tmpfs(s3_store: S3Store, engine_config: Callable[..., Config],
                                    tmp_path: Path) -> None:
    """tmpfs may refuse O_DIRECT: the target and the cache fall back to buffered writes."""
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=10), "vol-shm")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="bakfs-test-"))
    try:
        config = engine_config(path=str(shm / "cache"))
        fetched = []
        for n in range(2):  # cold, then from the tmpfs cache
            target = shm / f"restored-{n}"
            result = trio.run(lambda t=target: restore_with(  # type: ignore[misc]
                config, chain.ids[0], str(t)))
            assert target.read_bytes() == chain.images[0]
            fetched.append(result.objects_fetched)
        assert fetched[0] > 0 and fetched[1] == 0
        assert result.cache_hits > 0
    finally:
        shutil.rmtree(shm)


def test_restore_refuses_a_directory(
        s3_store: S3Store, engine_config: Callable[..., Config], tmp_path: Path) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=12), "vol-bad")
    with pytest.raises(TargetError, match="neither a regular file nor a block device"):
        trio.run(lambda: restore_with(engine_config(), chain.ids[0], str(tmp_path)))
