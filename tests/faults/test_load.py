"""Load: eight readers of three backups, at random offsets and sizes (the kernel's copy
dropped now and then, so reads reach the daemon), and one writer making backups through
incoming/ the whole time. Every byte is compared."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

from bakfs.catalog.discovery import BackupRef
from tests.faults.conftest import BEGIN, CASES, DOC, END, Report, peak_rss_mib, wrong_bytes
from tests.mount.fixtures import KiB, Mount

SECONDS = 8.0
READERS = 8
Make = Callable[[str, int, int], tuple[BackupRef, bytes]]
Start = Callable[[dict[str, str]], Mount]


def test_load(env: dict[str, str], make_backup: Make, start_mount: Start,
              report: Report) -> None:
    images = {f"vol-load-{n}": make_backup(f"vol-load-{n}", 1024 * KiB + 17 * n, 30 + n)[1]
              for n in range(3)}
    mount = start_mount(env)
    deadline = time.monotonic() + SECONDS
    wrong: list[int] = []
    reads: list[int] = []
    commits: list[int] = []
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        done = bad = 0
        try:
            while time.monotonic() < deadline:
                volume = rng.choice(sorted(images))
                data = images[volume]
                with open(mount.path / volume / "latest", "rb") as f:
                    if rng.random() < 0.3:  # drop the kernel's copy: reach the daemon
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    offset = rng.randrange(len(data))
                    size = rng.choice([1, 512, 4096, 65536, 300_000, 1 << 20])
                    got = os.pread(f.fileno(), size, offset)
                bad += wrong_bytes(got, data[offset:offset + size])
                done += 1
        except BaseException as exc:
            errors.append(exc)
        wrong.append(bad)
        reads.append(done)

    def writer() -> None:
        rng = random.Random(99)
        bad = done = 0
        data = bytearray(rng.randbytes(512 * KiB + 1234))
        try:
            while time.monotonic() < deadline:
                if done:
                    at = rng.randrange(len(data) - 4096)
                    data[at:at + 4096] = rng.randbytes(4096)  # an incremental's worth
                (mount.path / "incoming" / "vol-load-w").write_bytes(bytes(data))
                bad += wrong_bytes((mount.path / "vol-load-w" / "latest").read_bytes(),
                                   bytes(data))
                done += 1
        except BaseException as exc:
            errors.append(exc)
        wrong.append(bad)
        commits.append(done)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(reads) > 100 and commits[0] >= 2, (reads, commits)
    assert "read errors: 0" in (mount.path / ".status").read_text()
    report.add("load", sum(wrong), peak_rss_mib(mount.process.pid))


def test_the_table_in_the_docs_lists_every_case() -> None:
    text = DOC.read_text()
    table = text[text.index(BEGIN):text.index(END)]
    for case in CASES:
        assert f"| `{case}` |" in table, case
