"""What Linux's /proc says about processes and mounts, read in one place.

Used to tell a writer that closed its file from one being killed (its descriptors closed by
the kernel), a live lease holder from a dead one, and a bakfs daemon from a reused pid.
Every function answers for a process that is gone, or a /proc it cannot read, as documented
instead of raising. Blocking code (file reads); callers on trio run it through
`bakfs.threads`. Knows nothing of bakfs's other modules.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket

PF_EXITING = 0x4  # include/linux/sched.h: the task is exiting


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: index 0 is field 3 of stat(5)
    (the state), so field N is at N - 3. None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    _comm, sep, rest = text.rpartition(")")  # the name may hold spaces and ')'
    return rest.split() if sep else None


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22), '?' when unknown:
    with the pid it tells a process apart from a later one that reused the pid."""
    fields = stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else "?"


def process_identity(pid: int | None = None) -> str:
    """host:pid:start-time of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid)}"


def process_alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it only waits to be reaped)."""
    fields = stat_fields(pid)
    return fields is not None and bool(fields) and fields[0] != "Z"


def process_killed(pid: int) -> bool:
    """True when `pid` is exiting because of a signal (its files are being closed by the
    kernel, not by the program): PF_EXITING in its flags (field 9) and a signal in its exit
    code (field 52)."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 7:
        return False
    flags = int(fields[6])
    exit_code = int(fields[49]) if len(fields) > 49 else 0
    return bool(flags & PF_EXITING) and bool(exit_code & 0x7F)


def holds_open(pid: int, path: str) -> bool:
    """True when process `pid` has `path` open. Unknown (no access to its fd directory)
    counts as not held."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") == path:
                return True
        except OSError:
            continue
    return False


def command_line(pid: int) -> list[str] | None:
    """The process's argv as this process sees it, None when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def mount_device(mountpoint: str) -> str | None:
    """The device number (major:minor) of the newest mount at `mountpoint` (an absolute
    path), from /proc/self/mountinfo: no stat() of the mount itself, which would ask its
    FUSE daemon."""
    try:
        with open("/proc/self/mountinfo") as f:
            devices = [fields[2] for line in f if len(fields := line.split()) > 4
                       and fields[4] == mountpoint]
    except OSError:
        return None
    return devices[-1] if devices else None


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    device: str  # major:minor
    mountpoint: str
    fstype: str
    source: str


def mounts() -> list[MountEntry]:
    """Every mount this process sees, oldest first (octal escapes such as \\040 decoded)."""
    def unescape(text: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)

    entries = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                head, _, tail = line.partition(" - ")
                fields, rest = head.split(), tail.split()
                if len(fields) > 4 and len(rest) > 1:
                    entries.append(MountEntry(fields[2], unescape(fields[4]), rest[0],
                                              unescape(rest[1])))
    except OSError:
        return []
    return entries
