"""TSM backups through the real runner and the dsmc simulator: a file and a loop device backed
up, listed, restored bit-exact and deleted; faults give clear errors; the password never shows
in `ps`, in logs or in the simulator's record of argv."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bakfs.cli.inventory import list_backups
from bakfs.cli.tsm import backup as run_tsm_backup
from bakfs.cli.tsm import delete as run_tsm_delete
from bakfs.cli.tsm import list_backups as run_tsm_ls
from bakfs.cli.tsm import restore as run_tsm_restore
from bakfs.config import Config
from bakfs.errors import (
    AlreadyExists,
    BackupNotFound,
    BadMetadata,
    ConfigError,
    TargetError,
    TsmAuthFailed,
    TsmClientError,
    TsmIntegrityError,
    TsmNoSpace,
    TsmNotFound,
    TsmSourceError,
    TsmUnreachable,
)
from bakfs.store.localdir import LocalStore
from bakfs.tsm import records as catalog
from bakfs.tsm.operations import make_runner, make_tsm_backup
from bakfs.tsm.runner import DsmcRunner
from tests.conftest import S3Server, record_ranges
from tests.tsm.conftest import SimServer, make_config, random_file


def backup_json(config: Config, source: str, volume: str,
                capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert run_tsm_backup(config, source, volume, name="n", description="d", as_json=True) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_file_backup_listed_restored_deleted(config: Config, store: LocalStore, sim: SimServer,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "vol" / "volume.raw"
    source.parent.mkdir()
    data = random_file(source, 3 << 20)
    doc = backup_json(config, str(source), "vol-1", capsys)
    assert doc["mode"] == "file" and doc["size"] == len(data)
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    # the consistent link name was backed up and removed afterwards
    assert doc["path"] == str(source.parent / f"backup-{doc['backup_id']}")
    assert not Path(str(doc["path"])).exists()
    assert sim.object_paths() == [doc["path"]]
    argv = sim.commands()[-1]["argv"]
    assert argv[:1] == ["selective"] and any(str(a).startswith("-optfile=") for a in argv)

    record = catalog.read_record(store, "vol-1", str(doc["backup_id"]))
    assert record.key == f"bakfs-tsm/vol-1/{doc['backup_id']}.json"
    assert run_tsm_ls(config, None, as_json=True) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["backup_id"] for r in listed] == [doc["backup_id"]]
    assert run_tsm_ls(config, "vol-1", as_json=False) == 0
    assert str(doc["backup_id"]) in capsys.readouterr().out

    target = tmp_path / "restored.raw"
    assert run_tsm_restore(config, str(doc["backup_id"]), str(target)) == 0
    assert target.read_bytes() == data
    target.write_bytes(b"old contents")  # an existing file is replaced (-replace=all)
    assert run_tsm_restore(config, str(doc["backup_id"]), str(target)) == 0
    assert target.read_bytes() == data

    assert run_tsm_delete(config, str(doc["backup_id"])) == 0
    assert catalog.list_records(store) == []
    assert sim.object_paths() == []
    with pytest.raises(BackupNotFound):
        run_tsm_restore(config, str(doc["backup_id"]), str(target))


def test_block_device_backup_in_image_mode(config: Config, store: LocalStore, sim: SimServer,
                                           loop_device: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with open(loop_device, "rb") as f:
        data = f.read()
    doc = backup_json(config, loop_device, "vol-blk", capsys)
    assert doc["mode"] == "image" and doc["size"] == len(data) == 6 << 20
    assert doc["path"] == f"/dev/backup-{doc['backup_id']}"
    assert not os.path.exists(str(doc["path"]))
    assert sim.commands()[-1]["argv"][:2] == ["backup", "image"]

    target = tmp_path / "image.raw"  # an image into a file: -imagetofile
    assert run_tsm_restore(config, str(doc["backup_id"]), str(target)) == 0
    assert target.read_bytes() == data
    assert "-imagetofile" in sim.commands()[-1]["argv"]

    # onto a block device, as Cinder does: the backup's own name linked to the device
    with open(loop_device, "r+b") as f:
        f.write(bytes(len(data)))
    holder = os.open(loop_device, os.O_RDONLY | os.O_EXCL)  # in use: refused before dsmc
    try:
        with pytest.raises(TargetError, match="in use"):
            run_tsm_restore(config, str(doc["backup_id"]), loop_device)
    finally:
        os.close(holder)
    with open(loop_device, "rb") as f:
        assert f.read() == bytes(len(data))
    assert run_tsm_restore(config, str(doc["backup_id"]), loop_device) == 0
    with open(loop_device, "rb") as f:
        assert f.read() == data
    assert not os.path.exists(str(doc["path"]))

    assert run_tsm_delete(config, str(doc["backup_id"])) == 0
    assert sim.object_paths() == [] and catalog.list_records(store) == []


def test_catalog_on_radosgw(rgw: S3Server, bucket_name: str, sim: SimServer, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """TSM records live in the real S3 store beside Cinder-format backups."""
    from tests.conftest import empty_bucket

    config = make_config(tmp_path, s3=rgw.options(bucket_name))
    source = tmp_path / "small.raw"
    data = random_file(source, 256 << 10)
    doc = backup_json(config, str(source), "vol-s3", capsys)
    from bakfs.store.s3 import S3Store

    s3 = S3Store(config.s3)
    try:
        keys = [i.key for i in s3.list("")]
        assert keys == [f"bakfs-tsm/vol-s3/{doc['backup_id']}.json"]
        assert catalog.find_record(s3, str(doc["backup_id"])).sha256 == \
            hashlib.sha256(data).hexdigest()
        target = tmp_path / "back.raw"
        assert run_tsm_restore(config, str(doc["backup_id"]), str(target)) == 0
        assert target.read_bytes() == data
        assert run_tsm_delete(config, str(doc["backup_id"])) == 0
        assert list(s3.list("")) == []
    finally:
        empty_bucket(s3)
        s3.close()


def test_sources_other_than_files_and_block_devices_are_refused(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path) -> None:
    for source, kind in ((str(tmp_path), "directory"), ("/dev/null", "character device")):
        with pytest.raises(TsmSourceError, match=kind):
            run_tsm_backup(config, source, "vol-x", name=None, description=None, as_json=True)
    with pytest.raises(TsmSourceError, match="No such file"):
        run_tsm_backup(config, str(tmp_path / "missing"), "vol-x", name=None,
                       description=None, as_json=True)
    assert sim.commands() == [] and catalog.list_records(store) == []


def test_faults_give_clear_errors_and_leave_nothing_behind(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "v.raw"
    data = random_file(source, 512 << 10)
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"server_down": 1}, TsmUnreachable, "ANS1017E"),
        ({"auth_fail": 1}, TsmAuthFailed, "ANS1025E"),
        ({"server_full": 1}, TsmNoSpace, "ANS1329S"),
        ({"fail_after_bytes": 1000}, TsmUnreachable, "ANS1809W"),
    ]
    for env, error, code in cases:
        sim.set(**env)
        with pytest.raises(error, match=code) as info:
            run_tsm_backup(config, str(source), "vol-f", name=None, description=None,
                           as_json=True)
        assert sim.password not in str(info.value)
        sim.clear(*env)
    assert catalog.list_records(store) == []
    assert not any(n.startswith("backup-") for n in os.listdir(tmp_path))
    assert sim.data_files() == []  # the failed transfers stored no version

    # a wrong password in the configuration
    with pytest.raises(TsmAuthFailed, match=r"tsm\.password"):
        run_tsm_backup(make_config(tmp_path, password="wrong-password"), str(source), "vol-f",
                       name=None, description=None, as_json=True)
    # no password and none stored: dsmc prompts; bakfs stops it at once instead of hanging
    started = time.monotonic()
    with pytest.raises(TsmAuthFailed, match="ANS1051I"):
        run_tsm_backup(make_config(tmp_path, password=None), str(source), "vol-f",
                       name=None, description=None, as_json=True)
    assert time.monotonic() - started < 10
    # ...but the client's stored password (passwordaccess generate) needs none from bakfs
    sim.update_server(stored_password=True)
    doc = backup_json(make_config(tmp_path, password=None), str(source), "vol-f", capsys)
    assert not any(str(a).startswith("-optfile") for a in sim.commands()[-1]["argv"])
    sim.update_server(stored_password=False)

    # restore faults, then the same restore succeeds once the fault is gone
    target = tmp_path / "out.raw"
    sim.set(server_down=1)
    with pytest.raises(TsmUnreachable):
        run_tsm_restore(config, str(doc["backup_id"]), str(target))
    assert not target.exists()  # a restore that created the target removes it on failure
    sim.clear("server_down")
    sim.add_fault("restore", fail_after_bytes=100_000, fail_mode="nospace")
    with pytest.raises(TsmNoSpace, match="ANS4009E"):
        run_tsm_restore(config, str(doc["backup_id"]), str(target))
    assert run_tsm_restore(config, str(doc["backup_id"]), str(target)) == 0
    assert target.read_bytes() == data

    # bytes that differ from the record are refused, whatever dsmc says
    victim = sim.data_files()[0]
    victim.write_bytes(b"X" + victim.read_bytes()[1:])
    with pytest.raises(TsmIntegrityError, match="sha256"):
        run_tsm_restore(config, str(doc["backup_id"]), str(target))


def test_the_record_is_the_commit_point(config: Config, store: LocalStore, sim: SimServer,
                                        tmp_path: Path) -> None:
    """When the record cannot be written, the TSM object is deleted again: nothing is listed
    and nothing is left on the TSM server."""
    source = tmp_path / "c.raw"
    random_file(source, 64 << 10)
    clash = catalog.TsmRecord("b-clash", "vol-c", "file", "/x", 1, "0" * 64, catalog.now())
    catalog.put_record(store, clash)
    with pytest.raises(AlreadyExists):
        make_tsm_backup(store, make_runner(config), str(source), "vol-c", "b-clash")
    assert sim.object_paths() == []
    assert [c["command"] for c in sim.commands()] == ["selective", "delete backup"]
    assert catalog.list_records(store) == [clash]


def test_records_are_bounded_both_ways(config: Config, store: LocalStore, sim: SimServer,
                                      tmp_path: Path) -> None:
    """A name or description longer than a record may hold is refused before dsmc runs, and
    no record larger than RECORD_LIMIT is written; an object under a record's key larger
    than any record is refused naming it, by the listing and by a lookup, each reading no
    more than RECORD_LIMIT + 1 bytes of it (one ranged GET)."""
    source = tmp_path / "t.raw"
    random_file(source, 64 << 10)
    with pytest.raises(ConfigError, match="description is at most 255 characters, not 256"):
        run_tsm_backup(config, str(source), "vol-t", name="n", description="d" * 256,
                       as_json=True)
    with pytest.raises(ConfigError, match="name is at most 255 characters"):
        make_tsm_backup(store, make_runner(config), str(source), "vol-t", "b-1", name="n" * 300)
    assert sim.commands() == [] and catalog.list_records(store) == []

    huge = catalog.TsmRecord("b-2", "vol-t", "file", "/x" * (200 << 10), 1, "0" * 64,
                             catalog.now())
    with pytest.raises(BadMetadata, match="more than the 262144 a record may"):
        catalog.put_record(store, huge)
    store.put(huge.key, b"{" + b" " * (catalog.RECORD_LIMIT + 10))
    asked = record_ranges(store)
    with pytest.raises(BadMetadata, match=re.escape(f"{huge.key} holds more than 262144 "
                                                    "bytes: not a bakfs TSM record")):
        catalog.list_records(store)
    with pytest.raises(BadMetadata, match="holds more than"):
        catalog.read_record(store, "vol-t", "b-2")
    assert asked == [(0, catalog.RECORD_LIMIT + 1)] * 2


def test_hung_dsmc_is_killed_after_the_timeout(config: Config, sim: SimServer,
                                               tmp_path: Path) -> None:
    source = tmp_path / "h.raw"
    random_file(source, 64 << 10)
    sim.set(fail_after_bytes=0, fail_mode="hang")
    runner = DsmcRunner(config.tsm, timeout=2)
    started = time.monotonic()
    with pytest.raises(TsmUnreachable, match="did not finish within 2 s"):
        runner.backup(str(source), "hung-backup")
    assert time.monotonic() - started < 8
    assert not (tmp_path / "backup-hung-backup").exists()


def test_delete_failure_is_logged_and_the_record_still_goes(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "d.raw"
    random_file(source, 64 << 10)
    doc = backup_json(config, str(source), "vol-d", capsys)
    sim.set(server_down=1)
    with caplog.at_level(logging.ERROR):
        assert run_tsm_delete(config, str(doc["backup_id"])) == 0
    assert "ANS1017E" in caplog.text and "removing its record anyway" in caplog.text
    assert catalog.list_records(store) == []
    assert sim.object_paths() == [doc["path"]]  # left for the TSM administrator
    sim.clear("server_down")
    # deleting an object that is already gone is a warning, not an error
    gone = catalog.TsmRecord("gone", "vol-d", "file", "/nowhere/backup-gone", 1, "0" * 64,
                             catalog.now())
    assert make_runner(config).delete(gone) is False


def test_client_errors(config: Config, sim: SimServer, tmp_path: Path) -> None:
    source = tmp_path / "c.raw"
    random_file(source, 4096)
    bad = make_config(tmp_path, dsmc_path=str(tmp_path / "no-dsmc"))
    with pytest.raises(TsmClientError, match=r"tsm\.dsmc_path"):
        run_tsm_backup(bad, str(source), "vol-c", name=None, description=None, as_json=True)
    sim.clear("server")
    with pytest.raises(TsmClientError, match="ANS1217E"):
        make_runner(config).backup(str(source), "no-server")
    missing = catalog.TsmRecord("b1", "v1", "file", "/x/backup-b1", 1, "0" * 64,
                                catalog.now())
    sim.monkeypatch.setenv("DSMC_SIM_SERVER", str(sim.path))
    with pytest.raises(TsmNotFound, match="ANS1302E"):
        make_runner(config).restore_to_file(missing, str(tmp_path / "nothing"))


def test_password_never_in_ps_logs_or_argv(config: Config, store: LocalStore, sim: SimServer,
                                           tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "p.raw"
    random_file(source, 2 << 20)
    sim.set(rate=2 << 20, chunk=128 << 10)  # about a second per transfer
    seen: list[str] = []
    stop = threading.Event()

    def poll_ps() -> None:
        while not stop.is_set():
            seen.extend(subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True,
                                       text=True).stdout.splitlines())
            time.sleep(0.05)

    poller = threading.Thread(target=poll_ps)
    poller.start()
    try:
        with caplog.at_level(logging.DEBUG):
            doc = backup_json(config, str(source), "vol-p", capsys)
            run_tsm_restore(config, str(doc["backup_id"]), str(tmp_path / "r.raw"))
            run_tsm_delete(config, str(doc["backup_id"]))
    finally:
        stop.set()
        poller.join()
    dsmc_lines = [line for line in seen if "dsmc" in line and "-optfile=" in line]
    assert dsmc_lines, "dsmc was never seen running"
    assert not [line for line in seen if sim.password in line]
    assert sim.password not in caplog.text
    assert "running " in caplog.text  # argv is logged (without secrets)
    assert sim.password not in (sim.path / "log" / "commands.jsonl").read_text()
    out = capsys.readouterr()
    assert sim.password not in out.out + out.err
    # the private options files are gone, and were private while they existed
    assert not [p for p in Path("/tmp").glob("bakfs-dsmc-*") if p.stat().st_uid == os.getuid()
                and (p / "dsm.opt").exists()]
    runner = make_runner(config)
    optfile = runner.make_optfile()
    assert optfile is not None
    try:
        assert os.stat(optfile).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(optfile)).st_mode & 0o777 == 0o700
        assert f"PASSWORD {sim.password}" in Path(optfile).read_text()
    finally:
        runner.remove_optfile(optfile)
    assert not os.path.exists(optfile)


def test_ls_shows_tsm_backups_and_its_cached_answer_keeps_them(
        config: Config, store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    """`bakfs ls` lists TSM backups beside S3 ones and keeps the records in the index, so
    `ls --cached` shows them too, as of that listing; the next listing drops a deleted one."""
    record = catalog.TsmRecord(backup_id="tsm-1", volume_id="vol-t", mode="image",
                               path="/dev/bakfs-tsm-1", size=1 << 20, sha256="0" * 64,
                               created_at=catalog.now())
    catalog.put_record(store, record)

    def ls(cached: bool) -> list[str]:
        capsys.readouterr()
        assert list_backups(config, None, show_all=False, as_json=True, cached=cached) == 0
        return [str(b["backup_id"]) for b in json.loads(capsys.readouterr().out)]

    assert ls(cached=False) == ["tsm-1"]
    store.delete(record.key)  # deleted elsewhere
    assert ls(cached=True) == ["tsm-1"]  # the index's copy, without the store
    assert ls(cached=False) == []
    assert ls(cached=True) == []
