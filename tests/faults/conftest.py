"""The standing fault suite (issue 14): each case injects one fault into a real mount (or a
restore) over radosgw, through a TCP proxy the test controls, and checks that no wrong byte
is ever served, that the mount stays up, and that the daemon's peak memory stays under
RSS_LIMIT_MIB. Each case that passes reports its row; when every case of the suite ran and
passed, the table in docs/reliability.md is rewritten (its content is fixed per case, so a
passing run leaves the file as it is; measured numbers go to the terminal summary)."""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bakfs.backup.simple import write_backup
from bakfs.catalog.discovery import BackupRef
from bakfs.config import S3Options
from bakfs.store.s3 import S3Store
from tests.conftest import ROOT, S3Server
from tests.mount.fixtures import KiB, base_env
from tests.mount.proxy import TcpProxy

RSS_LIMIT_MIB = 300
DOC = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- fault table: written by tests/faults when the whole suite passes -->"
END = "<!-- end of fault table -->"

# case -> (the fault injected, what bakfs does): the rows of the table, in order
CASES: dict[str, tuple[str, str]] = {
    "store-refused": (
        "connections to the store refused in the middle of a dd",
        "EIO naming the object; once the store is back the same mount serves the right bytes"),
    "store-hangs": (
        "the store accepts requests and never answers",
        "EIO after s3.timeout and its retries; right bytes once it answers again"),
    "store-resets-once": (
        "one connection reset in the middle of an object's body",
        "the body is fetched again: right bytes, no error"),
    "store-resets-always": (
        "every connection reset in the middle of a body",
        "EIO; right bytes once the resets stop"),
    "store-slow": (
        "the store answers at 256 KiB/s",
        "right bytes, slowly"),
    "store-away-at-mount": (
        "the store unreachable while a mount starts (index known)",
        "the mount comes up from the index; once the store is back, uncached reads and "
        "`bakfs refresh` work without a remount"),
    "store-cut-during-incoming": (
        "the store cut during a dd into incoming/",
        "dd fails, nothing is committed; the lease is released as soon as the store is back, "
        "`gc` finds the leftovers, the next dd commits"),
    "index-rows-flipped": (
        "bits flipped in the extent rows of the index (mount stopped)",
        "row checksums find it at the next mount; the index is rebuilt from the store: right "
        "bytes"),
    "index-pages-broken": (
        "every B-tree page of the index's data.mdb damaged under a running mount",
        "the LMDB errors mean a rebuild, not a traceback: right bytes, the mount stays up"),
    "index-garbage": (
        "data.mdb overwritten with garbage between two mounts",
        "rebuilt at start: right bytes"),
    "cache-damaged-unmounted": (
        "a byte flipped in every chunk-cache file between two mounts",
        "the block checksum of every read from disk finds it: refetched, right bytes"),
    "cache-damaged-mounted": (
        "a byte flipped in every chunk-cache file under a running mount",
        "the block checksum finds it on the next read from disk: logged, refetched, right "
        "bytes"),
    "hostile-metadata": (
        "11 hostile `_metadata` documents (non-hex md5, offset 2^64, lone surrogate, 2^40-byte "
        "object, 2^63-byte volume, ...) and one sealed with an unknown SSE-C key appear in the "
        "bucket",
        "each is unreadable with its reason in `.status`, the log and `ls`; the running mount, "
        "a fresh mount and a restore of another volume are unaffected"),
    "decompression-bomb": (
        "an object of 2 GiB of zeros packed in 2 MB, recorded as 4 KiB",
        "its read fails with EIO at once; memory stays flat"),
    "load": (
        "8 readers and 1 writer through one mount for 8 s",
        "every byte right, every backup committed"),
}


@dataclasses.dataclass
class Row:
    case: str
    wrong_bytes: int
    peak_rss_mib: float


class Report:
    """The rows of the cases that passed, and the table they make."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def add(self, case: str, wrong_bytes: int, peak_rss_mib: float) -> None:
        assert case in CASES, case
        assert wrong_bytes == 0, f"{case}: {wrong_bytes} wrong bytes served"
        assert peak_rss_mib < RSS_LIMIT_MIB, f"{case}: peak RSS {peak_rss_mib:.0f} MiB"
        self.rows[case] = Row(case, wrong_bytes, peak_rss_mib)

    def table(self) -> str:
        lines = ["| case | fault | outcome | wrong bytes | peak RSS < 300 MiB |",
                 "|---|---|---|---|---|"]
        for case, (fault, outcome) in CASES.items():
            row = self.rows[case]
            lines.append(f"| `{case}` | {fault} | {outcome} | {row.wrong_bytes} | yes |")
        return "\n".join(lines)

    def write(self) -> None:
        text = DOC.read_text()
        head, found, rest = text.partition(BEGIN)
        _old, found_end, tail = rest.partition(END)
        assert found and found_end, f"{DOC} lacks the table's markers"
        new = f"{head}{BEGIN}\n{self.table()}\n{END}{tail}"
        if new != text:
            DOC.write_text(new)


_REPORT = Report()


@pytest.fixture
def report() -> Report:
    return _REPORT


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if set(_REPORT.rows) == set(CASES):
        _REPORT.write()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT.rows:
        terminalreporter.section("fault suite: peak RSS of the daemon (or command) per case")
        for row in _REPORT.rows.values():
            terminalreporter.write_line(f"{row.case:28} {row.peak_rss_mib:6.1f} MiB, "
                                        f"{row.wrong_bytes} wrong bytes")


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process: the most it was resident at any moment."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def wrong_bytes(got: bytes, expected: bytes) -> int:
    """Bytes that differ, counting a length difference as wrong bytes too."""
    same = sum(a == b for a, b in zip(got, expected, strict=False))
    return max(len(got), len(expected)) - same


@pytest.fixture
def proxy(rgw: S3Server) -> Iterator[TcpProxy]:
    with TcpProxy(rgw.endpoint) as running:
        yield running


@pytest.fixture
def env(rgw: S3Server, bucket_name: str, s3_store: S3Store, tmp_path: Path) -> dict[str, str]:
    """A mount's environment on the test bucket, straight to radosgw."""
    return base_env(rgw, bucket_name, tmp_path)


@pytest.fixture
def proxied(env: dict[str, str], proxy: TcpProxy) -> dict[str, str]:
    """The same through the proxy, with short timeouts so a fault shows in seconds."""
    return {**env, "BAKFS_S3_ENDPOINT_URL": proxy.url, "BAKFS_S3_TIMEOUT": "2",
            "BAKFS_S3_RETRY_MAX_ATTEMPTS": "2"}


OPTIONS = S3Options(object_size=256 * KiB, block_size=4 * KiB)  # as base_env's


@pytest.fixture
def make_backup(s3_store: S3Store) -> Callable[[str, int, int], tuple[BackupRef, bytes]]:
    """A full backup of `size` random bytes (a third of them a hole) of a volume."""

    def make(volume_id: str, size: int, seed: int) -> tuple[BackupRef, bytes]:
        rng = random.Random(seed)
        data = bytearray(rng.randbytes(size))
        data[size // 3:size // 3 + size // 3] = bytes(size // 3)
        ref = write_backup(s3_store, io.BytesIO(bytes(data)), volume_id, OPTIONS)
        return ref, bytes(data)

    return make
