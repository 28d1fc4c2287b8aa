"""The read engine: `await engine.read(backup_id, offset, size)` returns exactly those bytes of a
backup's volume (its whole incremental chain resolved), or raises an error that names the
object at fault. It never returns bytes that failed their length or md5 check.

Pieces: the LMDB index (`bakfs.index`) says which object serves which range, through a small
in-memory cache of recently used extent pages so a hot read needs no thread hop; the chunk
cache (`bakfs.chunkcache`) turns an object into verified bytes, fetching it once; holes and
all-zero objects are zero-filled without a fetch. Each reader stream (a backup, or whatever
`stream` the caller passes, such as a file handle) has a read-ahead window: it starts when two
reads are consecutive, doubles with each further consecutive read up to
`cache.readahead_max` (at most half the memory layer), and resets on a random access.
Read-ahead fetches run in the engine's nursery and are bounded, across all streams, by that
many bytes in flight, so memory stays flat whatever the volume size.

`open_engine(config)` builds the whole engine (store, bridge, index, cache, reader) and
refreshes the index when it was (re)created or a backup is unknown.

Async, on trio; every blocking call goes through `bakfs.blocking`. Knows nothing of inodes,
FUSE or `EntryAttributes`.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from bakfs import catalog
from bakfs.blocking import Bridge, plain_errors
from bakfs.chunkcache import ChunkCache
from bakfs.cinder.metadata import ObjectEntry
from bakfs.config import Config
from bakfs.errors import BackupNotFound, BakfsError, IndexCorrupt
from bakfs.index import KIND_DATA, BackupRecord, Index, Span
from bakfs.store.base import ObjectStore

log = logging.getLogger(__name__)

PAGE_SPANS = 256  # extents fetched past a lookup, for the next reads
MAX_CACHED_SPANS = 1 << 16  # bound of the in-memory extent pages
MIN_WINDOW = 1 << 20
REFRESH_AFTER_MISS = 5.0  # seconds between refreshes triggered by unknown backup ids


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


@dataclasses.dataclass
class _Stream:
    next_offset: int = -1
    window: int = 0
    ahead_until: int = 0  # read-ahead has been scheduled up to here


@dataclasses.dataclass
class ReaderStats:
    reads: int = 0
    bytes_read: int = 0
    zero_bytes: int = 0
    readahead_scheduled: int = 0
    index_lookups: int = 0


class Engine:
    """Reads backups; see the module docstring. Build with `open_engine`."""

    def __init__(self, config: Config, store: ObjectStore, bridge: Bridge, index: Index,
                 cache: ChunkCache, nursery: trio.Nursery) -> None:
        self.config = config
        self.store = store
        self.bridge = bridge
        self.index = index
        self.cache = cache
        self.stats = ReaderStats()
        # Read-ahead lands in the memory layer; a window larger than half of it would evict
        # what was fetched ahead before the reader gets there.
        self.readahead_max = min(config.cache.readahead_max,
                                 max(config.cache.memory_size // 2, MIN_WINDOW))
        self._nursery = nursery
        self._pages = _Pages()
        self._records: dict[str, BackupRecord] = {}
        self._streams: dict[tuple[str, object], _Stream] = {}
        self._ahead_bytes = 0
        self._ahead_keys: set[str] = set()
        self._refresh_lock = trio.Lock()
        self.last_refresh = float("-inf")  # monotonic time the index was last listed

    # -- catalog ---------------------------------------------------------------------------

    async def refresh(self) -> catalog.RefreshResult:
        """Bring the index in step with the store (one at a time)."""
        async with self._refresh_lock:
            result = await catalog.refresh(self.store, self.index, self.bridge)
            self.last_refresh = time.monotonic()
            self._pages.clear()
            self._records.clear()
            return result

    async def rebuild(self) -> catalog.RefreshResult:
        """Recreate the index's contents from nothing (after finding it corrupt). The
        environment stays open: other tasks may be inside a lookup in another thread."""
        async with self._refresh_lock:
            await self.bridge.run_index(self.index.clear)
            self.index.rebuilt = "it held an impossible row"
        return await self.refresh()

    async def backup(self, backup_id: str) -> BackupRecord:
        """The catalog record of a readable backup; refreshes the index once if unknown."""
        record = self._records.get(backup_id)
        if record is not None:
            return record
        record = await self.bridge.run_index(self.index.get_backup, backup_id)
        if record is None and time.monotonic() - self.last_refresh > REFRESH_AFTER_MISS:
            await self.refresh()
            record = await self.bridge.run_index(self.index.get_backup, backup_id)
        if record is None:
            raise BackupNotFound(f"no complete backup {backup_id} in {self.store.description}")
        if record.status != "ok":
            raise BackupNotFound(f"backup {backup_id} cannot be read: "
                                 f"{record.error or record.status}")
        self._records[backup_id] = record
        return record

    async def list_backups(self, volume_id: str | None = None) -> list[BackupRecord]:
        return await self.bridge.run_index(self.index.list_backups, volume_id)

    # -- extents ---------------------------------------------------------------------------

    async def spans(self, backup_id: str, offset: int, end: int) -> list[Span]:
        """The spans serving [offset, end), clipped; end must be within the volume."""
        out: list[Span] = []
        position = offset
        while position < end:
            page = self._pages.find(backup_id, position)
            if page is None:
                page = self._pages.add(
                    backup_id, await self._lookup(backup_id, position, end - position))
            starts, page_spans = page
            i = max(bisect.bisect_right(starts, position) - 1, 0)
            before = position
            for span in page_spans[i:]:
                if span.end <= position:
                    continue
                if span.offset >= end:
                    break
                out.append(span.clip(position, end))
                position = out[-1].end
            if position == before:
                raise IndexCorrupt(f"backup {backup_id}: no extent covers offset {position}")
        return out

    async def _lookup(self, backup_id: str, offset: int, size: int) -> list[Span]:
        self.stats.index_lookups += 1
        try:
            _record, spans = await self.bridge.run_index(self.index.lookup, backup_id,
                                                         offset, size, PAGE_SPANS)
        except IndexCorrupt as exc:
            log.error("index: %s; rebuilding it", exc)
            await self.rebuild()
            _record, spans = await self.bridge.run_index(self.index.lookup, backup_id,
                                                         offset, size, PAGE_SPANS)
        return spans

    # -- reading ---------------------------------------------------------------------------

    async def read(self, backup_id: str, offset: int, size: int,
                   stream: object = None) -> bytes:
        """Bytes [offset, offset + size) of the backup's volume, short at its end."""
        parts = await self.read_parts(backup_id, offset, size, stream)
        if len(parts) == 1:
            return bytes(parts[0])
        return b"".join(bytes(p) if isinstance(p, int) else p for p in parts)

    async def read_parts(self, backup_id: str, offset: int, size: int,
                         stream: object = None) -> list[memoryview | int]:
        """[offset, offset + size) of the volume as consecutive parts: views of verified data
        (not copied when in memory) and, as ints, lengths of zeros (holes, zero objects)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        record = await self.backup(backup_id)
        end = min(offset + size, record.size)
        if offset >= end:
            return []
        spans = await self.spans(backup_id, offset, end)
        self._note_access(record, stream, offset, end)
        parts: list[memoryview | int] = []
        jobs: list[tuple[int, Span]] = []
        for i, span in enumerate(spans):
            if span.kind == KIND_DATA:
                jobs.append((i, span))
                parts.append(0)
            else:
                parts.append(span.length)
                self.stats.zero_bytes += span.length
        if len(jobs) == 1:
            i, span = jobs[0]
            parts[i] = await self._piece(span)
        elif jobs:
            await _gather([self._filler(parts, i, span) for i, span in jobs])
        self.stats.reads += 1
        self.stats.bytes_read += end - offset
        return parts

    async def _piece(self, span: Span) -> memoryview:
        assert span.obj is not None
        return await self.cache.view(span.obj, span.object_offset,
                                     span.object_offset + span.length)

    def _filler(self, parts: list[memoryview | int], i: int,
                span: Span) -> Callable[[], Awaitable[None]]:
        async def fill() -> None:
            parts[i] = await self._piece(span)
        return fill

    # -- read-ahead ------------------------------------------------------------------------

    def _note_access(self, record: BackupRecord, stream: object, offset: int,
                     end: int) -> None:
        key = (record.backup_id, stream)
        state = self._streams.get(key)
        if state is None:
            if len(self._streams) > 1024:
                self._streams.clear()
            state = self._streams[key] = _Stream()
        if self.readahead_max <= 0:
            return
        if offset == state.next_offset:
            state.window = min(max(state.window * 2, 2 * (end - offset), MIN_WINDOW),
                               self.readahead_max)
        else:
            state.window = 0
            state.ahead_until = 0
        state.next_offset = end
        if not state.window:
            return
        start = max(end, state.ahead_until)
        stop = min(end + state.window, record.size)
        if start < stop:
            state.ahead_until = stop
            self._nursery.start_soon(self._read_ahead, record.backup_id, state, start, stop)

    async def _read_ahead(self, backup_id: str, state: _Stream, start: int, stop: int) -> None:
        try:
            spans = await self.spans(backup_id, start, stop)
        except BakfsError:
            return
        seen: set[str] = set()
        for span in spans:
            obj = span.obj
            if span.kind != KIND_DATA or obj is None or obj.cache_key in seen:
                continue
            seen.add(obj.cache_key)
            if self.cache.has(obj) or obj.cache_key in self._ahead_keys:
                continue
            if self._ahead_bytes + obj.length > self.readahead_max:
                # Over budget: the next sequential read schedules the rest.
                state.ahead_until = min(state.ahead_until, span.offset)
                return
            self._ahead_bytes += obj.length
            self._ahead_keys.add(obj.cache_key)
            self.stats.readahead_scheduled += 1
            self._nursery.start_soon(self._fetch_ahead, obj)

    async def _fetch_ahead(self, obj: ObjectEntry) -> None:
        try:
            await self.cache.prefetch(obj)
        finally:
            self._ahead_bytes -= obj.length
            self._ahead_keys.discard(obj.cache_key)


async def _gather(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run the jobs concurrently; if any fails, raise the first BakfsError as itself (not in
    an exception group) once all have ended."""
    errors: list[BaseException] = []

    async def guarded(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except BakfsError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(guarded, job)
    if errors:
        raise errors[0]


@contextlib.asynccontextmanager
async def open_engine(config: Config, store: ObjectStore | None = None, *,
                      refresh: bool = False) -> AsyncIterator[Engine]:
    """The whole read engine for `config`; `store` replaces the configured one (tests).
    The index is refreshed at start when asked, or when it was just (re)created."""
    bridge = Bridge.from_config(config)
    own_store = store is None
    if store is None:
        from bakfs.store import open_store

        store = await bridge.run_s3(open_store, config)
    try:
        index = await catalog.open_index(config.index.path, bridge)
        try:
            with plain_errors():
                async with (
                    ChunkCache.open(Path(config.cache.path), store, bridge,
                                    max_size=config.cache.max_size,
                                    memory_size=config.cache.memory_size) as cache,
                    trio.open_nursery() as nursery,
                ):
                    engine = Engine(config, store, bridge, index, cache, nursery)
                    if refresh or index.rebuilt:
                        await engine.refresh()
                    try:
                        yield engine
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await bridge.run_index(index.close)
    finally:
        if own_store:
            store.close()
