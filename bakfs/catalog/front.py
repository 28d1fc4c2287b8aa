"""The catalogue as running code sees it: which backups exist (records from the LMDB index)
and which objects serve a byte range of one (extent lookups), kept in step with the store.

The index answers every question; the store is asked only by `refresh`, by `find` for an id
the index does not know yet (a backup made elsewhere moments ago) and by `add` for a backup
this process committed. A read never lists the store. Recently looked-up runs of extents are
kept in memory (bounded), so a sequential reader asks LMDB once per few hundred extents.
An index found damaged (a row failing its checksum or its bounds, an impossible map, any
LMDB error: `IndexCorrupt`) is wiped and rebuilt from the store and the call retried once:
damage to this cache of the store is repaired, never served, and never a traceback.

Async, on trio; every blocking call goes through `bakfs.threads`.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import trio

from bakfs.catalog import sync
from bakfs.catalog.discovery import BackupRef, find_backups, newest_per_id
from bakfs.catalog.index import KIND_DATA, STATUS_OK, BackupRecord, Index, Span
from bakfs.cinder.metadata import BackupMetadata
from bakfs.errors import BackupNotFound, IndexCorrupt
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SPANS = 256  # extents fetched past a lookup, for the next reads
MAX_CACHED_SPANS = 1 << 16  # bound of the in-memory extent pages
REFRESH_AFTER_MISS = 5.0  # seconds between refreshes `find` may start for unknown ids
REBUILD_PAUSE = 10.0  # seconds after a rebuild in which damage found again is only reported
KEPT = b"kept/"  # prefix of the index's meta rows that `keep` writes


class _Pages:
    """Recently looked-up runs of extents per backup, bounded in total spans (LRU)."""

    def __init__(self, max_spans: int = MAX_CACHED_SPANS) -> None:
        self.max_spans = max_spans
        self._starts: dict[str, list[int]] = {}
        self._pages: collections.OrderedDict[tuple[str, int], tuple[list[int], list[Span]]] = (
            collections.OrderedDict())
        self._count = 0

    def find(self, backup_id: str, offset: int) -> tuple[list[int], list[Span]] | None:
        starts = self._starts.get(backup_id)
        if not starts:
            return None
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return None
        key = (backup_id, starts[i])
        page = self._pages[key]
        if page[1][-1].end <= offset:
            return None
        self._pages.move_to_end(key)
        return page

    def add(self, backup_id: str, spans: list[Span]) -> tuple[list[int], list[Span]]:
        key = (backup_id, spans[0].offset)
        if key in self._pages:
            self._drop(key)
        page = ([s.offset for s in spans], spans)
        self._pages[key] = page
        bisect.insort(self._starts.setdefault(backup_id, []), spans[0].offset)
        self._count += len(spans)
        while self._count > self.max_spans and len(self._pages) > 1:
            self._drop(next(iter(self._pages)))
        return page

    def _drop(self, key: tuple[str, int]) -> None:
        _starts, spans = self._pages.pop(key)
        self._count -= len(spans)
        starts = self._starts[key[0]]
        starts.pop(bisect.bisect_left(starts, key[1]))
        if not starts:
            del self._starts[key[0]]

    def clear(self) -> None:
        self._starts.clear()
        self._pages.clear()
        self._count = 0


class Catalog:
    """Records and extent lookups of the backups in one store; see the module docstring.
    Build with `open_catalog` (or from an open index)."""

    def __init__(self, store: ObjectStore, index: Index, bridge: Bridge) -> None:
        self.store = store
        self.index = index
        self.bridge = bridge
        self.lookups = 0  # LMDB extent lookups, for the engine's counters
        self.last_refresh = float("-inf")  # monotonic time the store was last listed
        self._pages = _Pages()
        self._records: dict[str, BackupRecord] = {}
        self._refresh_lock = trio.Lock()
        self.generation = 0  # resets of the index so far
        self._last_reset = float("-inf")
        self._settled = trio.Event()  # unset from a reset until the index is filled again
        self._settled.set()

    # -- keeping in step with the store ----------------------------------------------------

    async def refresh(self, listing: list[BackupRef] | None = None, *,
                      check: bool = False, volume_id: str | None = None,
                      pending: sync.Pending | None = None) -> sync.RefreshResult:
        """Bring the index in step with the store (one at a time). `listing`: the complete
        backups a caller has just listed, so the store is not listed twice; `check`: read
        every row of the index first and rebuild it if any is damaged (`bakfs index
        refresh`); `volume_id`: that volume's backups only; `pending` (`sync.Pending`): a
        reader waiting for one volume has it indexed next."""
        async with self._refresh_lock:
            return await self._refresh(check, listing, volume_id, pending)

    async def _refresh(self, check: bool, listing: list[BackupRef] | None = None,
                       volume_id: str | None = None,
                       pending: sync.Pending | None = None) -> sync.RefreshResult:
        try:
            if check:
                try:
                    problems = await self.bridge.run_index(self.index.check)
                except IndexCorrupt as exc:
                    problems = [str(exc)]
                if problems:
                    await self._reset(f"it was damaged ({len(problems)} problems, the "
                                      f"first: {problems[0]})")
            try:
                result = await sync.refresh(self.store, self.index, self.bridge, listing,
                                            volume_id, pending)
            except IndexCorrupt as exc:
                await self._reset(f"it was damaged ({exc})")
                result = await sync.refresh(self.store, self.index, self.bridge, listing,
                                            volume_id)
        finally:
            self._settled.set()  # whatever came of it, a reset is over
        self.last_refresh = time.monotonic()
        self._forget()
        return result

    async def knows_backups(self) -> bool:
        """Whether the index holds any backup (a count, no record is read)."""
        stats = await self._index(self.index.stats)
        return stats["backups"] > 0

    async def rebuild(self, reason: str, generation: int | None = None) -> None:
        """Recreate the index from nothing (after finding it damaged), unless it was rebuilt
        since `generation` (another task found the same damage first). Other tasks may be
        inside a lookup in another thread: the index waits for them."""
        async with self._refresh_lock:
            if generation is not None and generation != self.generation:
                return
            try:
                await self._reset(reason)
            finally:
                await self._refresh(check=False)

    async def _reset(self, reason: str) -> None:
        """Wipe the index; index calls wait (`_settled`) until the refresh that follows has
        filled it again, rather than find it empty."""
        log.error("index: %s; rebuilding it from the store", reason)
        self._settled = trio.Event()
        await self.bridge.run_index(self.index.reset, reason)
        self.generation += 1
        self._last_reset = time.monotonic()
        self._forget()

    async def _index(self, fn: Callable[..., T], *args: object) -> T:
        """An index call in an index thread; damage found rebuilds the index and the call is
        made once more (an error then is the caller's). Damage found again within
        REBUILD_PAUSE of a rebuild is only reported: a rebuild that does not cure it (a bug,
        or a disk that keeps failing) must not turn every read into a rebuild."""
        await self._settled.wait()
        generation = self.generation
        try:
            return await self.bridge.run_index(fn, *args)
        except BackupNotFound:
            if generation == self.generation:
                raise
            # the index was wiped during the call: ask the rebuilt one
        except IndexCorrupt as exc:
            if generation != self.generation:
                pass  # found on the index just replaced: try the new one
            elif time.monotonic() - self._last_reset < REBUILD_PAUSE:
                raise
            else:
                await self.rebuild(f"it was damaged ({exc})", generation)
        await self._settled.wait()
        return await self.bridge.run_index(fn, *args)

    async def kept(self, name: bytes) -> bytes | None:
        """A document kept beside the index for the next start (the TSM records' last
        listing); None when the index has none (new, rebuilt, or kept by an older bakfs)."""
        return await self._index(self.index.get_meta, KEPT + name)

    async def keep(self, name: bytes, value: bytes) -> None:
        await self._index(self.index.set_meta, KEPT + name, value)

    async def add(self, ref: BackupRef, metadata: BackupMetadata, *,
                  beside_refresh: bool = False) -> BackupRecord:
        """Index a backup this process has just committed (no listing of the store).
        `beside_refresh`: the caller knows the running refresh is done with this backup's
        volume (a first build that has indexed it), so the backup is added without waiting
        for the rest of that refresh: at 10,000 backups, up to a first build's 13 s."""
        async with contextlib.nullcontext() if beside_refresh else self._refresh_lock:
            record = await sync.Cataloguer(self.store, self.index, self.bridge).add(ref,
                                                                                   metadata)
            self._forget()
            return record

    def _forget(self) -> None:
        self._pages.clear()
        self._records.clear()

    # -- records ---------------------------------------------------------------------------

    async def record(self, backup_id: str) -> BackupRecord:
        """The record of a readable backup the index knows; BackupNotFound otherwise."""
        record = self._records.get(backup_id)
        if record is None:
            record = await self._index(self.index.get_backup, backup_id)
            if record is None:
                raise BackupNotFound(f"no complete backup {backup_id} in "
                                     f"{self.store.description}")
            if record.status != STATUS_OK:
                raise BackupNotFound(f"backup {backup_id} cannot be read: "
                                     f"{record.error or record.status}")
            self._records[backup_id] = record
        return record

    async def find(self, backup_id: str) -> BackupRecord:
        """`record`, listing the store first when the index does not know the id (it may have
        been made elsewhere since the last refresh, or the index is new). Only the volume
        that holds the backup is then brought in step: a restore on a fresh host reads its
        chain's `_metadata`, not the whole catalogue's (10,000 GETs, 14 s, at 10,000
        backups)."""
        known = await self._index(self.index.get_backup, backup_id)
        if known is None and time.monotonic() - self.last_refresh > REFRESH_AFTER_MISS:
            listing = await self.bridge.run_s3(find_backups, self.store)
            holders = [ref for ref in newest_per_id(listing) if ref.backup_id == backup_id]
            if holders:
                volume_id = holders[0].volume_id
                await self.refresh([ref for ref in listing if ref.volume_id == volume_id],
                                   volume_id=volume_id)
            else:
                self.last_refresh = time.monotonic()
        return await self.record(backup_id)

    async def list_backups(self, volume_id: str | None = None) -> list[BackupRecord]:
        return await self._index(self.index.list_backups, volume_id)

    # -- extents ---------------------------------------------------------------------------

    async def spans(self, record: BackupRecord, offset: int, end: int) -> list[Span]:
        """The spans serving [offset, end) of the backup's volume, clipped; `end` must be
        within the volume."""
        backup_id = record.backup_id
        out: list[Span] = []
        position = offset
        while position < end:
            before = position
            for span in await self._spans_from(backup_id, position, end):
                if span.end <= position:
                    continue
                if span.offset >= end:
                    break
                out.append(span.clip(position, end))
                position = out[-1].end
            if position == before:
                raise IndexCorrupt(f"backup {backup_id}: no extent covers offset {position}")
        return out

    async def zeros_at(self, record: BackupRecord, offset: int) -> int:
        """How many bytes from `offset` on read as zeros (holes and all-zero objects, up to
        the next data or the volume's end): what a restore to a sparse target steps over in
        one go, so its time follows the data, not the volume's size."""
        position = offset
        while position < record.size:
            before = position
            for span in await self._spans_from(record.backup_id, position, record.size):
                if span.end <= position:
                    continue
                if span.kind == KIND_DATA or span.offset > position:
                    return position - offset
                position = span.end
            if position == before:
                raise IndexCorrupt(f"backup {record.backup_id}: no extent covers offset "
                                   f"{position}")
        return position - offset

    async def _spans_from(self, backup_id: str, position: int, end: int) -> list[Span]:
        """The spans of the cached page holding `position`, from the one covering it on
        (the page is looked up when missing; `end` bounds that lookup)."""
        page = self._pages.find(backup_id, position)
        if page is None:
            page = self._pages.add(
                backup_id, await self._lookup(backup_id, position, end - position))
        starts, spans = page
        return spans[max(bisect.bisect_right(starts, position) - 1, 0):]

    async def _lookup(self, backup_id: str, offset: int, size: int) -> list[Span]:
        self.lookups += 1
        _record, spans = await self._index(self.index.lookup, backup_id, offset, size,
                                           PAGE_SPANS)
        return spans


@contextlib.asynccontextmanager
async def open_catalog(index_path: str | Path, store: ObjectStore, bridge: Bridge, *,
                       refresh: bool = False, identity: str | None = None,
                       fill: bool = True) -> AsyncIterator[Catalog]:
    """The catalogue of `store` on the index at `index_path`, refreshed from the store at
    once when asked or when the index was just (re)created, unless `fill` is false (a
    caller that wants one backup: `find` reads what that one needs). `identity` (see
    `sync.open_index`) empties an index that was built for another bucket or SSE-C key."""
    index = await sync.open_index(index_path, bridge, identity=identity)
    try:
        catalog = Catalog(store, index, bridge)
        if refresh or (index.rebuilt and fill):
            await catalog.refresh()
        yield catalog
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run_index(index.close)
