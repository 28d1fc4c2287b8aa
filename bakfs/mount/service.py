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
import time
from pathlib import Path

import trio

from bakfs.backup.plan import ParentCandidate
from bakfs.catalog.discovery import BackupRef, find_backups
from bakfs.catalog.index import BackupRecord
from bakfs.catalog.leases import VolumeLease
from bakfs.catalog.sync import Pending
from bakfs.cinder import naming
from bakfs.config import Config
from bakfs.errors import BackupFailed, BakfsError, VolumeBusy
from bakfs.mount import status
from bakfs.mount.incoming import IncomingBackup, TsmIncomingBackup
from bakfs.mount.namespace import METRICS, ROOT_INODE, Node, Tree
from bakfs.mount.readers import Backup, S3Backup, TsmBackup, TsmStaging, record_time
from bakfs.procfs import holds_open, mount_device
from bakfs.read.engine import Engine
from bakfs.threads import plain_errors
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
        # a new index: the store's listing made before the mount was up, and the volumes
        # shown from it whose backups its first build has yet to index
        self.first_build: list[BackupRef] | None = None
        self.pending = Pending()
        self._volumes_shown: set[str] = set()  # pending volumes shown since they were indexed
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
        await self._show(complete=list_store and list_index)
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

    async def list_volumes(self) -> None:
        """A new index, before the mount is up: list the store once and show a directory
        for each volume in it. Their backups are indexed once the mount is up
        (`first_listing`); a directory opened meanwhile has its volume indexed next and
        waits for that one alone (`volume_ready`), not for the whole catalogue."""
        listing = await self.bridge.run_s3(find_backups, self.store)
        self.first_build = listing
        self.pending.add(sorted({ref.volume_id for ref in listing}))
        log.info("index: new; %d volumes listed, their backups are indexed once mounted "
                 "(a volume opened first is indexed first)", len(self.pending.volumes))
        await self._show()

    async def volume_ready(self, volume_id: str) -> None:
        """Return once the volume's backups are indexed and shown: at once, unless the first
        build has yet to reach it (it is then indexed next). A volume that a build cut
        short (the store failed) did not index is indexed alone, now: an error then is the
        caller's (EIO, the reason in the log), and the next opening tries again."""
        pending = self.pending
        if volume_id not in pending.volumes or volume_id in self._volumes_shown:
            return
        event = pending.want(volume_id)
        if event is not None and self.first_build is not None:
            await event.wait()
        if volume_id not in pending.indexed and self.first_build is None:
            try:
                await self.catalog.refresh(volume_id=volume_id)
            except BakfsError as exc:
                log.warning("cannot index volume %s: %s", volume_id, exc)
                raise
            pending.done(volume_id)
        async with self._showing:  # (pending is cleared only under this lock)
            if volume_id not in pending.volumes:
                return  # no longer pending: the whole tree was shown meanwhile
            records = await self.catalog.list_backups(volume_id)
            backups: list[Backup] = [S3Backup(r, self.engine) for r in records
                                     if r.status == "ok"]
            backups += [TsmBackup(r, self.staging) for r in self.tsm_records
                        if r.volume_id == volume_id]
            self.tree.sync_volume(volume_id, backups)
            self._volumes_shown.add(volume_id)
            directory = self.tree.lookup(ROOT_INODE, volume_id)
            shown = [] if directory is None else [
                n for n in self.tree.listing(directory.inode) if n.kind == "backup"]
        await self._measure_soon(shown)

    async def _build(self, listing: list[BackupRef]) -> None:
        """A new index's first build from the listing `list_volumes` made. Cut short (the
        store failed), the volumes it did not index stay shown, each indexed alone when it
        is opened, all of them at the next refresh."""
        started = time.monotonic()
        try:
            result = await self.catalog.refresh(listing, pending=self.pending)
        finally:
            self.first_build = None
        await self._show(complete=True)
        self.counters.refreshes += 1
        log.info("index: %d backups of %d volumes indexed in %.1f s", result.backups,
                 result.volumes, time.monotonic() - started)

    async def _show(self, *, complete: bool = False) -> None:
        """Make the tree show what the index and the TSM records hold. Directory entries are
        cached by the kernel for DIR_TIMEOUT seconds only and listings never, so changes show
        without invalidation calls (which can deadlock when made while the kernel waits on
        a request for the same inode). One showing at a time: a listing that answers late
        (a refresh's) must not undo a newer one (a commit's), or `latest` would serve the
        previous backup right after the writer's close returned. `complete`: the index
        holds the whole store now, no volume is pending any more (a reader waiting for one
        finds it shown)."""
        async with self._showing:
            every = await self.catalog.list_backups()
            records = [r for r in every if r.status == "ok"]
            self.unreadable = [r for r in every if r.status != "ok"]
            backups: list[Backup] = [S3Backup(r, self.engine) for r in records]
            backups += [TsmBackup(r, self.staging) for r in self.tsm_records]
            if complete:
                self.pending.clear()
                self._volumes_shown.clear()
            self.tree.sync(backups, pending=[v for v in self.pending.volumes
                                             if v not in self._volumes_shown])
        await self._measure_soon()

    async def _measure_soon(self, nodes: list[Node] | None = None) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(self.measure_held, nodes)
        else:
            await self.measure_held(nodes)

    async def measure_held(self, nodes: list[Node] | None = None) -> None:
        """Bytes that are not holes or zero objects, per backup (of `nodes`, else of the
        tree), so `du` and st_blocks tell the truth (no object is fetched)."""
        for node in self.tree.backups() if nodes is None else nodes:
            if node.held is not None or node.backup is None:
                continue
            try:
                node.held = await node.backup.held()
            except BakfsError as exc:
                log.warning("cannot measure %s: %s", node.name, exc)

    async def first_listing(self) -> None:
        """At start, after the mount is up: list the store (the index's view was shown
        meanwhile). First the TSM records, one short LIST (a re-mount showed the index's copy
        of them meanwhile); then the store's backups, a listing that grows with the bucket
        (a new index: the first build, from the listing `list_volumes` made, which starts
        alongside the records' LIST: a first read waits for its volume, not for them).
        Until this ends, a name the tree lacks waits for it (`find_name`); a directory
        listing waits for the records (`before_listing`) unless the index's copy was
        shown, and a volume's directory for its volume to be indexed."""
        try:
            if self.first_build is not None:
                with plain_errors():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._build, self.first_build)
                        await self.refresh(list_index=False)
                        self.records_listed.set()
            else:
                await self.refresh(list_index=False)
                self.records_listed.set()
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

    async def find_name(self, directory: Node, name: str) -> Node | None:
        """The node of a name the tree lacks, once what would show it is known: in a volume
        still to be indexed, that volume (then the TSM records, if it is not an S3
        backup); in the root, when the volumes were listed before the mount was up, the TSM
        records; else the whole first listing. `incoming/` waits for nothing: only this
        mount's writers put names there, and a backup written right after a mount must not
        wait for a listing that grows with the bucket."""
        if directory.kind == "incoming_dir":
            return self.tree.lookup(directory.inode, name)
        if directory.volume_id is not None and directory.volume_id in self.pending.volumes:
            await self.volume_ready(directory.volume_id)
            if self.tree.lookup(directory.inode, name) is None:
                await self.records_listed.wait()
        elif directory.inode == ROOT_INODE and self.pending.volumes:
            await self.records_listed.wait()
        else:
            await self.wait_listed()
        return self.tree.lookup(directory.inode, name)

    async def before_listing(self, directory: Node) -> None:
        """A directory listing shows the index's backups and the TSM records without
        waiting for the store's backups to be listed (that listing grows with the bucket,
        minutes for millions of objects); an empty tree (a new index whose store was away)
        waits for the whole first listing. A volume the first build has yet to index is
        indexed next (asked for first) and waited for."""
        if directory.volume_id is not None:
            await self.volume_ready(directory.volume_id)
        if self.listed.is_set():
            return
        if self.pending.volumes or self.tree.backups():
            await self.records_listed.wait()
        else:
            await self.listed.wait()

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
        await self.volume_ready(volume_id)
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
            # a first build has indexed this volume (the writer waited for it) and does
            # not touch it again: the backup need not wait for the rest of the build
            beside = self.first_build is not None and \
                committed.volume_id in self.pending.indexed
            try:
                await self.catalog.add(committed, writer.metadata, beside_refresh=beside)
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
            self.staging.error, self._active_writers(), self.unreadable,
            (len(self.pending.indexed), len(self.pending.volumes)) if self.pending.volumes
            else None)

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
