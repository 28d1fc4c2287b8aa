"""TSM-held backups in a real FUSE mount: listed beside S3 ones, read while they stage."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.fixtures import Mount
from tests.tsm.conftest import PASSWORD, SimServer, random_file

MiB = 1 << 20


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This test's store, cache, index and staging area, the TSM password, the simulator (its
    DSMC_SIM_* and PATH come from the `sim` fixture)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    env.update({"BAKFS_LOCAL_PATH": str(tmp_path / "store"),
                "BAKFS_CACHE_PATH": str(tmp_path / "cache"),
                "BAKFS_INDEX_PATH": str(tmp_path / "index"),
                "BAKFS_TSM_STAGING_PATH": str(tmp_path / "staging"),
                "BAKFS_TSM_PASSWORD": PASSWORD, **settings})
    return env


def _bakfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bakfs", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def test_tsm_backups_appear_and_read_while_staging(
        tmp_path: Path, sim: SimServer, start_mount: Callable[[dict[str, str]], Mount]) -> None:
    env = _env(tmp_path)
    data = random_file(tmp_path / "disk.img", 6 * MiB)
    made = _bakfs(env, "tsm", "backup", str(tmp_path / "disk.img"), "--volume", "vol-t",
                  "--json")
    assert made.returncode == 0, made.stderr
    tsm_id = json.loads(made.stdout)["backup_id"]
    s3 = _bakfs(env, "backup", str(tmp_path / "disk.img"), "--volume", "vol-t", "--json")
    assert s3.returncode == 0, s3.stderr

    sim.set(rate=2 * MiB, chunk=256 << 10)  # the staging restore takes about 3 s
    mount = start_mount({**env, **{k: v for k, v in os.environ.items()
                                   if k.startswith("DSMC_SIM_")}})
    names = sorted(os.listdir(mount.path / "vol-t"))
    assert len(names) == 3 and names[-1] == "latest"  # a TSM and an S3 backup of one volume
    (tsm_name,) = [n for n in names if n.endswith(tsm_id)]
    path = mount.path / "vol-t" / tsm_name
    assert path.stat().st_size == len(data)
    assert os.getxattr(path, "user.bakfs.backend") == b"tsm"

    with open(path, "rb") as f:
        started = time.monotonic()
        assert f.read(MiB) == data[:MiB]
        first = time.monotonic() - started
        staged = int(os.getxattr(path, "user.bakfs.staging.bytes"))
        assert os.getxattr(path, "user.bakfs.staging.state") == b"staging"
        assert staged < len(data)  # served while the staging was far from done
        f.seek(len(data) - 4096)
        assert f.read() == data[-4096:]  # the end waited for the staging to get there
        assert time.monotonic() - started > first
    assert "staging TSM backup" in (mount.path / ".status").read_text()
    copy = tmp_path / "copy.img"
    dd = subprocess.run(["dd", f"if={path}", f"of={copy}", "bs=4M"], capture_output=True)
    assert dd.returncode == 0 and copy.read_bytes() == data
    assert PASSWORD not in mount.log_text()


@pytest.mark.parametrize(("fault", "logged"), [
    ({"server_down": 1}, "ANS1017E"),
    ({"auth_fail": 1}, "ANS1025E"),
    ({"fail_after_bytes": 1 << 20, "fail_mode": "exit"}, "staging"),
])
def test_a_failed_staging_is_eio_and_the_next_read_retries(
        tmp_path: Path, sim: SimServer, start_mount: Callable[[dict[str, str]], Mount],
        fault: dict[str, object], logged: str) -> None:
    env = _env(tmp_path)
    data = random_file(tmp_path / "disk.img", 3 * MiB)
    assert _bakfs(env, "tsm", "backup", str(tmp_path / "disk.img"), "--volume",
                  "vol-f").returncode == 0
    mount = start_mount(env)
    (name,) = [n for n in os.listdir(mount.path / "vol-f") if n != "latest"]
    path = mount.path / "vol-f" / name
    # the kernel retries a failed read-ahead with a plain read, so keep the server down for
    # every staging attempt this read makes
    sim.add_fault("restore", remaining=100, **fault)
    with open(path, "rb") as f, pytest.raises(OSError) as info:
        f.seek(2 * MiB)  # past where a restore that fails after 1 MiB gets
        f.read(4096)
    assert info.value.errno == errno.EIO
    assert logged in mount.log_text()
    (sim.path / "faults.json").write_text("[]")  # the server is back
    assert path.read_bytes() == data  # the next read stages again, and succeeds
    assert os.getxattr(path, "user.bakfs.staging.state") == b"complete"


def test_incoming_for_a_tsm_volume_and_a_block_device_restored_through_the_mount(
        tmp_path: Path, sim: SimServer, loop_device: str,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    env = _env(tmp_path, BAKFS_TSM_INCOMING_VOLUMES="vol-in", BAKFS_INDEX_REFRESH_INTERVAL="1")
    device = Path(loop_device).read_bytes()
    image = _bakfs(env, "tsm", "backup", loop_device, "--volume", "vol-dev", "--json")
    assert image.returncode == 0, image.stderr
    assert json.loads(image.stdout)["mode"] == "image"
    mount = start_mount(env)

    data = random_file(tmp_path / "disk.img", 2 * MiB)
    dd = subprocess.run(["dd", f"if={tmp_path / 'disk.img'}",
                         f"of={mount.path / 'incoming' / 'vol-in'}", "bs=1M"],
                        capture_output=True, text=True)
    assert dd.returncode == 0, dd.stderr + mount.log_text()[-2000:]
    (name,) = [n for n in os.listdir(mount.path / "vol-in") if n != "latest"]
    path = mount.path / "vol-in" / name
    assert os.getxattr(path, "user.bakfs.backend") == b"tsm"
    assert path.read_bytes() == data
    assert not list((tmp_path / "staging-incoming").iterdir())  # the spool is gone

    (dev_name,) = [n for n in os.listdir(mount.path / "vol-dev") if n != "latest"]
    copy = tmp_path / "device-copy.img"
    restore = subprocess.run(["dd", f"if={mount.path / 'vol-dev' / dev_name}", f"of={copy}",
                              "bs=4M"], capture_output=True)
    assert restore.returncode == 0 and copy.read_bytes() == device

    backup_id = dev_name.split("Z-", 1)[1]
    assert _bakfs(env, "tsm", "delete", backup_id).returncode == 0
    deadline = time.monotonic() + 30
    while os.path.exists(mount.path / "vol-dev"):  # gone after the next refresh
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_stage_ahead_through_a_running_mount(
        tmp_path: Path, sim: SimServer, start_mount: Callable[[dict[str, str]], Mount]) -> None:
    env = _env(tmp_path)
    random_file(tmp_path / "disk.img", 2 * MiB)
    made = _bakfs(env, "tsm", "backup", str(tmp_path / "disk.img"), "--volume", "vol-s",
                  "--json")
    backup_id = json.loads(made.stdout)["backup_id"]
    mount = start_mount(env)
    busy = _bakfs(env, "stage", backup_id)
    assert busy.returncode != 0 and "--mount" in busy.stderr  # the mount owns the area
    staged = _bakfs(env, "stage", backup_id, "--mount", str(mount.path), "--json")
    assert staged.returncode == 0, staged.stderr
    assert json.loads(staged.stdout)["state"] == "complete"


def test_no_room_in_the_staging_area_is_eio_until_a_pinned_staging_is_released(
        tmp_path: Path, sim: SimServer, start_mount: Callable[[dict[str, str]], Mount]) -> None:
    env = _env(tmp_path, BAKFS_TSM_STAGING_MAX_SIZE=str(4 * MiB))
    first = random_file(tmp_path / "a.img", 3 * MiB)
    second = random_file(tmp_path / "b.img", 3 * MiB)
    for name, volume in (("a.img", "vol-a"), ("b.img", "vol-b")):
        assert _bakfs(env, "tsm", "backup", str(tmp_path / name), "--volume",
                      volume).returncode == 0
    mount = start_mount(env)
    path_a, path_b = (mount.path / v / next(n for n in os.listdir(mount.path / v)
                                             if n != "latest") for v in ("vol-a", "vol-b"))
    with open(path_a, "rb") as a:
        assert a.read() == first  # staged and pinned while open: 3 of the 4 MiB
        with open(path_b, "rb") as b, pytest.raises(OSError) as info:
            b.read(4096)
        assert info.value.errno == errno.EIO
    assert "cannot take backup" in mount.log_text()  # the reason, in the log
    assert path_b.read_bytes() == second  # A is no longer pinned: it is evicted for B
