"""The mount's namespace, without FUSE: which names exist, their inodes and attributes.

    /                       the root
    /.status                counters in readable text        (read-only, generated on open)
    /.metrics               the same in Prometheus text format
    /incoming/              write `incoming/<volume id>` to make a backup of that volume
    /<volume id>/           one directory per volume
        <stamp>-<backup id> one read-only file per complete backup (stamp sorts by date)
        latest              symlink to the newest backup

Inodes are stable across refreshes (keyed by what a node is), so the kernel's cached entries
stay valid. The FUSE adapter (`fuse_ops`) turns these plain dataclasses into pyfuse3 structs;
this module knows nothing of pyfuse3, errno, S3 or LMDB.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from typing import Literal

from bakfs.index import BackupRecord
from bakfs.tsm.catalog import TsmRecord

ROOT_INODE = 1
INCOMING = "incoming"
STATUS = ".status"
METRICS = ".metrics"
LATEST = "latest"
REFRESH_XATTR = "user.bakfs.refresh"  # set on the root: the mount lists the store now

Kind = Literal["dir", "backup", "link", "status", "incoming_dir", "incoming"]


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
    record: BackupRecord | None = None
    tsm: TsmRecord | None = None  # a backup kept in TSM, read through staging
    volume_id: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind in ("dir", "incoming_dir")


def backup_file_name(record: BackupRecord | TsmRecord) -> str:
    """`20261123T150605.123456Z-<backup id>`: `ls` sorts a volume's backups by creation time
    (microseconds, as backups can start within one second)."""
    when = datetime.fromtimestamp(backup_time(record), UTC)
    return f"{when:%Y%m%dT%H%M%S.%f}Z-{record.backup_id}"


def backup_time(record: BackupRecord | TsmRecord) -> float:
    """The backup's creation time: `created_at` when it parses, else the prefix stamp."""
    if isinstance(record, TsmRecord):
        when = record.created_at
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    try:
        when = datetime.fromisoformat(record.created_at)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError):
        return datetime.strptime(record.timestamp, "%Y%m%d%H%M%S").replace(
            tzinfo=UTC).timestamp()


def _order(record: BackupRecord | TsmRecord) -> tuple[float, int]:
    """Newest is latest: by creation time, then (same instant) by chain depth."""
    depth = 1 if isinstance(record, TsmRecord) else len(record.chain)
    return backup_time(record), depth


class Tree:
    """The namespace; `sync` makes it show a list of backup records."""

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

    def backup_node(self, backup_id: str) -> Node | None:
        inode = self._keys.get(("backup", backup_id))
        return None if inode is None else self.nodes.get(inode)

    def sync(self, records: list[BackupRecord],
             tsm_records: list[TsmRecord] | tuple[TsmRecord, ...] = ()) -> set[int]:
        """Show exactly these (readable) backups, S3 and TSM alike. Returns the inodes of
        directories whose entries changed."""
        changed: set[int] = set()
        by_volume: dict[str, list[BackupRecord | TsmRecord]] = {}
        for record in [*records, *tsm_records]:
            if record.volume_id in (INCOMING,) or record.volume_id.startswith("."):
                continue  # cannot be shown beside the special names
            by_volume.setdefault(record.volume_id, []).append(record)
        for name, inode in list(self.children[ROOT_INODE].items()):
            node = self.nodes[inode]
            if node.kind == "dir" and name not in by_volume:
                self._remove(inode)
                changed.add(ROOT_INODE)
        for volume_id, volume_records in by_volume.items():
            directory = self.lookup(ROOT_INODE, volume_id)
            if directory is None:
                directory = self._add(("volume", volume_id), volume_id, "dir", ROOT_INODE)
                directory.volume_id = volume_id
                changed.add(ROOT_INODE)
            changed |= self._sync_volume(directory, volume_records)
        return changed

    def _sync_volume(self, directory: Node,
                     records: list[BackupRecord | TsmRecord]) -> set[int]:
        wanted = {backup_file_name(r): r for r in records}
        before = set(self.children[directory.inode])
        for name, inode in list(self.children[directory.inode].items()):
            node = self.nodes[inode]
            if node.kind == "backup" and name not in wanted:
                self._remove(inode)
        newest: BackupRecord | TsmRecord | None = None
        for name, record in wanted.items():
            node = self.lookup(directory.inode, name)
            if node is None:
                node = self._add(("backup", record.backup_id), name, "backup", directory.inode)
            if isinstance(record, TsmRecord):
                node.tsm, node.held = record, record.size
            else:
                node.record = record
            node.volume_id = record.volume_id
            node.size = record.size
            node.mtime = backup_time(record)
            if newest is None or _order(record) > _order(newest):
                newest = record
        latest = self.lookup(directory.inode, LATEST)
        if newest is not None:
            if latest is None:
                latest = self._add(("latest", directory.name), LATEST, "link", directory.inode)
            latest.target = backup_file_name(newest)
            latest.mtime = backup_time(newest)
            directory.mtime = max(backup_time(r) for r in records)
        elif latest is not None:
            self._remove(latest.inode)
        after = set(self.children[directory.inode])
        return {directory.inode} if before != after else set()

    def add_incoming(self, volume_id: str) -> Node:
        node = self._add(("incoming", volume_id), volume_id, "incoming", self.incoming.inode)
        node.volume_id = volume_id
        return node

    def remove_incoming(self, volume_id: str) -> None:
        node = self.lookup(self.incoming.inode, volume_id)
        if node is not None:
            self._remove(node.inode)
