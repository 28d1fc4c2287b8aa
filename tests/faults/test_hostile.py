"""Hostile input in the bucket: documents that lie, and an object that is a bomb. The running
mount, a fresh mount and a restore of another volume carry on; each bad backup is listed as
unreadable with its reason."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bakfs.catalog.discovery import BackupRef
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.faults.conftest import Report, peak_rss_mib, wrong_bytes
from tests.hostile import MUTATIONS, plant, plant_bomb, plant_sealed
from tests.mount.fixtures import KiB, Mount
from tests.peak_rss import run_with_peak_rss

SIZE = 1024 * KiB + 5
Make = Callable[[str, int, int], tuple[BackupRef, bytes]]
Start = Callable[[dict[str, str]], Mount]


def _bakfs(env: dict[str, str], tmp_path: Path,
           *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run bakfs; also its own peak RSS in MiB."""
    out, err = tmp_path / "out", tmp_path / "err"
    argv = [sys.executable, "-m", "bakfs", *args]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        code, rss = run_with_peak_rss(argv, env=env, stdout=stdout, stderr=stderr,
                                      report=tmp_path / "rss")
    return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text()), rss


def test_hostile_metadata(rgw: S3Server, env: dict[str, str], s3_store: S3Store,
                          make_backup: Make, start_mount: Start, tmp_path: Path,
                          report: Report) -> None:
    good, data = make_backup("vol-good", SIZE, 21)
    mount = start_mount({**env, "BAKFS_INDEX_REFRESH_INTERVAL": "3600"})
    planted = [plant(s3_store, "vol-evil", kind) for kind in MUTATIONS]
    planted.append(plant_sealed(s3_store, rgw.options(s3_store.bucket), "vol-evil"))
    refreshed = subprocess.run([sys.executable, "-m", "bakfs", "refresh", str(mount.path)],
                               env=env, capture_output=True, text=True, timeout=120)
    assert refreshed.returncode == 0, refreshed.stderr
    assert mount.process.poll() is None  # the running mount lives on
    status = (mount.path / ".status").read_text()
    assert f"unreadable backups: {len(planted)}" in status
    for bad in planted:
        line = next(ln for ln in status.splitlines() if bad.backup_id in ln)
        assert bad.reason in line, line
        assert bad.backup_id in mount.log_text()
    assert "vol-evil" not in os.listdir(mount.path)
    got = (mount.path / "vol-good" / "latest").read_bytes()
    wrong = wrong_bytes(got, data)
    rss = peak_rss_mib(mount.process.pid)

    fresh = start_mount({**env, "BAKFS_INDEX_PATH": str(tmp_path / "fresh-index"),
                         "BAKFS_CACHE_PATH": str(tmp_path / "fresh-cache")})
    wrong += wrong_bytes((fresh.path / "vol-good" / "latest").read_bytes(), data)
    rss = max(rss, peak_rss_mib(fresh.process.pid))

    other = {**env, "BAKFS_INDEX_PATH": str(tmp_path / "restore-index"),
             "BAKFS_CACHE_PATH": str(tmp_path / "restore-cache")}
    target = tmp_path / "restored.img"
    restored, restore_rss = _bakfs(other, tmp_path, "restore", good.backup_id, str(target))
    assert restored.returncode == 0, restored.stderr
    assert "Traceback" not in restored.stderr
    wrong += wrong_bytes(target.read_bytes(), data)
    listed, ls_rss = _bakfs(other, tmp_path, "ls", "vol-evil", "--json")
    assert listed.returncode == 0, listed.stderr
    kinds = {b["backup_id"]: b["kind"] for b in json.loads(listed.stdout)}
    assert {kinds[p.backup_id] for p in planted} == {"unreadable"}
    report.add("hostile-metadata", wrong, max(rss, restore_rss, ls_rss))


def test_decompression_bomb(env: dict[str, str], s3_store: S3Store, make_backup: Make,
                            start_mount: Start, report: Report) -> None:
    _ref, data = make_backup("vol-fine", 300 * KiB, 22)
    bomb = plant_bomb(s3_store, "vol-bomb", plain_size=2 << 30)
    mount = start_mount(env)
    path = next((mount.path / "vol-bomb").glob(f"*{bomb.backup_id}"))
    started = time.monotonic()
    try:
        with open(path, "rb") as f:
            f.read(4096)
        raise AssertionError("the bomb was served")
    except OSError as exc:
        assert exc.errno == errno.EIO
    assert time.monotonic() - started < 5
    assert "decompresses to more than 4096 bytes" in mount.log_text()
    assert re.search(r"^read errors: [1-9]", (mount.path / ".status").read_text(), re.M)
    got = (mount.path / "vol-fine" / "latest").read_bytes()
    report.add("decompression-bomb", wrong_bytes(got, data), peak_rss_mib(mount.process.pid))
