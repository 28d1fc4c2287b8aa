"""`bakfs backup / ls / verify / delete / gc` as an operator runs them, against radosgw."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.catalog.leases import VolumeLease
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server

KiB = 1024
SMALL = {"BAKFS_S3_OBJECT_SIZE": str(64 * KiB), "BAKFS_S3_BLOCK_SIZE": str(4 * KiB)}


def bakfs(*args: str, env: dict[str, str], stdin: bytes | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    result = subprocess.run([sys.executable, "-m", "bakfs", *args], capture_output=True,
                            env={**clean, **env},
                            input=stdin.decode("latin-1") if stdin is not None else None,
                            text=True, encoding="latin-1", timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def env(rgw: S3Server, bucket_name: str, s3_store: S3Store) -> dict[str, str]:
    return {**rgw.env(bucket_name), **SMALL}


def _image(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size // 2) + bytes(size - size // 2)
    path.write_bytes(data)
    return data


def test_full_incremental_ls_verify_delete(env: dict[str, str], s3_store: S3Store,
                                           tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    data = bytearray(_image(image, 1024 * KiB + 100, 1))
    first = bakfs("backup", str(image), "--volume", "vol-a", "--name", "monday", "--json",
                  env=env)
    assert first.returncode == 0, first.stderr
    full = json.loads(first.stdout)
    assert full["kind"] == "full" and "no earlier backup" in full["reason"]
    data[200 * KiB:210 * KiB] = bytes(10 * KiB)
    image.write_bytes(data)
    second = json.loads(bakfs("backup", str(image), "--volume", "vol-a", "--json",
                              env=env).stdout)
    assert second["kind"] == "incremental" and second["parent_id"] == full["backup_id"]
    assert second["bytes_changed"] <= 16 * KiB
    # the same bytes from stdin, forced full
    third = bakfs("backup", "-", "--volume", "vol-a", "--full", env=env, stdin=bytes(data))
    assert third.returncode == 0 and "complete" in third.stdout

    listing = json.loads(bakfs("ls", "vol-a", "--json", env=env).stdout)
    assert [b["kind"] for b in listing] == ["full", "incremental", "full"]
    assert listing[0]["name"] == "monday" and listing[0]["size"] == len(data)
    human = bakfs("ls", env=env).stdout
    assert "volume vol-a" in human and full["backup_id"] in human

    ok = bakfs("verify", second["backup_id"], "--deep", env=env)
    assert ok.returncode == 0 and "is sound (every block checked)" in ok.stdout

    refused = bakfs("delete", full["backup_id"], env=env)
    assert refused.returncode == 1 and second["backup_id"] in refused.stderr
    assert bakfs("delete", second["backup_id"], env=env).returncode == 0
    assert bakfs("delete", full["backup_id"], env=env).returncode == 0
    assert [b["kind"] for b in json.loads(bakfs("ls", "--json", env=env).stdout)] == ["full"]


def test_verify_names_damaged_and_missing_objects(env: dict[str, str], s3_store: S3Store,
                                                  tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    _image(image, 512 * KiB, 2)
    summary = json.loads(bakfs("backup", str(image), "--volume", "vol-v", "--json",
                               env=env).stdout)
    ref = find_backups(s3_store, "vol-v")[0]
    objects = load_metadata(s3_store, ref).objects
    s3_store.put(objects[1].name, b"not what was stored")
    s3_store.delete(objects[3].name)
    result = bakfs("verify", summary["backup_id"], env=env)
    assert result.returncode == 1
    assert f"object {objects[1].name}" in result.stdout
    assert f"missing object {objects[3].name}" in result.stdout
    assert objects[0].name not in result.stdout


def test_kill_9_leaves_nothing_listed_gc_finds_orphans_next_backup_works(
        env: dict[str, str], s3_store: S3Store, tmp_path: Path) -> None:
    fifo = tmp_path / "slow-source"
    os.mkfifo(fifo)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    proc = subprocess.Popen([sys.executable, "-m", "bakfs", "backup", str(fifo),
                             "--volume", "vol-k"], env={**clean, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(fifo, "wb") as writer:
        writer.write(random.Random(3).randbytes(2048 * KiB))
        writer.flush()
        deadline = time.monotonic() + 60
        while len(list(s3_store.list("volume_vol-k/"))) < 5:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    assert find_backups(s3_store, "vol-k") == []
    assert json.loads(bakfs("ls", "--json", env=env).stdout) == []
    dry = bakfs("gc", "--json", env=env)
    orphans = json.loads(dry.stdout)["orphans"]
    assert len(orphans) == 1 and len(orphans[0]["objects"]) >= 5
    assert len(list(s3_store.list("volume_vol-k/"))) >= 5  # a dry run deletes nothing
    # the killed writer's lease does not block the next backup: its process is gone
    image = tmp_path / "disk.img"
    _image(image, 256 * KiB, 4)
    again = bakfs("backup", str(image), "--volume", "vol-k", env=env)
    assert again.returncode == 0, again.stderr
    removed = bakfs("gc", "--delete", env=env)
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert json.loads(bakfs("gc", "--json", env=env).stdout)["orphans"] == []
    assert len(find_backups(s3_store, "vol-k")) == 1


def test_sigterm_abandons_cleanly(env: dict[str, str], s3_store: S3Store,
                                  tmp_path: Path) -> None:
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    proc = subprocess.Popen([sys.executable, "-m", "bakfs", "backup", str(fifo),
                             "--volume", "vol-t"], env={**clean, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as writer:
        writer.write(random.Random(5).randbytes(1024 * KiB))
        writer.flush()
        while len(list(s3_store.list("volume_vol-t/"))) < 3:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "SIGTERM" in err and "nothing was committed" in err
    assert list(s3_store.list("volume_vol-t/")) == []  # its objects were removed
    assert list(s3_store.list("bakfs-locks/")) == []  # and its lease released


def test_a_second_writer_is_refused_while_the_first_holds_the_volume(
        env: dict[str, str], s3_store: S3Store, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    _image(image, 128 * KiB, 6)
    lease = VolumeLease(s3_store, "vol-busy", "someone-elses-backup")
    lease.acquire()
    result = bakfs("backup", str(image), "--volume", "vol-busy", env=env)
    assert result.returncode == 3
    assert "is being backed up by" in result.stderr and "someone-elses-backup" in result.stderr
    lease.release()
    assert bakfs("backup", str(image), "--volume", "vol-busy", env=env).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["backup", "{dir}", "--volume", "v"], "is a directory"),
    (["backup", "{dir}/missing.img", "--volume", "v"], "No such file"),
    (["backup", "{img}", "--volume", "../etc"], "--volume: volume id '../etc' contains a path"),
    (["backup", "{img}", "--volume", ""], "volume id is empty"),
    (["backup", "{img}", "--volume", "v", "--parent", "no-such"], "no complete backup no-such"),
])
def test_bad_input_gets_one_clear_line(env: dict[str, str], s3_store: S3Store,
                                       tmp_path: Path, args: list[str], message: str) -> None:
    image = tmp_path / "disk.img"
    _image(image, 64 * KiB, 7)
    argv = [a.format(dir=tmp_path, img=image) for a in args]
    result = bakfs(*argv, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert json.loads(bakfs("ls", "--json", env=env).stdout) == []


def test_wrong_sse_key_and_unreachable_store(env: dict[str, str], s3_store: S3Store,
                                             tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    _image(image, 128 * KiB, 8)
    key1 = {"BAKFS_S3_SSE_CUSTOMER_ALGORITHM": "AES256",
            "BAKFS_S3_SSE_CUSTOMER_KEY": "a" * 32}
    assert bakfs("backup", str(image), "--volume", "vol-s", env={**env, **key1}).returncode == 0
    wrong = {**key1, "BAKFS_S3_SSE_CUSTOMER_KEY": "b" * 32}
    result = bakfs("backup", str(image), "--volume", "vol-s", env={**env, **wrong})
    assert result.returncode == 1 and "sse_customer_key" in result.stderr
    assert "b" * 32 not in result.stderr
    assert len(json.loads(bakfs("ls", "--json", env={**env, **key1}).stdout)) == 1
    # without the key the backup is still listed, as unreadable, with the reason
    (listed,) = json.loads(bakfs("ls", "--json", env=env).stdout)
    assert listed["kind"] == "unreadable" and "SSE-C" in listed["error"]
    down = {**env, "BAKFS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "BAKFS_S3_RETRY_MAX_ATTEMPTS": "1", "BAKFS_S3_TIMEOUT": "2"}
    result = bakfs("backup", str(image), "--volume", "vol-s", env=down)
    assert result.returncode == 1 and "cannot reach the store" in result.stderr
