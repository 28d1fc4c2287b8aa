"""The backup engine on radosgw: only changed runs are stored, chains restore exactly, a
failure commits nothing and cleans up, and one writer per volume."""

from __future__ import annotations

import dataclasses
import io
import random
import time
from collections.abc import AsyncIterator

import pytest
import trio

from bakfs.backup.plan import BackupPlan
from bakfs.backup.sink import run_backup_stream
from bakfs.catalog.discovery import BackupRef, find_backups, load_metadata, load_sha256file
from bakfs.catalog.leases import VolumeLease
from bakfs.config import S3Options
from bakfs.errors import BackupFailed, LeaseLost, StoreUnreachable, VolumeBusy
from bakfs.read.simple import restore
from bakfs.store.s3 import S3Store

B = 4096
C = 16 * B


def _options(store: S3Store, **changes: object) -> S3Options:
    return dataclasses.replace(store.options, object_size=C, block_size=B, **changes)


async def _write(store: S3Store, plan: BackupPlan, data: bytes, piece: int = 10000) -> BackupRef:
    async def chunks() -> AsyncIterator[memoryview]:
        view = memoryview(data)
        for start in range(0, len(view), piece):
            yield view[start:start + piece]

    ref, _stats = await run_backup_stream(store, plan, chunks())
    return ref


def backup(store: S3Store, data: bytes, volume: str, parent: BackupRef | None = None,
           **changes: object) -> BackupRef:
    options = _options(store, **changes)
    plan = BackupPlan(volume_id=volume, backup_id=f"b{time.monotonic_ns()}", options=options)
    if parent is not None:
        sha = load_sha256file(store, parent)
        plan = dataclasses.replace(plan, parent=parent, parent_hashes=sha.sha256s,
                                   parent_size=len(data))
    return trio.run(_write, store, plan, data)


def _image(size: int, seed: int) -> bytearray:
    rng = random.Random(seed)
    data = bytearray(size)
    for start in range(0, size, B):
        kind = rng.randrange(3)
        if kind:
            data[start:start + B] = (rng.randbytes(B) if kind == 1 else b"log line %d\n" % start
                                     * (B // 10))[:min(B, size - start)]
    return data


def _restored(store: S3Store, ref: BackupRef) -> bytes:
    out = io.BytesIO()
    restore(store, ref, out)
    return out.getvalue()


@pytest.mark.parametrize("size", [256 * B, 256 * B + 777])
def test_incremental_stores_only_the_changed_runs(s3_store: S3Store, size: int) -> None:
    base = _image(size, 1)
    full = backup(s3_store, bytes(base), "vol-inc")
    assert len(load_metadata(s3_store, full).objects) == -(-size // C)  # zero windows too
    changed = bytearray(base)
    rng = random.Random(2)
    dirty: set[int] = set()
    for _ in range(2):  # ~2 % of blocks, clustered, one run zeroed
        first = rng.randrange(size // B - 4)
        for b in range(first, first + 3):
            dirty.add(b)
        changed[first * B:(first + 3) * B] = rng.randbytes(3 * B)
    changed[100 * B:102 * B] = bytes(2 * B)
    if base[100 * B:102 * B] != bytes(2 * B):
        dirty |= {b for b in (100, 101) if base[b * B:(b + 1) * B] != bytes(B)}
    if size % B:
        changed[-5:] = b"tail!"
        dirty.add(size // B)
    inc = backup(s3_store, bytes(changed), "vol-inc", parent=full)
    objects = load_metadata(s3_store, inc).objects
    stored_blocks = {b for o in objects for b in range(o.offset // B, -(-o.end // B))}
    assert stored_blocks == dirty
    assert sum(o.length for o in objects) <= len(dirty) * B
    assert all(o.length <= C and o.offset // C == (o.end - 1) // C for o in objects)
    assert [int(o.name.rsplit("-", 1)[1]) for o in objects] == list(range(1, len(objects) + 1))
    assert [o.offset for o in objects] == sorted(o.offset for o in objects)
    assert _restored(s3_store, full) == base
    assert _restored(s3_store, inc) == changed
    assert len(load_sha256file(s3_store, inc).sha256s) == -(-size // B)


class FailingStore(S3Store):
    """The real store, with the connection dropping on the Nth data object."""

    def __init__(self, options: S3Options, fail_at: int) -> None:
        super().__init__(options)
        self.puts = 0
        self.fail_at = fail_at

    def put(self, key: str, data: bytes | memoryview, **kw: object) -> None:  # type: ignore[override]
        if key[-6:-5] == "-" and key[-5:].isdigit():
            self.puts += 1
            if self.puts == self.fail_at:
                raise StoreUnreachable(f"S3 PUT {key}: cannot reach the store (injected)", key)
        super().put(key, data, **kw)  # type: ignore[arg-type]


def test_a_store_failure_commits_nothing_and_removes_what_was_written(
        s3_store: S3Store) -> None:
    failing = FailingStore(_options(s3_store), fail_at=5)
    with pytest.raises(BackupFailed, match="injected"):
        backup(failing, bytes(_image(64 * C, 3)), "vol-fail")
    assert find_backups(s3_store, "vol-fail") == []
    assert list(s3_store.list("volume_vol-fail/")) == []


def test_a_volume_that_changed_size_cannot_be_an_incremental(s3_store: S3Store) -> None:
    full = backup(s3_store, bytes(8 * C), "vol-size")
    options = _options(s3_store)
    plan = BackupPlan(volume_id="vol-size", backup_id="grown", options=options, parent=full,
                      parent_hashes=load_sha256file(s3_store, full).sha256s,
                      parent_size=8 * C)
    with pytest.raises(BackupFailed, match="same size"):
        trio.run(_write, s3_store, plan, bytes(9 * C))
    assert [r.backup_id for r in find_backups(s3_store, "vol-size")] == [full.backup_id]


def test_one_writer_per_volume_and_stale_leases_are_taken_over(s3_store: S3Store) -> None:
    first = VolumeLease(s3_store, "vol-lock", "one")
    first.acquire()
    with pytest.raises(VolumeBusy, match=r"being backed up by .* \(backup one\)"):
        VolumeLease(s3_store, "vol-lock", "two").acquire()
    first.renew()
    first.release()
    second = VolumeLease(s3_store, "vol-lock", "two", ttl=0.5)
    second.acquire()
    time.sleep(1)  # second's lease expires without renewal
    third = VolumeLease(s3_store, "vol-lock", "three")
    third.acquire()
    with pytest.raises(LeaseLost):
        second.renew()
    second.release()  # releasing a lease that is no longer ours leaves the new one alone
    with pytest.raises(VolumeBusy):
        VolumeLease(s3_store, "vol-lock", "four").acquire()
    third.release()
    assert not list(s3_store.list("bakfs-locks/"))
