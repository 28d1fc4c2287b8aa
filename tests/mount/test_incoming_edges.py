"""Writing into incoming/ the ways users do (issue 14, items 7 and 8): cp of sparse images
(holes inside and at the end), a failing ftruncate, an empty file, a volume named like the
mount's own directory, and a full backup when the newest backup cannot be a parent."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.cinder import naming
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.mount.fixtures import KiB, Mount, base_env

SIZE = 2 * 1024 * KiB + 333


@pytest.fixture
def env(rgw: S3Server, bucket_name: str, s3_store: S3Store, tmp_path: Path) -> dict[str, str]:
    return base_env(rgw, bucket_name, tmp_path)


def _sparse_image(path: Path, seed: int) -> bytes:
    """Data, a 700 KiB hole, data, and a hole of 300 KiB + 333 at the end: the file system
    keeps the holes, so cp seeks over the first and ends with ftruncate."""
    rng = random.Random(seed)
    head, middle = rng.randbytes(512 * KiB), rng.randbytes(512 * KiB)
    with open(path, "wb") as f:
        f.write(head)
        f.seek(512 * KiB + 700 * KiB)
        f.write(middle)
        f.truncate(SIZE)
    data = path.read_bytes()
    assert os.stat(path).st_blocks * 512 < SIZE - 512 * KiB  # really sparse
    return data


@pytest.mark.parametrize("sparse", ["always", "auto"])
def test_cp_of_a_sparse_image(env: dict[str, str], tmp_path: Path, s3_store: S3Store,
                              start_mount: Callable[[dict[str, str]], Mount],
                              sparse: str) -> None:
    mount = start_mount(env)
    image = tmp_path / "sparse.img"
    data = _sparse_image(image, 1)
    result = subprocess.run(["cp", f"--sparse={sparse}", str(image),
                             str(mount.path / "incoming" / "vol-cp")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(find_backups(s3_store, "vol-cp")) == 1
    assert (mount.path / "vol-cp" / "latest").read_bytes() == data


def test_a_failed_ftruncate_is_reported_and_nothing_is_committed(
        env: dict[str, str], s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    fd = os.open(mount.path / "incoming" / "vol-tr", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"t" * 300_000)
        with pytest.raises(OSError) as info:
            os.ftruncate(fd, 100_000)  # taking written bytes back: refused
        assert info.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError) as closed:
            os.close(fd)
    assert closed.value.errno == errno.EIO  # and the close says the backup failed
    assert find_backups(s3_store, "vol-tr") == []
    assert "a backup cannot take bytes back" in mount.log_text()


def test_an_empty_file_fails_at_close_and_incoming_is_no_volume_name(
        env: dict[str, str], s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    with pytest.raises(OSError) as info:
        open(mount.path / "incoming" / "vol-empty", "wb").close()
    assert info.value.errno == errno.EIO
    dd = subprocess.run(["dd", "if=/dev/null", f"of={mount.path / 'incoming' / 'vol-empty'}"],
                        capture_output=True, text=True, timeout=60)
    assert dd.returncode != 0 and "Input/output error" in dd.stderr
    assert find_backups(s3_store, "vol-empty") == []
    assert "an empty file makes no backup" in mount.log_text()
    assert os.listdir(mount.path / "incoming") == []
    with pytest.raises(OSError) as info:
        open(mount.path / "incoming" / "incoming", "wb").close()
    assert info.value.errno == errno.EINVAL


def test_full_through_the_mount_when_the_newest_backup_cannot_be_a_parent(
        env: dict[str, str], tmp_path: Path, s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    incoming = mount.path / "incoming"
    (incoming / "vol-u").write_bytes(b"\1" * 100_000)
    ref, = find_backups(s3_store, "vol-u")
    s3_store.put(naming.sha256file_name(ref.prefix), b"{damaged")  # the parent's hashes
    with pytest.raises(OSError) as info:
        open(incoming / "vol-u", "wb").close()
    assert info.value.errno == errno.EIO
    assert "write incoming/vol-u.full to make a full backup" in mount.log_text()
    (incoming / "vol-u.full").write_bytes(b"\2" * 50_000)  # another size too: fine, full
    assert os.listdir(incoming) == []
    metas = [load_metadata(s3_store, r) for r in find_backups(s3_store, "vol-u")]
    assert len(metas) == 2 and all(m.parent_id is None for m in metas)
    assert (mount.path / "vol-u" / "latest").read_bytes() == b"\2" * 50_000
