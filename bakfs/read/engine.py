"""The read engine: `await engine.read(record, offset, size)` returns exactly those bytes of a
backup's volume (its whole incremental chain resolved), or raises an error that names the
object at fault. It never returns bytes that failed their length or md5 check.

Pieces: the catalogue (`bakfs.catalog.front`) says which object serves which range; the
chunk cache (`bakfs.read.cache`) turns an object into verified bytes, fetching it once; holes
and all-zero objects are zero-filled without a fetch; `bakfs.read.readahead` fetches ahead
of sequential readers. A read is given the backup's record (from the catalogue or the
mount's tree), so it never turns into a listing of the store.

`open_engine(config)` builds the whole engine (store, threads, catalogue, cache, read-ahead).

Async, on trio; every blocking call goes through `bakfs.threads`. Knows nothing of inodes,
FUSE or `EntryAttributes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from bakfs.catalog.front import Catalog, open_catalog
from bakfs.catalog.index import KIND_DATA, BackupRecord, Span
from bakfs.config import Config
from bakfs.errors import BakfsError
from bakfs.read.cache import ChunkCache
from bakfs.read.readahead import MIN_WINDOW, ReadAhead, readahead_share
from bakfs.store import open_store, store_identity
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge, plain_errors

log = logging.getLogger(__name__)

_ZEROS = bytes(1 << 20)  # zero parts of a read come from here, not a fresh allocation


@dataclasses.dataclass
class ReaderStats:
    reads: int = 0
    bytes_read: int = 0
    zero_bytes: int = 0


class Engine:
    """Reads backups; see the module docstring. Build with `open_engine`."""

    def __init__(self, config: Config, catalog: Catalog, cache: ChunkCache,
                 nursery: trio.Nursery) -> None:
        self.config = config
        self.catalog = catalog
        self.store = catalog.store
        self.bridge = catalog.bridge
        self.cache = cache
        self.stats = ReaderStats()
        self.readahead = ReadAhead(
            cache, nursery,
            min(config.cache.readahead_max, max(readahead_share(config.cache.memory_size),
                                                 MIN_WINDOW)),
            catalog.spans)

    async def read(self, record: BackupRecord, offset: int, size: int,
                   stream: object = None) -> bytes | memoryview:
        """Bytes [offset, offset + size) of the backup's volume, short at its end: a view of
        the cached object when one part serves it all (no copy), else joined bytes."""
        parts = [_zeros(p) if isinstance(p, int) else p
                 for p in await self.read_parts(record, offset, size, stream)]
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    async def skip_zeros(self, record: BackupRecord, offset: int, stream: object = None,
                         align: int = 1) -> int:
        """Step `stream` over the zeros from `offset` on (holes, all-zero objects), in whole
        multiples of `align` unless they reach the volume's end; the bytes stepped over.
        Nothing is fetched, and the stream's read-ahead carries on past them."""
        run = await self.catalog.zeros_at(record, offset)
        if offset + run < record.size:
            run -= run % align
        if run:
            self.readahead.skip(record, stream, offset, offset + run)
            self.stats.zero_bytes += run
        return run

    async def read_parts(self, record: BackupRecord, offset: int, size: int,
                         stream: object = None) -> list[memoryview | int]:
        """[offset, offset + size) of the volume as consecutive parts: views of verified data
        (not copied when in memory) and, as ints, lengths of zeros (holes, zero objects)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, record.size)
        if offset >= end:
            return []
        spans = await self.catalog.spans(record, offset, end)
        keep = not self.readahead.note(record, stream, offset, end)  # scans skip the disk
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
            parts[i] = await self._piece(span, keep)
        elif jobs:
            await _gather([self._filler(parts, i, span, keep) for i, span in jobs])
        self.stats.reads += 1
        self.stats.bytes_read += end - offset
        return parts

    async def _piece(self, span: Span, keep: bool) -> memoryview:
        assert span.obj is not None
        return await self.cache.view(span.obj, span.object_offset,
                                     span.object_offset + span.length, keep)

    def _filler(self, parts: list[memoryview | int], i: int, span: Span,
                keep: bool) -> Callable[[], Awaitable[None]]:
        async def fill() -> None:
            parts[i] = await self._piece(span, keep)
        return fill


def _zeros(length: int) -> memoryview | bytes:
    return memoryview(_ZEROS)[:length] if length <= len(_ZEROS) else bytes(length)


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
                      refresh: bool = False, fill: bool = True) -> AsyncIterator[Engine]:
    """The whole read engine for `config`; `store` replaces the configured one (tests, and
    the mount, which opens its store in the background). The index is refreshed at start
    when asked, or when it was just (re)created and `fill` is true (a command that reads
    one backup passes false: `catalog.find` indexes what that backup needs)."""
    bridge = Bridge.from_config(config)
    own_store = store is None
    if store is None:
        store = await bridge.run_s3(open_store, config)
    try:
        async with open_catalog(config.index.path, store, bridge, refresh=refresh,
                                identity=store_identity(config), fill=fill) as catalog:
            with plain_errors():
                async with (
                    ChunkCache.open(Path(config.cache.path), store, bridge,
                                    max_size=config.cache.max_size,
                                    memory_size=config.cache.memory_size,
                                    keep_sequential=config.cache.keep_sequential) as cache,
                    trio.open_nursery() as nursery,
                ):
                    engine = Engine(config, catalog, cache, nursery)
                    try:
                        yield engine
                    finally:
                        nursery.cancel_scope.cancel()
    finally:
        if own_store:
            store.close()
