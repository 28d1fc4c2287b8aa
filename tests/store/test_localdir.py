"""What only the embedded local store has to show: atomic files, MD5 kept, safe keys."""

import os
from pathlib import Path

import pytest

from bakfs.errors import IntegrityError, ObjectMissing, StoreRefused
from bakfs.store.localdir import MD5_XATTR, LocalStore


def test_layout_is_bucket_then_key(local_store: LocalStore, tmp_path: Path) -> None:
    local_store.put("volume_v/t/obj", b"data")
    assert (tmp_path / "store" / "volumebackups" / "volume_v" / "t" / "obj").read_bytes() == b"data"


def test_damaged_file_is_detected_by_its_md5(local_store: LocalStore) -> None:
    local_store.put("k", b"good data")
    path = local_store.path / "k"
    assert os.getxattr(path, MD5_XATTR)
    with open(path, "r+b") as f:
        f.write(b"bad!")
    with pytest.raises(IntegrityError, match="damaged"):
        local_store.get("k")


def test_temp_files_are_never_listed(local_store: LocalStore) -> None:
    local_store.put("dir/k", b"x")
    (local_store.path / "dir" / ".tmp-leftover").write_bytes(b"half")
    assert [i.key for i in local_store.list("")] == ["dir/k"]


@pytest.mark.parametrize("key", ["", "../escape", "a//b", "a/./b", "/abs", "a/.hidden"])
def test_unsafe_keys_are_refused(local_store: LocalStore, key: str) -> None:
    with pytest.raises(StoreRefused):
        local_store.put(key, b"x")


def test_empty_directories_go_with_their_last_object(local_store: LocalStore) -> None:
    local_store.put("volume_v/t/obj", b"x")
    local_store.delete("volume_v/t/obj")
    assert list(local_store.path.iterdir()) == []


def test_bucket_is_created_only_when_allowed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "nobucket", create_bucket=False)
    with pytest.raises(ObjectMissing, match="create_bucket is false"):
        store.ensure_bucket()
    with pytest.raises(ObjectMissing):
        store.put("k", b"x")
