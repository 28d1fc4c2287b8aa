"""File-level restore for real: a GPT disk image with an ext4 partition, built here with
sgdisk and mkfs.ext4, backed up to radosgw, mounted with bakfs, attached as a read-only
loop device with `bakfs attach`; a file read from it fetches only the objects under it."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Server
from tests.mount.fixtures import KiB, Mount, base_env

MiB = 1024 * KiB
OBJECT = 256 * KiB  # base_env's object size
PART_START = 1 * MiB
PART_SIZE = 40 * MiB


def bakfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bakfs", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def build_gpt_image(path: Path, files: dict[str, bytes], work: Path) -> None:
    """A 64 MiB disk: GPT, partition 1 an ext4 file system holding `files`, partition 2
    without a file system."""
    source = work / "files"
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    run("sgdisk", "-n", f"1:{PART_START // 512}:+{PART_SIZE // MiB}M", "-c", "1:data",
        "-n", "2:0:+8M", "-c", "2:empty", str(path))
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "bakdata", "-E", f"offset={PART_START}",
        "-d", str(source), str(path), f"{PART_SIZE // 4096}")


def objects_under(path: Path) -> set[int]:
    """Numbers of the backup's objects under a file of the attached ext4 partition, from
    the file's physical extents (filefrag, in 4 KiB file system blocks)."""
    numbers: set[int] = set()
    for match in re.finditer(r"^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):",
                             run("filefrag", "-v", str(path)), re.M):
        first, last = int(match.group(1)), int(match.group(2))
        start = PART_START + first * 4096
        end = PART_START + (last + 1) * 4096
        numbers.update(range(start // OBJECT, (end - 1) // OBJECT + 1))
    assert numbers
    return numbers


def fetched(mount: Mount) -> int:
    status = (mount.path / ".status").read_text()
    return int(re.search(r"^objects fetched from the store: (\d+)$", status, re.M)[1])


def attached_to(mount: Mount) -> list[str]:
    """Loop devices whose backing file lives in this mount."""
    out = run("losetup", "--list", "--json")
    loops = json.loads(out)["loopdevices"] if out.strip() else []
    return [loop["name"] for loop in loops
            if str(loop.get("back-file") or "").startswith(str(mount.path) + "/")]


@pytest.fixture
def gateway(rgw: S3Server, bucket_name: str, tmp_path: Path,
            start_mount: Callable[[dict[str, str]], Mount]
            ) -> Iterator[tuple[Mount, dict[str, str]]]:
    """A bakfs mount without read-ahead (so the counters show exactly what reads fetched);
    whatever the test left attached is detached before the mount goes."""
    env = {**base_env(rgw, bucket_name, tmp_path), "BAKFS_CACHE_READAHEAD_MAX": "0"}
    mount = start_mount(env)
    yield mount, env
    for device in attached_to(mount):
        for line in run("lsblk", "-nro", "MOUNTPOINT", device).splitlines():
            if line.strip():
                subprocess.run(["umount", "-l", line.strip()], capture_output=True)
        subprocess.run(["losetup", "--detach", device], capture_output=True)


def test_attach_mounts_the_partitions_and_reads_fetch_only_the_objects_under_a_file(
        gateway: tuple[Mount, dict[str, str]], tmp_path: Path) -> None:
    mount, env = gateway
    rng = random.Random(13)
    files = {"hello.txt": b"hello from the backup\n", "etc/hostname": b"vm-13\n",
             "big.bin": rng.randbytes(3 * MiB + 123), "other.bin": rng.randbytes(2 * MiB)}
    image = tmp_path / "disk.img"
    build_gpt_image(image, files, tmp_path)
    made = bakfs(env, "backup", str(image), "--volume", "vm-disk", "--json")
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["backup_id"]
    bakfs(env, "refresh", str(mount.path))
    where = tmp_path / "restore"
    result = bakfs(env, "attach", backup_id, "--mount", str(mount.path), "--dir", str(where),
                   "--json")
    assert result.returncode == 0, result.stderr
    attached = json.loads(result.stdout)
    assert attached["backup_id"] == backup_id and attached_to(mount) == [attached["device"]]
    first, second = attached["partitions"]
    assert (first["number"], first["start"], first["size"]) == (1, PART_START, PART_SIZE)
    assert first["fstype"] == "ext4" and first["label"] == "bakdata"
    assert first["mountpoint"] == str(where / "p1") and os.path.ismount(where / "p1")
    assert second["mountpoint"] is None and second["note"] == "no file system found"
    # mounted read-only, and the loop device is read-only too
    assert "ro" in run("findmnt", "-no", "OPTIONS", str(where / "p1")).split(",")
    assert run("blockdev", "--getro", attached["device"]).strip() == "1"
    with pytest.raises(OSError):
        (where / "p1" / "new.txt").write_text("x")

    assert (where / "p1" / "hello.txt").read_bytes() == files["hello.txt"]
    assert (where / "p1" / "etc" / "hostname").read_bytes() == files["etc/hostname"]
    big = where / "p1" / "big.bin"
    os.stat(big)  # its inode is read now, not with its data
    before = fetched(mount)
    assert big.read_bytes() == files["big.bin"]
    under = objects_under(big)
    assert 0 < fetched(mount) - before <= len(under)
    # everything fetched so far (partition table, file system metadata, two small files,
    # big.bin) is a small part of the disk's 256 objects
    assert fetched(mount) < len(under) + 16

    # wrong arguments: clear errors, nothing more attached or mounted
    again = bakfs(env, "attach", backup_id, "--mount", str(mount.path))
    assert again.returncode == 1 and "already attached" in again.stderr
    missing = bakfs(env, "attach", "no-such-backup", "--mount", str(mount.path))
    assert missing.returncode == 1 and "no backup no-such-backup" in missing.stderr
    assert attached_to(mount) == [attached["device"]]

    # the mount cannot go while a backup is attached from it: umount says what to do first
    refused = bakfs(env, "umount", str(mount.path))
    assert refused.returncode == 1, refused.stderr
    assert attached["device"] in refused.stderr and f"{backup_id})" in refused.stderr
    assert "attached from it" in refused.stderr
    assert f"bakfs detach {attached['device']}" in refused.stderr
    assert os.path.ismount(mount.path) and os.path.ismount(where / "p1")
    assert attached_to(mount) == [attached["device"]]

    # a file open under the partition keeps it: detach is refused, nothing is undone
    with open(where / "p1" / "hello.txt", "rb"):
        busy = bakfs(env, "detach", backup_id)
        assert busy.returncode == 1 and "busy" in busy.stderr
        assert os.path.ismount(where / "p1") and attached_to(mount) == [attached["device"]]
    done = bakfs(env, "detach", backup_id)
    assert done.returncode == 0, done.stderr
    assert attached_to(mount) == [] and not (where / "p1").exists()
    assert not any(m.startswith(attached["device"])
                   for m in run("lsblk", "-nro", "NAME").split())


def test_attach_refuses_a_backup_that_is_not_a_partitioned_disk(
        gateway: tuple[Mount, dict[str, str]], tmp_path: Path) -> None:
    mount, env = gateway
    image = tmp_path / "bare.img"
    with open(image, "wb") as f:
        f.truncate(8 * MiB)
    run("mkfs.ext4", "-q", "-F", str(image))
    made = bakfs(env, "backup", str(image), "--volume", "bare", "--json")
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["backup_id"]
    # the mount learns of the backup by itself: attach asks it to list the store
    result = bakfs(env, "attach", backup_id, "--mount", str(mount.path), "--dir",
                   str(tmp_path / "d"))
    assert result.returncode == 1
    assert "not a partitioned disk" in result.stderr and "ext4" in result.stderr
    assert "Traceback" not in result.stderr
    assert attached_to(mount) == [] and not (tmp_path / "d").exists()
    # a directory in use is refused before anything is attached
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("mine")
    result = bakfs(env, "attach", backup_id, "--mount", str(mount.path), "--dir", str(busy))
    assert result.returncode == 1 and "in use" in result.stderr
    assert attached_to(mount) == []
    nothing = bakfs(env, "detach", backup_id)
    assert nothing.returncode == 1 and "nothing attached" in nothing.stderr
