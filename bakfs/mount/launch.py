"""Starting a mount, the part that runs before the FUSE side is even imported: check the
mountpoint (clean a stale mount left by a crashed daemon), daemonize unless --foreground
(fork before trio, threads or boto3 exist; the parent waits on a pipe for "ready" or the
reason of failure), start opening the store in a thread, then hand over to
`bakfs.mount.daemon`.

Why a module of its own: opening an S3 store (importing boto3, building its client,
checking the bucket) takes ~0.3 s on a cold start, and importing the FUSE side (pyfuse3,
trio, the read engine) ~0.17 s. On a first mount, which cannot show anything before the
store answers, the first runs while the second is imported, instead of after it. A re-mount
shows the index's tree first and opens the store after (the daemon starts it): both compete
for the GIL, and opening the store alongside slowed the re-mount's first listing (0.78 ->
0.55 s at 10,000 backups) and even its first read of an uncached object (0.78 -> 0.71 s).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import platformdirs

from bakfs import prefetch
from bakfs.config import Config
from bakfs.errors import MountError
from bakfs.mount import sdnotify
from bakfs.mount.permissions import resolve
from bakfs.store import open_store_in_background

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
    notify: Callable[[str], None] = sdnotify.notifier()  # systemd's Type=notify, if any
    if not foreground:
        log_path = Path(log_file) if log_file else default_log_path(path)
        result = _daemonize(log_path)
        if isinstance(result, Started):
            return result
        notify = result
    store = open_store_in_background(config)
    if not (Path(config.index.path) / "data.mdb").exists():
        store.start()  # a first mount: nothing shows before the store answers
    # lazy: the FUSE side (pyfuse3, trio, the read engine) is imported while the store opens
    # in its thread; measured on a cold start, mount -> first 4 KiB 0.63 -> 0.5 s
    from bakfs.mount import daemon

    prefetch.reap(timeout=0.2)  # the read-ahead's helper is done: no zombie beside a daemon
    daemon.serve(config, store, path, fuse_options, notify, permissions)
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


