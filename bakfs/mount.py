"""`bakfs mount` and `bakfs umount`: the mount's lifecycle and the service behind the FUSE
handlers.

Order of start: check the mountpoint (clean a stale mount left by a crashed daemon) →
daemonize unless --foreground (fork before trio, threads or boto3 exist; the parent waits on
a pipe for "ready" or the reason of failure) → open the read engine (a new index is filled
from the store first; a known one is not) → the tree from the index → pyfuse3.init → ready →
open the store in the background and list it (lookups of unknown names and listings wait for
that first listing) → serve until unmounted or SIGTERM/SIGINT → abandon unfinished incoming
backups (nothing committed) → unmount.

`MountService` holds the state the handlers share: the tree, open handles, incoming writers,
the TSM staging manager, counters. It knows nothing of pyfuse3 (see `fuse_ops`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
import trio

from bakfs.config import Config
from bakfs.errors import BakfsError
from bakfs.index import BackupRecord
from bakfs.locking import VolumeBusy
from bakfs.tree import METRICS, REFRESH_XATTR, ROOT_INODE, Node, Tree
from bakfs.tsm.staging import StagingManager

if TYPE_CHECKING:
    from bakfs.incoming import IncomingBackup, TsmIncomingBackup
    from bakfs.reader import Engine
    from bakfs.store.opening import OpeningStore
    from bakfs.tsm.catalog import TsmRecord

log = logging.getLogger(__name__)


class MountError(BakfsError):
    """The mount could not be made or undone."""


@dataclasses.dataclass
class Handle:
    node: Node
    data: bytes = b""  # status files: a snapshot taken at open
    writer: IncomingBackup | TsmIncomingBackup | None = None


@dataclasses.dataclass
class Counters:
    reads: int = 0
    bytes_served: int = 0
    read_errors: int = 0
    backups_committed: int = 0
    backups_failed: int = 0
    refreshes: int = 0


class MountService:
    """What the FUSE handlers operate on."""

    def __init__(self, config: Config, engine: Engine, tree: Tree) -> None:
        self.config = config
        self.engine = engine
        self.store = engine.store
        self.tree = tree
        self.counters = Counters()
        self.handles: dict[int, Handle] = {}
        self.writers: dict[str, IncomingBackup | TsmIncomingBackup] = {}
        self.served: dict[str, int] = {}  # bytes served per backup, for its xattr
        self.nursery: trio.Nursery | None = None
        self.mountpoint: Path | None = None
        self.staging: StagingManager | None = None  # reads of TSM-held backups
        self.staging_error: str | None = None
        self.tsm_records: list[TsmRecord] = []  # as last listed
        self.listed = trio.Event()  # the store has been listed once since the start
        self._tuned = False
        self._fh = itertools.count(1)

    async def first_request(self) -> None:
        """Once, on the first request: the kernel has applied our INIT reply (which resets the
        mount's read-ahead) and no backup file is open yet (a file keeps the read-ahead it was
        opened with)."""
        if not self._tuned and self.mountpoint is not None:
            self._tuned = True
            await trio.to_thread.run_sync(_widen_readahead, self.mountpoint)

    # -- catalog ---------------------------------------------------------------------------

    async def refresh(self, *, list_store: bool = True, list_index: bool = True) -> None:
        """Show backups made elsewhere (and drop deleted ones). `list_store=False` builds
        the tree from the index as it is, without the store; `list_index=False` lists only
        the TSM records (the index was just listed)."""
        if list_store:
            if list_index:
                await self.engine.refresh()
            from bakfs.tsm.catalog import list_records

            self.tsm_records = await trio.to_thread.run_sync(list_records, self.store)
        records = [r for r in await self.engine.list_backups() if r.status == "ok"]
        # Directory entries are cached by the kernel for DIR_TIMEOUT seconds only and
        # listings never, so changes show without invalidation calls (which can deadlock
        # when made while the kernel waits on a request for the same inode).
        self.tree.sync(records, self.tsm_records)
        self.counters.refreshes += 1
        if self.nursery is not None:
            self.nursery.start_soon(self.measure_held)
        else:
            await self.measure_held()

    async def measure_held(self) -> None:
        """Bytes that are not holes or zero objects, per backup, so `du` and st_blocks tell
        the truth; from the index's extents (no object is fetched)."""
        from bakfs.index import KIND_DATA

        for node in list(self.tree.nodes.values()):
            if node.kind != "backup" or node.held is not None or node.record is None:
                continue
            try:
                spans = await self.engine.spans(node.record.backup_id, 0, node.size) \
                    if node.size else []
            except BakfsError as exc:
                log.warning("cannot measure %s: %s", node.name, exc)
                continue
            node.held = sum(s.length for s in spans if s.kind == KIND_DATA)

    async def first_listing(self, *, index_listed: bool) -> None:
        """At start, after the mount is up: list the store (the index's view was shown
        meanwhile). Until this ends, a name the tree lacks waits for it (`wait_listed`)."""
        try:
            await self.refresh(list_index=not index_listed)
        except BakfsError as exc:
            log.warning("cannot list %s (%s): showing the %d backups the index knows, "
                        "serving what the cache holds; retrying every %s s",
                        self.store.description, exc,
                        sum(n.kind == "backup" for n in self.tree.nodes.values()),
                        self.config.index.refresh_interval)
        finally:
            self.listed.set()

    async def wait_listed(self) -> None:
        if not self.listed.is_set():
            await self.listed.wait()

    async def refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.config.index.refresh_interval)
            try:
                await self.refresh()
            except BakfsError as exc:
                log.warning("refresh failed (the tree keeps what it showed): %s", exc)

    # -- reading ---------------------------------------------------------------------------

    def open_handle(self, node: Node) -> int:
        fh = next(self._fh)
        data = b""
        if node.kind == "status":
            data = (self.metrics() if node.name == METRICS else self.status()).encode()
        if node.tsm is not None and self.staging is not None:
            self.staging.pin(node.tsm.backup_id)  # never evicted while open
        self.handles[fh] = Handle(node, data)
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles[fh]
        node = handle.node
        if node.kind == "status":
            return handle.data[offset:offset + size]
        backup_id = node.tsm.backup_id if node.tsm else node.record.backup_id  # type: ignore[union-attr]
        try:
            if node.tsm is not None:
                if self.staging is None:
                    raise BakfsError(f"TSM backups cannot be read: {self.staging_error}")
                data = await self.staging.read(node.tsm, offset, size)
            else:
                data = await self.engine.read(backup_id, offset, size, stream=fh)
        except BakfsError as exc:
            self.counters.read_errors += 1
            raise BakfsError(f"read of {node.name} (volume {node.volume_id}) at offset "
                             f"{offset}, {size} bytes, failed: {exc}") from None
        self.counters.reads += 1
        self.counters.bytes_served += len(data)
        self.served[backup_id] = self.served.get(backup_id, 0) + len(data)
        return data

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None and handle.node.tsm is not None and self.staging is not None:
            self.staging.unpin(handle.node.tsm.backup_id)
        if handle is not None and handle.writer is not None and not handle.writer.done:
            await self._end_writer(handle.writer, "the file was closed with nothing written")

    # -- incoming --------------------------------------------------------------------------

    async def start_incoming(self, volume_id: str, writer_pid: int) -> tuple[int, Node]:
        if volume_id in self.writers:
            current = self.writers[volume_id]
            holder = f" (pid {current.writer_pid})" if current is not None else ""
            raise VolumeBusy(f"incoming/{volume_id} is already being written{holder}")
        assert self.nursery is not None
        # the backup engine is imported when the first backup is written, not at start-up
        from bakfs.incoming import IncomingBackup, TsmIncomingBackup

        self.writers[volume_id] = None  # type: ignore[assignment]  # claim the name now
        writer: IncomingBackup | TsmIncomingBackup
        try:
            if self.config.tsm.takes_incoming(volume_id):
                writer = await TsmIncomingBackup.start(self.store, self.config, volume_id,
                                                       writer_pid)
            else:
                writer = await IncomingBackup.start(
                    self.nursery, self.store, self.config, volume_id, writer_pid,
                    self.engine.bridge.limiters.s3, self.engine.bridge.limiters.cpu)
        except BaseException:
            del self.writers[volume_id]
            raise
        self.writers[volume_id] = writer
        node = self.tree.add_incoming(volume_id)
        fh = next(self._fh)
        self.handles[fh] = Handle(node, writer=writer)
        return fh, node

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        writer = self.handles[fh].writer
        if writer is None:
            raise BakfsError("this file is not open for writing")
        try:
            return await writer.write(offset, data)
        except BakfsError:
            await self._end_writer(writer, "a write failed")
            raise

    async def finish(self, fh: int, *, closing: bool) -> None:
        """Commit at the writer's close (flush) or fsync after data was written, so close()
        reports a failed backup to the writer. A flush with nothing written yet is not the
        end (dd and shells close a duplicate descriptor right after opening), nor is one
        while the writer still holds the file (a child it forked closing its copy)."""
        from bakfs.incoming import holds_open

        handle = self.handles.get(fh)
        writer = handle.writer if handle else None
        if writer is None or (writer.written == 0 and not writer.done):
            return
        if closing and not writer.done and self.mountpoint is not None:
            path = str(self.mountpoint / "incoming" / writer.volume_id)
            if await trio.to_thread.run_sync(holds_open, writer.writer_pid, path):
                return
        if writer.done:  # a later flush or fsync: the same outcome again, counted once
            await writer.finish()
            return
        try:
            await writer.finish()
            self.counters.backups_committed += 1
        except BakfsError:
            self.counters.backups_failed += 1
            raise
        finally:
            self._forget_writer(writer)
        await self.refresh()

    async def _end_writer(self, writer: IncomingBackup | TsmIncomingBackup, why: str) -> None:
        await writer.abandon(why)
        self.counters.backups_failed += 1
        self._forget_writer(writer)

    def _forget_writer(self, writer: IncomingBackup | TsmIncomingBackup) -> None:
        if self.writers.get(writer.volume_id) is writer:
            del self.writers[writer.volume_id]
            self.tree.remove_incoming(writer.volume_id)

    async def abandon_all(self) -> None:
        for writer in list(self.writers.values()):
            if writer is not None:
                await self._end_writer(writer, "the mount is going away")

    # -- attributes and status -------------------------------------------------------------

    async def xattrs(self, node: Node) -> dict[str, str]:
        if node.inode == ROOT_INODE:
            return {"user.bakfs.pid": str(os.getpid()),
                    "user.bakfs.writers": str(len(self.writers)),
                    "user.bakfs.store": self.store.description}
        if node.kind == "incoming":
            writer = self.writers.get(node.volume_id or "")
            if writer is None:
                return {}
            return {"user.bakfs.backup_id": writer.backup_id,
                    "user.bakfs.written": str(writer.written),
                    "user.bakfs.uploaded": str(writer.uploaded),
                    "user.bakfs.backend": writer.backend,
                    "user.bakfs.plan": writer.reason}
        if node.kind == "backup" and node.record is not None:
            return _record_xattrs(node.record, self.served.get(node.record.backup_id, 0))
        if node.kind == "backup" and node.tsm is not None:
            record = node.tsm
            values = {"user.bakfs.backup_id": record.backup_id,
                      "user.bakfs.volume_id": record.volume_id,
                      "user.bakfs.backend": "tsm", "user.bakfs.tsm_mode": record.mode,
                      "user.bakfs.tsm_path": record.path, "user.bakfs.sha256": record.sha256,
                      "user.bakfs.status": "ok",
                      "user.bakfs.bytes_served": str(self.served.get(record.backup_id, 0))}
            progress = self.staging.progress(record.backup_id) if self.staging else None
            if progress is not None:
                values.update({k: v.decode() for k, v in progress.xattrs().items()})
            return values
        return {}

    def status(self) -> str:
        c = self.counters
        lines = [f"store: {self.store.description}",
                 f"backups shown: {sum(1 for n in self.tree.nodes.values() if n.kind == 'backup')}",
                 f"reads: {c.reads}", f"bytes served: {c.bytes_served}",
                 f"read errors: {c.read_errors}",
                 f"objects fetched from the store: {self.engine.cache.stats.fetches}",
                 f"bytes fetched from the store: {self.engine.cache.stats.fetched_bytes}",
                 f"cache hits: {self.engine.cache.stats.memory_hits} in memory, "
                 f"{self.engine.cache.stats.disk_hits} on disk",
                 f"backups committed: {c.backups_committed}",
                 f"backups failed: {c.backups_failed}", f"refreshes: {c.refreshes}"]
        if self.staging is not None:
            for p in self.staging.all_progress():
                lines.append(f"staging TSM backup {p.backup_id}: {p.state}, {p.staged_bytes} of "
                             f"{p.total_bytes} bytes" + (f" ({p.error})" if p.error else ""))
        elif self.staging_error:
            lines.append(f"TSM staging unavailable: {self.staging_error}")
        for volume_id, writer in sorted(self.writers.items()):
            if writer is not None:
                lines.append(f"writing incoming/{volume_id} ({writer.backend}): backup "
                             f"{writer.backup_id}, {writer.written} bytes written, "
                             f"{writer.uploaded} uploaded")
        return "\n".join(lines) + "\n"

    def metrics(self) -> str:
        c = self.counters
        cache = self.engine.cache.stats
        rows = [("bakfs_reads_total", "counter", "reads served", c.reads),
                ("bakfs_served_bytes_total", "counter", "bytes served to readers",
                 c.bytes_served),
                ("bakfs_read_errors_total", "counter", "reads failed with EIO", c.read_errors),
                ("bakfs_fetched_objects_total", "counter", "objects fetched from the store",
                 cache.fetches),
                ("bakfs_fetched_bytes_total", "counter", "stored bytes fetched from the store",
                 cache.fetched_bytes),
                ("bakfs_cache_hits_total", "counter", "chunk cache hits (memory and disk)",
                 cache.memory_hits + cache.disk_hits),
                ("bakfs_backups_committed_total", "counter", "backups written via incoming/",
                 c.backups_committed),
                ("bakfs_backups_failed_total", "counter", "incoming backups that failed",
                 c.backups_failed),
                ("bakfs_incoming_writers", "gauge", "backups being written",
                 len(self.writers))]
        out = []
        for name, kind, text, value in rows:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"


def _record_xattrs(record: BackupRecord, served: int) -> dict[str, str]:
    return {"user.bakfs.backup_id": record.backup_id,
            "user.bakfs.volume_id": record.volume_id,
            "user.bakfs.parent_id": record.parent_id or "",
            "user.bakfs.chain": ",".join(record.chain),
            "user.bakfs.created": record.created_at,
            "user.bakfs.own_bytes": str(record.own_bytes),  # plain bytes of its objects
            "user.bakfs.stored_bytes": str(record.stored_bytes),  # their size in the store
            "user.bakfs.codec": ",".join(record.codecs),
            "user.bakfs.objects": str(record.object_count),
            "user.bakfs.status": record.status,
            "user.bakfs.prefix": record.prefix,
            "user.bakfs.bytes_served": str(served)}


# -- lifecycle ------------------------------------------------------------------------------


def default_log_path(mountpoint: Path) -> Path:
    name = str(mountpoint.resolve()).strip("/").replace("/", "_") or "root"
    return Path(platformdirs.user_log_dir("bakfs")) / f"mount-{name}.log"


def _check_mountpoint(mountpoint: Path, cleaned: bool = False) -> None:
    """A directory, not mounted; a mount left by a crashed daemon (ENOTCONN) is cleaned."""
    try:
        mounted = os.path.ismount(mountpoint)
        if mounted:
            os.listdir(mountpoint)  # a listing always reaches the daemon (never cached)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN and not cleaned:
            log.warning("%s is a stale mount of a crashed daemon; cleaning it", mountpoint)
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                           capture_output=True)
            return _check_mountpoint(mountpoint, cleaned=True)
        raise MountError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if mounted:
        raise MountError(f"{mountpoint} is already a mount point (bakfs umount it first)")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")


def run_mount(config: Config, mountpoint: str, *, foreground: bool,
              fuse_options: list[str], log_file: str | None) -> int:
    path = Path(os.path.abspath(mountpoint))
    _check_mountpoint(path)
    path = path.resolve()  # as /proc/self/mountinfo will name it (resolved before mounting)
    if not Path("/dev/fuse").exists():
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    notify: Callable[[str], None] = lambda message: None  # noqa: E731
    if not foreground:
        log_path = Path(log_file) if log_file else default_log_path(path)
        result = _daemonize(log_path)
        if isinstance(result, int):
            return result
        notify = result
    try:
        trio.run(_serve, config, path, fuse_options, notify)
    except BakfsError as exc:
        notify(f"error: {exc}")
        raise
    except BaseException as exc:
        notify(f"error: {type(exc).__name__}: {exc}")
        raise
    return 0


def _daemonize(log_path: Path) -> int | Callable[[str], None]:
    """Fork. The parent waits for the child's first message and returns the exit code; the
    child detaches and gets a function to send that message."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace").strip()
        if message == "ready":
            print(f"mounted (daemon pid {pid}, log {log_path})")
            return 0
        print(f"bakfs: mount failed: {message or 'the daemon exited early'}; see {log_path}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    sent = False

    def notify(message: str) -> None:
        nonlocal sent
        if not sent:
            sent = True
            os.write(write_end, message.encode())
            os.close(write_end)

    return notify


async def _serve(config: Config, mountpoint: Path, fuse_options: list[str],
                 notify: Callable[[str], None]) -> None:
    from bakfs.store import open_store_in_background

    # The store (boto3, its client, the bucket check) opens in a thread: with an index that
    # knows the backups, the mount is up before the store is (a new index waits for it).
    store = open_store_in_background(config)
    try:
        await _serve_store(config, store, mountpoint, fuse_options, notify)
    finally:
        store.close()


async def _serve_store(config: Config, store: OpeningStore, mountpoint: Path,
                       fuse_options: list[str], notify: Callable[[str], None]) -> None:
    import pyfuse3

    from bakfs.fuse_ops import Operations
    from bakfs.reader import open_engine

    async with open_engine(config, store) as engine:
        tree = Tree(time.time())
        service = MountService(config, engine, tree)
        # the tree as the index knows it; a new index was just filled from the store by
        # open_engine (the store is open then); the store is listed once the mount is up
        index_listed = engine.last_refresh != float("-inf")
        await service.refresh(list_store=False)
        service.mountpoint = mountpoint
        operations = Operations(service)
        options = set(pyfuse3.default_options)
        options.add("fsname=bakfs")
        options.add("subtype=bakfs")
        options.update(fuse_options)
        pyfuse3.init(operations, str(mountpoint), options)
        log.info("mounted %s on %s", service.store.description, mountpoint)
        unmount = True
        try:
            async with trio.open_nursery() as nursery:
                service.nursery = nursery
                await _start_staging(service, nursery)
                nursery.start_soon(functools.partial(service.first_listing,
                                                     index_listed=index_listed))
                nursery.start_soon(service.refresh_loop)
                nursery.start_soon(_terminate_on_signal)
                notify("ready")
                store.start()  # if no request has needed it yet
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        except BaseException:
            unmount = True
            raise
        finally:
            with trio.CancelScope(shield=True):
                await service.abandon_all()
            pyfuse3.close(unmount=unmount)
            log.info("unmounted %s", mountpoint)


async def _start_staging(service: MountService, nursery: trio.Nursery) -> None:
    """The staging area for TSM-held backups. Another process owning it (a second mount, a
    `bakfs stage`) leaves TSM backups listed but unreadable, with the reason in the log."""
    from bakfs.tsm.commands import make_runner, staging_dir, staging_max_bytes

    config = service.config
    manager = StagingManager(make_runner(config), staging_dir(config), staging_max_bytes(config))
    try:
        service.staging = await nursery.start(manager.serve)
    except BakfsError as exc:
        service.staging_error = str(exc)
        log.warning("TSM backups will not be readable: %s", exc)


READAHEAD_KB = 1024  # the kernel's FUSE request limit here is 1 MiB (max_pages_limit 256)


def _widen_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead 1 MiB instead of 128 KiB: a sequential `dd` then reaches us
    in 1 MiB requests, an eighth of the per-request overhead. Needs root; optional."""
    # The device number comes from mountinfo: a stat() of the mountpoint would ask this very
    # daemon, whose request loop is not running yet.
    target = os.path.abspath(mountpoint)  # no resolve(): that would lstat the mount too
    try:
        with open("/proc/self/mountinfo") as f:
            devices = [line.split()[2] for line in f if line.split()[4] == target]
    except OSError:
        devices = []
    if not devices:
        return
    knob = Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb")
    try:
        knob.write_text(str(READAHEAD_KB))
    except OSError as exc:
        log.debug("kept the kernel's default read-ahead (%s: %s)", knob, exc.strerror)


async def _terminate_on_signal() -> None:
    import pyfuse3

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def _daemon_of(mountpoint: str) -> tuple[Path, int]:
    """The mount's path and its daemon's pid; MountError unless it is a running bakfs mount."""
    path = Path(mountpoint)
    if not os.path.ismount(path):
        raise MountError(f"{mountpoint} is not mounted")
    try:
        return path, int(os.getxattr(path, "user.bakfs.pid"))
    except OSError:
        raise MountError(f"{mountpoint} is not a bakfs mount") from None


def run_refresh(mountpoint: str) -> int:
    """Make a running mount list the store now (backups made elsewhere appear at once)."""
    path, _pid = _daemon_of(mountpoint)
    try:
        os.setxattr(path, REFRESH_XATTR, b"1")
    except OSError as exc:
        raise MountError(f"{mountpoint}: the refresh failed ({exc.strerror}); the daemon's log "
                         "says why") from None
    volumes = [e for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")
               and e.name != "incoming"]
    backups = sum(1 for v in volumes for e in os.scandir(v.path) if e.name != "latest")
    print(f"refreshed {mountpoint}: {backups} backups of {len(volumes)} volumes")
    return 0


def run_umount(mountpoint: str, *, force: bool, timeout: float = 60.0) -> int:
    path, pid = _daemon_of(mountpoint)
    try:
        writers = int(os.getxattr(path, "user.bakfs.writers"))
    except OSError:
        raise MountError(f"{mountpoint} is not a bakfs mount") from None
    if writers and not force:
        raise MountError(f"{mountpoint}: {writers} backup(s) are being written into incoming/; "
                         "wait for them, or use --force to abandon them (nothing is committed)")
    if force:
        # What SIGTERM does: backups in flight are abandoned (nothing is committed, their
        # writers' next call fails), then the daemon detaches the mount even if files are
        # open; fusermount -z alone would leave the daemon serving those open files.
        if not _is_bakfs_mount_process(pid):
            raise MountError(f"{mountpoint}: its daemon (pid {pid}) is not a bakfs mount "
                             "process seen from here (another PID namespace?); nothing was "
                             "signalled. Stop it where it runs, or: fusermount3 -u -z "
                             f"{mountpoint}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    else:
        result = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise MountError(f"fusermount3 could not unmount {mountpoint}: "
                             f"{result.stderr.strip()} (--force unmounts with files open)")
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise MountError(f"the daemon (pid {pid}) did not exit in {timeout:.0f} s")
        time.sleep(0.05)
    if os.path.ismount(path):  # the daemon died without unmounting
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    print(f"unmounted {mountpoint}")
    return 0


def _is_bakfs_mount_process(pid: int) -> bool:
    """Whether `pid`, as this process sees it, runs `bakfs ... mount` (a pid read from a
    mount's xattr belongs to the daemon's PID namespace, which may not be ours)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return False
    return "mount" in argv and any("bakfs" in a for a in argv)


def process_alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
