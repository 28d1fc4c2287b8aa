"""Finding backups in an object store from their objects alone, without Cinder's database.

A backup exists, complete, when its `_metadata` object exists: writers put it last. A
parent is found as Cinder's database would name it: among the `_metadata` objects under
`volume_<volume_id>/` (Cinder chains only backups of one volume).

Blocking code: it calls the store.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from bakfs.cinder import naming
from bakfs.cinder.metadata import BackupMetadata, Sha256File, parse_metadata, parse_sha256file
from bakfs.errors import BackupNotFound, BadMetadata
from bakfs.store.base import ObjectInfo, ObjectStore


@dataclasses.dataclass(frozen=True)
class BackupRef:
    """Where one complete backup's objects are."""

    prefix: naming.BackupPrefix

    @property
    def backup_id(self) -> str:
        return self.prefix.backup_id

    @property
    def volume_id(self) -> str:
        return self.prefix.volume_id

    @property
    def started_at(self) -> datetime:
        return self.prefix.started_at

    @property
    def metadata_key(self) -> str:
        return naming.metadata_name(self.prefix)

    @property
    def sha256file_key(self) -> str:
        return naming.sha256file_name(self.prefix)


def find_backups(store: ObjectStore, volume_id: str | None = None) -> list[BackupRef]:
    """Every complete backup (of one volume, or all), oldest first per volume."""
    refs = []
    for info in store.list(naming.volume_listing_prefix(volume_id)):
        parsed = naming.parse_key(info.key)
        if parsed is not None and parsed.document == "metadata":
            refs.append(BackupRef(parsed.prefix))
    refs.sort(key=lambda r: (r.volume_id, r.prefix.timestamp, r.backup_id))
    return refs


def chronological(backups: list[tuple[BackupRef, BackupMetadata]]
                  ) -> list[tuple[BackupRef, BackupMetadata]]:
    """Oldest first. Prefix timestamps have one-second resolution, so ties are broken by the
    recorded `created_at` (bakfs records microseconds) and then by chain depth, so a parent
    always sorts before its child."""
    parents = {ref.backup_id: meta.parent_id for ref, meta in backups}

    def depth(backup_id: str) -> int:
        n, seen = 0, set()
        while (backup_id := parents.get(backup_id)) is not None and backup_id not in seen:
            seen.add(backup_id)
            n += 1
        return n

    return sorted(backups, key=lambda b: (b[0].prefix.timestamp, b[1].created_at,
                                          depth(b[0].backup_id), b[0].backup_id))


def newest_backup(store: ObjectStore, volume_id: str) -> BackupRef | None:
    """The volume's most recent complete backup, the default parent of an incremental."""
    refs = find_backups(store, volume_id)
    if not refs:
        return None
    latest = [r for r in refs if r.prefix.timestamp == refs[-1].prefix.timestamp]
    if len(latest) == 1:
        return latest[0]
    return chronological([(r, load_metadata(store, r)) for r in latest])[-1][0]


def find_backup(store: ObjectStore, backup_id: str, volume_id: str | None = None) -> BackupRef:
    """The complete backup with this id; BackupNotFound if there is none."""
    matches = [r for r in find_backups(store, volume_id) if r.backup_id == backup_id]
    if not matches:
        where = f"volume {volume_id} in " if volume_id else ""
        raise BackupNotFound(f"no complete backup {backup_id} in {where}{store.description}")
    return matches[-1]


def load_metadata(store: ObjectStore, ref: BackupRef) -> BackupMetadata:
    metadata = parse_metadata(store.get(ref.metadata_key), ref.metadata_key)
    if metadata.backup_id != ref.backup_id or metadata.volume_id != ref.volume_id:
        raise BadMetadata(f"{ref.metadata_key} describes backup {metadata.backup_id} of volume "
                          f"{metadata.volume_id}, not the one its name says")
    return metadata


def load_sha256file(store: ObjectStore, ref: BackupRef) -> Sha256File:
    return parse_sha256file(store.get(ref.sha256file_key), ref.sha256file_key)


def load_chain(store: ObjectStore, ref: BackupRef) -> list[tuple[BackupRef, BackupMetadata]]:
    """The backup and its ancestors, full backup first."""
    by_id = {r.backup_id: r for r in find_backups(store, ref.volume_id)}
    chain = []
    current: BackupRef | None = ref
    seen = set()
    while current is not None:
        if current.backup_id in seen:
            raise BadMetadata(f"backup {current.backup_id} is its own ancestor")
        seen.add(current.backup_id)
        metadata = load_metadata(store, current)
        chain.append((current, metadata))
        if metadata.parent_id is None:
            current = None
        elif metadata.parent_id in by_id:
            current = by_id[metadata.parent_id]
        else:
            raise BackupNotFound(f"backup {current.backup_id} is an incremental of "
                                 f"{metadata.parent_id}, which is not in {store.description}")
    chain.reverse()
    return chain


def backup_objects(store: ObjectStore, ref: BackupRef) -> list[ObjectInfo]:
    """Every object of one backup (data and documents), and none of another backup whose id
    merely starts with this one's."""
    return [info for info in store.list(str(ref.prefix))
            if (parsed := naming.parse_key(info.key)) is not None and parsed.prefix == ref.prefix]
