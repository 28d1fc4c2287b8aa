"""The mount's namespace without FUSE: what a list of backups looks like as a tree."""

from __future__ import annotations

import dataclasses

import pytest

from bakfs.errors import FormatError
from bakfs.mount.namespace import (
    INCOMING,
    LATEST,
    METRICS,
    ROOT_INODE,
    STATUS,
    Tree,
    backup_file_name,
    incoming_target,
)

DAY = 86400.0


@dataclasses.dataclass
class FakeBackup:
    """A `BackupFile` with nothing behind it."""

    backup_id: str
    volume_id: str
    size: int = 1 << 20
    created: float = 1.7e9
    depth: int = 1

    def opened(self) -> None:
        pass

    def closed(self) -> None:
        pass

    async def read(self, offset: int, size: int, stream: object) -> bytes:
        return bytes(size)

    async def held(self) -> int:
        return self.size

    def xattrs(self, served: int) -> dict[str, str]:
        return {}


def names(tree: Tree, inode: int) -> list[str]:
    return [n.name for n in tree.listing(inode)]


def test_a_fresh_tree_has_the_special_names_only() -> None:
    tree = Tree(started=100.0)
    assert names(tree, ROOT_INODE) == [METRICS, STATUS, INCOMING]
    assert tree.lookup(ROOT_INODE, INCOMING) is tree.incoming
    assert tree.backups() == []


def test_backups_show_per_volume_sorted_by_date_with_latest() -> None:
    tree = Tree(started=100.0)
    full = FakeBackup("full", "vol-a", created=1.7e9)
    incr = FakeBackup("incr", "vol-a", created=1.7e9 + DAY, depth=2)
    other = FakeBackup("other", "vol-b")
    tree.sync([incr, other, full])
    assert names(tree, ROOT_INODE) == [METRICS, STATUS, INCOMING, "vol-a", "vol-b"]
    volume = tree.lookup(ROOT_INODE, "vol-a")
    assert volume is not None and volume.is_dir and volume.mtime == incr.created
    assert names(tree, volume.inode) == [backup_file_name(full), backup_file_name(incr), LATEST]
    latest = tree.lookup(volume.inode, LATEST)
    assert latest is not None and latest.target == backup_file_name(incr)
    node = tree.lookup(volume.inode, backup_file_name(full))
    assert node is not None and node.backup is full and node.size == full.size
    assert backup_file_name(full).endswith("Z-full")


def test_same_instant_the_deeper_backup_is_latest() -> None:
    tree = Tree(started=0.0)
    tree.sync([FakeBackup("child", "v", depth=2), FakeBackup("parent", "v", depth=1)])
    volume = tree.lookup(ROOT_INODE, "v")
    assert volume is not None
    assert tree.lookup(volume.inode, LATEST).target.endswith("-child")  # type: ignore[union-attr]


def test_inodes_are_stable_and_gone_backups_and_volumes_disappear() -> None:
    tree = Tree(started=0.0)
    a1, a2, b1 = FakeBackup("a1", "a"), FakeBackup("a2", "a", created=2e9), FakeBackup("b1", "b")
    tree.sync([a1, a2, b1])
    volume = tree.lookup(ROOT_INODE, "a")
    assert volume is not None
    inode = tree.lookup(volume.inode, backup_file_name(a1)).inode  # type: ignore[union-attr]
    tree.sync([a1])
    assert tree.lookup(ROOT_INODE, "b") is None
    assert names(tree, volume.inode) == [backup_file_name(a1), LATEST]
    assert tree.lookup(volume.inode, backup_file_name(a1)).inode == inode  # type: ignore[union-attr]
    tree.sync([a1, b1])
    b_again = tree.lookup(ROOT_INODE, "b")
    assert b_again is not None and names(tree, b_again.inode)[0] == backup_file_name(b1)
    tree.sync([])
    assert names(tree, ROOT_INODE) == [METRICS, STATUS, INCOMING]


def test_volumes_that_would_hide_the_special_names_are_not_shown() -> None:
    tree = Tree(started=0.0)
    tree.sync([FakeBackup("x", INCOMING), FakeBackup("y", ".hidden"), FakeBackup("z", "ok")])
    assert names(tree, ROOT_INODE) == [METRICS, STATUS, INCOMING, "ok"]
    assert tree.lookup(ROOT_INODE, INCOMING) is tree.incoming


def test_incoming_files_come_and_go() -> None:
    tree = Tree(started=0.0)
    node = tree.add_incoming("vol-new")
    assert node.kind == "incoming" and node.volume_id == "vol-new"
    assert names(tree, tree.incoming.inode) == ["vol-new"]
    tree.remove_incoming("vol-new")
    assert names(tree, tree.incoming.inode) == []
    tree.remove_incoming("vol-new")  # twice is fine


def test_a_backup_whose_size_changed_is_measured_again() -> None:
    tree = Tree(started=0.0)
    tree.sync([FakeBackup("b", "v", size=10)])
    node = tree.backups()[0]
    node.held = 5
    tree.sync([FakeBackup("b", "v", size=10)])
    assert node.held == 5
    tree.sync([FakeBackup("b", "v", size=20)])
    assert node.held is None and node.size == 20


def test_incoming_names() -> None:
    """incoming/<volume>.full asks for a full backup; `incoming` itself is refused, as a
    volume of that name could never be shown (issue 14, item 8)."""
    assert incoming_target("vol-1") == ("vol-1", False)
    assert incoming_target("vol-1.full") == ("vol-1", True)
    assert incoming_target("a.b") == ("a.b", False)
    for bad in ("incoming", "incoming.full", ".full", "..", "a/b", "x" * 200):
        with pytest.raises(FormatError):
            incoming_target(bad)
