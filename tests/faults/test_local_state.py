"""Local state damaged: the index (rows, LMDB pages, the whole file) and the chunk cache. Both
are caches of the store: damage is found and repaired from it, never served."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from bakfs.catalog.discovery import BackupRef
from tests.faults.conftest import Report, peak_rss_mib, wrong_bytes
from tests.mount.fixtures import KiB, Mount

SIZE = 1280 * KiB + 99
PAGE = 4096
Make = Callable[[str, int, int], tuple[BackupRef, bytes]]
Start = Callable[[dict[str, str]], Mount]


def _umount(mount: Mount) -> None:
    """`bakfs umount`: waits for the daemon, so its index and cache are on disk."""
    result = subprocess.run([sys.executable, "-m", "bakfs", "umount", str(mount.path)],
                            env=mount.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _flip_extent_rows(index_path: Path) -> int:
    """Flip a bit of the offset-in-object of every data extent, leaving the checksums as they
    were (what a bit flip on the disk does)."""
    env = lmdb.open(str(index_path), max_dbs=8, map_size=1 << 40, subdir=True)
    changed = 0
    try:
        with env.begin(write=True) as txn:
            db = env.open_db(b"extents", txn=txn)
            for key, value in list(txn.cursor(db=db)):
                if value[8] == 0:  # data
                    body = bytearray(value)
                    struct.pack_into(">Q", body, 17, struct.unpack_from(">Q", body, 17)[0] ^ 64)
                    txn.put(key, bytes(body), db=db)
                    changed += 1
    finally:
        env.close()
    return changed


def _break_pages(index_path: Path) -> None:
    """Every page of data.mdb but the two meta pages made the wrong type: any B-tree access
    fails inside LMDB (MDB_CORRUPTED), and a write transaction after it is refused."""
    with open(index_path / "data.mdb", "r+b") as f:
        size = f.seek(0, 2)
        for page in range(2, size // PAGE):
            f.seek(page * PAGE + 10)
            f.write(b"\0\0")


def test_index_rows_flipped(env: dict[str, str], make_backup: Make, start_mount: Start,
                            report: Report) -> None:
    _ref, data = make_backup("vol-rows", SIZE, 11)
    first = start_mount(env)
    assert (first.path / "vol-rows" / "latest").read_bytes()[:1] == data[:1]
    _umount(first)
    assert _flip_extent_rows(Path(env["BAKFS_INDEX_PATH"])) > 0
    mount = start_mount(env)
    got = (mount.path / "vol-rows" / "latest").read_bytes()
    assert "its checksum does not match" in mount.log_text()
    report.add("index-rows-flipped", wrong_bytes(got, data), peak_rss_mib(mount.process.pid))


def test_index_pages_broken_under_a_running_mount(env: dict[str, str], make_backup: Make,
                                                  start_mount: Start,
                                                  report: Report) -> None:
    _ref, data = make_backup("vol-pages", SIZE, 12)
    mount = start_mount(env)  # refreshes every second: the damage is met at once
    # a new index is built once the mount is up: break it only after that build committed,
    # or its writes may reuse the broken pages and leave nothing damaged to meet
    mount.wait_for_log("backups of 1 volumes indexed", "the first build never ended")
    _break_pages(Path(env["BAKFS_INDEX_PATH"]))
    mount.wait_for_log("LMDB failed", "the damage was never noticed")
    got = (mount.path / "vol-pages" / "latest").read_bytes()
    assert mount.process.poll() is None
    report.add("index-pages-broken", wrong_bytes(got, data), peak_rss_mib(mount.process.pid))


def test_index_garbage(env: dict[str, str], make_backup: Make, start_mount: Start,
                       report: Report) -> None:
    _ref, data = make_backup("vol-garbage", SIZE, 13)
    _umount(start_mount(env))
    (Path(env["BAKFS_INDEX_PATH"]) / "data.mdb").write_bytes(b"\x5a" * (64 * PAGE))
    mount = start_mount(env)
    got = (mount.path / "vol-garbage" / "latest").read_bytes()
    report.add("index-garbage", wrong_bytes(got, data), peak_rss_mib(mount.process.pid))


def _damage_cache(cache: Path) -> int:
    files = [p for p in (cache / "objects").rglob("*") if p.is_file()]
    for path in files:
        body = bytearray(path.read_bytes())
        body[len(body) // 2] ^= 0x01
        path.write_bytes(bytes(body))
    return len(files)


def test_cache_damaged_unmounted(env: dict[str, str], make_backup: Make, start_mount: Start,
                                 report: Report) -> None:
    _ref, data = make_backup("vol-cache", SIZE, 14)
    env = {**env, "BAKFS_CACHE_KEEP_SEQUENTIAL": "true"}  # a whole read lands on disk too
    first = start_mount(env)
    assert (first.path / "vol-cache" / "latest").read_bytes() == data
    _umount(first)
    assert _damage_cache(Path(env["BAKFS_CACHE_PATH"])) > 0
    mount = start_mount(env)
    got = (mount.path / "vol-cache" / "latest").read_bytes()
    report.add("cache-damaged-unmounted", wrong_bytes(got, data),
               peak_rss_mib(mount.process.pid))


def test_cache_damaged_while_mounted(env: dict[str, str], make_backup: Make,
                                     start_mount: Start, report: Report) -> None:
    _ref, data = make_backup("vol-live", 4 * 256 * KiB, 15)
    mount = start_mount({**env, "BAKFS_CACHE_MEMORY_SIZE": "0",  # reads come from disk
                         "BAKFS_CACHE_KEEP_SEQUENTIAL": "true"})
    path = mount.path / "vol-live" / "latest"
    assert path.read_bytes() == data
    time.sleep(1)  # the cache files are written in the background
    assert _damage_cache(Path(env["BAKFS_CACHE_PATH"])) > 0
    with open(path, "rb") as f:  # forget the kernel's copy of this file
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    got = path.read_bytes()
    assert "fails its checksum" in mount.log_text()
    report.add("cache-damaged-mounted", wrong_bytes(got, data),
               peak_rss_mib(mount.process.pid))
