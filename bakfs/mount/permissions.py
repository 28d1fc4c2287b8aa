"""Who may read the mount: the owner, group and modes its files and directories show, which
the kernel enforces (the mount always has `default_permissions`).

Backups are whole disks: by default only root and the `disk` group read them (0440
root:disk when root mounts; the user and their group when a user does), only the owner
writes into `incoming/`, and nobody else gets in even with `-o allow_other`. `[mount]`
options change that.

Pure code but for the user and group look-up at start. Knows nothing of pyfuse3 or errno.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd

from bakfs.config import MountOptions
from bakfs.errors import MountError
from bakfs.mount.namespace import Node

ROOT_GROUP = "disk"


@dataclasses.dataclass(frozen=True)
class Permissions:
    uid: int
    gid: int
    file_mode: int = 0o440

    @property
    def dir_mode(self) -> int:
        """x wherever the files have r: who may read a backup may list its directory."""
        return self.file_mode & 0o444 | (self.file_mode & 0o444) >> 2

    def mode(self, node: Node, is_root: bool) -> int:
        """The permission bits of a node (its type bits are the caller's)."""
        if node.kind == "link":
            return 0o777
        if node.kind == "incoming":
            return 0o200
        if node.kind == "incoming_dir" or is_root:
            return self.dir_mode | 0o200  # the owner creates in incoming/, sets refresh
        if node.kind == "dir":
            return self.dir_mode
        return self.file_mode


def resolve(options: MountOptions) -> Permissions:
    """The configured owner and group as ids (MountError naming an unknown one)."""
    uid = os.getuid() if not options.owner else _id(options.owner, _uid, "user")
    if options.group:
        gid = _id(options.group, _gid, "group")
    elif uid == 0 and os.getuid() == 0:
        try:
            gid = grp.getgrnam(ROOT_GROUP).gr_gid
        except KeyError:
            gid = 0
    else:
        gid = os.getgid()
    return Permissions(uid, gid, options.file_mode_bits)


def _id(text: str, lookup: object, what: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return lookup(text)  # type: ignore[operator, no-any-return]
    except KeyError:
        raise MountError(f"mount.{'owner' if what == 'user' else 'group'}: no {what} "
                         f"{text!r} on this host") from None


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid
