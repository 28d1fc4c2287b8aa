"""What is in the store, and keeping it tidy: the logic of `ls`, `delete` and `gc`.

Everything is read from the objects themselves (Cinder-made backups included): a backup is
complete when its `_metadata` exists; objects under a prefix without one are the orphans of an
interrupted backup, unless a live writer holds the volume's lease for it (`leases`: one that
renews it). A backup whose lease is still there but no longer renewed is an orphan too; its
lease is taken over before its objects are deleted, so its writer, should it come back, can
no longer commit. `ls` shows the index's records (`listed`), which one listing of the store
keeps current. Blocking code; documents are read and objects deleted in parallel worker
threads.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from bakfs.catalog.discovery import (
    BackupRef,
    backup_objects,
    chronological,
    find_backup,
    load_metadata,
    scan,
)
from bakfs.catalog.index import STATUS_OK, BackupRecord
from bakfs.catalog.leases import LeaseInfo, drop, read_lease, take_over
from bakfs.cinder import naming
from bakfs.cinder.metadata import BackupMetadata
from bakfs.errors import BakfsError
from bakfs.store.base import ObjectInfo, ObjectStore
from bakfs.threads import parallel_map

log = logging.getLogger(__name__)

THREADS = 8


@dataclasses.dataclass
class BackupInfo:
    """One backup as `ls` shows it."""

    ref: BackupRef
    metadata: BackupMetadata | None = None
    size: int | None = None  # volume bytes, from the chain's full backup
    error: str | None = None  # why a complete backup's metadata could not be read

    @property
    def complete(self) -> bool:
        return self.ref.complete

    @property
    def stored_bytes(self) -> int:
        return self.ref.stored_bytes

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
            "data_objects": self.ref.data_objects, "stored_bytes": self.stored_bytes,
            "codecs": self.codecs, "name": m.backup_name if m else None,
            "prefix": str(self.ref.prefix), "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class Entry:
    """One backup as `ls` shows it: from its index record, or (incomplete) its listing."""

    backup_id: str
    volume_id: str
    started: datetime
    kind: str  # full, incremental, unreadable or incomplete
    prefix: str
    size: int | None = None
    stored_bytes: int = 0
    data_objects: int = 0
    codecs: tuple[str, ...] = ()
    parent_id: str | None = None
    created: str | None = None
    name: str | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.kind != "incomplete"

    @classmethod
    def of_record(cls, record: BackupRecord) -> Entry:
        ok = record.status == STATUS_OK
        kind = ("unreadable" if not ok else "incremental" if record.parent_id else "full")
        return cls(record.backup_id, record.volume_id,
                   naming.timestamp_datetime(record.timestamp), kind, record.prefix,
                   size=record.size if ok else None, stored_bytes=record.stored_bytes,
                   data_objects=record.object_count, codecs=record.codecs,
                   parent_id=record.parent_id, created=record.created_at or None,
                   name=record.name, error=None if ok else record.error or record.status)

    @classmethod
    def of_ref(cls, ref: BackupRef) -> Entry:
        return cls(ref.backup_id, ref.volume_id, ref.started_at, "incomplete", str(ref.prefix),
                   stored_bytes=ref.stored_bytes, data_objects=ref.data_objects)

    def as_dict(self) -> dict[str, object]:
        return {
            "backup_id": self.backup_id, "volume_id": self.volume_id,
            "parent_id": self.parent_id, "created": self.created,
            "started": self.started.isoformat(), "kind": self.kind,
            "complete": self.complete, "size": self.size, "data_objects": self.data_objects,
            "stored_bytes": self.stored_bytes, "codecs": list(self.codecs), "name": self.name,
            "prefix": self.prefix, "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class Listing:
    """What `ls` prints; `stale` says why it may miss backups made elsewhere (or None)."""

    backups: list[Entry]
    stale: str | None = None


def listed(records: list[BackupRecord], incomplete: list[BackupRef]) -> list[Entry]:
    """Index records (and incomplete backups) in `ls` order: per volume, oldest first; a
    parent before its child when they started within the same second."""
    def order(record: BackupRecord) -> tuple[str, str, str, int, str]:
        return (record.volume_id, record.timestamp, record.created_at, len(record.chain),
                record.backup_id)

    entries = [Entry.of_record(r) for r in sorted(records, key=order)]
    if not incomplete:
        return entries
    entries += [Entry.of_ref(ref) for ref in incomplete]
    rank = {e.backup_id: n for n, e in enumerate(entries)}
    return sorted(entries, key=lambda e: (e.volume_id, e.prefix.rsplit("/", 2)[1],
                                          rank[e.backup_id]))


def survey(store: ObjectStore, volume_id: str | None = None) -> list[BackupInfo]:
    """Every backup (complete or not) of one volume or all, oldest first per volume."""
    backups = [BackupInfo(ref) for ref in scan(store, volume_id)]
    complete = [b for b in backups if b.complete]

    def load(backup: BackupInfo) -> None:
        try:
            backup.metadata = load_metadata(store, backup.ref)
        except BakfsError as exc:  # one unreadable backup must not hide the others
            backup.error = str(exc)

    parallel_map(load, complete, THREADS)
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


def delete(store: ObjectStore, backup_id: str) -> int:
    """Delete a backup no incremental depends on: `_metadata` first, so a half-deleted backup
    is never listed as complete. Returns the number of objects removed."""
    ref = find_backup(store, backup_id)
    dependents = [b.ref.backup_id for b in survey(store, ref.volume_id)
                  if b.metadata is not None and b.metadata.parent_id == backup_id]
    if dependents:
        raise BakfsError(f"backup {backup_id} has incremental backups that depend on it: "
                         f"{', '.join(dependents)}; delete those first (newest first)")
    objects = [o.key for o in backup_objects(store, ref)]
    store.delete(ref.metadata_key)
    parallel_map(store.delete, [k for k in objects if k != ref.metadata_key], THREADS)
    return len(objects)


@dataclasses.dataclass(frozen=True)
class Orphan:
    """The objects of an interrupted backup, and the lease left on its volume for it by a
    writer that stopped renewing it (None when there is none)."""

    ref: BackupRef
    objects: tuple[ObjectInfo, ...]
    lease: LeaseInfo | None = None
    lease_etag: str | None = None

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)


@dataclasses.dataclass(frozen=True)
class Incomplete:
    """A backup without `_metadata`: an orphan, or one a live writer is still making."""

    orphan: Orphan
    writing: bool


def incomplete(store: ObjectStore, volume_id: str | None = None) -> list[Incomplete]:
    """Every backup without `_metadata`, each with whether a live writer holds it."""
    found = []
    leases: dict[str, tuple[LeaseInfo | None, str | None]] = {}
    for ref in scan(store, volume_id):
        if ref.complete:
            continue
        vid = ref.volume_id
        if vid not in leases:
            leases[vid] = read_lease(store, vid)
        lease, etag = leases[vid]
        if lease is None or lease.backup_id != ref.backup_id:
            lease = etag = None
        writing = lease is not None and lease.live()
        if writing:
            log.info("skipping backup %s of volume %s: it is being written (%s)",
                     ref.backup_id, vid, lease.describe() if lease else "")
        found.append(Incomplete(Orphan(ref, tuple(backup_objects(store, ref)), lease, etag),
                                writing))
    return found


def find_orphans(store: ObjectStore, volume_id: str | None = None) -> list[Orphan]:
    """Incomplete backups that no live writer is still making."""
    return [i.orphan for i in incomplete(store, volume_id) if not i.writing]


def remove_orphans(store: ObjectStore, orphans: list[Orphan]) -> int:
    """Delete the orphans' objects; a lease still naming one is taken over first (and
    dropped after), and an orphan whose lease changed meanwhile is left alone (its writer
    renewed it: it is alive after all)."""
    keys = []
    taken: list[tuple[str, str | None]] = []
    for orphan in orphans:
        if orphan.lease is not None and orphan.lease_etag is not None:
            etag = take_over(store, orphan.ref.volume_id, orphan.lease_etag,
                             orphan.ref.backup_id)
            if etag is None:
                log.warning("backup %s of volume %s: its writer renewed its lease; left "
                            "alone", orphan.ref.backup_id, orphan.ref.volume_id)
                continue
            taken.append((orphan.ref.volume_id, etag))
        keys += [o.key for o in orphan.objects]
    parallel_map(store.delete, keys, THREADS)
    for volume_id, etag in taken:
        drop(store, volume_id, etag)
    return len(keys)
