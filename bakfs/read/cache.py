"""The chunk cache: verified, decompressed data objects, fetched once however many readers want
them, kept on disk (bounded, LRU, surviving restarts) with a small in-memory layer on top.

Protocol (docs/read-engine.md has the long form):

* Entries are content-addressed, `<md5>-<length>` of the plain data, so equal objects of
  different backups share one entry. Nothing enters the cache before its length and md5
  were checked against the metadata; a failed check is an error naming the object.
* Single flight: `_flights[key]` is the fetch of `key` in progress. A second reader waits
  on its event and takes the fetcher's bytes (or its error); if the fetcher was cancelled,
  a waiter starts its own fetch. State is re-checked after every await.
* Disk fill: the file is written under `tmp/`, fsynced, renamed to `objects/xx/<key>`, and
  only then recorded in this cache's own LMDB (`lru/`: key -> size, last-use tick). On open
  the directory and the LMDB are reconciled: a file without a record (crash after the rename)
  is deleted, a record without a file (crash before it) is dropped, `tmp/` is emptied.
* Size bound: `_used` counts the bytes of every file present plus every reservation of a
  write in progress, and is only raised (reservation) after eviction has unlinked enough
  victims, under `_room`, one lock held for the eviction step only. So the bytes in
  `objects/` and `tmp/` never exceed `max_size`, whatever the number of readers. An
  object larger than the bound is served but not kept.
* LRU: the in-memory mirror (`_disk`, oldest first) is the order; last-use ticks of hits are
  written to LMDB in batches, so a restart keeps a close approximation of it.
* Damage is never served: each file carries a crc32 of every 64 KiB block
  (`bakfs.read.cachefile`), and every read from disk checks the blocks it touches. A file
  that fails is deleted, logged, and the object fetched again, whether a bit flipped while
  bakfs ran or the file changed while it did not.
* Scan resistance: a fetch made for a sequential stream (`keep=False`: `dd`, a restore, their
  read-ahead) lands in the memory layer only, not on disk, unless `cache.keep_sequential`;
  a full read of a large volume would otherwise evict every hot object for bytes it reads
  once, and pay a disk write per object.

* md5: an object a reader waits for is checked in its fetch thread; a read-ahead object's
  check goes in a batch with other objects' (bakfs.store.md5batch, SIMD lanes), and its
  bytes are used only once the batch says they match.

Async, over `bakfs.threads`: store GETs and their decoding in s3 threads, md5 batches in cpu
threads, files in disk threads, the LMDB bookkeeping in index threads. Knows nothing of FUSE
or of the chunk index's schema; it sees an object only as an `ObjectEntry`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import resource
import shutil
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import lmdb
import trio

from bakfs.cinder import md5lanes
from bakfs.cinder.metadata import ObjectEntry
from bakfs.errors import BakfsError, CacheDamaged
from bakfs.read import cachefile
from bakfs.store.base import ObjectStore
from bakfs.store.decode import check_md5, fetch_counted, fetch_unchecked
from bakfs.store.md5batch import Job, Md5Batches
from bakfs.threads import Bridge, plain_errors

log = logging.getLogger(__name__)

Plain = bytes | bytearray  # an object's verified plain bytes (never changed once made)

_ENTRY = struct.Struct(">QQ")  # size on disk, last-use tick
FORMAT = b"bakfs-cache-2"  # 2: files carry block checksums (cachefile)
TOUCH_BATCH = 256
# cache files kept open for non-blocking page-cache reads: a quarter of the fd limit
MAX_FDS = max(32, min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))
NOWAIT_MAX = 256 << 10  # larger reads copy too long for the trio thread: a disk thread reads
WRITE_BACKLOG = 32 << 20  # bytes of disk writes left to run in the background
# A read-ahead object's md5 check waits at most this long for company (a reader's wait
# starts it at once): the objects a stream reads next are checked side by side. With 48 MiB
# of read-ahead a cold dd hashed 6.3 objects a batch at 40 ms against 4.8 at 20 ms, for 7 %
# less CPU (AMD EPYC, three pairs); with 32 MiB, 50 ms had been slower than 20.
CHECK_LINGER = 0.04


@dataclasses.dataclass
class CacheStats:
    fetches: int = 0  # objects GET from the store
    fetched_bytes: int = 0  # stored (compressed) bytes of those
    memory_hits: int = 0
    disk_hits: int = 0
    joined: int = 0  # reads that waited for another reader's fetch
    disk_writes: int = 0
    evictions: int = 0
    damaged: int = 0  # cache files whose bytes failed their checksum


class _Flight:
    __slots__ = ("check", "data", "error", "event", "wanted")

    def __init__(self, wanted: bool) -> None:
        self.event = trio.Event()
        self.data: Plain | None = None
        self.error: BakfsError | None = None
        self.wanted = wanted  # a reader waits for it (not only read-ahead)
        self.check: Job | None = None  # its md5, while queued in a batch


class ChunkCache:
    """Open with `async with ChunkCache.open(...) as cache`."""

    def __init__(self, path: Path, store: ObjectStore, bridge: Bridge, max_size: int,
                 memory_size: int, env: lmdb.Environment | None,
                 entries: list[tuple[str, int]], nursery: trio.Nursery,
                 keep_sequential: bool = False) -> None:
        self.path = path
        self.store = store
        self.bridge = bridge
        self.max_size = max_size
        self.memory_size = memory_size
        self.keep_sequential = keep_sequential
        self.stats = CacheStats()
        self._env = env
        self._db = env.open_db(b"entries") if env is not None else None
        self._nursery = nursery
        self._memory: collections.OrderedDict[str, Plain] = collections.OrderedDict()
        self._memory_used = 0
        self._disk: collections.OrderedDict[str, int] = collections.OrderedDict(entries)
        # Which disk entry of a key a reader saw: a read that fails after an await forgets
        # that entry only, not a newer one written under the same key meanwhile (forgetting
        # it would drop its bytes from `_used` while its file stays: the bound would break).
        self._entry_numbers = itertools.count(1)
        self._entry: dict[str, int] = {key: next(self._entry_numbers) for key in self._disk}
        self._used = sum(self._disk.values())
        self._writing: set[str] = set()
        self._pending: dict[str, Plain] = {}  # verified bytes waiting for their disk write
        self._fds: collections.OrderedDict[str, cachefile.Reader] = collections.OrderedDict()
        self._backlog = 0
        self._settled = trio.Event()
        self._settled.set()
        self._room = trio.Lock()
        self._flights: dict[str, _Flight] = {}
        # md5 checks in batches over SIMD lanes, when there are lanes (bakfs.store.md5batch)
        self._checks = (Md5Batches(bridge, nursery, linger=CHECK_LINGER)
                        if md5lanes.LANES > 1 else None)
        self._touches: dict[str, int] = {}
        self._tick = 0

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str | Path, store: ObjectStore, bridge: Bridge, *,
                   max_size: int, memory_size: int,
                   keep_sequential: bool = False) -> AsyncIterator[ChunkCache]:
        path = Path(path)
        env, entries, tick = (None, [], 0)
        cache: ChunkCache | None = None
        if max_size > 0:
            env, entries, tick = await bridge.run_disk(_open_disk, path, max_size)
        try:
            with plain_errors():
                async with trio.open_nursery() as nursery:
                    cache = cls(path, store, bridge, max_size, memory_size, env,
                                [(k, s) for k, s, _t in entries], nursery, keep_sequential)
                    cache._tick = tick
                    yield cache
            # the nursery has waited for the background disk writes
        finally:
            if cache is not None:
                cache._close_fds()
            if env is not None:
                with trio.CancelScope(shield=True):
                    if cache is not None:
                        await bridge.run_index(cache._flush_touches_sync,
                                               dict(cache._touches))
                    await bridge.run_index(env.close)

    async def settle(self) -> None:
        """Wait until the disk writes running in the background have ended."""
        while not self._settled.is_set():
            await self._settled.wait()

    # -- reading ---------------------------------------------------------------------------

    def has(self, obj: ObjectEntry) -> bool:
        """Whether reading `obj` needs no new fetch (cached or being fetched)."""
        key = obj.cache_key
        return (key in self._memory or key in self._disk or key in self._flights
                or key in self._pending)

    async def view(self, obj: ObjectEntry, start: int, end: int,
                   keep: bool = True) -> memoryview:
        """[start, end) of the object's verified plain data, without copying it when it is
        in memory. `keep=False`: a fetch it needs is not kept on disk (a sequential
        stream's; see the module docstring)."""
        key = obj.cache_key
        data = self._memory_get(key)
        if data is None and key in self._disk and key not in self._flights:
            entry = self._entry.get(key)
            try:
                part = self._read_nowait(key, start, end)
                if part is None:
                    part, reader = await self.bridge.run_disk(self._pread, key, obj.length,
                                                              start, end)
                    if reader is not None:
                        self._keep_reader(key, reader)
            except CacheDamaged as exc:
                await self._drop_damaged(key, entry, exc)
                part = None
            if part is not None:
                self.stats.disk_hits += 1
                self._touch(key)
                return part
            self._forget_disk(key, entry)
        if data is None:
            data = await self.get(obj, keep)
        return memoryview(data)[start:end]

    async def get(self, obj: ObjectEntry, keep: bool = True, wanted: bool = True) -> Plain:
        """The object's whole verified plain data, fetched at most once at a time.
        `wanted=False`: nobody waits for it yet (read-ahead), so its md5 check may wait for
        company (bakfs.store.md5batch)."""
        key = obj.cache_key
        while True:
            data = self._memory_get(key)
            if data is not None:
                return data
            flight = self._flights.get(key)
            if flight is not None:
                self.stats.joined += 1
                if wanted and not flight.wanted:
                    flight.wanted = True
                    if self._checks is not None:
                        self._checks.hurry(flight.check)
                await flight.event.wait()
                if flight.data is not None:
                    return flight.data
                if flight.error is not None:
                    raise flight.error
                continue  # the fetcher was cancelled: try again
            if key in self._disk:
                entry = self._entry.get(key)
                try:
                    data = await self.bridge.run_disk(self._read_file, key, obj.length)
                except CacheDamaged as exc:
                    await self._drop_damaged(key, entry, exc)
                    data = None
                if data is not None:
                    self.stats.disk_hits += 1
                    self._touch(key)
                    self._memory_put(key, data)
                    return data
                self._forget_disk(key, entry)
                continue  # state may have changed during the await
            return await self._fetch(obj, key, keep, wanted)

    async def prefetch(self, obj: ObjectEntry, keep: bool = True) -> None:
        """Make sure the object is cached (read-ahead); errors surface on the real read."""
        if self.has(obj):
            return
        with contextlib.suppress(BakfsError):
            await self.get(obj, keep, wanted=False)

    async def _fetch(self, obj: ObjectEntry, key: str, keep: bool, wanted: bool) -> Plain:
        flight = _Flight(wanted)
        self._flights[key] = flight
        try:
            # One thread receives and decodes as the bytes arrive, and checks the md5 when a
            # reader waits for it; a read-ahead object's check goes in a batch with others'
            # (bakfs.store.md5batch), where it waits for company.
            checks = None if wanted else self._checks
            fetch = fetch_counted if checks is None else fetch_unchecked
            data, stored = await self.bridge.run_s3(fetch, self.store, obj)
            self.stats.fetches += 1
            self.stats.fetched_bytes += stored
            if checks is not None:
                flight.check = checks.queue([data], urgent=flight.wanted)
                check_md5((await checks.wait(flight.check))[0], obj)
        except BakfsError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.event.set()
        flight.data = data
        self._memory_put(key, data)
        if keep or self.keep_sequential:
            await self._keep(key, data)
        return data

    # -- memory layer ----------------------------------------------------------------------

    def _memory_get(self, key: str) -> Plain | None:
        data = self._memory.get(key)
        if data is None:
            data = self._pending.get(key)
            if data is not None:
                self.stats.memory_hits += 1
            return data
        if data is not None:
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
            if key in self._disk:
                self._touch(key)
        return data

    def _memory_put(self, key: str, data: Plain) -> None:
        if len(data) > self.memory_size or key in self._memory:
            return
        self._memory[key] = data
        self._memory_used += len(data)
        while self._memory_used > self.memory_size:
            _old, dropped = self._memory.popitem(last=False)
            self._memory_used -= len(dropped)

    # -- disk layer ------------------------------------------------------------------------

    def _file(self, key: str) -> Path:
        return self.path / "objects" / key[:2] / key

    def _pread(self, key: str, length: int, start: int,
               end: int) -> tuple[memoryview | None, cachefile.Reader | None]:
        """(checked bytes, the open reader for the fd cache) in a disk thread."""
        reader = cachefile.Reader.open(self._file(key), length)
        if reader is None:
            return None, None
        try:
            return reader.read(start, end), reader
        except BaseException:
            reader.close()
            raise

    def _read_nowait(self, key: str, start: int, end: int) -> memoryview | None:
        """The range from the page cache without blocking, on the trio thread: a
        `preadv(RWF_NOWAIT)` on a file kept open by an earlier disk hit either copies
        pages already in memory or fails at once (then a disk thread reads). This saves the
        thread hop (50-200 us on this VM) on hot cached reads."""
        reader = self._fds.get(key)
        if reader is None or end - start > NOWAIT_MAX:
            return None
        self._fds.move_to_end(key)
        try:
            return reader.read_nowait(start, end)
        except OSError:
            self._close_fd(key)
            return None

    def _keep_reader(self, key: str, reader: cachefile.Reader) -> None:
        """Keep a cache file open for non-blocking reads (trio thread only: only this
        thread uses and closes these readers, so none is closed under a read)."""
        if key not in self._disk or key in self._fds:
            reader.close()
            return
        self._fds[key] = reader
        while len(self._fds) > MAX_FDS:
            _old, old = self._fds.popitem(last=False)
            old.close()

    def _close_fd(self, key: str) -> None:
        reader = self._fds.pop(key, None)
        if reader is not None:
            reader.close()

    def _close_fds(self) -> None:
        while self._fds:
            _key, reader = self._fds.popitem()
            reader.close()

    def _read_file(self, key: str, length: int) -> bytes | None:
        reader = cachefile.Reader.open(self._file(key), length)
        if reader is None:
            return None
        try:
            return bytes(reader.read(0, length))
        finally:
            reader.close()

    async def _drop_damaged(self, key: str, entry: int | None, why: CacheDamaged) -> None:
        """A cache file that fails its checksum: deleted, its object fetched again."""
        size = self._disk.get(key)
        if size is None or self._entry.get(key) != entry:
            return
        log.warning("chunk cache: %s; deleted, the object is fetched again", why)
        self.stats.damaged += 1
        # the file goes while its entry stands, so no new file of this key is written (and
        # then deleted) meanwhile
        self._close_fd(key)
        await self.bridge.run_disk(self._remove_sync, [(key, size)])
        await self.bridge.run_index(self._unrecord_sync, [(key, size)])
        self._forget_disk(key, entry)

    def _forget_disk(self, key: str, entry: int | None = None) -> None:
        """Drop the disk entry of `key` (only if it is still `entry`, when given)."""
        if entry is not None and self._entry.get(key) != entry:
            return
        self._close_fd(key)
        self._entry.pop(key, None)
        size = self._disk.pop(key, None)
        if size is not None:
            self._used -= size

    def _touch(self, key: str) -> None:
        if self._env is None or key not in self._disk:
            return
        self._disk.move_to_end(key)
        self._tick += 1
        self._touches[key] = self._tick
        if len(self._touches) >= TOUCH_BATCH:
            touches, self._touches = self._touches, {}
            self._nursery.start_soon(self.bridge.run_index, self._flush_touches_sync, touches)

    def _flush_touches_sync(self, touches: dict[str, int]) -> None:
        assert self._env is not None
        with self._env.begin(write=True) as txn:
            for key, tick in touches.items():
                raw = txn.get(key.encode(), db=self._db)
                if raw is not None:
                    size, _old = _ENTRY.unpack(raw)
                    txn.put(key.encode(), _ENTRY.pack(size, tick), db=self._db)

    async def _keep(self, key: str, data: Plain) -> None:
        """Write a verified object to disk, in the background while the backlog is small."""
        if self._env is None or cachefile.file_size(len(data)) > self.max_size \
                or key in self._disk or key in self._writing:
            return
        if self._backlog + len(data) > WRITE_BACKLOG:
            await self._write(key, data)
            return
        self._backlog += len(data)
        self._writing.add(key)
        self._pending[key] = data
        if self._settled.is_set():
            self._settled = trio.Event()

        async def background() -> None:
            try:
                await self._write(key, data)
            finally:
                self._backlog -= len(data)
                self._pending.pop(key, None)
                if not self._pending:
                    self._settled.set()

        self._nursery.start_soon(background)

    async def _write(self, key: str, data: Plain) -> None:
        size = cachefile.file_size(len(data))
        self._writing.add(key)
        try:
            async with self._room:
                if key in self._disk:
                    return
                victims: list[tuple[str, int]] = []
                freed = 0
                while self._used - freed + size > self.max_size and self._disk:
                    victim = next(iter(self._disk))
                    victims.append((victim, self._disk.pop(victim)))
                    self._entry.pop(victim, None)
                    self._close_fd(victim)  # its space is freed when the file goes
                    freed += victims[-1][1]
                if victims:
                    # `_used` still counts the victims until their files are gone.
                    try:
                        await self.bridge.run_index(self._unrecord_sync, victims)
                        await self.bridge.run_disk(self._remove_sync, victims)
                    finally:
                        self._used -= freed
                    self.stats.evictions += len(victims)
                if self._used + size > self.max_size:
                    return  # the rest is reserved by writes in progress: skip this one
                self._used += size
            try:
                await self.bridge.run_disk(self._write_sync, key, data)
                self._tick += 1
                await self.bridge.run_index(self._record_sync, key, size, self._tick)
            except (OSError, lmdb.Error) as exc:
                self._used -= size
                await self.bridge.run_disk(self._remove_sync, [(key, size)])
                log.warning("chunk cache: cannot keep %s: %s", key, exc)
                return
            self._disk[key] = size
            self._entry[key] = next(self._entry_numbers)
            self.stats.disk_writes += 1
        finally:
            self._writing.discard(key)

    def _write_sync(self, key: str, data: Plain) -> None:
        target = self._file(key)
        temp = self.path / "tmp" / f"{key}.{uuid.uuid4().hex[:8]}"
        try:
            cachefile.write(temp, data)
            target.parent.mkdir(exist_ok=True)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _record_sync(self, key: str, size: int, tick: int) -> None:
        assert self._env is not None
        with self._env.begin(write=True) as txn:
            txn.put(key.encode(), _ENTRY.pack(size, tick), db=self._db)

    def _unrecord_sync(self, victims: list[tuple[str, int]]) -> None:
        assert self._env is not None
        with self._env.begin(write=True) as txn:
            for key, _size in victims:
                txn.delete(key.encode(), db=self._db)

    def _remove_sync(self, victims: list[tuple[str, int]]) -> None:
        for key, _size in victims:
            self._file(key).unlink(missing_ok=True)

    async def disk_usage(self) -> int:
        """Bytes of cached object files on disk (for tests and stats). Measured while no
        eviction or reservation can run: a walk of the directories is not atomic, and one
        that saw an evicted file before a new one appeared would count both. Files only
        appear for reservations already made, and a file renamed from `tmp/` while it is
        walked is counted once (by inode)."""
        async with self._room:
            return await self.bridge.run_disk(self._disk_usage_sync)

    def _disk_usage_sync(self) -> int:
        seen: dict[int, int] = {}
        for sub in ("tmp", "objects"):
            for root, _dirs, files in os.walk(self.path / sub):
                for name in files:
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(os.path.join(root, name))
                        seen[st.st_ino] = st.st_size
        return sum(seen.values())


def _open_disk(path: Path, max_size: int
               ) -> tuple[lmdb.Environment, list[tuple[str, int, int]], int]:
    """Open the bookkeeping, reconcile it with the files, trim to `max_size`. Returns the env,
    the entries oldest first and the highest tick."""
    try:
        return _open_disk_once(path, max_size)
    except lmdb.Error as exc:
        log.warning("chunk cache %s is damaged (%s); starting it empty", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return _open_disk_once(path, max_size)


def _open_disk_once(path: Path, max_size: int
                    ) -> tuple[lmdb.Environment, list[tuple[str, int, int]], int]:
    env = _open_lru(path)
    if env is None:  # another format (or none): a cache is only a cache
        log.info("chunk cache %s: not of format %s; starting it empty", path, FORMAT.decode())
        shutil.rmtree(path, ignore_errors=True)
        env = _open_lru(path)
        assert env is not None
    (path / "objects").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path / "tmp", ignore_errors=True)
    (path / "tmp").mkdir()
    db = env.open_db(b"entries")
    files: dict[str, int] = {}
    for sub in (path / "objects").iterdir():
        if not sub.is_dir():
            sub.unlink()
            continue
        for entry in os.scandir(sub):
            if entry.name[:2] == sub.name and entry.is_file():
                files[entry.name] = entry.stat().st_size
            else:  # not where the cache puts it: nothing of ours
                shutil.rmtree(entry.path) if entry.is_dir() else os.unlink(entry.path)
    entries: list[tuple[str, int, int]] = []
    drop: list[bytes] = []
    with env.begin() as txn:
        for raw_key, raw in txn.cursor(db=db):
            key = bytes(raw_key).decode()
            try:
                size, tick = _ENTRY.unpack(raw)
            except struct.error:
                drop.append(bytes(raw_key))
                continue
            if files.get(key) == size:
                entries.append((key, size, tick))
            else:
                drop.append(bytes(raw_key))
    known = {k for k, _s, _t in entries}
    for name in files:
        if name not in known:  # a crash between rename and record, or a damaged record
            (path / "objects" / name[:2] / name).unlink(missing_ok=True)
    entries.sort(key=lambda e: e[2])
    used = sum(s for _k, s, _t in entries)
    while entries and used > max_size:  # the bound shrank since the last run
        key, size, _tick = entries.pop(0)
        drop.append(key.encode())
        (path / "objects" / key[:2] / key).unlink(missing_ok=True)
        used -= size
    if drop:
        with env.begin(write=True) as txn:
            for raw_key in drop:
                txn.delete(raw_key, db=db)
    tick = max((t for _k, _s, t in entries), default=0)
    return env, entries, tick


def _open_lru(path: Path) -> lmdb.Environment | None:
    """The bookkeeping LMDB, marked with FORMAT when new; None if it holds another format."""
    path.mkdir(parents=True, exist_ok=True)
    fresh = not (path / "lru").exists()
    env = lmdb.open(str(path / "lru"), map_size=1 << 34, max_dbs=3, subdir=True)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        mark = txn.get(b"format", db=meta)
        if mark is None and fresh:
            txn.put(b"format", FORMAT, db=meta)
            mark = FORMAT
    if mark != FORMAT:
        env.close()
        return None
    return env
