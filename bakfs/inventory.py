"""What is in the store, and keeping it healthy: `ls`, `verify`, `delete` and `gc`.

Everything is read from the objects themselves (Cinder-made backups included): a backup is
complete when its `_metadata` exists; objects under a prefix without one are the orphans of an
interrupted backup. Blocking code; objects are checked in parallel worker threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bakfs.cinder import naming
from bakfs.cinder.extents import Digests
from bakfs.cinder.metadata import BackupMetadata, ObjectEntry
from bakfs.discovery import (
    BackupRef,
    chronological,
    find_backup,
    load_metadata,
    load_sha256file,
)
from bakfs.errors import BakfsError
from bakfs.locking import live_lease
from bakfs.store.base import ObjectInfo, ObjectStore
from bakfs.volume_reader import read_object, restore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BackupInfo:
    """One backup as `ls` shows it."""

    ref: BackupRef
    complete: bool
    objects: list[ObjectInfo]
    metadata: BackupMetadata | None = None
    size: int | None = None  # volume bytes, from the chain's full backup
    error: str | None = None  # why a complete backup's metadata could not be read

    @property
    def data_objects(self) -> list[ObjectInfo]:
        return [o for o in self.objects
                if (p := naming.parse_key(o.key)) is not None and p.number is not None]

    @property
    def stored_bytes(self) -> int:
        return sum(o.size for o in self.data_objects)

    @property
    def kind(self) -> str:
        if self.error is not None:
            return "unreadable"
        if self.metadata is None:
            return "incomplete"
        return "incremental" if self.metadata.parent_id else "full"

    @property
    def codecs(self) -> list[str]:
        if self.metadata is None:
            return []
        return sorted({o.compression for o in self.metadata.objects})

    def as_dict(self) -> dict[str, object]:
        m = self.metadata
        return {
            "backup_id": self.ref.backup_id, "volume_id": self.ref.volume_id,
            "parent_id": m.parent_id if m else None,
            "created": m.created_at if m else None,
            "started": self.ref.started_at.isoformat(), "kind": self.kind,
            "complete": self.complete, "size": self.size,
            "data_objects": len(self.data_objects), "stored_bytes": self.stored_bytes,
            "codecs": self.codecs, "name": m.backup_name if m else None,
            "prefix": str(self.ref.prefix), "error": self.error,
        }


def survey(store: ObjectStore, volume_id: str | None = None,
           threads: int = 8) -> list[BackupInfo]:
    """Every backup (complete or not) of one volume or all, oldest first per volume."""
    groups: dict[naming.BackupPrefix, list[ObjectInfo]] = defaultdict(list)
    for info in store.list(naming.volume_listing_prefix(volume_id)):
        parsed = naming.parse_key(info.key)
        if parsed is not None:
            groups[parsed.prefix].append(info)
    backups = []
    for prefix, objects in groups.items():
        complete = any(o.key == naming.metadata_name(prefix) for o in objects)
        backups.append(BackupInfo(BackupRef(prefix), complete, objects))
    complete = [b for b in backups if b.complete]

    def load(backup: BackupInfo) -> None:
        try:
            backup.metadata = load_metadata(store, backup.ref)
        except BakfsError as exc:  # one unreadable backup must not hide the others
            backup.error = str(exc)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(load, complete))
    by_id = {b.ref.backup_id: b for b in complete}
    for backup in complete:
        backup.size = _volume_size(backup, by_id)
    ordered = {ref.backup_id: n for n, (ref, _meta) in enumerate(chronological(
        [(b.ref, b.metadata) for b in complete if b.metadata is not None]))}
    backups.sort(key=lambda b: (b.ref.volume_id, b.ref.prefix.timestamp,
                                ordered.get(b.ref.backup_id, -1), b.ref.backup_id))
    return backups


def _volume_size(backup: BackupInfo, by_id: dict[str, BackupInfo]) -> int | None:
    seen = set()
    current: BackupInfo | None = backup
    while current is not None and current.metadata is not None:
        if current.metadata.parent_id is None:
            return current.metadata.covered_size
        if current.ref.backup_id in seen:
            return None
        seen.add(current.ref.backup_id)
        current = by_id.get(current.metadata.parent_id)
    return None


def verify(store: ObjectStore, backup_id: str, deep: bool = False, threads: int = 8,
           report: Callable[[str], None] = print) -> list[str]:
    """Check a backup; return one line per problem (empty when it is sound)."""
    ref = find_backup(store, backup_id)
    metadata = load_metadata(store, ref)
    problems: list[str] = []
    listed = {o.key for o in store.list(str(ref.prefix))
              if (p := naming.parse_key(o.key)) is not None and p.prefix == ref.prefix}
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
            read_object(store, entry)
        except BakfsError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(threads) as pool:
        for result in pool.map(check, metadata.objects):
            if result:
                problems.append(result)
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
    restore(store, ref, checker)  # type: ignore[arg-type]
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


def delete(store: ObjectStore, backup_id: str) -> int:
    """Delete a backup no incremental depends on: `_metadata` first, so a half-deleted backup
    is never listed as complete. Returns the number of objects removed."""
    ref = find_backup(store, backup_id)
    dependents = [b.ref.backup_id for b in survey(store, ref.volume_id)
                  if b.metadata is not None and b.metadata.parent_id == backup_id]
    if dependents:
        raise BakfsError(f"backup {backup_id} has incremental backups that depend on it: "
                         f"{', '.join(dependents)}; delete those first (newest first)")
    objects = [o.key for o in store.list(str(ref.prefix))
               if (p := naming.parse_key(o.key)) is not None and p.prefix == ref.prefix]
    store.delete(ref.metadata_key)
    rest = [k for k in objects if k != ref.metadata_key]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(store.delete, rest))
    return len(objects)


@dataclasses.dataclass(frozen=True)
class Orphan:
    """The objects of an interrupted backup."""

    ref: BackupRef
    objects: tuple[ObjectInfo, ...]

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)


def find_orphans(store: ObjectStore, volume_id: str | None = None) -> list[Orphan]:
    """Incomplete backups that no live writer is still making."""
    orphans = []
    leases: dict[str, object] = {}
    for backup in survey(store, volume_id):
        if backup.complete:
            continue
        vid = backup.ref.volume_id
        if vid not in leases:
            leases[vid] = live_lease(store, vid)
        lease = leases[vid]
        if lease is not None and getattr(lease, "backup_id", None) == backup.ref.backup_id:
            log.info("skipping backup %s of volume %s: it is being written", backup.ref.backup_id,
                     vid)
            continue
        orphans.append(Orphan(backup.ref, tuple(backup.objects)))
    return orphans


def remove_orphans(store: ObjectStore, orphans: list[Orphan]) -> int:
    keys = [o.key for orphan in orphans for o in orphan.objects]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(store.delete, keys))
    return len(keys)
