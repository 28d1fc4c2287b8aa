"""The mount's life: from `bakfs mount` to the unmount.

Order of start: check the mountpoint (clean a stale mount left by a crashed daemon) →
daemonize unless --foreground (fork before trio, threads or boto3 exist; the parent waits on
a pipe for "ready" or the reason of failure) → open the read engine (a new index is filled
from the store first; a known one is not) → the tree from the index → pyfuse3.init → ready →
open the store in the background and list it (lookups of unknown names and listings wait for
that first listing) → serve until unmounted or SIGTERM/SIGINT → abandon unfinished incoming
backups (nothing committed) → unmount.

Runs in the daemon (and, until the fork, in the user's process); the user-side commands on a
running mount are `bakfs.mount.control`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import platformdirs
import pyfuse3
import trio

from bakfs.config import Config
from bakfs.errors import BakfsError, MountError
from bakfs.mount.fuse_ops import Operations
from bakfs.mount.namespace import Tree
from bakfs.mount.permissions import Permissions, resolve
from bakfs.mount.service import MountService
from bakfs.read.engine import open_engine
from bakfs.store import open_store_in_background
from bakfs.store.opening import OpeningStore
from bakfs.tsm.operations import make_runner, staging_dir, staging_max_bytes
from bakfs.tsm.staging import StagingManager

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Started:
    """A daemon the user's process started: ready, or failed with `error`."""

    pid: int
    log_path: Path
    error: str | None = None


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
    try:
        hidden = len(os.listdir(mountpoint))
    except OSError:
        hidden = 0
    if hidden:
        log.warning("%s is not empty: its %d entries are hidden while bakfs is mounted over "
                    "it", mountpoint, hidden)


def mount(config: Config, mountpoint: str, *, foreground: bool, fuse_options: list[str],
          log_file: str | None) -> Started | None:
    """Mount the store at `mountpoint`. In the foreground, serve until unmounted and return
    None; else return in the user's process once the daemon is ready (or failed)."""
    path = Path(os.path.abspath(mountpoint))
    _check_mountpoint(path)
    permissions = resolve(config.mount)  # an unknown owner or group fails before the fork
    path = path.resolve()  # as /proc/self/mountinfo will name it (resolved before mounting)
    if not Path("/dev/fuse").exists():
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    notify: Callable[[str], None] = lambda message: None  # noqa: E731
    if not foreground:
        log_path = Path(log_file) if log_file else default_log_path(path)
        result = _daemonize(log_path)
        if isinstance(result, Started):
            return result
        notify = result
    try:
        trio.run(_serve, config, path, fuse_options, notify, permissions)
    except BakfsError as exc:
        notify(f"error: {exc}")
        raise
    except BaseException as exc:
        notify(f"error: {type(exc).__name__}: {exc}")
        raise
    return None


def _daemonize(log_path: Path) -> Started | Callable[[str], None]:
    """Fork. The parent waits for the child's first message and returns what became of it;
    the child detaches and gets a function to send that message."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace").strip()
        if message == "ready":
            return Started(pid, log_path)
        return Started(pid, log_path, message or "the daemon exited early")
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
                 notify: Callable[[str], None], permissions: Permissions) -> None:
    # The store (boto3, its client, the bucket check) opens in a thread: with an index that
    # knows the backups, the mount is up before the store is (a new index waits for it).
    store = open_store_in_background(config)
    try:
        await _serve_store(config, store, mountpoint, fuse_options, notify, permissions)
    finally:
        store.close()


async def _serve_store(config: Config, store: OpeningStore, mountpoint: Path,
                       fuse_options: list[str], notify: Callable[[str], None],
                       permissions: Permissions) -> None:
    async with open_engine(config, store) as engine:
        tree = Tree(time.time())
        service = MountService(config, engine, tree)
        # the tree as the index knows it; a new index was just filled from the store by
        # open_engine (the store is open then); the store is listed once the mount is up
        index_listed = engine.catalog.last_refresh != float("-inf")
        await service.refresh(list_store=False)
        service.mountpoint = mountpoint
        operations = Operations(service, permissions)
        options = set(pyfuse3.default_options)
        options.add("fsname=bakfs")
        options.add("subtype=bakfs")
        options.add("default_permissions")  # the kernel enforces `permissions`
        options.update(fuse_options)
        pyfuse3.init(operations, str(mountpoint), options)
        log.info("mounted %s on %s", service.store.description, mountpoint)
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
        finally:
            with trio.CancelScope(shield=True):
                await service.abandon_all()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)


async def _start_staging(service: MountService, nursery: trio.Nursery) -> None:
    """The staging area for TSM-held backups. Another process owning it (a second mount, a
    `bakfs stage`) leaves TSM backups listed but unreadable, with the reason in the log."""
    config = service.config
    manager = StagingManager(make_runner(config), staging_dir(config), staging_max_bytes(config),
                             bridge=service.bridge)
    try:
        service.staging.manager = await nursery.start(manager.serve)
    except BakfsError as exc:
        service.staging.error = str(exc)
        log.warning("TSM backups will not be readable: %s", exc)


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return
