"""The mount's namespace, without FUSE: which names exist, their inodes and attributes.

    /                       the root
    /.status                counters in readable text        (read-only, generated on open)
    /.metrics               the same in Prometheus text format
    /incoming/              write `incoming/<volume id>` to make a backup of that volume
                            (`incoming/<volume id>.full`: a full backup of it)
    /<volume id>/           one directory per volume
        <stamp>-<backup id> one read-only file per complete backup (stamp sorts by date)
        latest              symlink to the newest backup

Inodes are stable across refreshes (keyed by what a node is), so the kernel's cached entries
stay valid. A backup's node carries the object that reads it (a `BackupFile`, made by
`bakfs.mount.readers`), whichever store keeps it. The FUSE adapter (`fuse_ops`) turns these
plain dataclasses into pyfuse3 structs; this module knows nothing of pyfuse3, errno, S3,
TSM or LMDB.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

from bakfs.cinder import naming
from bakfs.errors import FormatError

ROOT_INODE = 1
INCOMING = "incoming"
STATUS = ".status"
METRICS = ".metrics"
LATEST = "latest"
REFRESH_XATTR = "user.bakfs.refresh"  # set on the root: the mount lists the store now
FULL_SUFFIX = ".full"  # incoming/<volume id>.full: a full backup of that volume

Kind = Literal["dir", "backup", "link", "status", "incoming_dir", "incoming"]


class BackupFile(Protocol):
    """What the mount needs of a backup: what to show, and how to read it."""

    @property
    def backup_id(self) -> str: ...

    @property
    def volume_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def created(self) -> float:
        """Creation time, seconds since the epoch."""
        ...

    @property
    def depth(self) -> int:
        """Length of its chain (1 for a full backup): orders backups of the same instant."""
        ...

    def opened(self) -> None:
        """A file handle of it was opened."""

    def closed(self) -> None:
        """A file handle of it was closed."""

    async def read(self, offset: int, size: int, stream: object) -> bytes | memoryview:
        """Bytes [offset, offset + size) (fewer at its end); `stream` names the reader."""
        ...

    async def held(self) -> int:
        """Bytes that are not holes (for `du`)."""
        ...

    def xattrs(self, served: int) -> dict[str, str]:
        """Its extended attributes, given the bytes served of it so far."""
        ...


@dataclasses.dataclass
class Node:
    """One name in the tree. `size` is the file's length; `held` the bytes that are not
    holes (for `du`); times are seconds since the epoch."""

    inode: int
    name: str
    kind: Kind
    parent: int
    size: int = 0
    mtime: float = 0.0
    held: int | None = None
    target: str | None = None  # of a symlink
    backup: BackupFile | None = None  # of a backup file
    volume_id: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind in ("dir", "incoming_dir")


def backup_file_name(backup: BackupFile) -> str:
    """`20261123T150605.123456Z-<backup id>`: `ls` sorts a volume's backups by creation time
    (microseconds, as backups can start within one second)."""
    when = datetime.fromtimestamp(backup.created, UTC)
    return f"{when:%Y%m%dT%H%M%S.%f}Z-{backup.backup_id}"


def _order(backup: BackupFile) -> tuple[float, int]:
    """Newest is latest: by creation time, then (same instant) by chain depth."""
    return backup.created, backup.depth


def can_show(volume_id: str) -> bool:
    """Whether a volume's directory can stand beside the special names."""
    return volume_id != INCOMING and not volume_id.startswith(".")


def incoming_target(name: str) -> tuple[str, bool]:
    """(volume id, full?) of a file created in `incoming/`; FormatError when the name is no
    volume this mount could show (a bad id, or `incoming` itself)."""
    full = name.endswith(FULL_SUFFIX) and len(name) > len(FULL_SUFFIX)
    volume_id = name[:-len(FULL_SUFFIX)] if full else name
    naming.validate_id("volume", volume_id)
    if not can_show(volume_id):
        raise FormatError(f"a volume named {volume_id!r} could not be shown beside the "
                          "mount's own names; back it up with `bakfs backup`")
    return volume_id, full


class Tree:
    """The namespace; `sync` makes it show a list of backups."""

    def __init__(self, started: float) -> None:
        self._inodes = itertools.count(ROOT_INODE)
        self._keys: dict[tuple[str, str], int] = {}
        self.nodes: dict[int, Node] = {}
        self.children: dict[int, dict[str, int]] = {}
        self.started = started
        self.root = self._add(("root", ""), "", "dir", 0)
        self.incoming = self._add(("incoming", ""), INCOMING, "incoming_dir", ROOT_INODE)
        self._add(("status", STATUS), STATUS, "status", ROOT_INODE)
        self._add(("status", METRICS), METRICS, "status", ROOT_INODE)

    def _add(self, key: tuple[str, str], name: str, kind: Kind, parent: int) -> Node:
        inode = self._keys.get(key)
        if inode is None:
            inode = next(self._inodes)
            self._keys[key] = inode
        node = Node(inode, name, kind, parent, mtime=self.started)
        self.nodes[inode] = node
        if kind in ("dir", "incoming_dir"):
            self.children.setdefault(inode, {})
        if parent:
            self.children[parent][name] = inode
        return node

    def _remove(self, inode: int) -> None:
        node = self.nodes.pop(inode)
        for child in list(self.children.pop(inode, {}).values()):
            self._remove(child)
        siblings = self.children.get(node.parent)
        if siblings is not None and siblings.get(node.name) == inode:
            del siblings[node.name]

    def lookup(self, parent: int, name: str) -> Node | None:
        inode = self.children.get(parent, {}).get(name)
        return None if inode is None else self.nodes[inode]

    def node(self, inode: int) -> Node | None:
        return self.nodes.get(inode)

    def listing(self, inode: int) -> list[Node]:
        """A directory's entries in name order (stable, so readdir can resume by index)."""
        return [self.nodes[i] for _name, i in sorted(self.children.get(inode, {}).items())]

    def backups(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "backup"]

    def sync(self, backups: Sequence[BackupFile], pending: Collection[str] = ()) -> None:
        """Show exactly these (readable) backups, whichever store keeps them, and a directory
        for each `pending` volume (listed in the store, its backups not indexed yet), with
        what of it is known so far."""
        by_volume: dict[str, list[BackupFile]] = {v: [] for v in pending if can_show(v)}
        for backup in backups:
            if can_show(backup.volume_id):
                by_volume.setdefault(backup.volume_id, []).append(backup)
        for name, inode in list(self.children[ROOT_INODE].items()):
            if self.nodes[inode].kind == "dir" and name not in by_volume:
                self._remove(inode)
        for volume_id, volume_backups in by_volume.items():
            self.sync_volume(volume_id, volume_backups)

    def sync_volume(self, volume_id: str, backups: Sequence[BackupFile]) -> None:
        """Show exactly these backups in the volume's directory (made when missing)."""
        if not can_show(volume_id):
            return
        directory = self.lookup(ROOT_INODE, volume_id)
        if directory is None:
            directory = self._add(("volume", volume_id), volume_id, "dir", ROOT_INODE)
            directory.volume_id = volume_id
        self._sync_volume(directory, list(backups))

    def _sync_volume(self, directory: Node, backups: list[BackupFile]) -> None:
        wanted = {backup_file_name(b): b for b in backups}
        for name, inode in list(self.children[directory.inode].items()):
            if self.nodes[inode].kind == "backup" and name not in wanted:
                self._remove(inode)
        newest: BackupFile | None = None
        for name, backup in wanted.items():
            node = self.lookup(directory.inode, name)
            if node is None:
                node = self._add(("backup", backup.backup_id), name, "backup", directory.inode)
            if node.backup is None or node.backup.size != backup.size:
                node.held = None  # measured again
            node.backup = backup
            node.volume_id = backup.volume_id
            node.size = backup.size
            node.mtime = backup.created
            if newest is None or _order(backup) > _order(newest):
                newest = backup
        latest = self.lookup(directory.inode, LATEST)
        if newest is not None:
            if latest is None:
                latest = self._add(("latest", directory.name), LATEST, "link", directory.inode)
            latest.target = backup_file_name(newest)
            latest.mtime = newest.created
            directory.mtime = max(b.created for b in backups)
        elif latest is not None:
            self._remove(latest.inode)

    def add_incoming(self, volume_id: str, name: str | None = None) -> Node:
        """The file a backup of `volume_id` is being written to, as it was named."""
        name = name or volume_id
        node = self._add(("incoming", name), name, "incoming", self.incoming.inode)
        node.volume_id = volume_id
        return node

    def remove_incoming(self, volume_id: str) -> None:
        for node in self.listing(self.incoming.inode):
            if node.volume_id == volume_id:
                self._remove(node.inode)
