"""`verify`: is a backup sound? Every object it lists exists and decodes to its recorded
length and md5, nothing foreign lives under its prefix, and (deep) the volume reassembled
through its chain matches the `_sha256file` block by block.

It lives with the readers because it reads: every object is fetched and decoded as a read
would, and the deep check reassembles the volume with `read.simple`. Blocking code; objects
are checked in parallel worker threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from bakfs.catalog.discovery import (
    BackupRef,
    backup_objects,
    find_backup,
    load_metadata,
    load_sha256file,
)
from bakfs.cinder.extents import Digests
from bakfs.cinder.metadata import ObjectEntry
from bakfs.errors import BakfsError
from bakfs.read.simple import restore
from bakfs.store.base import ObjectStore
from bakfs.store.decode import fetch_verified
from bakfs.threads import parallel_map

THREADS = 8


def verify(store: ObjectStore, backup_id: str, deep: bool = False,
           report: Callable[[str], None] = print) -> list[str]:
    """Check a backup; return one line per problem (empty when it is sound)."""
    ref = find_backup(store, backup_id)
    metadata = load_metadata(store, ref)
    problems: list[str] = []
    listed = {o.key for o in backup_objects(store, ref)}
    expected = {o.name for o in metadata.objects}
    documents = {ref.metadata_key, ref.sha256file_key}
    for key in sorted(expected - listed):
        problems.append(f"missing object {key}")
    for key in sorted(listed - expected - documents):
        problems.append(f"unexpected object {key} under the backup's prefix (Cinder refuses "
                        "to restore a backup with foreign objects)")
    if ref.sha256file_key not in listed:
        problems.append(f"missing {ref.sha256file_key}")

    def check(entry: ObjectEntry) -> str | None:
        if entry.name not in listed:
            return None
        try:
            fetch_verified(store, entry)
        except BakfsError as exc:
            return str(exc)
        return None

    problems += [result for result in parallel_map(check, metadata.objects, THREADS) if result]
    report(f"checked {len(metadata.objects)} objects of backup {backup_id}")
    if deep and not problems:
        problems += _deep_check(store, ref, report)
    return problems


class _BlockChecker:
    """A write target that hashes the reassembled volume block by block and compares."""

    def __init__(self, expected: Digests, block_size: int) -> None:
        self.expected = expected
        self.block_size = block_size
        self.buffer = bytearray()
        self.index = 0
        self.bad: list[int] = []

    def write(self, data: bytes | memoryview) -> int:
        self.buffer += data
        while len(self.buffer) >= self.block_size:
            self._check(self.buffer[:self.block_size])
            del self.buffer[:self.block_size]
        return len(data)

    def _check(self, block: bytes | bytearray) -> None:
        digest = hashlib.sha256(block).digest()
        if self.index >= len(self.expected) or self.expected[self.index] != digest:
            self.bad.append(self.index)
        self.index += 1

    def finish(self) -> None:
        if self.buffer:
            self._check(bytes(self.buffer))
            self.buffer.clear()


def _deep_check(store: ObjectStore, ref: BackupRef, report: Callable[[str], None]) -> list[str]:
    sha = load_sha256file(store, ref)
    checker = _BlockChecker(sha.sha256s, sha.chunk_size)
    restore(store, ref, checker)
    checker.finish()
    problems = [f"block {i} (offset {i * sha.chunk_size}) differs from the sha256file"
                for i in checker.bad[:20]]
    if len(checker.bad) > 20:
        problems.append(f"... and {len(checker.bad) - 20} more blocks differ")
    if checker.index != len(sha.sha256s):
        problems.append(f"the volume has {checker.index} blocks, the sha256file lists "
                        f"{len(sha.sha256s)}")
    report(f"reassembled {checker.index} blocks and compared them with the sha256file")
    return problems
