"""The backup engine: a streaming sink that takes a volume's bytes in order and makes one
Cinder-format backup of them, full or incremental.

Pipeline, per object-size window: hash its blocks, compare with the parent's hashes, cut
changed runs, compress and md5 each (a CPU worker thread), then number the objects in volume
order and upload them (S3 worker threads, N wide). A semaphore bounds the windows in flight,
so memory stays flat whatever the volume size and a fast writer waits for a slow store. A
hole of the source (`write_hole`: whole windows known to be zeros) is neither read, hashed
nor compressed: its blocks get the zero block's digest and its objects (every window for a
full backup; the runs the parent had as non-zero for an incremental) are one cached
compressed body, uploaded N wide. The block digests go to a spill file and the objects into
a packed table, and both documents are streamed to the store, so a 16 TiB volume costs no
more memory than a small one.
Commit order: data objects, then `_sha256file`, then `_metadata` (the commit point). A
failed or aborted backup writes no `_metadata`, so it is never listed; what it uploaded is
removed on a clean abort, and left for `bakfs gc` after a crash.

Window tasks never raise into the caller's nursery: the first error is kept and raised from
the next `write` or from `commit`, so a failing backup cannot take a mount down with it.
Blocking calls (store, hashing, compression) run in worker threads through `bakfs.threads`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterable, Callable

import trio

from bakfs.backup.plan import BackupPlan
from bakfs.backup.source import Hole
from bakfs.backup.window import (
    PreparedObject,
    hole_runs,
    prepare_window,
    to_hash,
    with_md5s,
    zero_object,
)
from bakfs.catalog.discovery import BackupRef, fingerprint
from bakfs.catalog.leases import VolumeLease
from bakfs.cinder import md5lanes, naming
from bakfs.cinder.extents import DigestWriter, zero_digests
from bakfs.cinder.metadata import BackupMetadata, ObjectTable, backup_documents
from bakfs.config import MiB, S3Options
from bakfs.errors import BackupFailed, BakfsError, LeaseLost
from bakfs.store.base import ObjectStore
from bakfs.store.md5batch import Md5Batches
from bakfs.threads import Bridge

log = logging.getLogger(__name__)

WINDOW_MEMORY_BUDGET = 256 * MiB
LEASE_RENEW_SECONDS = 60.0
HOLE_DIGESTS = 1 << 15  # blocks of a hole handled per step (1 MiB of digests, 1 GiB of volume)
# A window's md5s wait at most this long for other windows' to share the lanes with (and no
# longer once every window is in flight).
MD5_LINGER = 0.015


@dataclasses.dataclass
class BackupStats:
    """Counters for progress reports; updated on the trio thread only."""

    bytes_read: int = 0
    bytes_changed: int = 0  # plain bytes of the objects stored
    bytes_uploaded: int = 0  # stored (compressed) bytes sent
    hole_bytes: int = 0  # of bytes_read: holes of the source, not read at all
    objects: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float | int]:
        seconds = time.monotonic() - self.started
        return {"bytes_read": self.bytes_read, "bytes_changed": self.bytes_changed,
                "bytes_uploaded": self.bytes_uploaded, "hole_bytes": self.hole_bytes,
                "objects": self.objects,
                "seconds": round(seconds, 3),
                "read_mb_per_s": round(self.bytes_read / 1e6 / seconds, 1) if seconds else 0}


def window_budget(options: S3Options) -> int:
    """Windows in flight: enough to keep every connection and core busy, few enough that a
    large object size cannot exhaust memory (each window may be held twice: plain and
    compressed)."""
    wanted = options.max_pool_connections + (os.cpu_count() or 2) + 2
    return max(2, min(wanted, WINDOW_MEMORY_BUDGET // (2 * options.object_size)))


class BackupSink:
    """Feed `write` with the volume's bytes in order, then `commit` (or `abort`).

    Create it with `await BackupSink.start(nursery, store, plan, lease, bridge)`; its worker
    tasks live in a nursery of its own inside `nursery`. After `commit`, `metadata` is the
    committed `_metadata` document.
    """

    def __init__(self, store: ObjectStore, plan: BackupPlan, lease: VolumeLease | None,
                 bridge: Bridge) -> None:
        self.store = store
        self.plan = plan
        self.lease = lease
        self.prefix = plan.prefix
        self.stats = BackupStats()
        self.metadata: BackupMetadata | None = None
        self._bridge = bridge
        self._tokens = trio.Semaphore(window_budget(plan.options))
        self._pieces: list[bytes] = []  # bytes written but not yet a whole window
        self._pending_bytes = 0
        self._window_count = 0
        self._turns: dict[int, trio.Event] = {}
        self._hashes = DigestWriter()  # every block's digest, in volume order
        self._entries = ObjectTable()  # numbered in volume order; abort removes them all
        self._uploads = trio.Semaphore(2 * plan.options.max_pool_connections)
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._finished = False
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()
        self._stopped = trio.Event()
        self._renewing = trio.Lock()  # one renewal at a time: each needs the last one's etag
        self._md5: Md5Batches | None = None  # the windows' md5s, when there are lanes

    @classmethod
    async def start(cls, nursery: trio.Nursery, store: ObjectStore, plan: BackupPlan,
                    lease: VolumeLease | None = None, bridge: Bridge | None = None
                    ) -> BackupSink:
        sink = cls(store, plan, lease,
                   bridge or Bridge.create(plan.options.max_pool_connections))
        await nursery.start(sink._supervise)
        sink._turn(0).set()
        return sink

    async def _supervise(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if md5lanes.LANES > 1:
                    self._md5 = Md5Batches(self._bridge, nursery, linger=MD5_LINGER)
                if self.lease is not None:
                    nursery.start_soon(self._renew_lease)
                task_status.started()
                await self._done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()

    async def _renew_lease(self) -> None:
        assert self.lease is not None
        while True:
            await trio.sleep(LEASE_RENEW_SECONDS)
            try:
                await self._renew_now()
            except (LeaseLost, BakfsError) as exc:
                self._fail(exc)
                return

    async def _renew_now(self) -> None:
        if self.lease is not None:
            async with self._renewing:
                await self._bridge.run_s3(self.lease.renew)

    def _turn(self, index: int) -> trio.Event:
        return self._turns.setdefault(index, trio.Event())

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.error("backup %s of volume %s failed: %s", self.plan.backup_id,
                      self.plan.volume_id, exc)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, BakfsError):
                raise BackupFailed(f"backup {self.plan.backup_id} of volume "
                                   f"{self.plan.volume_id} failed: {self._error}")
            raise BackupFailed(f"backup {self.plan.backup_id} failed: "
                               f"{type(self._error).__name__}: {self._error}")

    async def write(self, data: bytes | memoryview) -> None:
        """Take the next bytes of the volume; waits while too much is in flight."""
        if self._finished:
            raise BackupFailed("write after commit or abort")
        self._raise_if_failed()
        self.stats.bytes_read += len(data)
        size = self.plan.options.object_size
        start = 0
        if not self._pending_bytes and isinstance(data, bytes):
            # Zero-copy path: whole windows are taken as views of the caller's immutable
            # bytes (a read of object_size bytes is exactly one window).
            view = memoryview(data)
            while len(view) - start >= size:
                await self._schedule(view[start:start + size])
                start += size
            if start == len(view):
                return
            data = view[start:]
        # Pieces are kept as they came and joined once per window: one copy of each byte.
        self._pieces.append(bytes(data) if not isinstance(data, bytes) else data)
        self._pending_bytes += len(data)
        while self._pending_bytes >= size:
            joined = memoryview(b"".join(self._pieces))
            window, rest = joined[:size], bytes(joined[size:])
            self._pieces = [rest] if rest else []
            self._pending_bytes = len(rest)
            await self._schedule(window)

    async def _schedule(self, window: bytes | memoryview) -> None:
        if self._md5 is not None and self._tokens.value == 0:
            self._md5.flush()  # every window is in flight: hash what waits for company
        await self._tokens.acquire()
        self._raise_if_failed()
        index = self._window_count
        self._window_count += 1
        self._pending += 1
        self._idle = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._process, index, window)

    async def _process(self, index: int, window: bytes | memoryview) -> None:
        try:
            hashes, prepared = await self._bridge.run_cpu(
                prepare_window, window, index, self.plan.options, self.plan.parent_hashes,
                self._md5 is None)
            del window
            if self._md5 is not None:  # the md5s of many windows side by side, in lanes
                content_md5 = self.plan.options.md5_validation
                digests = await self._md5.digests(to_hash(prepared, content_md5))
                prepared = with_md5s(prepared, content_md5, digests)
            await self._turn(index).wait()
            self._hashes.append(hashes.block_range(0, len(hashes)))
            keyed = self._number(prepared)
            await self._pass_turn(index, index + 1)
            for key, item in keyed:
                await self._upload(key, item)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._fail(exc)
            self._turn(index + 1).set()  # never leave the next window waiting
        finally:
            self._tokens.release()
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def _number(self, prepared: list[PreparedObject]) -> list[tuple[str, PreparedObject]]:
        """Give objects their names, in volume order (the caller holds the turn)."""
        keyed = []
        for item in prepared:
            key = naming.object_name(self.prefix, len(self._entries) + 1)
            self._entries.add(key, item.offset, item.length, item.compression, item.md5)
            keyed.append((key, item))
        return keyed

    async def _pass_turn(self, index: int, following: int) -> None:
        """End window `index`'s turn: write out the digests when due (no other window
        appends meanwhile), then let window `following` number its objects."""
        if self._hashes.wants_flush:
            await self._bridge.run_disk(self._hashes.flush)
        self._turn(following).set()
        self._turns.pop(index, None)

    async def _upload(self, key: str, item: PreparedObject) -> None:
        await self._bridge.run_s3(
            functools.partial(self.store.put, key, item.stored, md5=item.stored_md5))
        self.stats.objects += 1
        self.stats.bytes_changed += item.length
        self.stats.bytes_uploaded += len(item.stored)

    async def write_hole(self, length: int) -> None:
        """Take the next `length` bytes of the volume as zeros without them being read: a
        hole of a sparse source. Whole windows cost no hashing and no compression."""
        if self._finished:
            raise BackupFailed("write after commit or abort")
        self._raise_if_failed()
        size = self.plan.options.object_size
        if self._pending_bytes:  # complete the window begun with data
            pad = min(length, size - self._pending_bytes)
            await self.write(bytes(pad))
            length -= pad
        windows, tail = divmod(length, size)
        batch = max(1, HOLE_DIGESTS // (size // self.plan.options.block_size))
        for first in range(0, windows, batch):
            count = min(batch, windows - first)
            await self._tokens.acquire()  # a hole batch holds no window memory, only order
            self._raise_if_failed()
            index = self._window_count
            self._window_count += count
            self.stats.bytes_read += count * size
            self.stats.hole_bytes += count * size
            self._pending += 1
            self._idle = trio.Event()
            assert self._nursery is not None
            self._nursery.start_soon(self._process_hole, index, count)
        if tail:
            await self.write(bytes(tail))

    async def _process_hole(self, index: int, count: int) -> None:
        """Windows [index, index + count) are zeros: their digests are known, their objects
        one cached body each, uploaded N wide."""
        options = self.plan.options
        try:
            runs = await self._bridge.run_cpu(hole_runs, self.plan.parent_hashes, index, count,
                                              options)
            await self._turn(index).wait()
            self._hashes.append(zero_digests(options.object_size, options.block_size) * count)
            keyed = []
            for offset, length in runs:
                body = zero_object(length, options.compression)
                keyed += self._number([dataclasses.replace(body, offset=offset)])
            await self._pass_turn(index, index + count)
            async with trio.open_nursery() as uploads:
                for key, item in keyed:
                    await self._uploads.acquire()
                    uploads.start_soon(self._upload_released, key, item)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._fail(exc)
            self._turn(index + count).set()
        finally:
            self._tokens.release()
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def _upload_released(self, key: str, item: PreparedObject) -> None:
        try:
            await self._upload(key, item)
        except Exception as exc:  # kept, raised by the next write or commit
            self._fail(exc)
        finally:
            self._uploads.release()

    async def commit(self) -> BackupRef:
        """Finish: last short window, wait for uploads, then the two documents, metadata last."""
        if self._finished:
            raise BackupFailed("commit after commit or abort")
        try:
            if self._pending_bytes:
                window = b"".join(self._pieces)
                self._pieces, self._pending_bytes = [], 0
                await self._schedule(window)
            await self._idle.wait()
            self._raise_if_failed()
            size = self.stats.bytes_read
            plan = self.plan
            if plan.parent is not None and plan.parent_size is not None \
                    and size != plan.parent_size:
                raise BackupFailed(
                    f"the volume is {size} bytes but its parent {plan.parent.backup_id} is "
                    f"{plan.parent_size}: an incremental needs the same size; run a full "
                    "backup (--full)")
            hashes = await self._bridge.run_disk(self._hashes.finish)
            sha_doc, metadata = backup_documents(
                plan.backup_id, plan.volume_id, plan.started_at,
                plan.parent.backup_id if plan.parent else None, self._entries,
                plan.options.block_size, hashes, plan.name, plan.description)
            try:
                await self._bridge.run_s3(self.store.put_stream,
                                          naming.sha256file_name(self.prefix),
                                          sha_doc.iter_json())
            finally:
                hashes.close()
            self._raise_if_failed()  # e.g. the lease was lost meanwhile
            # The fence: a writer that stalled past STALE_AFTER may have had its lease taken
            # over by `gc`, which then deletes its objects. Renewing (If-Match) right before
            # the `_metadata` PUT proves the lease is still ours, and holds gc off for
            # STALE_AFTER seconds, far longer than one PUT.
            await self._renew_now()
            info = await self._bridge.run_s3(self.store.put_stream,
                                             naming.metadata_name(self.prefix),
                                             metadata.iter_json())
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort()
            raise
        self._finished = True
        self.metadata = metadata
        self._done.set()
        await self._release_lease()
        log.info("backup %s of volume %s committed: %d bytes read, %d objects, %d bytes "
                 "stored", plan.backup_id, plan.volume_id, size, len(self._entries),
                 self.stats.bytes_uploaded)
        return BackupRef(self.prefix, complete=True, fingerprint=fingerprint(info),
                         stored_bytes=self.stats.bytes_uploaded,
                         data_objects=len(self._entries))

    async def abort(self) -> None:
        """Stop, and remove what this backup uploaded (best effort, bounded in time): an
        aborted backup is never visible, and leaves as little behind as it can."""
        if self._finished:
            return
        self._finished = True
        self._done.set()
        await self._stopped.wait()  # no upload can land after the deletes below
        # metadata first: if a failed commit did store it, the backup disappears before any
        # of its objects do; then every object that was given a name, N wide
        failed: list[BakfsError] = []

        async def remove(key: str) -> None:
            try:
                if not failed:
                    await self._bridge.run_s3(self.store.delete, key)
            except BakfsError as exc:
                failed.append(exc)
            finally:
                self._uploads.release()

        with trio.move_on_after(60) as scope:
            for key in (naming.metadata_name(self.prefix), naming.sha256file_name(self.prefix)):
                await self._uploads.acquire()
                await remove(key)
            async with trio.open_nursery() as nursery:
                for n in range(1, len(self._entries) + 1):
                    if failed:
                        break
                    await self._uploads.acquire()
                    nursery.start_soon(remove, naming.object_name(self.prefix, n))
        if failed:
            log.warning("could not remove the aborted backup's objects (bakfs gc will): %s",
                        failed[0])
        elif scope.cancelled_caught:
            log.warning("gave up removing the aborted backup's objects; bakfs gc will")
        self._hashes.close()
        await self._release_lease()

    async def _release_lease(self) -> None:
        if self.lease is not None:
            try:
                await self._bridge.run_s3(self.lease.release)
            except BakfsError as exc:
                log.warning("could not release the lease of volume %s: %s",
                            self.plan.volume_id, exc)


async def run_backup_stream(store: ObjectStore, plan: BackupPlan,
                            chunks: AsyncIterable[bytes | memoryview | Hole],
                            lease: VolumeLease | None = None,
                            bridge: Bridge | None = None,
                            on_progress: Callable[[BackupStats], None] | None = None,
                            ) -> tuple[BackupRef, BackupStats]:
    """Back up everything `chunks` yields (bytes, or a Hole: zeros the source did not
    read); commit, or abort and raise the first error (as itself, not wrapped in an
    exception group). Cancellation aborts too."""
    error: BaseException | None = None
    ref: BackupRef | None = None
    async with trio.open_nursery() as nursery:
        sink = await BackupSink.start(nursery, store, plan, lease, bridge)
        try:
            async for data in chunks:
                if isinstance(data, Hole):
                    await sink.write_hole(data.length)
                else:
                    await sink.write(data)
                if on_progress is not None:
                    on_progress(sink.stats)
            ref = await sink.commit()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await sink.abort()
            if isinstance(exc, trio.Cancelled):
                raise
            error = exc
    if error is not None:
        raise error
    assert ref is not None
    return ref, sink.stats
