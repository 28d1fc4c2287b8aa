"""Keeping the LMDB index in step with the store: discover complete backups (their `_metadata`
objects, Cinder-made ones included), turn each one's incremental chain into an extent map and
write it into the index; drop backups that left the store; rebuild from nothing on demand.

A refresh is incremental: one listing of the store, then only backups that are new, or whose
`_metadata` changed (etag and size), or whose ancestors changed, are (re)read: a refresh with
nothing new costs the listing alone. New `_metadata` documents are fetched N wide (the s3
limiter, `s3.max_pool_connections`), several volumes at a time. A backup's extents are its
parent's extents (read back from the index) overlaid with its own objects in one streaming
merge, so an incremental costs its own objects, not its whole chain, and memory stays flat
for any volume size. A reader that needs one volume before the refresh is done (a mount's
first build, with the volume directories shown from the listing) asks for it through
`Pending`: that volume is indexed next, and the reader waits for it alone. Small backups
are written many to a transaction; a large one in bounded batches. A backup whose chain
cannot be resolved (missing parent, bad metadata) is catalogued as broken with the reason,
so reading it fails with that reason instead of "not found". A backup this process has
just committed is added without a listing (`Cataloguer.add`).

One backup never takes the others down: whatever its documents hold, or whatever the store
answers for them (refused, missing, a key we lack), that backup is quarantined as broken
with the reason (logged when it is new or changed) and the refresh goes on. Only an
unreachable store (nothing would be right) and a damaged index (`IndexCorrupt`: the caller
rebuilds it) end a refresh.

Async orchestration over `bakfs.threads`: store calls in s3 threads, the merge of a small
backup in a cpu thread (on the loop when it is a few rows), index writes (and the merge of a
large backup) in index threads, each a short transaction. Knows nothing of FUSE or of the
LMDB schema's byte layout (that is `bakfs.catalog.index`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from bakfs.catalog.discovery import BackupRef, load_metadata, newest_per_id, scan
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
from bakfs.cinder.metadata import BackupMetadata, ObjectEntry, ObjectTable
from bakfs.cinder.zeros import ZERO_DIGESTS
from bakfs.errors import (
    BadMetadata,
    BakfsError,
    FormatError,
    IndexCorrupt,
    StoreRefused,
    StoreUnreachable,
)
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge, plain_errors

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[int, int, int, int, int, int]  # offset, length, kind, owner, n, offset in object
VOLUMES_AT_ONCE = 8  # volumes whose new backups are fetched and indexed at the same time
# A merge of at most this many rows (parent's and own) runs on the event loop: it takes a few
# µs, where handing it to a thread costs ~100 µs, a tenth of a catalogue's first build.
INLINE_ROWS = 64
# `_metadata` documents one s3 thread reads in a row: handing each GET to a thread of its own
# cost ~0.1 ms of hops and wake-ups against ~1 ms for a small document's GET.
FETCH_BATCH = 8
# ranges a listing of the whole store is split into, listed side by side (at volumes the
# index knows): 21 pages took 0.44-0.48 s in one row, of which 0.23 s the client's CPU
LIST_RANGES = 4


class Pending:
    """The volumes a refresh has yet to index, so that a reader can wait for one volume (and
    have it indexed next) instead of the whole catalogue. Every volume's event is set once
    its records are in the index (it is then in `indexed`), or when the refresh ends,
    however it ends."""

    def __init__(self) -> None:
        self.volumes: dict[str, trio.Event] = {}
        self.indexed: set[str] = set()
        self._wanted: collections.deque[str] = collections.deque()

    def add(self, volume_ids: Iterable[str]) -> None:
        for volume_id in volume_ids:
            self.volumes.setdefault(volume_id, trio.Event())

    def want(self, volume_id: str) -> trio.Event | None:
        """The event of a volume still to be indexed (which is indexed next), or None."""
        event = self.volumes.get(volume_id)
        if event is not None and not event.is_set():
            self._wanted.append(volume_id)
        return event

    def next_of(self, queue: dict[str, T]) -> str:
        """The volume of `queue` to index next: the oldest wanted one, else the first."""
        while self._wanted:
            volume_id = self._wanted.popleft()
            if volume_id in queue:
                return volume_id
        return next(iter(queue))

    def done(self, volume_id: str) -> None:
        self.indexed.add(volume_id)
        self.volumes.setdefault(volume_id, trio.Event()).set()

    def end(self) -> None:
        for event in self.volumes.values():
            event.set()
        self._wanted.clear()

    def clear(self) -> None:
        """None is pending any more (the index holds the whole store)."""
        self.end()
        self.volumes.clear()
        self.indexed.clear()


@dataclasses.dataclass
class RefreshResult:
    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    broken: dict[str, str] = dataclasses.field(default_factory=dict)
    backups: int = 0
    volumes: int = 0
    seconds: float = 0.0
    rebuilt: str | None = None
    # every record the index holds once the refresh is done, of its volume when it was for
    # one; never a half-built one (not in the JSON): `ls` prints them without reading the
    # index a second time
    records: list[BackupRecord] = dataclasses.field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, object]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "records"}


def _clip(row: Row, start: int, end: int) -> Row:
    offset, _length, kind, owner, n, inner = row
    return (start, end - start, kind, owner, n,
            inner + (start - offset) if kind == KIND_DATA else 0)


def overlay_rows(base: Iterable[Row], layer: Iterable[Row], size: int) -> Iterator[Row]:
    """One layer overlaid on the extents of the chain below it, as one streaming merge:
    `base` tiles [0, size) in order, `layer` holds the new backup's objects in offset order
    (not overlapping); where the layer has an object it wins, elsewhere the base shows
    through (clipped). Adjacent holes or zero objects are merged into one row. Memory: one
    row of each."""
    rows = iter(base)
    current: Row | None = next(rows, None)
    position = 0
    last: Row | None = None

    def emit(row: Row) -> Iterator[Row]:
        nonlocal last
        if last is not None and row[2] != KIND_DATA and last[2] == row[2]:
            last = (last[0], last[1] + row[1], row[2], last[3], last[4], 0)
            return
        if last is not None:
            yield last
        last = row

    def base_until(end: int) -> Iterator[Row]:
        nonlocal current, position
        while position < end:
            while current is not None and current[0] + current[1] <= position:
                current = next(rows, None)
            if current is None or current[0] > position:
                raise IndexCorrupt(f"the parent's extents do not cover offset {position}")
            piece = _clip(current, position, min(current[0] + current[1], end))
            yield from emit(piece)
            position = piece[0] + piece[1]

    for row in layer:
        yield from base_until(row[0])
        yield from emit(row)
        position = row[0] + row[1]
    yield from base_until(size)
    if last is not None:
        yield last


class Layer:
    """A backup's own objects as extent rows in offset order (all-zero objects as zero rows,
    never fetched), counting what the record says of them."""

    def __init__(self, objects: ObjectTable, owner: int, size: int, what: str) -> None:
        self.objects = objects
        self.owner = owner
        self.size = size
        self.what = what
        self.zero_objects = 0
        self.data: list[tuple[int, ObjectEntry]] = []  # objects that need an index row

    def rows(self) -> Iterator[Row]:
        objects = self.objects
        for n in objects.offset_order():
            entry = objects[n]
            if entry.end > self.size:
                raise BadMetadata(f"{self.what}: object {entry.name} ends at {entry.end}, past "
                                  f"the volume size {self.size}")
            if ZERO_DIGESTS.is_zero(entry.length, entry.md5):
                self.zero_objects += 1
                if entry.length:
                    yield (entry.offset, entry.length, KIND_ZERO, NO_OWNER, 0, 0)
            elif entry.length:
                self.data.append((n, entry))
                yield (entry.offset, entry.length, KIND_DATA, self.owner, n, 0)


def _small_rows(base: list[Row], objects: ObjectTable, owner: int, size: int, what: str
                ) -> tuple[list[Row], Layer]:
    """A small backup's extent rows, merged in memory (CPU work)."""
    layer = Layer(objects, owner, size, what)
    return list(overlay_rows(base, layer.rows(), size)), layer


def _indexed_rows(index: Index, seq: int) -> Iterator[Row]:
    """A backup's extent rows read back from the index, a batch per read transaction."""
    offset = 0
    while True:
        batch = index.extent_rows(seq, offset, BATCH_ROWS)
        yield from batch
        if len(batch) < BATCH_ROWS:
            return
        offset = batch[-1][0] + 1


def _index_large(index: Index, record: BackupRecord, objects: ObjectTable,
                 parent_seq: int | None, what: str) -> BackupRecord:
    """Index a large backup in bounded batches (blocking: an index thread): its objects, and
    its parent's extents merged with them as they are read back. Status `building` until
    the last transaction; dropped again if its objects turn out to be inconsistent."""
    seq = index.begin_backup(record)
    try:
        layer = Layer(objects, seq, record.size, what)
        base: Iterable[Row] = ([(0, record.size, KIND_HOLE, NO_OWNER, 0, 0)]
                               if parent_seq is None else _indexed_rows(index, parent_seq))
        out: list[Row] = []
        count = data_bytes = 0
        for row in overlay_rows(base, layer.rows(), record.size):
            out.append(row)
            count += 1
            if row[2] == KIND_DATA:
                data_bytes += row[1]
            if len(out) == BATCH_ROWS:
                index.add_extents(seq, out)
                out = []
            if len(layer.data) >= BATCH_ROWS:
                index.add_numbered_objects(seq, layer.data)
                layer.data.clear()
        index.add_extents(seq, out)
        index.add_numbered_objects(seq, layer.data)
        record = dataclasses.replace(record, seq=seq, status=STATUS_OK, extent_count=count,
                                     zero_objects=layer.zero_objects, data_bytes=data_bytes)
        index.finish_backup(record)
        return record
    except BaseException:
        index.drop_backup(record.backup_id)
        raise


@dataclasses.dataclass
class _Volume:
    """One volume's backups while its new ones are indexed: the listing, the fetched
    `_metadata` documents (dropped once indexed) and the small backups waiting to be written
    in one transaction (their rows kept for children indexed in the same batch)."""

    ids: dict[str, BackupRef]
    fetched: dict[str, trio.Event] = dataclasses.field(default_factory=dict)
    documents: dict[str, BackupMetadata | BakfsError] = dataclasses.field(default_factory=dict)
    batch: list[tuple[BackupRecord, list[tuple[int, ObjectEntry]], list[Row]]] = (
        dataclasses.field(default_factory=list))
    batch_rows: dict[str, tuple[int, list[Row]]] = dataclasses.field(default_factory=dict)
    batch_size: int = 0


class Cataloguer:
    """One refresh (or rebuild) of an index from a store."""

    def __init__(self, store: ObjectStore, index: Index, bridge: Bridge) -> None:
        self.store = store
        self.index = index
        self.bridge = bridge
        self._reasons: dict[str, str | None] = {}  # why each backup was broken last time

    async def refresh(self, listing: list[BackupRef] | None = None,
                      volume_id: str | None = None, pending: Pending | None = None
                      ) -> RefreshResult:
        """See the module docstring; `listing`: the complete backups, already listed;
        `volume_id`: that volume's backups only (the rest of the index is left alone);
        `pending`: told which volumes are left, asked which one to index next."""
        pending = pending if pending is not None else Pending()
        try:
            return await self._refresh(listing, volume_id, pending)
        finally:
            pending.end()

    async def _refresh(self, listing: list[BackupRef] | None, volume_id: str | None,
                       pending: Pending) -> RefreshResult:
        started = time.monotonic()
        result = RefreshResult(rebuilt=self.index.rebuilt)
        if listing is None:
            listing = [ref for ref in await list_store(self.store, self.index, self.bridge,
                                                       volume_id) if ref.complete]
        listed = newest_per_id(item for item in listing
                               if volume_id is None or item.volume_id == volume_id)
        by_id = {item.backup_id: item for item in listed}
        known = {r.backup_id: r for r in
                 await self.bridge.run_index(self.index.list_backups, volume_id, True)}
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

        # Add the new ones, several volumes at a time (a wanted one first), parents before
        # children.
        queue = {volume: items for volume, items in _by_volume(listed)
                 if any(item.backup_id not in present for item in items)}
        pending.add(queue)
        for volume in list(pending.volumes):
            if volume not in queue:
                pending.done(volume)  # indexed already: its reader need not wait
        slots = trio.Semaphore(VOLUMES_AT_ONCE)
        with plain_errors():
            async with trio.open_nursery() as nursery:
                while queue:
                    await slots.acquire()
                    items = queue.pop(pending.next_of(queue))
                    nursery.start_soon(self._index_volume, items, present, result, slots,
                                       pending)
        result.records = list(present.values())
        result.backups = sum(1 for r in present.values() if r.status == STATUS_OK)
        result.volumes = len({r.volume_id for r in present.values()})
        result.seconds = round(time.monotonic() - started, 3)
        return result

    async def _index_volume(self, items: list[BackupRef], present: dict[str, BackupRecord],
                            result: RefreshResult, slots: trio.Semaphore,
                            pending: Pending) -> None:
        """Fetch the new `_metadata` of one volume N wide, then index them in order."""
        try:
            volume = _Volume({item.backup_id: item for item in items})
            new = [item for item in items if item.backup_id not in present]
            size = _batch_size(len(new), int(self.bridge.limiters.s3.total_tokens))
            async with trio.open_nursery() as fetches:
                for start in range(0, len(new), size):
                    batch = new[start:start + size]
                    for item in batch:
                        volume.fetched[item.backup_id] = trio.Event()
                    fetches.start_soon(self._fetch_batch, batch, volume)
                for item in new:
                    await self._ensure(item, volume, present, result, [])
                await self._flush(volume, present)
            log.debug("index: volume %s done", items[0].volume_id)
            pending.done(items[0].volume_id)
        finally:
            slots.release()

    async def add(self, ref: BackupRef, metadata: BackupMetadata) -> BackupRecord:
        """Index a backup this process has just committed, without listing the store: its
        parent comes from the index. Returns its record (status broken, with the reason, if
        its chain is)."""
        known = {r.backup_id: r for r in
                 await self.bridge.run_index(self.index.list_backups, ref.volume_id, True)}
        if ref.backup_id in known:
            await self.bridge.run_index(self.index.drop_backup, ref.backup_id)
            del known[ref.backup_id]
        volume = _Volume({bid: BackupRef(naming.parse_prefix(r.prefix),
                                         fingerprint=r.fingerprint, stored_bytes=r.stored_bytes)
                          for bid, r in known.items()})
        volume.ids[ref.backup_id] = ref
        volume.documents[ref.backup_id] = metadata
        volume.fetched[ref.backup_id] = trio.Event()
        volume.fetched[ref.backup_id].set()
        await self._ensure(ref, volume, known, RefreshResult(), [])
        await self._flush(volume, known)
        return known[ref.backup_id]

    async def _fetch_batch(self, items: list[BackupRef], volume: _Volume) -> None:
        """GET and parse the items' `_metadata`, one after the other in one s3 thread; an
        error is kept for its use."""
        documents = await self.bridge.run_s3(_load_each, self.store, items)
        for item, document in zip(items, documents, strict=True):
            volume.documents[item.backup_id] = document
            volume.fetched[item.backup_id].set()

    async def _metadata(self, item: BackupRef, volume: _Volume) -> BackupMetadata:
        event = volume.fetched.get(item.backup_id)
        if event is None:  # not new (its record was dropped meanwhile): fetch it now
            volume.fetched[item.backup_id] = event = trio.Event()
            await self._fetch_batch([item], volume)
        await event.wait()
        document = volume.documents.pop(item.backup_id)
        if isinstance(document, BakfsError):
            raise document
        return document

    async def _ensure(self, item: BackupRef, volume: _Volume, present: dict[str, BackupRecord],
                      result: RefreshResult, path: list[str]) -> BackupRecord:
        """Index `item` (and first its missing ancestors); return its record."""
        if item.backup_id in present:
            return present[item.backup_id]
        # the record's fields, gathered as they are learnt: built once (a frozen dataclass's
        # `replace` per step was 0.2 s of a first build at 10,000 backups)
        fields: dict[str, Any] = dict(
            backup_id=item.backup_id, volume_id=item.prefix.volume_id, prefix=str(item.prefix),
            timestamp=item.prefix.timestamp, parent_id=None, created_at="", name=None,
            description=None, size=0, chain=(item.backup_id,), fingerprint=item.fingerprint,
            stored_bytes=item.stored_bytes, object_count=item.data_objects)
        try:
            if item.backup_id in path:
                raise FormatError(f"backup {item.backup_id} is its own ancestor")
            metadata = await self._metadata(item, volume)
            fields.update(parent_id=metadata.parent_id, created_at=metadata.created_at,
                          name=metadata.backup_name, description=metadata.backup_description)
            parent: BackupRecord | None = None
            if metadata.parent_id is not None:
                parent_item = volume.ids.get(metadata.parent_id)
                if parent_item is None:
                    raise FormatError(f"backup {item.backup_id} is an incremental of "
                                      f"{metadata.parent_id}, which is not in the store")
                parent = await self._ensure(parent_item, volume, present, result,
                                            [*path, item.backup_id])
                if parent.status != STATUS_OK:
                    raise FormatError(f"backup {item.backup_id} stands on {parent.backup_id}, "
                                      f"which cannot be read: {parent.error}")
            objects = (metadata.objects if isinstance(metadata.objects, ObjectTable)
                       else ObjectTable(metadata.objects))
            record = await self._write(
                {**fields, "chain": (*(parent.chain if parent else ()), item.backup_id),
                 "size": parent.size if parent else objects.end, "object_count": len(objects),
                 "own_bytes": objects.plain_bytes, "codecs": tuple(sorted(objects.codecs))},
                objects, parent, volume, present, item.metadata_key)
        except (IndexCorrupt, StoreUnreachable):
            raise
        except (FormatError, StoreRefused) as exc:  # unreadable: this backup, not the store
            record = await self._quarantine(BackupRecord(**fields), str(exc), result)
        except Exception as exc:  # a case no check foresaw: still this backup's alone
            record = await self._quarantine(
                BackupRecord(**fields), f"cannot be indexed: {type(exc).__name__}: {exc}",
                result)
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

    async def _write(self, fields: dict[str, Any], objects: ObjectTable,
                     parent: BackupRecord | None, volume: _Volume,
                     present: dict[str, BackupRecord], what: str) -> BackupRecord:
        """Index one backup (`fields`: of its record) whose parent (if any) is indexed or in
        this volume's batch."""
        small = len(objects) <= BATCH_ROWS and (parent is None
                                                or parent.extent_count <= BATCH_ROWS)
        if not small:
            await self._flush(volume, present)  # the parent's rows must be in the index
            parent_seq = present[parent.backup_id].seq if parent is not None else None
            return await self.bridge.run_index(_index_large, self.index,
                                               BackupRecord(**fields), objects, parent_seq,
                                               what)
        size: int = fields["size"]
        base: list[Row]
        if parent is None:
            base = [(0, size, KIND_HOLE, NO_OWNER, 0, 0)]
        elif parent.backup_id in volume.batch_rows:
            base = volume.batch_rows[parent.backup_id][1]
        else:
            base = await self.bridge.run_index(self.index.extent_rows, parent.seq, 0,
                                               BATCH_ROWS + 1)
        position = len(volume.batch)
        if len(base) + len(objects) <= INLINE_ROWS:
            rows, layer = _small_rows(base, objects, -(position + 1), size, what)
        else:
            rows, layer = await self.bridge.run_cpu(_small_rows, base, objects,
                                                    -(position + 1), size, what)
        record = BackupRecord(
            **fields, status=STATUS_OK, extent_count=len(rows), zero_objects=layer.zero_objects,
            data_bytes=sum(r[1] for r in rows if r[2] == KIND_DATA))
        volume.batch.append((record, layer.data, rows))
        volume.batch_rows[record.backup_id] = (position, rows)
        volume.batch_size += len(rows) + len(layer.data)
        if volume.batch_size >= BATCH_ROWS:
            await self._flush(volume, present)
        return record

    async def _flush(self, volume: _Volume, present: dict[str, BackupRecord]) -> None:
        """Write the volume's waiting small backups in one transaction."""
        if not volume.batch:
            return
        batch, volume.batch, volume.batch_rows, volume.batch_size = volume.batch, [], {}, 0
        for record in await self.bridge.run_index(self.index.put_backups, batch):
            present[record.backup_id] = record


def _batch_size(documents: int, threads: int) -> int:
    """FETCH_BATCH documents to a thread, fewer when that would leave s3 threads idle: the
    two `_metadata` of a volume with two backups are fetched side by side (a first mount's
    first read waits for them: 11 -> 7 ms on moto)."""
    return max(1, min(FETCH_BATCH, -(-documents // max(1, threads))))


def _load_each(store: ObjectStore, items: list[BackupRef]
               ) -> list[BackupMetadata | BakfsError]:
    """Each item's `_metadata`, or the error reading it gave (blocking: an s3 thread). Once
    the store is unreachable the rest are not tried: each would wait for its own timeout."""
    out: list[BackupMetadata | BakfsError] = []
    for item in items:
        try:
            out.append(load_metadata(store, item))
        except StoreUnreachable as exc:
            out += [exc] * (len(items) - len(out))
            break
        except BakfsError as exc:
            out.append(exc)
    return out


async def list_store(store: ObjectStore, index: Index, bridge: Bridge,
                     volume_id: str | None = None) -> list[BackupRef]:
    """Every backup with objects in the store (of one volume, or all), complete or not
    (`discovery.scan`); a listing of all of them split at volumes the index knows, its
    LIST_RANGES ranges listed side by side."""
    split_at = [] if volume_id is not None else await bridge.run_index(index.split_volumes,
                                                                        LIST_RANGES)
    return await bridge.run_s3(scan, store, volume_id, split_at)


def _by_volume(listed: list[BackupRef]) -> Iterator[tuple[str, list[BackupRef]]]:
    groups: dict[str, list[BackupRef]] = {}
    for item in listed:
        groups.setdefault(item.prefix.volume_id, []).append(item)
    yield from groups.items()


async def open_index(path: str | Path, bridge: Bridge, *, wipe: bool = False,
                     identity: str | None = None) -> Index:
    """Open (after wiping, for a rebuild) the index in an index thread. With `identity`
    (`bakfs.store.store_identity`), an index built for another store or another SSE-C key
    is emptied first: what it says of backups another key cannot read would be wrong."""
    def opener() -> Index:
        if wipe:
            shutil.rmtree(path, ignore_errors=True)
        index = Index.open(path)
        if identity is not None:
            stored = index.get_meta(b"store")
            if stored is not None and stored != identity.encode():
                index.reset("it was built for another store or SSE-C key")
            if stored != identity.encode():
                index.set_meta(b"store", identity.encode())
        return index
    index = await bridge.run_index(opener)
    if wipe:
        index.rebuilt = "a rebuild was asked for"
    return index


async def refresh(store: ObjectStore, index: Index, bridge: Bridge,
                  listing: list[BackupRef] | None = None,
                  volume_id: str | None = None, pending: Pending | None = None
                  ) -> RefreshResult:
    """Bring the index (or one volume of it) in step with the store; see the module
    docstring."""
    return await Cataloguer(store, index, bridge).refresh(listing, volume_id, pending)
