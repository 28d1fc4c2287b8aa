"""Commands on a running mount, run in the user's process: `bakfs umount` and `bakfs
refresh`. They talk to the daemon through the root's extended attributes (its pid, the
writers in flight, the refresh trigger) and signals, never through a socket of their own.

Blocking code. Knows nothing of the daemon's internals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from bakfs.errors import BakfsError, MountError
from bakfs.mount.attach import attached_from
from bakfs.mount.namespace import INCOMING, LATEST, REFRESH_XATTR
from bakfs.procfs import command_line, process_alive


def _daemon_of(mountpoint: str) -> tuple[Path, int]:
    """The mount's path and its daemon's pid; MountError unless it is a running bakfs mount."""
    path = Path(mountpoint)
    if not os.path.ismount(path):
        raise MountError(f"{mountpoint} is not mounted")
    try:
        return path, int(os.getxattr(path, "user.bakfs.pid"))
    except OSError:
        raise MountError(f"{mountpoint} is not a bakfs mount") from None


def refresh(mountpoint: str) -> tuple[int, int]:
    """Make a running mount list the store now (backups made elsewhere appear at once).
    Returns the backups and volumes it shows afterwards."""
    path, _pid = _daemon_of(mountpoint)
    try:
        os.setxattr(path, REFRESH_XATTR, b"1")
    except OSError as exc:
        raise MountError(f"{mountpoint}: the refresh failed ({exc.strerror}); the daemon's log "
                         "says why") from None
    volumes = [e for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")
               and e.name != INCOMING]
    backups = sum(1 for v in volumes for e in os.scandir(v.path) if e.name != LATEST)
    return backups, len(volumes)


def unmount(mountpoint: str, *, force: bool, timeout: float = 60.0) -> None:
    """Unmount and wait for the daemon to exit; refused while backups are being written into
    incoming/ unless `force` (which abandons them)."""
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
        if not is_bakfs_mount_process(pid):
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
            raise MountError(_refusal(mountpoint, path, result.stderr.strip()))
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise MountError(f"the daemon (pid {pid}) did not exit in {timeout:.0f} s")
        time.sleep(0.05)
    if os.path.ismount(path):  # the daemon died without unmounting
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def _refusal(mountpoint: str, path: Path, stderr: str) -> str:
    """Why fusermount could not unmount, in the operator's terms: backups attached from the
    mount (`bakfs attach`) keep it busy until they are detached, and --force would pull the
    disk from under their file systems."""
    attached: list[tuple[str, str]] = []
    with contextlib.suppress(BakfsError, OSError):  # no losetup here: the plain reason
        attached = attached_from(path)
    if attached:
        shown = ", ".join(f"{device} ({name})" for device, name in attached)
        commands = "; ".join(f"bakfs detach {device}" for device, _name in attached)
        return (f"{mountpoint} is busy: {len(attached)} backup(s) are attached from it as "
                f"loop devices: {shown}. Detach them first ({commands}: it unmounts their "
                "partitions too), then bakfs umount")
    return (f"fusermount3 could not unmount {mountpoint}: {stderr} (--force unmounts with "
            "files open)")


def is_bakfs_mount_process(pid: int) -> bool:
    """Whether `pid`, as this process sees it, runs `bakfs ... mount` (a pid read from a
    mount's xattr belongs to the daemon's PID namespace, which may not be ours)."""
    argv = command_line(pid)
    return argv is not None and "mount" in argv and any("bakfs" in a for a in argv)
