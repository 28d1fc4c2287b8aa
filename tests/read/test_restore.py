"""`restore` and reads of chains bakfs wrote (4 levels, every codec, zeroed regions, an
unaligned tail), against radosgw."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bakfs.config import Config
from bakfs.errors import IntegrityError, TargetError
from bakfs.read.engine import open_engine
from bakfs.read.restore import restore_with
from bakfs.store.s3 import S3Store
from tests.read.conftest import (
    BLOCK,
    CountingStore,
    make_versions,
    read_backup,
    sha256,
    write_chain,
)

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
            config, b, str(t), store=counting, check=True, sha256=True))
        assert target.read_bytes() == image
        assert result.sha256 == sha256(image)
        assert result.checked and result.checked_blocks == -(-SIZE // BLOCK)
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
                                   loop_device: Callable[[bytes], str]) -> None:
    """A loop device over a file bigger than the volume: every byte is written (no holes are
    assumed on a device), nothing past the volume is touched."""
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=9), "vol-blk")
    device_size = SIZE - SIZE % 4096 + 3 * 4096
    device = loop_device(b"\xee" * device_size)
    result = trio.run(lambda: restore_with(engine_config(), chain.ids[-1], device, sha256=True))
    assert not result.sparse and result.written_bytes == SIZE
    with open(device, "rb") as f:
        content = f.read()
    assert content[:SIZE] == chain.images[-1]
    assert content[SIZE:] == b"\xee" * (device_size - SIZE)
    assert result.sha256 == sha256(chain.images[-1])


def test_restore_refuses_a_block_device_in_use(s3_store: S3Store,
                                               engine_config: Callable[..., Config],
                                               loop_device: Callable[[bytes], str]) -> None:
    """A device someone holds (mounted, or claimed like this) is refused before a byte is
    written: a restore must not change a live file system under its user."""
    chain = write_chain(s3_store, make_versions(SIZE, 1, seed=11), "vol-busy")
    device_size = SIZE - SIZE % 4096 + 4096
    device = loop_device(b"\xee" * device_size)
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)  # another program claims it
    try:
        with pytest.raises(TargetError, match="in use"):
            trio.run(lambda: restore_with(engine_config(), chain.ids[0], device))
    finally:
        os.close(holder)
    with open(device, "rb") as f:
        assert f.read() == b"\xee" * device_size  # untouched


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


def test_check_compares_every_block_with_the_sha256file(
        s3_store: S3Store, engine_config: Callable[..., Config], tmp_path: Path) -> None:
    """Without --check nothing is hashed; with it every block is compared with the
    _sha256file, and a digest there that does not match what was restored fails the restore
    naming the block, leaving no TARGET behind."""
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=13), "vol-chk")
    plain = trio.run(lambda: restore_with(engine_config(), chain.ids[-1],
                                          str(tmp_path / "plain")))
    assert not plain.checked and plain.checked_blocks == 0 and plain.sha256 is None
    assert (tmp_path / "plain").read_bytes() == chain.images[-1]
    key = chain.refs[-1].sha256file_key
    doc = json.loads(s3_store.get(key))
    # the _sha256file no longer matches block 2 (in a run of data blocks, hashed in one
    # call) nor block 5 (in a run of zero blocks)
    doc["sha256s"][2] = doc["sha256s"][5] = "0" * 64
    s3_store.put(key, json.dumps(doc, sort_keys=True, indent=2).encode())
    target = tmp_path / "checked"
    with pytest.raises(IntegrityError,
                       match=r"2 restored blocks differ .*: 2 \(offset 8192\), 5 \(offset"):
        trio.run(lambda: restore_with(engine_config(), chain.ids[-1], str(target),
                                      check=True))
    assert not target.exists() and list(tmp_path.glob(".checked*")) == []


def test_holes_of_many_windows_are_stepped_over_and_still_checked(
        s3_store: S3Store, counting: CountingStore, engine_config: Callable[..., Config],
        tmp_path: Path) -> None:
    """A mostly empty volume (zero regions of several 8 MiB windows, across pages of spans):
    the restore steps over them in one go, the bytes are right, --check still compares every
    block (a wrong digest in the middle of a zero run is caught) and only data is fetched."""
    mib = 1 << 20
    size = 41 * mib + 777
    rng = random.Random(23)
    base = bytearray(size)
    for at in (0, 9 * mib + 5, 33 * mib):
        base[at:at + 300_000] = rng.randbytes(300_000)
    changed = bytearray(base)
    changed[9 * mib:10 * mib] = bytes(mib)  # the incremental zeroes a data region
    changed[25 * mib + 4096:25 * mib + 8192] = rng.randbytes(4096)  # and writes into a hole
    changed[-500:] = rng.randbytes(500)
    chain = write_chain(s3_store, [bytes(base), bytes(changed)], "vol-holes")
    config = engine_config()
    for backup_id, image in zip(chain.ids, chain.images, strict=True):
        target = tmp_path / f"restored-{backup_id}"
        result = trio.run(lambda b=backup_id, t=target: restore_with(  # type: ignore[misc]
            config, b, str(t), store=counting, check=True, sha256=True))
        assert target.read_bytes() == image
        assert result.sha256 == sha256(image)
        assert result.checked_blocks == -(-size // BLOCK)
        assert result.written_bytes < 4 * mib
    # only objects with data: 15 of 64 KiB in the full backup, a few in the incremental
    assert len(counting.data_gets()) <= 15 + 6

    key = chain.refs[-1].sha256file_key
    doc = json.loads(s3_store.get(key))
    hole_block = (20 * mib) // BLOCK  # inside a run of zero blocks
    doc["sha256s"][hole_block] = "0" * 64
    s3_store.put(key, json.dumps(doc, sort_keys=True, indent=2).encode())
    with pytest.raises(IntegrityError, match=rf"1 restored blocks differ .* {hole_block} "):
        trio.run(lambda: restore_with(config, chain.ids[-1], str(tmp_path / "bad"),
                                      check=True))


def test_a_killed_restore_leaves_no_target_and_the_next_one_completes(
        tmp_path: Path) -> None:
    """A new TARGET is written under a temporary name and appears only when complete."""
    store_root = tmp_path / "store"
    env = {**os.environ, "BAKFS_CONFIG": str(tmp_path / "none.toml"),
           "BAKFS_LOCAL_PATH": str(store_root), "BAKFS_CACHE_PATH": str(tmp_path / "cache"),
           "BAKFS_INDEX_PATH": str(tmp_path / "index")}
    (tmp_path / "none.toml").write_text("")
    image = tmp_path / "image"
    image.write_bytes(random.Random(3).randbytes(96 << 20))
    bakfs = [sys.executable, "-m", "bakfs"]
    made = subprocess.run([*bakfs, "backup", str(image), "--volume", "vol-k", "--json"],
                          env=env, capture_output=True, text=True, check=True)
    backup_id = json.loads(made.stdout)["backup_id"]
    target = tmp_path / "restored"
    partial = tmp_path / ".restored.bakfs-partial"
    with subprocess.Popen([*bakfs, "restore", backup_id, str(target)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    assert not target.exists()
    subprocess.run([*bakfs, "restore", backup_id, str(target)], env=env, check=True,
                   capture_output=True)
    assert target.read_bytes() == image.read_bytes() and not partial.exists()
