"""The service behind the FUSE handlers: the state they share and what they ask of it.

`MountService` holds the tree, open handles, incoming writers, the TSM staging area and the
counters. Every backup file's node carries the object that reads it (`bakfs.mount.readers`),
so reading, opening and describing a file never asks which store keeps it. Backups made
elsewhere appear at a refresh; a backup written into `incoming/` is added to the index and
the tree at its commit, without listing the store.

Async, on trio; blocking work through `bakfs.threads`. Knows nothing of pyfuse3 (see
`fuse_ops`) or errno.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from pathlib import Path

import trio

from bakfs.backup.plan import ParentCandidate
from bakfs.catalog.discovery import BackupRef
from bakfs.catalog.index import BackupRecord
from bakfs.catalog.leases import VolumeLease
from bakfs.cinder import naming
from bakfs.config import Config
from bakfs.errors import BackupFailed, BakfsError, VolumeBusy
from bakfs.mount import status
from bakfs.mount.incoming import IncomingBackup, TsmIncomingBackup
from bakfs.mount.namespace import METRICS, ROOT_INODE, Node, Tree
from bakfs.mount.readers import Backup, S3Backup, TsmBackup, TsmStaging, record_time
from bakfs.procfs import holds_open, mount_device
from bakfs.read.engine import Engine
from bakfs.tsm.kept import list_and_keep, read_kept
from bakfs.tsm.records import TsmRecord

log = logging.getLogger(__name__)

Writer = IncomingBackup | TsmIncomingBackup
READAHEAD_KB = 1024  # the kernel's FUSE request limit here is 1 MiB (max_pages_limit 256)
RELEASE_RETRY_FIRST = 1.0  # seconds before a failed lease release is tried again (doubling)
RELEASE_RETRY_MAX = 15.0
RELEASE_AT_EXIT = 5.0  # seconds the unmount gives leases left behind


@dataclasses.dataclass
class Handle:
    node: Node
    data: bytes = b""  # status files: a snapshot taken at open
    writer: Writer | None = None


class MountService:
    """What the FUSE handlers operate on."""

    def __init__(self, config: Config, engine: Engine, tree: Tree) -> None:
        self.config = config
        self.engine = engine
        self.catalog = engine.catalog
        self.store = engine.store
        self.bridge = engine.bridge
        self.tree = tree
        self.counters = status.Counters()
        self.handles: dict[int, Handle] = {}
        self.writers: dict[str, Writer | None] = {}  # None: claimed, still starting
        self.served: dict[str, int] = {}  # bytes served per backup, for its xattr
        self.nursery: trio.Nursery | None = None
        self.mountpoint: Path | None = None
        self.staging = TsmStaging()  # reads of TSM-held backups
        self.tsm_records: list[TsmRecord] = []  # as last listed
        self.listed = trio.Event()  # the store has been listed once since the start
        self.records_listed = trio.Event()  # its TSM records have (the first step of it)
        self.unreadable: list[BackupRecord] = []  # quarantined backups, with the reason
        self.leftover_leases: dict[str, VolumeLease] = {}  # of failed backups, to release
        self._kept_records: list[TsmRecord] | None = None  # the index's copy, as last known
        self._showing = trio.Lock()  # one `_show` at a time, each on a fresh listing
        self._tuned = False
        self._fh = itertools.count(1)

    async def first_request(self) -> None:
        """Once, on the first request: the kernel has applied our INIT reply (which resets the
        mount's read-ahead) and no backup file is open yet (a file keeps the read-ahead it was
        opened with)."""
        if not self._tuned and self.mountpoint is not None:
            self._tuned = True
            await self.bridge.run_disk(widen_readahead, self.mountpoint)

    # -- catalog ---------------------------------------------------------------------------

    async def refresh(self, *, list_store: bool = True, list_index: bool = True,
                      list_tsm: bool = True) -> None:
        """Show backups made elsewhere (and drop deleted ones). `list_store=False` builds
        the tree from the index as it is, without the store; `list_index=False` lists only
        the TSM records (which the index does not hold), `list_tsm=False` only the store's
        backups."""
        if list_store:
            if list_index:
                await self.catalog.refresh()
            if list_tsm:
                await self._list_records()
        await self._show()
        self.counters.refreshes += 1

    async def _list_records(self) -> None:
        """List the TSM records (GETs for new ones only); a change is kept in the index,
        so the next start shows them before the store is even open."""
        self.tsm_records = await list_and_keep(self.catalog, None, self._kept_records,
                                               seen=self.tsm_records)
        self._kept_records = list(self.tsm_records)

    async def show_kept_records(self) -> bool:
        """At start: the TSM records as the index kept them from the last listing, so a
        directory listing need not wait for the store (`before_listing`). False when the
        index kept none (new or rebuilt): the first listing is then waited for."""
        kept = await read_kept(self.catalog)
        if kept is None:
            return False
        self.tsm_records, self._kept_records = list(kept), kept
        self.records_listed.set()
        return True

    async def _show(self) -> None:
        """Make the tree show what the index and the TSM records hold. Directory entries are
        cached by the kernel for DIR_TIMEOUT seconds only and listings never, so changes show
        without invalidation calls (which can deadlock when made while the kernel waits on
        a request for the same inode). One showing at a time: a listing that answers late
        (a refresh's) must not undo a newer one (a commit's), or `latest` would serve the
        previous backup right after the writer's close returned."""
        async with self._showing:
            every = await self.catalog.list_backups()
            records = [r for r in every if r.status == "ok"]
            self.unreadable = [r for r in every if r.status != "ok"]
            backups: list[Backup] = [S3Backup(r, self.engine) for r in records]
            backups += [TsmBackup(r, self.staging) for r in self.tsm_records]
            self.tree.sync(backups)
        if self.nursery is not None:
            self.nursery.start_soon(self.measure_held)
        else:
            await self.measure_held()

    async def measure_held(self) -> None:
        """Bytes that are not holes or zero objects, per backup, so `du` and st_blocks tell
        the truth (no object is fetched)."""
        for node in self.tree.backups():
            if node.held is not None or node.backup is None:
                continue
            try:
                node.held = await node.backup.held()
            except BakfsError as exc:
                log.warning("cannot measure %s: %s", node.name, exc)

    async def first_listing(self, *, index_listed: bool) -> None:
        """At start, after the mount is up: list the store (the index's view was shown
        meanwhile). First the TSM records, one short LIST (a re-mount showed the index's copy
        of them meanwhile); then, unless the index was just filled, the store's backups, a
        listing that grows with the bucket. Until this ends, a name the tree lacks waits for
        it (`wait_listed`); a directory listing waits for the records (`before_listing`)
        unless the index's copy was shown."""
        try:
            await self.refresh(list_index=False)
            self.records_listed.set()
            if not index_listed:
                await self.refresh(list_tsm=False)
        except BakfsError as exc:
            log.warning("cannot list %s (%s): showing the %d backups the index knows, "
                        "serving what the cache holds; retrying every %s s",
                        self.store.description, exc, len(self.tree.backups()),
                        self.config.index.refresh_interval)
        except Exception:  # a bug, but the mount serves on: the next refresh retries
            log.exception("the first listing failed unexpectedly")
        finally:
            self.records_listed.set()
            self.listed.set()

    async def wait_listed(self) -> None:
        if not self.listed.is_set():
            await self.listed.wait()

    async def before_listing(self) -> None:
        """A directory listing shows the index's backups and the TSM records without
        waiting for the store's backups to be listed (that listing grows with the bucket,
        minutes for millions of objects); an empty tree (a new index whose store was away)
        waits for the whole first listing."""
        await (self.records_listed if self.tree.backups() else self.listed).wait()

    async def refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.config.index.refresh_interval)
            try:
                await self.refresh()
            except BakfsError as exc:
                log.warning("refresh failed (the tree keeps what it showed): %s", exc)
            except Exception:  # a bug, but one refresh must not end the mount
                log.exception("refresh failed unexpectedly (the tree keeps what it showed)")

    # -- reading ---------------------------------------------------------------------------

    def open_handle(self, node: Node) -> int:
        fh = next(self._fh)
        data = b""
        if node.kind == "status":
            data = (self.metrics() if node.name == METRICS else self.status()).encode()
        if node.backup is not None:
            node.backup.opened()
        self.handles[fh] = Handle(node, data)
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self.handles[fh]
        node = handle.node
        if node.kind == "status":
            return handle.data[offset:offset + size]
        backup = node.backup
        if backup is None:
            raise BakfsError(f"{node.name} is not a backup file")
        try:
            data = await backup.read(offset, size, fh)
        except BakfsError as exc:
            self.counters.read_errors += 1
            raise BakfsError(f"read of {node.name} (volume {node.volume_id}) at offset "
                             f"{offset}, {size} bytes, failed: {exc}") from None
        self.counters.reads += 1
        self.counters.bytes_served += len(data)
        self.served[backup.backup_id] = self.served.get(backup.backup_id, 0) + len(data)
        return data

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        if handle.node.backup is not None:
            handle.node.backup.closed()
        if handle.writer is not None and not handle.writer.done:
            await self._end_writer(handle.writer, "the file was closed with nothing written")

    # -- incoming --------------------------------------------------------------------------

    async def start_incoming(self, volume_id: str, writer_pid: int, *, full: bool = False,
                             name: str | None = None) -> tuple[int, Node]:
        """Start a backup of `volume_id` written to `incoming/<name>` (a full one when
        asked)."""
        if volume_id in self.writers:
            current = self.writers[volume_id]
            holder = f" (pid {current.writer_pid})" if current is not None else ""
            raise VolumeBusy(f"incoming/{volume_id} is already being written{holder}")
        assert self.nursery is not None
        self.writers[volume_id] = None  # claim the name now
        writer: Writer
        try:
            left = self.leftover_leases.get(volume_id)
            if left is not None:
                await self._release(left)  # our own failed backup's: not a busy volume
            if self.config.tsm.takes_incoming(volume_id):
                writer = await TsmIncomingBackup.start(self.store, self.config, volume_id,
                                                       writer_pid, self.bridge)
            else:
                writer = await IncomingBackup.start(
                    self.nursery, self.store, self.config, volume_id, writer_pid,
                    self.bridge, None if full else await self._newest(volume_id), full=full)
        except BaseException:
            del self.writers[volume_id]
            raise
        self.writers[volume_id] = writer
        node = self.tree.add_incoming(volume_id, name)
        fh = next(self._fh)
        self.handles[fh] = Handle(node, writer=writer)
        return fh, node

    async def _newest(self, volume_id: str) -> ParentCandidate | None:
        """The volume's newest readable backup the index knows: the parent an incremental
        written into incoming/ stands on (when it fits)."""
        records = [r for r in await self.catalog.list_backups(volume_id) if r.status == "ok"]
        if not records:
            return None
        newest = max(records, key=_newest_order)
        return ParentCandidate(BackupRef(naming.parse_prefix(newest.prefix)), newest.size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        writer = self.handles[fh].writer
        if writer is None:
            raise BakfsError("this file is not open for writing")
        try:
            return await writer.write(offset, data)
        except BakfsError:
            await self._end_writer(writer, "a write failed")
            raise

    async def truncate(self, node: Node, size: int) -> None:
        """A truncate of `incoming/<volume>`: extending adds zeros; anything that fails
        fails the backup, so its close reports it and nothing is committed."""
        writer = self.writers.get(node.volume_id or "")
        if writer is None:
            if size:
                raise BakfsError(f"incoming/{node.name} is not being written")
            return
        try:
            await writer.truncate(size)
        except BakfsError:
            await self._end_writer(writer, "a truncate failed")
            raise

    async def finish(self, fh: int, *, closing: bool) -> None:
        """Commit at the writer's close (flush) or fsync after data was written, so close()
        reports a failed backup to the writer. A flush is not the end while the writer still
        holds the file (dd and shells close a duplicate descriptor right after opening, a
        child it forked closes its copy). The last close of a file nothing was written to
        fails: an empty file makes no backup, and the writer is told."""
        handle = self.handles.get(fh)
        writer = handle.writer if handle else None
        if writer is None or (writer.written == 0 and not writer.done and not closing):
            return
        if closing and not writer.done and self.mountpoint is not None:
            assert handle is not None
            path = str(self.mountpoint / "incoming" / handle.node.name)
            if await self.bridge.run_disk(holds_open, writer.writer_pid, path):
                return
        if writer.done:  # a later flush or fsync: the same outcome again, counted once
            await writer.finish()
            return
        if writer.written == 0:
            await self._end_writer(writer, "it was closed with nothing written, and an empty "
                                           "file makes no backup")
            raise BackupFailed(writer.error or "nothing was written")
        try:
            committed = await writer.finish()
            self.counters.backups_committed += 1
        except BakfsError:
            self.counters.backups_failed += 1
            self._release_later(writer)
            raise
        finally:
            self._forget_writer(writer)
        await self._show_committed(writer, committed)

    async def _show_committed(self, writer: Writer, committed: BackupRef | TsmRecord) -> None:
        """Put a backup just committed through incoming/ into the index and the tree."""
        if isinstance(committed, TsmRecord):
            self.tsm_records.append(committed)
        elif isinstance(writer, IncomingBackup) and writer.metadata is not None:
            try:
                await self.catalog.add(committed, writer.metadata)
            except BakfsError as exc:  # committed all the same: the next refresh shows it
                log.warning("backup %s is committed but could not be indexed yet: %s",
                            committed.backup_id, exc)
        await self._show()

    async def _end_writer(self, writer: Writer, why: str) -> None:
        await writer.abandon(why)
        self.counters.backups_failed += 1
        self._forget_writer(writer)
        self._release_later(writer)

    def _release_later(self, writer: Writer) -> None:
        """A failed backup gives its volume's lease up at once; when the store was out of
        reach for that, again and again until it is back (or the lease expired), so the
        volume is not locked and `gc` sees the leftovers as soon as the store allows."""
        lease = writer.lease
        if lease is None or not lease.held:
            return
        self.leftover_leases[writer.volume_id] = lease
        if self.nursery is not None:
            self.nursery.start_soon(self._release_when_possible, lease)

    async def _release_when_possible(self, lease: VolumeLease) -> None:
        delay, waited = RELEASE_RETRY_FIRST, 0.0
        while lease.held and self.leftover_leases.get(lease.volume_id) is lease \
                and waited < lease.ttl:
            await trio.sleep(delay)
            waited += delay
            delay = min(delay * 2, RELEASE_RETRY_MAX)
            await self._release(lease)

    async def _release(self, lease: VolumeLease) -> None:
        try:
            await self.bridge.run_s3(lease.release)
        except BakfsError as exc:
            log.debug("the lease of volume %s is still held (%s); trying again", lease.volume_id,
                      exc)
            return
        if self.leftover_leases.get(lease.volume_id) is lease:
            del self.leftover_leases[lease.volume_id]
        log.info("released the lease of volume %s left by failed backup %s", lease.volume_id,
                 lease.backup_id)

    def _forget_writer(self, writer: Writer) -> None:
        if self.writers.get(writer.volume_id) is writer:
            del self.writers[writer.volume_id]
            self.tree.remove_incoming(writer.volume_id)

    async def abandon_all(self) -> None:
        """At the unmount (the service's nursery has ended): abandon the backups in flight
        and give their leases a last chance to be released."""
        self.nursery = None
        for writer in list(self.writers.values()):
            if writer is not None:
                await self._end_writer(writer, "the mount is going away")
        with trio.move_on_after(RELEASE_AT_EXIT):  # a last try for leases left behind
            for lease in list(self.leftover_leases.values()):
                await self._release(lease)

    # -- attributes and status -------------------------------------------------------------

    def _active_writers(self) -> list[Writer]:
        return [w for w in self.writers.values() if w is not None]

    async def xattrs(self, node: Node) -> dict[str, str]:
        if node.inode == ROOT_INODE:
            return status.root_xattrs(os.getpid(), len(self.writers), self.store.description)
        if node.kind == "incoming":
            writer = self.writers.get(node.volume_id or "")
            return {} if writer is None else status.writer_xattrs(writer)
        if node.kind == "backup" and node.backup is not None:
            return node.backup.xattrs(self.served.get(node.backup.backup_id, 0))
        return {}

    def status(self) -> str:
        manager = self.staging.manager
        return status.status_text(
            self.store.description, len(self.tree.backups()), self.counters,
            self.engine.cache.stats, manager.all_progress() if manager else None,
            self.staging.error, self._active_writers(), self.unreadable)

    def metrics(self) -> str:
        return status.metrics_text(self.counters, self.engine.cache.stats, len(self.writers),
                                   len(self.unreadable))


def _newest_order(record: BackupRecord) -> tuple[str, float, int, str]:
    """Newest last, as `catalog.discovery.chronological` orders backups."""
    return record.timestamp, record_time(record), len(record.chain), record.backup_id


def widen_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead 1 MiB instead of 128 KiB: a sequential `dd` then reaches us
    in 1 MiB requests, an eighth of the per-request overhead. Needs root; optional."""
    # The device number comes from mountinfo: a stat() of the mountpoint would ask this very
    # daemon, whose request loop is not running yet.
    device = mount_device(os.path.abspath(mountpoint))  # no resolve(): it would lstat the mount
    if device is None:
        return
    knob = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        knob.write_text(str(READAHEAD_KB))
    except OSError as exc:
        log.debug("kept the kernel's default read-ahead (%s: %s)", knob, exc.strerror)
