"""Real FUSE mounts of bakfs for the tests: each mounted in the foreground in its own process,
always unmounted in teardown (lazily if it is stuck), the daemon stopped, its log checked."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Server

KiB = 1024


@dataclasses.dataclass
class Mount:
    path: Path
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, failure: str, timeout: float = 30) -> None:
        """Return once the daemon has logged `text`; AssertionError(`failure`, with the
        log's end) if it has not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"{failure}:\n{self.log_text()[-3000:]}"
            time.sleep(0.05)


def base_env(rgw: S3Server, bucket: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    env.update(rgw.env(bucket))
    env.update({"BAKFS_S3_OBJECT_SIZE": str(256 * KiB), "BAKFS_S3_BLOCK_SIZE": str(4 * KiB),
                "BAKFS_CACHE_PATH": str(tmp_path / "cache"),
                "BAKFS_INDEX_PATH": str(tmp_path / "index"),
                "BAKFS_INDEX_REFRESH_INTERVAL": "1"})
    return env


def wait_mounted(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not os.path.ismount(path):
        if process.poll() is not None:
            raise AssertionError(f"bakfs mount exited with {process.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("bakfs mount did not come up in 60 s")
        time.sleep(0.05)


def unmount(path: Path, process: subprocess.Popen[bytes] | None) -> None:
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def start_mount(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Mount]]:
    """Start `bakfs mount --foreground` with an environment; unmounted in teardown."""
    mounts: list[Mount] = []

    def start(env: dict[str, str]) -> Mount:
        path = tmp_path / f"mnt{len(mounts)}"
        path.mkdir()
        log = tmp_path / f"mount{len(mounts)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "bakfs", "-v", "mount", "--foreground", str(path)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        mount = Mount(path, process, log, env)
        mounts.append(mount)
        wait_mounted(path, process, log)
        return mount

    yield start
    for mount in mounts:
        unmount(mount.path, mount.process)
    for mount in mounts:
        assert not os.path.ismount(mount.path)
        text = mount.log_text()
        assert "Traceback" not in text and "unexpected error" not in text, text[-4000:]
