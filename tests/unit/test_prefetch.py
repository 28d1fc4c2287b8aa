"""The start-up read-ahead (bakfs.prefetch): its list still covers what a start reads, every
listed file is found on this machine, the helper loads a file into the page cache, and only
the commands that open the store start it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bakfs import prefetch
from bakfs.cli.main import COMMANDS
from bakfs.startup_files import FILES

ROOT = Path(__file__).resolve().parents[2]


def test_the_list_covers_what_a_start_reads_now() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-startup-files"),
                            "--check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "the list covers" in check.stdout


def test_every_listed_file_is_found_here() -> None:
    paths = list(prefetch.paths())
    assert len(paths) == len(FILES) > 300
    missing = [p for p in paths if not os.path.isfile(p)]
    assert len(missing) <= len(paths) // 20, missing[:10]


def test_only_the_commands_that_open_the_store_start_it() -> None:
    assert prefetch.wanted(["bakfs", "mount", "/mnt"])
    assert prefetch.wanted(["bakfs", "-v", "restore", "vol", "/dev/sdx"])
    assert prefetch.wanted(["bakfs", "--config", "b.toml", "backup", "img"])
    assert not prefetch.wanted(["bakfs", "umount", "/mnt"])
    assert not prefetch.wanted(["bakfs", "config", "show"])
    assert not prefetch.wanted(["bakfs", "--help"])
    assert prefetch.start(["bakfs", "umount", "/mnt"]) is None
    # a twin of the command table it may not import (that would import what it reads
    # ahead): every name in it must still be a command
    assert prefetch.STORE_COMMANDS.issubset(COMMANDS)


def _resident(path: str) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_the_helper_brings_a_listed_file_into_the_page_cache() -> None:
    # botocore's endpoint data: listed, read only by the S3 client, mapped by no process
    path = next(p for p in prefetch.paths() if p.endswith("botocore/data/endpoints.json"))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert _resident(path) == 0
    assert prefetch.start(["bakfs", "mount", "/mnt"]) is not None
    assert prefetch.reap(timeout=10) == 0  # through reap: no stale pid is left to it
    deadline = time.monotonic() + 5
    while _resident(path) < os.path.getsize(path) // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _resident(path) >= os.path.getsize(path) // 2
