"""File-level restore: `bakfs attach BACKUP` makes a backup file of a running bakfs mount a
read-only loop device, exposes its partitions and mounts their file systems read-only;
`bakfs detach` undoes all of it.

Reading a file in an attached partition reads only the blocks under it, so the mount
fetches only the objects under those blocks. The loop device uses direct I/O on the backup
file: no second copy in the page cache, and no kernel read-ahead past what the file system
asked for. Partitions come from the kernel's scan (`losetup --partscan`); a kernel without
that partition table's parser gets them from userspace (`partx --add`, libblkid's parser).
File systems are mounted `ro,nodev,nosuid,noexec`, without replaying a journal (the backup
of a running machine has an unclean one, and the device is read-only anyway).

An attach that fails part way undoes what it did: nothing stays attached or mounted.
Runs in the user's process with root's rights (losetup, mount), like `bakfs.mount.control`.
Blocking code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bakfs.errors import AttachError, BackupNotFound
from bakfs.mount.namespace import INCOMING, REFRESH_XATTR
from bakfs.procfs import MountEntry, mounts

ATTACH_ROOT = Path("/run/bakfs/attach")  # DIR/<backup id>/p<N> unless --dir
FUSE_TYPE = "fuse.bakfs"
BACKUP_XATTR = "user.bakfs.backup_id"
SECTOR = 512
# file systems whose read-only mount would replay a journal unless told not to
NO_REPLAY = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery"}
NOT_MOUNTABLE = {"swap": "a swap area", "LVM2_member": "an LVM physical volume (vgscan, "
                 "vgchange -ay, then mount its logical volumes read-only)",
                 "crypto_LUKS": "LUKS-encrypted (cryptsetup open --readonly, then mount)",
                 "linux_raid_member": "a RAID member (mdadm --assemble --readonly)"}
PARTITION_WAIT = 5.0  # seconds for partition device nodes to appear


@dataclasses.dataclass
class Partition:
    number: int
    device: str
    start: int  # bytes from the start of the disk
    size: int
    fstype: str | None = None
    label: str | None = None
    mountpoint: str | None = None
    note: str | None = None  # why it is not mounted


@dataclasses.dataclass
class Attached:
    backup_id: str
    backup_file: str
    device: str
    directory: str
    partitions: list[Partition]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _run(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise AttachError(f"{what}: {' '.join(argv[:1])} says: "
                          f"{result.stderr.strip() or f'exit code {result.returncode}'}")
    return result.stdout


# -- finding things -------------------------------------------------------------------------

def find_mount(mountpoint: str | None) -> Path:
    """The bakfs mount to use: the one given, or the only one running."""
    bakfs_mounts = [m.mountpoint for m in mounts() if m.fstype == FUSE_TYPE]
    if mountpoint is not None:
        path = Path(mountpoint).resolve()
        if str(path) not in bakfs_mounts:
            raise AttachError(f"{mountpoint} is not a bakfs mount")
        return path
    if not bakfs_mounts:
        raise AttachError("no bakfs mount is running: mount one first (bakfs mount "
                          "/mnt/backups), or name it with --mount")
    if len(set(bakfs_mounts)) > 1:
        raise AttachError(f"several bakfs mounts ({', '.join(sorted(set(bakfs_mounts)))}): "
                          "choose one with --mount")
    return Path(bakfs_mounts[0])


def _backup_files(mount: Path, backup_id: str) -> list[Path]:
    found = []
    for volume in os.scandir(mount):
        if volume.name.startswith(".") or volume.name == INCOMING or not volume.is_dir():
            continue
        found += [Path(e.path) for e in os.scandir(volume.path)
                  if e.name.endswith(f"-{backup_id}") and e.is_file()]
    return found


def find_backup_file(mount: Path, backup: str) -> tuple[Path, str]:
    """The backup's file in the mount and its id. BACKUP is an id, or a path to a backup
    file (`<volume>/latest` relative to the mount, too)."""
    for candidate in (Path(backup), mount / backup):
        if "/" in backup and candidate.is_file():
            path = candidate.resolve()
            try:
                return path, os.getxattr(path, BACKUP_XATTR).decode()
            except OSError:
                raise AttachError(f"{backup} is not a backup file of a bakfs mount") from None
    files = _backup_files(mount, backup)
    if not files:  # made elsewhere moments ago? ask the mount to list the store
        with contextlib.suppress(OSError):
            os.setxattr(mount, REFRESH_XATTR, b"1")
        files = _backup_files(mount, backup)
    if not files:
        raise BackupNotFound(f"no backup {backup} in the bakfs mount at {mount}")
    return files[0], backup


def loop_devices() -> list[dict[str, Any]]:
    """Every loop device in use, as `losetup --list --json` tells (name, back-file, ...)."""
    out = _run(["losetup", "--list", "--json"], "listing loop devices")
    return list(json.loads(out).get("loopdevices", [])) if out.strip() else []


def _partition_dirs(device: str) -> list[tuple[int, str]]:
    """(number, /dev path) of the partitions the kernel knows on `device`."""
    name = Path(device).name
    sys_dir = Path("/sys/block") / name
    found = []
    for entry in sys_dir.glob(f"{name}p*"):
        with contextlib.suppress(OSError, ValueError):
            found.append((int((entry / "partition").read_text()), f"/dev/{entry.name}"))
    return sorted(found)


def _probe(device: str) -> dict[str, str]:
    """What libblkid finds on a device (TYPE, LABEL, PTTYPE, ...); {} for nothing."""
    result = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True,
                            text=True)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def _partitions(device: str) -> list[Partition]:
    """The device's partitions, asking userspace to add them when the kernel's scan found
    none (a kernel built without that partition table's parser)."""
    if not _partition_dirs(device):
        subprocess.run(["partx", "--add", device], capture_output=True)
    deadline = time.monotonic() + PARTITION_WAIT
    numbered = _partition_dirs(device)
    while numbered and not all(Path(dev).exists() for _n, dev in numbered):
        if time.monotonic() > deadline:
            raise AttachError(f"the partitions of {device} did not appear under /dev")
        time.sleep(0.05)
        numbered = _partition_dirs(device)
    parts = []
    for number, dev in numbered:
        sys_dir = Path("/sys/block") / Path(device).name / Path(dev).name
        start = int((sys_dir / "start").read_text()) * SECTOR
        size = int((sys_dir / "size").read_text()) * SECTOR
        parts.append(Partition(number, dev, start, size))
    return parts


# -- attach ---------------------------------------------------------------------------------

def attach(backup: str, *, mountpoint: str | None = None,
           directory: str | None = None) -> Attached:
    """Attach a backup of a running bakfs mount; see the module docstring."""
    mount = find_mount(mountpoint)
    backup_file, backup_id = find_backup_file(mount, backup)
    for loop in loop_devices():
        if loop.get("back-file") == str(backup_file):
            raise AttachError(f"backup {backup_id} is already attached as {loop['name']} "
                              f"(bakfs detach {backup_id})")
    base = Path(directory) if directory else ATTACH_ROOT / backup_id
    if base.exists() and (not base.is_dir() or os.path.ismount(base) or any(base.iterdir())):
        raise AttachError(f"{base} is in use (a mount point, or not empty): choose another "
                          "directory with --dir")
    device = _run(["losetup", "--find", "--show", "--read-only", "--partscan",
                   "--direct-io=on", str(backup_file)], f"attaching {backup_file}").strip()
    made_base = not base.exists()
    attached = Attached(backup_id, str(backup_file), device, str(base), [])
    try:
        attached.partitions = _partitions(device)
        if not attached.partitions:
            raise AttachError(_not_partitioned(backup_id, device, backup_file))
        base.mkdir(parents=True, exist_ok=True)
        for part in attached.partitions:
            _mount_partition(part, base)
    except BaseException:
        _undo(attached, made_base)
        raise
    return attached


def _not_partitioned(backup_id: str, device: str, backup_file: Path) -> str:
    found = _probe(device)
    if found.get("TYPE"):
        return (f"backup {backup_id} is not a partitioned disk: it holds a {found['TYPE']} "
                f"file system directly (mount it with: mount -o ro,loop {backup_file} DIR)")
    return (f"backup {backup_id} is not a partitioned disk: no partition table (and no file "
            "system) found on it")


def _mount_partition(part: Partition, base: Path) -> None:
    """Mount one partition's file system read-only under `base`, or say why not."""
    found = _probe(part.device)
    part.fstype = found.get("TYPE")
    part.label = found.get("LABEL") or found.get("PARTLABEL")
    if part.fstype is None:
        part.note = "no file system found"
        return
    if part.fstype in NOT_MOUNTABLE:
        part.note = NOT_MOUNTABLE[part.fstype]
        return
    target = base / f"p{part.number}"
    target.mkdir(exist_ok=True)
    options = ",".join(["ro", "nodev", "nosuid", "noexec"]
                       + ([NO_REPLAY[part.fstype]] if part.fstype in NO_REPLAY else []))
    result = subprocess.run(["mount", "-t", part.fstype, "-o", options, part.device,
                             str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        with contextlib.suppress(OSError):
            target.rmdir()
        part.note = f"mount failed: {result.stderr.strip()}"
        return
    part.mountpoint = str(target)


def _undo(attached: Attached, remove_base: bool) -> None:
    """Best-effort rollback of a failed attach: unmount, remove directories, detach."""
    for part in attached.partitions:
        if part.mountpoint:
            subprocess.run(["umount", part.mountpoint], capture_output=True)
            with contextlib.suppress(OSError):
                Path(part.mountpoint).rmdir()
    if remove_base:
        with contextlib.suppress(OSError):
            Path(attached.directory).rmdir()
    subprocess.run(["losetup", "--detach", attached.device], capture_output=True)


# -- detach ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Detached:
    device: str
    backup_file: str
    unmounted: list[str]


def _attached_backups(mount: Path | None = None) -> list[dict[str, Any]]:
    """The loop devices whose backing file is in a bakfs mount (in the one at `mount`)."""
    roots = [m.mountpoint.rstrip("/") + "/" for m in mounts() if m.fstype == FUSE_TYPE]
    if mount is not None:
        wanted = os.path.realpath(mount).rstrip("/") + "/"
        roots = [root for root in roots if root == wanted]
    return [loop for loop in loop_devices()
            if any(str(loop.get("back-file") or "").startswith(r) for r in roots)]


def attached_from(mount: Path) -> list[tuple[str, str]]:
    """(loop device, backup file name) of each backup attached from the bakfs mount at
    `mount`: what keeps the mount busy until `bakfs detach`."""
    return [(str(loop["name"]), Path(loop["back-file"]).name)
            for loop in _attached_backups(mount)]


def _mounts_of(device: str) -> list[MountEntry]:
    """Mounts of the device's partitions (and of the device itself), newest first."""
    names = {device} | {dev for _n, dev in _partition_dirs(device)}
    return [m for m in reversed(mounts()) if m.source in names]


def detach(what: str | None, *, lazy: bool = False) -> list[Detached]:
    """Undo attaches: of one backup (its id or file), one loop device, one attach
    directory, or every attached backup (`what` None). Refused while a file system is busy
    unless `lazy` (then it goes away once the last file is closed)."""
    loops = _attached_backups()
    if what is not None:
        where = os.path.abspath(what).rstrip("/") + "/"
        loops = [loop for loop in loops
                 if loop["name"] == what or loop["back-file"].endswith(f"-{what}")
                 or loop["back-file"] == os.path.abspath(what)
                 or any(m.mountpoint.startswith(where) for m in _mounts_of(loop["name"]))]
        if not loops:
            raise AttachError(f"nothing attached for {what} (bakfs attach lists what it "
                              "attaches; losetup --list shows loop devices)")
    done = []
    for loop in loops:
        device = loop["name"]
        unmounted = []
        for entry in _mounts_of(device):
            argv = ["umount", "--lazy", entry.mountpoint] if lazy else ["umount",
                                                                         entry.mountpoint]
            result = subprocess.run(argv, capture_output=True, text=True)
            if result.returncode != 0:
                raise AttachError(f"{entry.mountpoint} is busy ({result.stderr.strip()}): "
                                  "close the files open under it (fuser -vm "
                                  f"{entry.mountpoint}) and run bakfs detach again, or "
                                  "detach --lazy")
            unmounted.append(entry.mountpoint)
            _remove_dirs(Path(entry.mountpoint))
        _run(["losetup", "--detach", device], f"detaching {device}")
        done.append(Detached(device, loop["back-file"], unmounted))
    return done


def _remove_dirs(mountpoint: Path) -> None:
    """Remove an attach's partition directory, and its backup directory under ATTACH_ROOT
    when that is empty now."""
    with contextlib.suppress(OSError):
        mountpoint.rmdir()
        if mountpoint.parent.parent == ATTACH_ROOT:
            mountpoint.parent.rmdir()
