"""Who may read a mount (issue 14, item 10): backups are whole disks, so even with
`-o allow_other` a user outside the configured group is refused by the kernel
(default_permissions), one inside it reads; and mounting over a non-empty directory warns."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Server
from tests.mount.fixtures import KiB, base_env, unmount, wait_mounted

NOBODY = 65534  # nobody:nogroup on Debian


@contextlib.contextmanager
def _mounted(env: dict[str, str], path: Path, log: Path, *options: str) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bakfs", "-v", "mount", "--foreground", str(path),
             *options], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_mounted(path, process, log)
        yield
    finally:
        unmount(path, process)
    assert "Traceback" not in log.read_text()


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, user=NOBODY, group=NOBODY, extra_groups=[], text=True,
                          capture_output=True, timeout=60)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="bakfs-perm-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_other_users_are_refused_unless_the_configuration_lets_them_in(
        rgw: S3Server, bucket_name: str, s3_store: object, tmp_path: Path,
        public_dir: Path) -> None:
    env = base_env(rgw, bucket_name, tmp_path)
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x42" * (300 * KiB))
    made = subprocess.run([sys.executable, "-m", "bakfs", "backup", str(image), "--volume",
                           "vol-p", "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["backup_id"]
    mnt = public_dir / "mnt"
    mnt.mkdir()
    (mnt / "left-here").write_text("hidden while mounted")
    latest = mnt / "vol-p" / "latest"

    with _mounted(env, mnt, tmp_path / "default.log", "-o", "allow_other"):
        st = os.stat(latest)
        assert stat.S_IMODE(st.st_mode) == 0o440 and st.st_uid == 0
        assert st.st_gid == 6  # disk
        assert stat.S_IMODE(os.stat(mnt / "incoming").st_mode) == 0o750
        denied = _as_nobody("head", "-c", "16", str(latest))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        listed = _as_nobody("ls", str(mnt / "vol-p"))
        assert listed.returncode != 0 and "Permission denied" in listed.stderr
        written = _as_nobody("dd", "if=/dev/zero", f"of={mnt / 'incoming' / 'vol-x'}",
                             "count=1")
        assert written.returncode != 0
        assert latest.read_bytes()[:1] == b"\x42"  # root reads
    assert "is not empty: its 1 entries are hidden" in (tmp_path / "default.log").read_text()

    with _mounted({**env, "BAKFS_MOUNT_GROUP": "nogroup"}, mnt, tmp_path / "group.log",
                  "-o", "allow_other"):
        allowed = _as_nobody("head", "-c", "4", str(mnt / "vol-p" / "latest"))
        assert allowed.returncode == 0 and allowed.stdout == "BBBB", allowed.stderr
        names = _as_nobody("ls", str(mnt / "vol-p")).stdout.split()
        assert any(n.endswith(backup_id) for n in names)
        refused = _as_nobody("dd", "if=/dev/zero", f"of={mnt / 'incoming' / 'vol-x'}",
                             "count=1")  # reading is not writing
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
