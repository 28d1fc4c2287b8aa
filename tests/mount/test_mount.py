"""bakfs mounted for real (FUSE, radosgw): browse, restore with dd, back up by writing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.mount.control import is_bakfs_mount_process
from bakfs.procfs import process_alive
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.mount.fixtures import KiB, Mount, base_env, unmount, wait_mounted

SIZE = 3 * 1024 * KiB + 4321  # not a multiple of the object or block size


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    base = bytearray(rng.randbytes(SIZE))
    base[KiB * 512:KiB * 1536] = bytes(KiB * 1024)  # a hole
    out = [bytes(base)]
    for step in range(2):
        new = bytearray(out[-1])
        at = rng.randrange(SIZE - 64 * KiB)
        new[at:at + 40 * KiB] = rng.randbytes(40 * KiB)
        if step == 1:
            new[2048 * KiB:2304 * KiB] = bytes(256 * KiB)  # zeros overwrite data
        out.append(bytes(new))
    return out


def _bakfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bakfs", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def _dd(source: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dd", f"if={source}", f"of={target}", "bs=4M", *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(rgw: S3Server, bucket_name: str, s3_store: S3Store, tmp_path: Path) -> dict[str, str]:
    return base_env(rgw, bucket_name, tmp_path)


def _backup_chain(env: dict[str, str], tmp_path: Path, volume: str,
                  versions: list[bytes]) -> list[str]:
    ids = []
    for n, data in enumerate(versions):
        image = tmp_path / f"{volume}-{n}.img"
        image.write_bytes(data)
        result = _bakfs(env, "backup", str(image), "--volume", volume, "--json")
        assert result.returncode == 0, result.stderr
        ids.append(json.loads(result.stdout)["backup_id"])
    return ids


def test_browse_and_restore_a_chain_with_dd(env: dict[str, str], tmp_path: Path,
                                            start_mount: Callable[[dict[str, str]], Mount]
                                            ) -> None:
    versions = _versions(1)
    ids = _backup_chain(env, tmp_path, "vol-a", versions)
    other = _backup_chain(env, tmp_path, "vol-b", [_versions(2)[0]])
    mount = start_mount(env)
    root = sorted(os.listdir(mount.path))
    assert root == [".metrics", ".status", "incoming", "vol-a", "vol-b"]
    names = sorted(os.listdir(mount.path / "vol-a"))
    assert names[-1] == "latest" and [n.split("Z-", 1)[1] for n in names[:-1]] == ids
    assert os.readlink(mount.path / "vol-a" / "latest") == names[-2]
    for name, data, backup_id in zip(names[:-1], versions, ids, strict=True):
        path = mount.path / "vol-a" / name
        st = path.stat()
        assert st.st_size == SIZE and st.st_mode & 0o777 == 0o440
        assert abs(st.st_mtime - time.time()) < 600
        restored = tmp_path / f"restored-{backup_id}"
        result = _dd(path, restored)
        assert result.returncode == 0, result.stderr
        assert _sha(restored.read_bytes()) == _sha(data)
        assert os.getxattr(path, "user.bakfs.backup_id").decode() == backup_id
        assert int(os.getxattr(path, "user.bakfs.bytes_served")) >= SIZE
    chain = os.getxattr(mount.path / "vol-a" / names[-2], "user.bakfs.chain").decode()
    assert chain.split(",") == ids
    # codec and stored bytes as `bakfs ls` reports them from its own listing of the store
    listed = json.loads(_bakfs(env, "ls", "vol-a", "--json").stdout)
    assert len(listed) == len(ids)
    for entry, name in zip(listed, names[:-1], strict=True):
        path = mount.path / "vol-a" / name
        assert os.getxattr(path, "user.bakfs.codec").decode().split(",") == entry["codecs"]
        assert set(entry["codecs"]) <= {"zstd", "none"}  # none: random data did not shrink
        assert int(os.getxattr(path, "user.bakfs.stored_bytes")) == entry["stored_bytes"] > 0
    assert (mount.path / "vol-b" / "latest").read_bytes() == _versions(2)[0]
    status = (mount.path / ".status").read_text()
    assert "bytes served:" in status and "read errors: 0" in status
    metrics = (mount.path / ".metrics").read_text()
    assert "# TYPE bakfs_served_bytes_total counter" in metrics
    served = int(re.search(r"^bakfs_served_bytes_total (\d+)$", metrics, re.M)[1])  # type: ignore[index]
    assert served >= 3 * SIZE
    assert other


def test_concurrent_readers_get_the_right_bytes(env: dict[str, str], tmp_path: Path,
                                               start_mount: Callable[[dict[str, str]], Mount]
                                               ) -> None:
    versions = _versions(3)
    mount = start_mount(env)
    ids = _backup_chain(env, tmp_path, "vol-c", versions)  # made while mounted
    by_id = dict(zip(ids, versions, strict=True))
    deadline = time.monotonic() + 30
    while len(names := sorted(os.listdir(mount.path))) < 4 or len(
            names := sorted(os.listdir(mount.path / "vol-c"))[:-1]) < 3:
        assert time.monotonic() < deadline, "new backups did not appear after a refresh"
        time.sleep(0.2)
    jobs = []
    for n, name in enumerate(names * 2):  # every backup twice at once
        target = tmp_path / f"out-{n}"
        jobs.append((subprocess.Popen(["dd", f"if={mount.path / 'vol-c' / name}",
                                       f"of={target}", "bs=1M"], stderr=subprocess.DEVNULL),
                     target, by_id[name.split("Z-", 1)[1]]))
    for process, target, data in jobs:
        assert process.wait(timeout=120) == 0
        assert target.read_bytes() == data


def test_backup_by_writing_into_incoming(env: dict[str, str], tmp_path: Path, s3_store: S3Store,
                                         start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    first, second = _versions(4)[:2]
    for n, data in enumerate((first, second)):
        image = tmp_path / f"in-{n}.img"
        image.write_bytes(data)
        result = _dd(image, mount.path / "incoming" / "vol-in")
        assert result.returncode == 0, result.stderr
        assert os.listdir(mount.path / "incoming") == []  # gone once committed
    refs = find_backups(s3_store, "vol-in")
    assert len(refs) == 2
    metas = sorted((load_metadata(s3_store, r) for r in refs),
                   key=lambda m: m.parent_id is not None)
    assert metas[0].parent_id is None and metas[1].parent_id == metas[0].backup_id
    assert sum(o.length for o in metas[1].objects) < SIZE // 4  # only the changed runs
    names = sorted(os.listdir(mount.path / "vol-in"))[:-1]
    assert [n.split("Z-", 1)[1] for n in names] == [m.backup_id for m in metas]
    assert [(mount.path / "vol-in" / n).read_bytes() for n in names] == [first, second]


def test_incoming_refuses_bad_names_and_a_second_writer(
        env: dict[str, str], start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    incoming = mount.path / "incoming"
    for name in ("..hidden", "bad name", "x" * 200):
        with pytest.raises(OSError) as info:
            open(incoming / name, "wb").close()
        assert info.value.errno in (errno.EINVAL, errno.ENAMETOOLONG), name
    with open(incoming / "vol-busy", "wb") as first:
        first.write(b"x" * 4096)
        first.flush()
        with pytest.raises(OSError) as info:
            open(incoming / "vol-busy", "wb").close()
        assert info.value.errno == errno.EBUSY
    with pytest.raises(OSError) as info:
        open(mount.path / "newfile", "wb").close()
    assert info.value.errno == errno.EROFS
    assert "incoming/'bad name' refused" in mount.log_text()


def test_a_killed_writer_leaves_no_backup(env: dict[str, str], tmp_path: Path,
                                         s3_store: S3Store,
                                         start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        f"f = open({str(mount.path / 'incoming' / 'vol-k')!r}, 'wb', buffering=0)\n"
        "f.write(b'\\1' * 1048576)\n"
        "print('written', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE)
    assert writer.stdout is not None and writer.stdout.readline() == b"written\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    deadline = time.monotonic() + 30
    while os.listdir(mount.path / "incoming"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert find_backups(s3_store, "vol-k") == []
    assert list(s3_store.list("volume_vol-k/")) == []  # the abandoned objects were removed
    assert "was killed" in mount.log_text()
    image = tmp_path / "after.img"
    image.write_bytes(b"\2" * 100000)
    assert _dd(image, mount.path / "incoming" / "vol-k").returncode == 0
    assert (mount.path / "vol-k" / "latest").read_bytes() == b"\2" * 100000


def test_a_failed_backup_fails_close_and_dd(env: dict[str, str], tmp_path: Path,
                                           s3_store: S3Store,
                                           start_mount: Callable[[dict[str, str]], Mount]
                                           ) -> None:
    mount = start_mount(env)
    image = tmp_path / "first.img"
    image.write_bytes(b"\3" * 200000)
    assert _dd(image, mount.path / "incoming" / "vol-f").returncode == 0
    image.write_bytes(b"\4" * 100)  # another size: cannot be an incremental of the first
    result = _dd(image, mount.path / "incoming" / "vol-f")
    assert result.returncode != 0 and "Input/output error" in result.stderr
    assert len(find_backups(s3_store, "vol-f")) == 1
    assert "write it to incoming/vol-f.full" in mount.log_text()


def test_a_corrupt_object_fails_its_range_with_eio_and_the_mount_stays_up(
        env: dict[str, str], tmp_path: Path, s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    data = _versions(5)[0]
    _backup_chain(env, tmp_path, "vol-x", [data])
    _backup_chain(env, tmp_path, "vol-y", [data])
    ref = find_backups(s3_store, "vol-x")[0]
    victim = load_metadata(s3_store, ref).objects[1]  # random data (objects 2-5 are zeros)
    s3_store.put(victim.name, s3_store.get(victim.name)[::-1])  # same length, wrong bytes
    mount = start_mount(env)
    path = mount.path / "vol-x" / "latest"
    result = _dd(path, tmp_path / "out")
    assert result.returncode != 0 and "Input/output error" in result.stderr
    assert victim.name in mount.log_text()
    with open(path, "rb") as f:  # the ranges before it still read
        assert f.read(victim.offset) == data[:victim.offset]
    assert (mount.path / "vol-y" / "latest").read_bytes() == data
    assert "read errors: 0" not in (mount.path / ".status").read_text()


def test_daemon_mode_umount_and_a_stale_mount(env: dict[str, str], tmp_path: Path,
                                              s3_store: S3Store) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    log = tmp_path / "daemon.log"
    try:
        result = _bakfs(env, "mount", str(path), "--log", str(log))
        assert result.returncode == 0, result.stderr + log.read_text()
        assert os.path.ismount(path) and "mounted (daemon pid" in result.stdout
        pid = int(os.getxattr(path, "user.bakfs.pid"))
        with open(path / "incoming" / "vol-u", "wb") as writer:
            writer.write(b"x" * 1000)
            busy = _bakfs(env, "umount", str(path))
            assert busy.returncode == 1 and "being written" in busy.stderr
        assert _bakfs(env, "umount", str(path)).returncode == 0
        assert not os.path.ismount(path)
        assert not process_alive(pid)  # gone (or a zombie waiting for init to reap it)
        assert len(find_backups(s3_store, "vol-u")) == 1  # committed at the close above
        # --force with a backup in flight: abandoned, the writer told, nothing committed
        forced = _bakfs(env, "mount", str(path), "--log", str(log))
        assert forced.returncode == 0, forced.stderr
        pid = int(os.getxattr(path, "user.bakfs.pid"))
        fd = os.open(path / "incoming" / "vol-f", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, b"y" * 300000)
            result = _bakfs(env, "umount", "--force", str(path))
            assert result.returncode == 0, result.stderr
            assert not os.path.ismount(path) and not process_alive(pid)
            with pytest.raises(OSError) as info:
                os.write(fd, b"y" * 4096)
            assert info.value.errno == errno.ENOTCONN
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        assert find_backups(s3_store, "vol-f") == []
        assert find_backups(s3_store, "vol-u") != []  # the earlier backup is untouched
        again = _bakfs(env, "mount", str(path), "--log", str(log))
        assert again.returncode == 0
        os.kill(int(os.getxattr(path, "user.bakfs.pid")), signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(OSError) as info:
            os.listdir(path)
        assert info.value.errno == errno.ENOTCONN  # what a crashed daemon leaves
        third = _bakfs(env, "mount", str(path), "--log", str(log))
        assert third.returncode == 0, third.stderr
        assert "stale mount" in third.stderr
        assert sorted(os.listdir(path)) == [".metrics", ".status", "incoming", "vol-u"]
        twice = _bakfs(env, "mount", str(path), "--log", str(log))
        assert twice.returncode == 2 or "already a mount point" in twice.stderr
    finally:
        unmount(path, None)


def test_the_mount_survives_the_store_going_away(env: dict[str, str], tmp_path: Path,
                                                 start_mount: Callable[[dict[str, str]], Mount]
                                                 ) -> None:
    data = _versions(6)[0]
    _backup_chain(env, tmp_path, "vol-o", [data])
    from tests.mount.proxy import TcpProxy

    with TcpProxy(env["BAKFS_S3_ENDPOINT_URL"]) as proxy:
        mount = start_mount({**env, "BAKFS_S3_ENDPOINT_URL": proxy.url,
                             "BAKFS_S3_RETRY_MAX_ATTEMPTS": "2", "BAKFS_S3_TIMEOUT": "3"})
        path = mount.path / "vol-o" / "latest"
        proxy.stop()
        with pytest.raises(OSError) as info:  # at the open, if the volume is not indexed yet
            path.read_bytes()
        assert info.value.errno == errno.EIO
        assert "cannot reach the store" in mount.log_text()
        proxy.start()
        assert path.read_bytes() == data
        wait_mounted(mount.path, mount.process, mount.log)


def test_sparse_aware_tools_and_du(env: dict[str, str], tmp_path: Path,
                                  start_mount: Callable[[dict[str, str]], Mount]) -> None:
    data = _versions(7)[0]  # 1 MiB of it is a hole
    _backup_chain(env, tmp_path, "vol-s", [data])
    mount = start_mount(env)
    path = mount.path / "vol-s" / "latest"
    deadline = time.monotonic() + 30
    while os.stat(path).st_blocks * 512 >= SIZE:  # measured in the background after mount
        assert time.monotonic() < deadline
        time.sleep(0.1)
    held = os.stat(path).st_blocks * 512
    assert SIZE - 1024 * KiB - 512 <= held <= SIZE - 1024 * KiB + 512
    copy = tmp_path / "copy.img"
    assert subprocess.run(["cp", "--sparse=always", str(path), str(copy)]).returncode == 0
    assert copy.read_bytes() == data and os.stat(copy).st_blocks * 512 < SIZE - 512 * KiB
    assert _dd(path, tmp_path / "dd.img", "conv=sparse").returncode == 0
    assert (tmp_path / "dd.img").read_bytes() == data
    sums = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True).stdout
    assert sums.split()[0] == _sha(data)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["format"] == "raw" and doc["virtual-size"] == -(-SIZE // 512) * 512


def test_writes_out_of_order_are_refused_and_progress_is_visible(
        env: dict[str, str], s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    target = mount.path / "incoming" / "vol-o"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"a" * 300000)
        assert int(os.getxattr(target, "user.bakfs.written")) == 300000
        assert os.getxattr(target, "user.bakfs.backup_id")
        assert "writing incoming/vol-o" in (mount.path / ".status").read_text()
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"b" * 10, 5)  # rewriting an earlier range
        assert info.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError):
            os.close(fd)  # the backup was abandoned: close reports it
    assert "written sequentially" in mount.log_text()
    assert find_backups(s3_store, "vol-o") == []


def test_sigterm_unmounts_cleanly_and_abandons_a_backup_in_flight(
        env: dict[str, str], s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    fd = os.open(mount.path / "incoming" / "vol-t", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"z" * 500000)
    mount.process.send_signal(signal.SIGTERM)
    assert mount.process.wait(timeout=60) == 0
    with pytest.raises(OSError) as info:
        os.close(fd)  # the writer learns its file is gone
    assert info.value.errno == errno.ENOTCONN
    assert not os.path.ismount(mount.path)
    assert find_backups(s3_store, "vol-t") == []
    assert "the mount is going away" in mount.log_text()


def test_fsync_then_close_commits_once(env: dict[str, str], tmp_path: Path, s3_store: S3Store,
                                       start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    image = tmp_path / "f.img"
    image.write_bytes(b"\5" * 300000)
    result = _dd(image, mount.path / "incoming" / "vol-fs", "conv=fsync")
    assert result.returncode == 0, result.stderr
    assert len(find_backups(s3_store, "vol-fs")) == 1
    assert re.search(r"^backups committed: 1$", (mount.path / ".status").read_text(), re.M)


def test_a_child_closing_its_copy_does_not_end_the_backup(
        env: dict[str, str], s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount(env)
    fd = os.open(mount.path / "incoming" / "vol-c", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"a" * 200000)
        # the forked child closes its copy of fd at exec: the kernel sends a flush
        subprocess.run(["true"], check=True)
        assert find_backups(s3_store, "vol-c") == []
        os.write(fd, b"b" * 100000)
    finally:
        os.close(fd)
    assert len(find_backups(s3_store, "vol-c")) == 1
    assert (mount.path / "vol-c" / "latest").read_bytes() == b"a" * 200000 + b"b" * 100000


def test_a_mount_with_a_known_index_comes_up_while_the_store_is_away(
        env: dict[str, str], tmp_path: Path,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    """The index and cache outlive a mount: the next mount shows the backups and serves
    the cached bytes before the store answers (or while it cannot), and still shows what
    the store gained meanwhile as soon as it can list it."""
    from tests.mount.proxy import TcpProxy

    versions = _versions(8)
    first_id, = _backup_chain(env, tmp_path, "vol-w", versions[:1])
    with TcpProxy(env["BAKFS_S3_ENDPOINT_URL"]) as proxy:
        # keep_sequential: a whole file read once is kept on disk too (by default a
        # sequential scan stays in memory, so it cannot evict what random readers use)
        proxied = {**env, "BAKFS_S3_ENDPOINT_URL": proxy.url,
                   "BAKFS_S3_RETRY_MAX_ATTEMPTS": "2", "BAKFS_S3_TIMEOUT": "3",
                   "BAKFS_CACHE_KEEP_SEQUENTIAL": "true"}
        first = start_mount(proxied)
        assert (first.path / "vol-w" / "latest").read_bytes() == versions[0]  # now cached
        # bakfs umount waits for the daemon to exit, so its cache writes are on disk
        assert _bakfs(proxied, "umount", str(first.path)).returncode == 0

        proxy.stop()
        away = start_mount(proxied)
        names = sorted(os.listdir(away.path / "vol-w"))
        assert [n.split("Z-", 1)[-1] for n in names] == [first_id, "latest"]
        assert (away.path / "vol-w" / "latest").read_bytes() == versions[0]
        # the listing shows the index's view at once; the store's listing fails behind it
        away.wait_for_log("cannot list", "the failed listing was never logged")
        unmount(away.path, away.process)

        second_id, = _backup_chain(env, tmp_path, "vol-w", versions[1:2])  # not via the proxy
        proxy.start()
        proxy.mode = "hang"  # the store answers nothing while the mount comes up
        back = start_mount({**proxied, "BAKFS_INDEX_REFRESH_INTERVAL": "2"})
        # a directory listing shows the index's view once the TSM records' listing has
        # timed out, not the backup made meanwhile (tests/unit/test_service.py shows that
        # it does not wait for the store's backups to be listed)...
        names = sorted(os.listdir(back.path / "vol-w"))
        assert [n.split("Z-", 1)[-1] for n in names] == [first_id, "latest"]
        proxy.mode = "pass"
        # ... and the backup made meanwhile once the store has been listed
        deadline = time.monotonic() + 30
        while len(names) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            names = sorted(os.listdir(back.path / "vol-w"))
        assert [n.split("Z-", 1)[-1] for n in names] == [first_id, second_id, "latest"]
        assert (back.path / "vol-w" / "latest").read_bytes() == versions[1]


def test_bakfs_refresh_shows_a_backup_made_elsewhere_at_once(
        env: dict[str, str], tmp_path: Path,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    mount = start_mount({**env, "BAKFS_INDEX_REFRESH_INTERVAL": "3600"})
    assert "vol-r" not in os.listdir(mount.path)  # returns after the first listing
    data = _versions(9)[0]
    backup_id, = _backup_chain(env, tmp_path, "vol-r", [data])  # another process
    assert "vol-r" not in os.listdir(mount.path)  # the next automatic refresh is an hour away
    result = _bakfs(env, "refresh", str(mount.path))
    assert result.returncode == 0, result.stderr
    assert "refreshed" in result.stdout and "1 backups of 1 volumes" in result.stdout
    names = os.listdir(mount.path / "vol-r")
    assert sorted(n.split("Z-", 1)[-1] for n in names) == [backup_id, "latest"]
    assert (mount.path / "vol-r" / "latest").read_bytes() == data
    with pytest.raises(OSError) as info:  # the only attribute that can be set
        os.setxattr(mount.path / "vol-r" / "latest", "user.bakfs.refresh", b"1")
    assert info.value.errno == errno.ENOTSUP
    not_mounted = _bakfs(env, "refresh", str(tmp_path))
    assert not_mounted.returncode != 0 and "is not mounted" in not_mounted.stderr


def test_a_killed_daemon_leaves_no_backup_and_the_earlier_one_intact(
        env: dict[str, str], tmp_path: Path, s3_store: S3Store,
        start_mount: Callable[[dict[str, str]], Mount]) -> None:
    versions = _versions(10)
    first_id, = _backup_chain(env, tmp_path, "vol-k", versions[:1])
    mount = start_mount(env)
    target = mount.path / "incoming" / "vol-k"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, versions[1][:2 * 1024 * KiB])
        deadline = time.monotonic() + 30
        while int(os.getxattr(target, "user.bakfs.uploaded")) == 0:  # objects in the store
            assert time.monotonic() < deadline, "nothing uploaded in 30 s"
            time.sleep(0.05)
        mount.process.kill()
        mount.process.wait(timeout=30)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    unmount(mount.path, None)  # what the crashed daemon left
    assert [b.backup_id for b in find_backups(s3_store, "vol-k")] == [first_id]
    gc = _bakfs(env, "gc", "vol-k", "--json")
    orphans = json.loads(gc.stdout)["orphans"]
    assert len(orphans) == 1 and orphans[0]["objects"]  # the half backup, found
    restored = tmp_path / "restored"
    assert _bakfs(env, "restore", first_id, str(restored)).returncode == 0
    assert restored.read_bytes() == versions[0]
    # the dead daemon's lease on the volume does not block the next backup
    second_id, = _backup_chain(env, tmp_path, "vol-k", versions[1:2])
    assert [b.backup_id for b in find_backups(s3_store, "vol-k")] == [first_id, second_id]


def test_umount_force_signals_only_a_bakfs_mount_process() -> None:
    """The daemon pid comes from the mount's xattr, in the daemon's PID namespace: --force
    signals it only if, seen from here, it is a bakfs mount process."""
    assert not is_bakfs_mount_process(os.getpid())  # pytest, not a mount
    with subprocess.Popen([sys.executable, "-c",
                           "import time; print('ready', flush=True); time.sleep(60)",
                           "bakfs", "mount"], stdout=subprocess.PIPE) as lookalike:
        try:
            assert lookalike.stdout is not None
            assert lookalike.stdout.readline() == b"ready\n"  # exec'd: its argv is in /proc
            assert is_bakfs_mount_process(lookalike.pid)
        finally:
            lookalike.kill()
    assert not is_bakfs_mount_process(lookalike.pid)  # gone
