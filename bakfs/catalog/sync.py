"""Keeping the LMDB index in step with the store: discover complete backups (their `_metadata`
objects, Cinder-made ones included), resolve each one's incremental chain into an extent map
and write it into the index; drop backups that left the store; rebuild from nothing on demand.

A refresh is incremental: one listing of the store, then only backups that are new, or whose
`_metadata` changed (etag and size), or whose ancestors changed, are (re)read. A backup whose
chain cannot be resolved (missing parent, bad metadata) is catalogued as broken with the
reason, so reading it fails with that reason instead of "not found". A backup this process
has just committed is added without a listing (`Cataloguer.add`).

One backup never takes the others down: whatever its documents hold, or whatever the store
answers for them (refused, missing, a key we lack), that backup is quarantined as broken
with the reason (logged when it is new or changed) and the refresh goes on. Only an
unreachable store (nothing would be right) and a damaged index (`IndexCorrupt`: the caller
rebuilds it) end a refresh.

Async orchestration over `bakfs.threads`: store calls in s3 threads, JSON parsing and the
overlay in cpu threads, index writes in index threads, each a short transaction. Knows
nothing of FUSE or of the LMDB schema's byte layout (that is `bakfs.catalog.index`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bakfs.catalog.discovery import BackupRef, find_backups, newest_per_id, parse_checked
from bakfs.catalog.index import (
    BATCH_ROWS,
    KIND_DATA,
    KIND_HOLE,
    KIND_ZERO,
    NO_OWNER,
    STATUS_BROKEN,
    STATUS_OK,
    BackupRecord,
    Index,
)
from bakfs.cinder import naming
from bakfs.cinder.chain import overlay
from bakfs.cinder.metadata import BackupMetadata
from bakfs.cinder.zeros import ZERO_DIGESTS
from bakfs.errors import BakfsError, FormatError, IndexCorrupt, StoreRefused, StoreUnreachable
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RefreshResult:
    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    broken: dict[str, str] = dataclasses.field(default_factory=dict)
    backups: int = 0
    volumes: int = 0
    seconds: float = 0.0
    rebuilt: str | None = None

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def extent_rows(chain: Sequence[BackupMetadata], seqs: Sequence[int]
                ) -> tuple[list[tuple[int, int, int, int, int, int]], int]:
    """The index rows of the chain's overlay (pure CPU): data spans point at (owner seq,
    position); holes and all-zero objects become zero-kind rows, adjacent ones merged.
    Returns the rows and how many of the newest layer's objects are all zeros."""
    position: dict[str, tuple[int, int]] = {}
    for seq, layer in zip(seqs, chain, strict=True):
        for n, entry in enumerate(layer.objects):
            position[entry.name] = (seq, n)
    rows: list[tuple[int, int, int, int, int, int]] = []
    zero_names: set[str] = set()
    for extent in overlay(chain):
        entry = extent.entry
        if entry is None:
            kind, owner, n, inner = KIND_HOLE, NO_OWNER, 0, 0
        elif ZERO_DIGESTS.is_zero(entry.length, entry.md5):
            kind, owner, n, inner = KIND_ZERO, NO_OWNER, 0, 0
            zero_names.add(entry.name)
        else:
            kind = KIND_DATA
            owner, n = position[entry.name]
            inner = extent.object_offset
        if kind != KIND_DATA and rows and rows[-1][2] == kind:
            last = rows[-1]
            rows[-1] = (last[0], last[1] + extent.length, kind, owner, n, 0)
            continue
        rows.append((extent.offset, extent.length, kind, owner, n, inner))
    own_zero = sum(1 for o in chain[-1].objects if o.name in zero_names
                   or ZERO_DIGESTS.is_zero(o.length, o.md5))
    return rows, own_zero


class Cataloguer:
    """One refresh (or rebuild) of an index from a store."""

    def __init__(self, store: ObjectStore, index: Index, bridge: Bridge) -> None:
        self.store = store
        self.index = index
        self.bridge = bridge
        self._reasons: dict[str, str | None] = {}  # why each backup was broken last time

    async def refresh(self) -> RefreshResult:
        started = time.monotonic()
        result = RefreshResult(rebuilt=self.index.rebuilt)
        listed = newest_per_id(await self.bridge.run_s3(find_backups, self.store))
        by_id = {item.backup_id: item for item in listed}
        known = {r.backup_id: r
                 for r in await self.bridge.run_index(self.index.list_backups, None, True)}
        self._reasons = {bid: r.error for bid, r in known.items() if r.status == STATUS_BROKEN}

        # Drop what left the store or changed, then everything that stands on those.
        stale = {bid for bid, record in known.items()
                 if bid not in by_id or record.prefix != str(by_id[bid].prefix)
                 or record.fingerprint != by_id[bid].fingerprint
                 or record.status != STATUS_OK}
        changed = True
        while changed:
            changed = False
            for bid, record in known.items():
                if bid not in stale and any(a in stale for a in record.chain[:-1]):
                    stale.add(bid)
                    changed = True
        for bid in sorted(stale):
            await self.bridge.run_index(self.index.drop_backup, bid)
            if bid not in by_id:
                result.removed.append(bid)
        present = {bid: r for bid, r in known.items() if bid not in stale}

        # Add the new ones volume by volume, parents before children.
        for volume_id, items in _by_volume(listed):
            memo: dict[str, BackupMetadata | BakfsError] = {}
            volume_ids = {item.backup_id: item for item in items}
            for item in items:
                if item.backup_id not in present:
                    await self._ensure(item, volume_ids, present, memo, result, [])
            del memo
            log.debug("index: volume %s done", volume_id)
        result.backups = sum(1 for r in present.values() if r.status == STATUS_OK)
        result.volumes = len({r.volume_id for r in present.values()})
        result.seconds = round(time.monotonic() - started, 3)
        return result

    async def add(self, ref: BackupRef, metadata: BackupMetadata) -> BackupRecord:
        """Index a backup this process has just committed, without listing the store: its
        ancestors come from the index (their `_metadata` is read again to overlay the
        chain). Returns its record (status broken, with the reason, if its chain is)."""
        known = {r.backup_id: r for r in
                 await self.bridge.run_index(self.index.list_backups, ref.volume_id, True)}
        if ref.backup_id in known:
            await self.bridge.run_index(self.index.drop_backup, ref.backup_id)
            del known[ref.backup_id]
        volume_ids = {bid: BackupRef(naming.parse_prefix(r.prefix), fingerprint=r.fingerprint,
                                     stored_bytes=r.stored_bytes)
                      for bid, r in known.items()}
        volume_ids[ref.backup_id] = ref
        memo: dict[str, BackupMetadata | BakfsError] = {ref.backup_id: metadata}
        return await self._ensure(ref, volume_ids, known, memo, RefreshResult(), [])

    async def _metadata(self, item: BackupRef,
                        memo: dict[str, BackupMetadata | BakfsError]) -> BackupMetadata:
        cached = memo.get(item.backup_id)
        if cached is None:
            try:
                raw = await self.bridge.run_s3(self.store.get, item.metadata_key)
                cached = await self.bridge.run_cpu(parse_checked, raw, item)
            except (FormatError, StoreRefused) as exc:  # this backup's problem only
                cached = exc
            memo[item.backup_id] = cached
        if isinstance(cached, BakfsError):
            raise cached
        return cached

    async def _ensure(self, item: BackupRef, volume_ids: dict[str, BackupRef],
                      present: dict[str, BackupRecord],
                      memo: dict[str, BackupMetadata | BakfsError], result: RefreshResult,
                      path: list[str]) -> BackupRecord:
        """Index `item` (and first its missing ancestors); return its record."""
        if item.backup_id in present:
            return present[item.backup_id]
        base = BackupRecord(
            backup_id=item.backup_id, volume_id=item.prefix.volume_id, prefix=str(item.prefix),
            timestamp=item.prefix.timestamp, parent_id=None, created_at="", name=None,
            description=None, size=0, chain=(item.backup_id,), fingerprint=item.fingerprint)
        try:
            if item.backup_id in path:
                raise FormatError(f"backup {item.backup_id} is its own ancestor")
            metadata = await self._metadata(item, memo)
            base = dataclasses.replace(
                base, parent_id=metadata.parent_id, created_at=metadata.created_at,
                name=metadata.backup_name, description=metadata.backup_description)
            chain_records: list[BackupRecord] = []
            if metadata.parent_id is not None:
                parent_item = volume_ids.get(metadata.parent_id)
                if parent_item is None:
                    raise FormatError(f"backup {item.backup_id} is an incremental of "
                                      f"{metadata.parent_id}, which is not in the store")
                parent = await self._ensure(parent_item, volume_ids, present, memo, result,
                                            [*path, item.backup_id])
                if parent.status != STATUS_OK:
                    raise FormatError(f"backup {item.backup_id} stands on {parent.backup_id}, "
                                      f"which cannot be read: {parent.error}")
                chain_records = [present[bid] for bid in parent.chain]
            chain_items = [volume_ids[r.backup_id] for r in chain_records]
            chain = [await self._metadata(i, memo) for i in chain_items] + [metadata]
            record = dataclasses.replace(
                base, chain=(*(r.backup_id for r in chain_records), item.backup_id),
                size=chain[0].covered_size, object_count=len(metadata.objects),
                own_bytes=sum(o.length for o in metadata.objects),
                stored_bytes=item.stored_bytes,
                codecs=tuple(sorted({o.compression for o in metadata.objects})))
            record = await self._write(record, chain, [r.seq for r in chain_records])
        except (IndexCorrupt, StoreUnreachable):
            raise
        except (FormatError, StoreRefused) as exc:
            record = await self._quarantine(base, str(exc), result)
        except Exception as exc:  # a case no check foresaw: still this backup's alone
            record = await self._quarantine(
                base, f"cannot be indexed: {type(exc).__name__}: {exc}", result)
        else:
            result.added.append(item.backup_id)
        present[item.backup_id] = record
        return record

    async def _quarantine(self, base: BackupRecord, reason: str,
                          result: RefreshResult) -> BackupRecord:
        """Catalogue a backup as broken with the reason (its half-written rows dropped);
        say so in the log when the reason is new."""
        record = dataclasses.replace(base, status=STATUS_BROKEN, error=reason)
        level = logging.DEBUG if self._reasons.get(base.backup_id) == reason else logging.WARNING
        log.log(level, "index: backup %s of volume %s cannot be read: %s", base.backup_id,
                base.volume_id, reason)
        await self.bridge.run_index(self.index.drop_backup, base.backup_id)
        await self.bridge.run_index(self.index.put_broken, record)
        result.broken[base.backup_id] = reason
        return record

    async def _write(self, record: BackupRecord, chain: list[BackupMetadata],
                     ancestor_seqs: list[int]) -> BackupRecord:
        seq = await self.bridge.run_index(self.index.begin_backup, record)
        rows, own_zero = await self.bridge.run_cpu(extent_rows, chain, [*ancestor_seqs, seq])
        objects = list(chain[-1].objects)
        for start in range(0, len(objects), BATCH_ROWS):
            await self.bridge.run_index(self.index.add_objects, seq, start,
                                        objects[start:start + BATCH_ROWS])
        for start in range(0, len(rows), BATCH_ROWS):
            await self.bridge.run_index(self.index.add_extents, seq,
                                        rows[start:start + BATCH_ROWS])
        record = dataclasses.replace(record, seq=seq, status=STATUS_OK, extent_count=len(rows),
                                     zero_objects=own_zero)
        await self.bridge.run_index(self.index.finish_backup, record)
        return record


def _by_volume(listed: list[BackupRef]) -> Iterator[tuple[str, list[BackupRef]]]:
    groups: dict[str, list[BackupRef]] = {}
    for item in listed:
        groups.setdefault(item.prefix.volume_id, []).append(item)
    yield from groups.items()


async def open_index(path: str | Path, bridge: Bridge, *, wipe: bool = False) -> Index:
    """Open (after wiping, for a rebuild) the index in an index thread."""
    def opener() -> Index:
        if wipe:
            shutil.rmtree(path, ignore_errors=True)
        return Index.open(path)
    index = await bridge.run_index(opener)
    if wipe:
        index.rebuilt = "a rebuild was asked for"
    return index


async def refresh(store: ObjectStore, index: Index, bridge: Bridge) -> RefreshResult:
    """Bring the index in step with the store; see the module docstring."""
    return await Cataloguer(store, index, bridge).refresh()
