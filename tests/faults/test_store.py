"""The store misbehaving under a mount: refused, hanging, resetting mid-body, slow, away when
the mount starts, cut during a backup written into incoming/."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bakfs.catalog.discovery import BackupRef, find_backups
from bakfs.catalog.inventory import find_orphans
from bakfs.catalog.leases import read_lease
from bakfs.store import opening
from bakfs.store.s3 import S3Store
from tests.faults.conftest import Report, peak_rss_mib, wrong_bytes
from tests.mount.fixtures import KiB, Mount
from tests.mount.proxy import TcpProxy

SIZE = 1536 * KiB + 77
Make = Callable[[str, int, int], tuple[BackupRef, bytes]]
Start = Callable[[dict[str, str]], Mount]


def _read(path: Path) -> bytes | OSError:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        return exc


def _fails_then_heals(case: str, mode: str, proxied: dict[str, str], proxy: TcpProxy,
                      make_backup: Make, start_mount: Start, report: Report) -> None:
    """A fault makes a whole read fail with EIO (never wrong bytes); once it is over the same
    mount serves the right bytes."""
    _ref, data = make_backup(f"vol-{case}", SIZE, hash(case) & 0xFFFF)
    mount = start_mount(proxied)
    path = mount.path / f"vol-{case}" / "latest"
    if mode == "refuse":
        proxy.stop()
    else:
        proxy.mode = mode
    started = time.monotonic()
    failed = _read(path)
    assert isinstance(failed, OSError) and failed.errno == errno.EIO, failed
    assert time.monotonic() - started < 60
    text = mount.log_text()
    assert "cannot reach the store" in text and f"vol-{case}" in text
    if mode == "refuse":
        proxy.start()
    proxy.mode = "pass"
    got = _read(path)
    assert isinstance(got, bytes)
    report.add(case, wrong_bytes(got, data), peak_rss_mib(mount.process.pid))


def test_store_refused(proxied: dict[str, str], proxy: TcpProxy, make_backup: Make,
                       start_mount: Start, report: Report) -> None:
    _fails_then_heals("store-refused", "refuse", proxied, proxy, make_backup, start_mount,
                      report)


def test_store_hangs(proxied: dict[str, str], proxy: TcpProxy, make_backup: Make,
                     start_mount: Start, report: Report) -> None:
    _fails_then_heals("store-hangs", "hang", proxied, proxy, make_backup, start_mount, report)


def test_store_resets_always(proxied: dict[str, str], proxy: TcpProxy, make_backup: Make,
                             start_mount: Start, report: Report) -> None:
    _fails_then_heals("store-resets-always", "reset", proxied, proxy, make_backup,
                      start_mount, report)


@pytest.mark.parametrize("case", ["store-resets-once", "store-slow"])
def test_store_resets_once_or_is_slow(case: str, proxied: dict[str, str], proxy: TcpProxy,
                                      make_backup: Make, start_mount: Start,
                                      report: Report) -> None:
    _ref, data = make_backup("vol-x", SIZE, 7)
    mount = start_mount(proxied)
    proxy.mode = "reset-once" if case == "store-resets-once" else "slow"
    started = time.monotonic()
    got = _read(mount.path / "vol-x" / "latest")
    assert isinstance(got, bytes), got
    if case == "store-resets-once":
        assert proxy.resets == 1
    else:
        assert time.monotonic() - started > 0.5  # it really was slow
    report.add(case, wrong_bytes(got, data), peak_rss_mib(mount.process.pid))


def _bakfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bakfs", *args], env=env, text=True,
                          capture_output=True, timeout=120)


def test_store_away_at_mount(proxied: dict[str, str], proxy: TcpProxy, make_backup: Make,
                             start_mount: Start, report: Report) -> None:
    _ref, data = make_backup("vol-away", SIZE, 8)
    assert _bakfs(proxied, "index", "refresh").returncode == 0  # the index knows it
    proxy.stop()
    mount = start_mount(proxied)  # comes up from the index
    latest = mount.path / "vol-away" / "latest"
    failed = _read(latest)
    assert isinstance(failed, OSError) and failed.errno == errno.EIO
    later, later_data = make_backup("vol-later", 100 * KiB, 9)  # made elsewhere meanwhile
    proxy.start()
    time.sleep(opening.RETRY_AFTER)
    got = _read(latest)  # no object of it is cached: the store, opened again, serves it
    assert isinstance(got, bytes), got
    refreshed = _bakfs(proxied, "refresh", str(mount.path))
    assert refreshed.returncode == 0, refreshed.stderr
    assert (mount.path / "vol-later" / "latest").read_bytes() == later_data
    report.add("store-away-at-mount", wrong_bytes(got, data), peak_rss_mib(mount.process.pid))
    assert later.backup_id in os.readlink(mount.path / "vol-later" / "latest")


def test_store_cut_during_incoming(proxied: dict[str, str], proxy: TcpProxy,
                                   s3_store: S3Store, start_mount: Start,
                                   report: Report) -> None:
    mount = start_mount(proxied)
    target = mount.path / "incoming" / "vol-cut"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"\x11" * (768 * KiB))
        deadline = time.monotonic() + 30
        while int(os.getxattr(target, "user.bakfs.uploaded")) == 0:  # objects in the store
            assert time.monotonic() < deadline, "nothing uploaded"
            time.sleep(0.05)
        assert read_lease(s3_store, "vol-cut")[0] is not None
        proxy.stop()
        with pytest.raises(OSError) as info:  # a write, or the close, reports the failure
            for _ in range(64):
                os.write(fd, b"\x22" * (256 * KiB))
            os.fsync(fd)
        assert info.value.errno == errno.EIO
    finally:
        with pytest.raises(OSError):
            os.close(fd)
    assert find_backups(s3_store, "vol-cut") == []  # nothing committed
    assert read_lease(s3_store, "vol-cut")[0] is not None  # the daemon could not free it
    proxy.start()
    deadline = time.monotonic() + 20
    while read_lease(s3_store, "vol-cut")[0] is not None:  # freed once the store is back
        assert time.monotonic() < deadline, "the failed backup's lease was never released"
        time.sleep(0.2)
    leftovers = [o for o in find_orphans(s3_store, "vol-cut") if o.objects]
    assert leftovers, "gc must see what the failed backup left"
    data = b"\x33" * (600 * KiB)
    target.write_bytes(data)  # the volume is free: the next backup commits
    got = (mount.path / "vol-cut" / "latest").read_bytes()
    report.add("store-cut-during-incoming", wrong_bytes(got, data),
               peak_rss_mib(mount.process.pid))
