"""Instant boot, checked with Debian's qemu-utils: a qcow2 overlay whose backing file is a
mounted backup takes the writes, reads the backup where it was not written, and converts
to the restored volume with the changes; the backup itself never changes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import S3Server
from tests.mount.fixtures import KiB, Mount, base_env

MiB = 1024 * KiB
SIZE = 6 * MiB + 12 * KiB


def run(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if ok:
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


def test_a_qcow2_overlay_on_a_mounted_backup(rgw: S3Server, bucket_name: str, tmp_path: Path,
                                             start_mount: Callable[[dict[str, str]], Mount]
                                             ) -> None:
    rng = random.Random(4)
    image = bytearray(rng.randbytes(SIZE))
    image[2 * MiB:3 * MiB] = bytes(MiB)  # a hole in the backup
    source = tmp_path / "vm.img"
    source.write_bytes(image)
    env = base_env(rgw, bucket_name, tmp_path)
    made = subprocess.run([sys.executable, "-m", "bakfs", "backup", str(source), "--volume",
                           "vm", "--json"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["backup_id"]
    mount = start_mount(env)
    backing = (mount.path / "vm" / "latest").resolve()  # the backup's own file, not `latest`
    assert backing.name.endswith(backup_id)
    before = hashlib.sha256(backing.read_bytes()).hexdigest()

    overlay = tmp_path / "overlay.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "raw",
        str(overlay))
    info = json.loads(run("qemu-img", "info", "--output=json", str(overlay)).stdout)
    assert info["backing-filename"] == str(backing) and info["virtual-size"] == SIZE
    assert run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay),
               str(backing)).stdout.strip() == "Images are identical."

    # the VM writes: into the overlay only
    run("qemu-io", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0xcd 2560k 4k",
        "-c", f"write -P 0xef {SIZE - 4096} 4096", str(overlay))
    check = run("qemu-img", "check", str(overlay))
    assert "No errors were found" in check.stdout
    reads = run("qemu-io", "-c", "read -P 0xab 1M 64k", "-c", "read -P 0xcd 2560k 4k",
                "-c", "read -P 0 2M 512k", "-c", "read -P 0 2564k 444k", str(overlay))
    assert "verification failed" not in reads.stdout + reads.stderr
    assert reads.stdout.count("read ") == 4
    mismatch = run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay),
                   str(backing), ok=False)
    assert mismatch.returncode == 1 and "mismatch at offset 1048576" in mismatch.stdout

    # where the VM did not write, the overlay reads the backup's bytes
    for offset, length in ((0, 4096), (1 * MiB + 64 * KiB, 8192), (4 * MiB + 1234, 777)):
        dump = run("qemu-io", "-c", f"read -v {offset} {length}", str(overlay)).stdout
        data = b""
        for line in dump.splitlines():  # "0000abcd:  xx xx ... xx  ascii"
            if len(line) > 10 and line[8] == ":" and len(data) < length:
                count = min(16, length - len(data))
                data += bytes.fromhex(line[11:11 + 3 * count - 1].replace(" ", ""))
        assert data == bytes(image[offset:offset + length])

    # convert (never commit: the backing file is read-only) writes the restored volume
    restored = tmp_path / "restored.img"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(restored))
    expected = bytearray(image)
    expected[1 * MiB:1 * MiB + 64 * KiB] = b"\xab" * (64 * KiB)
    expected[2560 * KiB:2564 * KiB] = b"\xcd" * (4 * KiB)
    expected[SIZE - 4096:] = b"\xef" * 4096
    assert restored.read_bytes() == bytes(expected)
    commit = run("qemu-img", "commit", str(overlay), ok=False)
    assert commit.returncode != 0  # the backup refuses writes
    assert hashlib.sha256(backing.read_bytes()).hexdigest() == before
    assert os.stat(backing).st_size == SIZE
