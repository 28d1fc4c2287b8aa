"""Finding backups in an object store from their objects alone, without Cinder's database.

A backup exists, complete, when its `_metadata` object exists: writers put it last. Objects
under a prefix without one belong to an interrupted backup. A parent is found as Cinder's
database would name it: among the complete backups under `volume_<volume_id>/` (Cinder chains
only backups of one volume). One listing serves every question: `scan` is the only code that
reads a listing of backups. A large listing can be split at volumes the caller names
(the index knows them): its ranges are listed side by side, each in its own thread, so
one range's page is parsed while the next range's is on its way.

Blocking code: it calls the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime

from bakfs.cinder import naming
from bakfs.cinder.metadata import (
    BackupMetadata,
    Sha256File,
    parse_metadata,
    read_metadata,
    read_sha256file,
)
from bakfs.errors import BackupNotFound, BadMetadata
from bakfs.store.base import ObjectInfo, ObjectStore
from bakfs.store.streams import read_pieces
from bakfs.threads import parallel_map


@dataclasses.dataclass(frozen=True)
class BackupRef:
    """One backup as the store's listing shows it: where its objects are, whether its
    `_metadata` exists, a fingerprint of that document (it changes when the document is
    rewritten) and what its data objects occupy. Two refs are equal when they name the
    same backup (the same prefix), whatever a listing said of it."""

    prefix: naming.BackupPrefix
    complete: bool = dataclasses.field(default=True, compare=False)
    fingerprint: str = dataclasses.field(default="", compare=False)
    stored_bytes: int = dataclasses.field(default=0, compare=False)
    data_objects: int = dataclasses.field(default=0, compare=False)

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


def fingerprint(info: ObjectInfo) -> str:
    """What identifies one version of a `_metadata` object: its etag and size (a listing and
    a HEAD agree on both), or size and date where a store has no etag."""
    if info.etag:
        return f"{info.etag}:{info.size}"
    stamp = info.last_modified.isoformat() if info.last_modified else ""
    return f"{info.size}@{stamp}"


@dataclasses.dataclass
class _Tally:
    complete: bool = False
    fingerprint: str = ""
    stored_bytes: int = 0
    data_objects: int = 0


def scan(store: ObjectStore, volume_id: str | None = None,
         split_at: Sequence[str] = ()) -> list[BackupRef]:
    """Every backup with objects in the store (of one volume, or all), complete or not, from
    one listing; oldest first per volume. `split_at`: volume ids (sorted) at which a listing
    of all volumes is split into ranges listed side by side; any ids will do, the ranges
    cover every key once whatever they are."""
    prefix = naming.volume_listing_prefix(volume_id)
    if volume_id is not None or not split_at:
        tallies = _tally(store, prefix, None, None)
    else:
        # ranges (-, b1], (b1, b2], ..., (bn, -) of keys, bk = volume_<kth id>/: a volume's
        # keys all fall in the range after its bound
        bounds = sorted({naming.volume_listing_prefix(v) for v in split_at})
        ranges = list(zip([None, *bounds], [*bounds, None], strict=True))
        parts = parallel_map(lambda r: _tally(store, prefix, *r), ranges, len(ranges))
        tallies = {k: v for part in parts for k, v in part.items()}
    refs = [BackupRef(naming.parse_prefix(prefix), t.complete, t.fingerprint, t.stored_bytes,
                      t.data_objects) for prefix, t in tallies.items()]
    refs.sort(key=lambda r: (r.volume_id, r.prefix.timestamp, r.backup_id))
    return refs


def _tally(store: ObjectStore, prefix: str, after: str | None, until: str | None
           ) -> dict[str, _Tally]:
    """What one listing (of keys after `after`, up to and with `until`) says of each
    backup prefix."""
    tallies: dict[str, _Tally] = {}  # by prefix text: 21,000 keys for 10,000 backups
    for info in store.list(prefix, after) if after is not None else store.list(prefix):
        if until is not None and info.key > until:
            break
        split = naming.split_key(info.key)
        if split is None:
            continue
        prefix, rest = split
        tally = tallies.get(prefix)
        if tally is None:
            tally = tallies[prefix] = _Tally()
        if rest[0] == "-":
            tally.stored_bytes += info.size
            tally.data_objects += 1
        elif rest == naming.METADATA_SUFFIX:
            tally.complete = True
            tally.fingerprint = fingerprint(info)
    return tallies


def find_backups(store: ObjectStore, volume_id: str | None = None) -> list[BackupRef]:
    """Every complete backup (of one volume, or all), oldest first per volume."""
    return [ref for ref in scan(store, volume_id) if ref.complete]


def newest_per_id(refs: Iterable[BackupRef]) -> list[BackupRef]:
    """One backup per id: a backup made again under the same id (a new prefix) replaces the
    older one, as `find_backup` chooses."""
    chosen: dict[str, BackupRef] = {}
    for ref in refs:
        previous = chosen.get(ref.backup_id)
        if previous is None or previous.prefix.timestamp <= ref.prefix.timestamp:
            chosen[ref.backup_id] = ref
    return sorted(chosen.values(), key=lambda r: (r.volume_id, r.prefix.timestamp,
                                                  r.backup_id))


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


def check_metadata(metadata: BackupMetadata, ref: BackupRef) -> BackupMetadata:
    """The document, if it describes the backup its name says and lists only that backup's
    own data objects (as Cinder and bakfs name them: its prefix, a dash, a number), so a
    hostile document cannot make a reader fetch another key of the bucket; BadMetadata if
    not."""
    if metadata.backup_id != ref.backup_id or metadata.volume_id != ref.volume_id:
        raise BadMetadata(f"{ref.metadata_key} describes backup {metadata.backup_id!a} of "
                          f"volume {metadata.volume_id!a}, not the one its name says")
    own = f"{ref.prefix}-"
    for entry in metadata.objects:
        if not (entry.name.startswith(own) and _is_number(entry.name[len(own):])):
            raise BadMetadata(f"{ref.metadata_key} lists object {entry.name!a}, which is not "
                              "one of this backup's objects")
    return metadata


def parse_checked(raw: bytes, ref: BackupRef) -> BackupMetadata:
    """Parse a backup's `_metadata` (CPU work) and check it names that backup."""
    return check_metadata(parse_metadata(raw, ref.metadata_key), ref)


def load_metadata(store: ObjectStore, ref: BackupRef) -> BackupMetadata:
    """A backup's `_metadata`, read and parsed piece by piece (its objects packed), and
    checked to name that backup."""
    return check_metadata(read_metadata(read_pieces(store, ref.metadata_key),
                                        ref.metadata_key), ref)


def load_sha256file(store: ObjectStore, ref: BackupRef) -> Sha256File:
    """A backup's `_sha256file`, streamed into a packed digest list (a file when large:
    `Sha256File.sha256s.close()` releases it early)."""
    return read_sha256file(read_pieces(store, ref.sha256file_key), ref.sha256file_key)


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


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()
