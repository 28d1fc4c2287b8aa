"""Write backups with the format code and read them back through a real (local) store."""

import io
import os
import random
from pathlib import Path

import pytest

from bakfs.backup.simple import write_backup
from bakfs.catalog.discovery import backup_objects, find_backups, load_chain, load_metadata
from bakfs.cinder import naming
from bakfs.config import S3Options
from bakfs.errors import BakfsError, IntegrityError, ObjectMissing
from bakfs.read.simple import restore
from bakfs.store.decode import fetch_verified as read_object
from bakfs.store.localdir import LocalStore

B = 4096
OPTIONS = S3Options(block_size=B, object_size=4 * B, compression="zlib")


def _restore(store: LocalStore, ref) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    digest = restore(store, ref, out)
    assert len(digest) == 64
    return out.getvalue()


def _volume(size: int, seed: int = 1) -> bytearray:
    rng = random.Random(seed)
    data = bytearray(size)
    for start in range(0, size, B):
        kind = rng.randrange(3)
        if kind == 1:
            data[start:start + B] = rng.randbytes(min(B, size - start))
        elif kind == 2:
            data[start:start + B] = (b"text %d " % start * 600)[:min(B, size - start)]
    return data


@pytest.mark.parametrize("compression", ["none", "zlib", "bz2", "zstd"])
def test_chain_of_four_with_zeroed_regions_and_unaligned_tail(local_store: LocalStore,
                                                              compression: str) -> None:
    options = S3Options(block_size=B, object_size=4 * B, compression=compression)
    size = 37 * B + 123
    versions = [_volume(size)]
    for n in range(3):
        new = bytearray(versions[-1])
        rng = random.Random(10 + n)
        for _ in range(3):
            start = rng.randrange(size)
            new[start:start + 2 * B] = rng.randbytes(len(new[start:start + 2 * B]))
        new[5 * B:7 * B] = bytes(2 * B)  # zeros written by an incremental must win
        new[-50:] = os.urandom(50)       # the short tail block changes
        versions.append(new)
    refs = []
    parent = None
    for version in versions:
        parent = write_backup(local_store, io.BytesIO(version), "vol-1", options, parent=parent)
        refs.append(parent)
    for ref, version in zip(refs, versions, strict=True):
        assert _restore(local_store, ref) == version
    assert [len(load_chain(local_store, r)) for r in refs] == [1, 2, 3, 4]
    assert set(find_backups(local_store)) == set(refs)


def test_incremental_stores_only_changed_runs(local_store: LocalStore) -> None:
    base = _volume(64 * B)
    full = write_backup(local_store, io.BytesIO(base), "vol-2", OPTIONS)
    assert len(load_metadata(local_store, full).objects) == 16  # every window, zeros too
    changed = bytearray(base)
    changed[B + 1] ^= 1                       # one block
    changed[10 * B:13 * B] = os.urandom(3 * B)  # a run crossing a window boundary (12*B)
    inc = write_backup(local_store, io.BytesIO(changed), "vol-2", OPTIONS, parent=full)
    spans = [(o.offset, o.length) for o in load_metadata(local_store, inc).objects]
    assert spans == [(B, B), (10 * B, 2 * B), (12 * B, B)]
    names = [naming.parse_key(i.key) for i in backup_objects(local_store, inc)]
    assert sorted(n.number for n in names if n and n.number) == [1, 2, 3]
    empty = write_backup(local_store, io.BytesIO(changed), "vol-2", OPTIONS, parent=inc)
    assert load_metadata(local_store, empty).objects == ()
    assert _restore(local_store, empty) == changed


def test_incremental_refuses_a_size_or_block_size_change(local_store: LocalStore) -> None:
    base = _volume(8 * B)
    full = write_backup(local_store, io.BytesIO(base), "vol-3", OPTIONS)
    with pytest.raises(BakfsError, match="same size"):
        write_backup(local_store, io.BytesIO(base + b"x"), "vol-3", OPTIONS, parent=full)
    other = S3Options(block_size=2 * B, object_size=4 * B)
    with pytest.raises(BakfsError, match="block size changed"):
        write_backup(local_store, io.BytesIO(base), "vol-3", other, parent=full)


def test_damaged_and_missing_objects_fail_naming_the_object(local_store: LocalStore,
                                                            tmp_path: Path) -> None:
    full = write_backup(local_store, io.BytesIO(_volume(16 * B)), "vol-4", OPTIONS)
    entries = load_metadata(local_store, full).objects
    # rewrite object 1 with other bytes through the store (its own md5 matches, the
    # metadata's does not): the read engine must refuse it
    local_store.put(entries[0].name, b"\0" * 100)
    with pytest.raises(IntegrityError, match=entries[0].name):
        read_object(local_store, entries[0])
    local_store.delete(entries[1].name)
    with pytest.raises(ObjectMissing, match=entries[1].name):
        read_object(local_store, entries[1])
    assert len(read_object(local_store, entries[2])) == entries[2].length


def test_refuses_bad_volume_ids(local_store: LocalStore) -> None:
    with pytest.raises(BakfsError, match="separator"):
        write_backup(local_store, io.BytesIO(b"x"), "../etc", OPTIONS)
