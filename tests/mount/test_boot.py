"""Mounting at boot, the Linux way: `mount -t fuse.bakfs` and the /etc/fstab line through
mount(8) and mount.fuse3 for real, and the systemd unit in dist/systemd checked by
systemd-analyze and run as systemd runs it (Type=notify, SIGTERM to stop, ExecStopPost
after a crash)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, S3Server
from tests.mount.fixtures import KiB

UNIT = ROOT / "dist" / "systemd" / "bakfs@.service"
BAKFS = Path(sys.executable).parent / "bakfs"


@pytest.fixture
def config_file(rgw: S3Server, bucket_name: str, tmp_path: Path) -> Path:
    """A configuration file, as /etc/bakfs/bakfs.toml would be (mode 600: it holds keys),
    on a bucket holding one backup."""
    path = tmp_path / "bakfs.toml"
    path.write_text(
        f'[s3]\nendpoint_url = "{rgw.endpoint}"\nbucket = "{bucket_name}"\n'
        f'access_key = "{rgw.access_key}"\nsecret_key = "{rgw.secret_key}"\n'
        f"object_size = {256 * KiB}\nblock_size = {4 * KiB}\n"
        f'[cache]\npath = "{tmp_path / "cache"}"\n[index]\npath = "{tmp_path / "index"}"\n')
    path.chmod(0o600)
    image = tmp_path / "vol.img"
    image.write_bytes(os.urandom(300 * KiB))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    made = subprocess.run([str(BAKFS), "--config", str(path), "backup", str(image),
                           "--volume", "boot-vol"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return path


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Daemon pids a test started; killed in teardown if still running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


MOUNT_SCRIPT = r"""
set -eu
# mount(8) clears PATH: mount.fuse3's shell finds `bakfs` in the default PATH, where an
# installed bakfs is; this test's bakfs is put there in a private mount namespace
mount --bind "$BIN" /usr/local/sbin
mount -t fuse.bakfs bakfs "$MNT" -o "config=$CONF,log=$LOG"
echo "FIRST $(findmnt -no FSTYPE,SOURCE "$MNT")"
pid=$("$PY" -c 'import os, sys; print(int(os.getxattr(sys.argv[1], "user.bakfs.pid")))' "$MNT")
echo "PID $pid"
echo "LIST $(ls "$MNT" | tr '\n' ' ')"
umount "$MNT"
for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && echo "DAEMON alive" || echo "DAEMON gone"
mountpoint -q "$MNT" && echo "AFTER mounted" || echo "AFTER unmounted"
mount --fstab "$FSTAB" "$MNT"
pid=$("$PY" -c 'import os, sys; print(int(os.getxattr(sys.argv[1], "user.bakfs.pid")))' "$MNT")
echo "PID $pid"
echo "FSTAB $(findmnt -no FSTYPE,OPTIONS "$MNT")"
echo "LIST $(ls "$MNT/boot-vol" | wc -l)"
bakfs umount "$MNT"
mountpoint -q "$MNT" && echo "END mounted" || echo "END unmounted"
"""


def test_mount_dash_t_and_the_fstab_line_through_mount_fuse3(
        config_file: Path, tmp_path: Path, reaper: list[int]) -> None:
    mountpoint = tmp_path / "backups"
    mountpoint.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bakfs").symlink_to(BAKFS)
    log = tmp_path / "mount.log"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# the line for /etc/fstab\nbakfs {mountpoint} fuse.bakfs "
                     f"config={config_file},log={log},_netdev,nofail,allow_other,"
                     "x-systemd.requires=network-online.target 0 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    env.update({"BIN": str(bin_dir), "MNT": str(mountpoint), "CONF": str(config_file),
                "LOG": str(log), "FSTAB": str(fstab), "PY": sys.executable})
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             MOUNT_SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    reaper += [int(line.split()[1]) for line in result.stdout.splitlines()
               if line.startswith("PID ")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines["FIRST"] == "fuse.bakfs bakfs"
    assert "boot-vol" in result.stdout.split("LIST ")[1].split()
    assert lines["DAEMON"] == "gone" and lines["AFTER"] == "unmounted"
    fstype, options = lines["FSTAB"].split()
    assert fstype == "fuse.bakfs" and "allow_other" in options.split(",")
    assert int(result.stdout.split("LIST ")[2].split()[0]) == 2  # the backup and latest
    assert lines["END"] == "unmounted"
    text = log.read_text()
    assert log.exists() and "Traceback" not in text


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_systemd_unit_is_valid() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/bakfs" and argv[-3:] == ["mount", "--foreground", "%f"]
    assert "fusermount3 -u -z %f" in service["ExecStopPost"]
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemd-analyze") is None:
        return  # parsed above; systemd-analyze checks more where systemd is installed
    # verify an instance, with bakfs where this checkout has it
    instance = Path(os.environ.get("TMPDIR", "/tmp")) / f"bakfs-test-{os.getpid()}"
    instance.mkdir(exist_ok=True)
    try:
        path = instance / "bakfs@mnt-backups.service"
        good = UNIT.read_text().replace("/usr/local/bin/bakfs", str(BAKFS))
        path.write_text(good)
        result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                                text=True, timeout=60)
        complaints = [line for line in (result.stdout + result.stderr).splitlines()
                      if "bakfs@" in line]
        assert result.returncode == 0 and complaints == [], result.stderr
        # and it does complain about a broken unit (the check can fail)
        path.write_text(good.replace("Restart=on-failure", "Restart=sometimes"))
        result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert "restart specifier" in result.stderr
    finally:
        shutil.rmtree(instance)


class Service:
    """The unit's service run as systemd runs it: ExecStartPre, then ExecStart with
    $NOTIFY_SOCKET (ready when READY=1 arrives), stdout and stderr collected as the journal
    would, KillSignal to stop, ExecStopPost after it ended."""

    def __init__(self, mountpoint: Path, config: Path, work: Path) -> None:
        service = unit()["Service"]
        self.mountpoint = mountpoint

        def command(key: str) -> list[str]:
            line = service[key].lstrip("-").replace("%f", str(mountpoint))
            line = line.replace("/usr/local/bin/bakfs", str(BAKFS))  # where it is installed
            return shlex.split(line.replace("/etc/bakfs/bakfs.toml", str(config)))

        self.pre, self.start, self.post = (command(k) for k in (
            "ExecStartPre", "ExecStart", "ExecStopPost"))
        self.kill_signal = signal.Signals[service["KillSignal"]]
        self.socket_path = work / "notify.sock"
        self.journal = work / "journal.log"
        self.process: subprocess.Popen[bytes] | None = None

    def run_start(self) -> str:
        subprocess.run(self.pre, check=True)
        self.socket_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(self.socket_path))
            sock.settimeout(60)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
            env["NOTIFY_SOCKET"] = str(self.socket_path)
            with open(self.journal, "ab") as journal:
                self.process = subprocess.Popen(self.start, env=env, stdout=journal,
                                                stderr=subprocess.STDOUT)
            return sock.recv(4096).decode()

    def status(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(self.kill_signal)
        code = self.process.wait(timeout=60)
        subprocess.run(self.post, capture_output=True)
        return code


def test_the_systemd_unit_starts_stops_and_recovers(config_file: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt" / "backups"  # ExecStartPre makes it
    service = Service(mountpoint, config_file, tmp_path)
    try:
        assert service.run_start() == "READY=1"
        assert service.status() and os.path.ismount(mountpoint)
        assert "boot-vol" in os.listdir(mountpoint)  # serving when systemd is told so
        assert service.stop() == 0  # SIGTERM: a clean stop, not a failure
        assert not os.path.ismount(mountpoint)
        journal = service.journal.read_text()
        assert "mounted" in journal and "SIGTERM: unmounting" in journal
        assert "unmounted" in journal and "Traceback" not in journal
        # a crash (kill -9) is a failure, Restart=on-failure starts it again: ExecStopPost
        # has removed the dead mount, so the new start comes up
        assert service.run_start() == "READY=1"
        assert service.process is not None
        service.process.kill()
        assert service.process.wait(timeout=30) == -signal.SIGKILL
        subprocess.run(service.post, capture_output=True)
        assert not os.path.ismount(mountpoint)
        assert service.run_start() == "READY=1" and os.path.ismount(mountpoint)
        assert service.stop() == 0 and not os.path.ismount(mountpoint)
    finally:
        if service.status():
            assert service.process is not None
            service.process.kill()
            service.process.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
