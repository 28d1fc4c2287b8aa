"""Two gateways on one bucket, standing in for two hosts: two real mounts with their own
state directories (index and cache) on one radosgw bucket. The store is the truth; each
gateway's index and cache are a local copy of it that a refresh brings up to date."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bakfs.catalog.discovery import find_backups
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.mount.fixtures import KiB, Mount, base_env

SIZE = 6 * 1024 * KiB  # 24 objects of 256 KiB


def _bakfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bakfs", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def _dd(source: Path, target: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(["dd", f"if={source}", f"of={target}", "bs=1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _files(mount: Mount, volume: str) -> list[Path]:
    """The volume's backup files in a mount, oldest first (`latest` left out)."""
    directory = mount.path / volume
    if not directory.exists():
        return []
    return [directory / n for n in sorted(os.listdir(directory)) if n != "latest"]


def _wait_for(what: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.2)


def test_two_gateways_on_one_bucket(rgw: S3Server, bucket_name: str, s3_store: S3Store,
                                    tmp_path: Path,
                                    start_mount: Callable[[dict[str, str]], Mount]) -> None:
    env_a = {**base_env(rgw, bucket_name, tmp_path / "a"), "BAKFS_INDEX_REFRESH_INTERVAL": "1"}
    env_b = {**base_env(rgw, bucket_name, tmp_path / "b"),
             "BAKFS_INDEX_REFRESH_INTERVAL": "3600"}
    a = start_mount(env_a)
    b = start_mount(env_b)
    rng = random.Random(3)
    images = []
    for n in range(4):
        image = tmp_path / f"image-{n}.img"
        image.write_bytes(rng.randbytes(SIZE // 2) + bytes(SIZE // 4) + rng.randbytes(SIZE // 4))
        images.append(image)

    # A backup written through B appears in A at A's refresh interval (1 s) ...
    writer = _dd(images[0], b.path / "incoming" / "vol-1")
    assert writer.wait(120) == 0, writer.communicate()[1]
    _wait_for(lambda: len(_files(a, "vol-1")) == 1)
    assert _files(a, "vol-1")[0].read_bytes() == images[0].read_bytes()
    # ... and one written through A appears in B (interval: an hour) after `bakfs refresh`
    writer = _dd(images[1], a.path / "incoming" / "vol-2")
    assert writer.wait(120) == 0, writer.communicate()[1]
    assert _files(b, "vol-2") == []
    result = _bakfs(env_b, "refresh", str(b.path))
    assert result.returncode == 0, result.stderr
    (file_b,) = _files(b, "vol-2")
    with open(file_b, "rb") as f:  # its head only: the rest stays out of B's cache
        assert f.read(4096) == images[1].read_bytes()[:4096]
    assert _bakfs(env_b, "verify", file_b.name.split("Z-", 1)[1]).returncode == 0

    # Two writers of one volume at once, one on each gateway: the volume's lease (a
    # conditional PUT in the store) lets the first commit; the second fails at once, EBUSY.
    with open(a.path / "incoming" / "vol-3", "wb") as first:
        first.write(images[2].read_bytes()[:SIZE // 2])
        second = _dd(images[3], b.path / "incoming" / "vol-3")
        assert second.wait(120) == 1
        assert "Device or resource busy" in second.communicate()[1]
        first.write(images[2].read_bytes()[SIZE // 2:])
    assert "is being backed up by" in b.log_text()  # who holds it, and until when
    (committed,) = find_backups(s3_store, "vol-3")
    # the chain stays sound: the loser makes the next backup, an incremental on the winner's
    result = _bakfs(env_b, "refresh", str(b.path))
    writer = _dd(images[3], b.path / "incoming" / "vol-3")
    assert writer.wait(120) == 0, writer.communicate()[1]
    listed = json.loads(_bakfs(env_b, "ls", "vol-3", "--json").stdout)
    assert [(x["kind"], x["parent_id"]) for x in listed] == [
        ("full", None), ("incremental", committed.backup_id)]
    for entry in listed:
        check = _bakfs(env_a, "verify", str(entry["backup_id"]), "--deep")
        assert check.returncode == 0 and "sound" in check.stdout, check.stderr
    result = _bakfs(env_a, "refresh", str(a.path))
    assert [f.read_bytes() for f in _files(a, "vol-3")] == [
        images[2].read_bytes(), images[3].read_bytes()]

    # A backup deleted through one gateway's host: the other, which still lists it, fails
    # the reads it cannot serve from its cache with EIO and says why; never other bytes.
    (backup_2,) = find_backups(s3_store, "vol-2")
    result = _bakfs(env_a, "delete", backup_2.backup_id)
    assert result.returncode == 0, result.stderr
    with open(file_b, "rb") as f:
        f.seek(SIZE - 64 * KiB)
        try:
            data = f.read(4096)
        except OSError as exc:
            assert exc.errno == errno.EIO
        else:  # only verified bytes of the backup as it was may ever come back
            raise AssertionError(f"read {len(data)} bytes of a deleted backup")
        f.seek(0)
        assert f.read(4096) == images[1].read_bytes()[:4096]  # verified, from B's cache
    assert "no such object" in b.log_text() or "NoSuchKey" in b.log_text()
    assert backup_2.backup_id in b.log_text() or "vol-2" in b.log_text()
    result = _bakfs(env_b, "refresh", str(b.path))
    assert _files(b, "vol-2") == []
    _wait_for(lambda: _files(a, "vol-2") == [])
