"""Staged reads of TSM backups: served while the restore runs (early ranges at once, later
ones when the restore passes them), never from unproven or unverified bytes; failures reach
the waiting reads and the next read retries; the staging area is bounded with LRU eviction."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from bakfs.cli.tsm import backup as run_tsm_backup
from bakfs.cli.tsm import stage as run_stage
from bakfs.config import Config
from bakfs.errors import (
    StagingBusy,
    StagingFailed,
    StagingNoSpace,
    TsmAuthFailed,
    TsmIntegrityError,
    TsmUnreachable,
)
from bakfs.store.localdir import LocalStore
from bakfs.threads import plain_errors
from bakfs.tsm import records as catalog
from bakfs.tsm.operations import make_runner, staging_dir
from bakfs.tsm.runner import DsmcRunner
from bakfs.tsm.staging import StagingManager, open_staging_manager
from tests.tsm.conftest import SimServer, make_config, random_file

MiB = 1 << 20


def make_backup(config: Config, store: LocalStore, tmp_path: Path, name: str,
                size: int, capsys: pytest.CaptureFixture[str]) -> tuple[catalog.TsmRecord, bytes]:
    source = tmp_path / f"{name}.raw"
    data = random_file(source, size)
    capsys.readouterr()
    assert run_tsm_backup(config, str(source), "vol-s", name=None, description=None,
                          as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    return catalog.read_record(store, "vol-s", doc["backup_id"]), data


def run(fn, *args):  # type: ignore[no-untyped-def]
    with plain_errors():
        return trio.run(fn, *args)


def test_early_ranges_are_served_while_the_restore_runs(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    record, data = make_backup(config, store, tmp_path, "slow", 8 * MiB, capsys)
    sim.set(rate=4 * MiB, chunk=256 << 10)  # the restore takes about 2 s

    async def main() -> None:
        async with open_staging_manager(make_runner(config), tmp_path / "staging",
                                        64 * MiB) as manager:
            start = trio.current_time()
            first = await manager.read(record, 0, MiB)
            first_at = trio.current_time() - start
            progress = manager.progress(record.backup_id)
            assert progress is not None and progress.state == "staging"
            assert first == data[:MiB]
            assert progress.staged_bytes < record.size // 2  # far from done
            assert progress.xattrs()["user.bakfs.staging.state"] == b"staging"
            # a range in the all-zero MiB (a hole for sparse writers) and one at the very end
            assert await manager.read(record, MiB + 5, 4096) == data[MiB + 5: MiB + 4101]
            last = await manager.read(record, record.size - 4096, 65536)
            last_at = trio.current_time() - start
            assert last == data[-4096:]
            assert last_at > first_at + 1.0  # it waited for the restore to get there
            done = manager.progress(record.backup_id)
            assert done is not None and done.state == "complete"
            assert done.staged_bytes == record.size and done.attempts == 1
            # complete: everything is served from the staged file, no new dsmc
            runs = len(sim.commands())
            assert await manager.read(record, 3 * MiB, 2 * MiB) == data[3 * MiB: 5 * MiB]
            assert await manager.read(record, record.size, 10) == b""
            assert len(sim.commands()) == runs

    run(main)
    # a later manager adopts the verified staging without running dsmc again
    runs = len(sim.commands())

    async def again() -> None:
        async with open_staging_manager(make_runner(config), tmp_path / "staging",
                                        64 * MiB) as manager:
            assert await manager.read(record, 0, 100) == data[:100]

    run(again)
    assert len(sim.commands()) == runs


@pytest.mark.parametrize("write_mode", ["preallocate", "tempfile", "sparse"])
def test_unproven_bytes_are_never_served(write_mode: str, config: Config, store: LocalStore,
                                         sim: SimServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A preallocated (or renamed) staging file proves nothing until dsmc ends and the sha256
    matches; a sparse writer's holes are the zeros they stand for."""
    record, data = make_backup(config, store, tmp_path, "pre", 4 * MiB, capsys)
    sim.set(rate=4 * MiB, chunk=256 << 10, write_mode=write_mode)

    async def main() -> None:
        async with open_staging_manager(make_runner(config), tmp_path / "staging",
                                        64 * MiB) as manager:
            first = await manager.read(record, 0, 4096)
            progress = manager.progress(record.backup_id)
            assert progress is not None
            assert first == data[:4096]
            # served early only from a sequentially growing file; else after the sha256 check
            assert progress.state == ("staging" if write_mode == "sparse" else "complete")
            assert await manager.read(record, 0, record.size) == data

    run(main)


def test_failed_staging_fails_waiting_reads_and_the_next_read_retries(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    record, data = make_backup(config, store, tmp_path, "flaky", 4 * MiB, capsys)
    sim.set(rate=8 * MiB, chunk=256 << 10)
    sim.add_fault("restore", fail_after_bytes=MiB, fail_mode="exit")
    sim.add_fault("restore", fail_after_bytes=2 * MiB, fail_mode="kill")

    async def main() -> None:
        async with open_staging_manager(make_runner(config), tmp_path / "staging",
                                        64 * MiB) as manager:
            # the first MiB was written before the fault: served
            assert await manager.read(record, 0, 512 << 10) == data[:512 << 10]
            with pytest.raises(StagingFailed, match="ANS1809W") as info:
                await manager.read(record, 3 * MiB, 4096)
            assert isinstance(info.value.cause, TsmUnreachable)
            progress = manager.progress(record.backup_id)
            assert progress is not None and progress.state == "failed"
            assert "ANS1017E" in (progress.error or "")
            assert not (tmp_path / "staging" / f"{record.backup_id}.img").exists()
            # retry: dsmc is killed (SIGKILL) after 2 MiB this time
            with pytest.raises(StagingFailed, match="killed"):
                await manager.read(record, 3 * MiB, 4096)
            # the faults are used up: the third attempt succeeds
            assert await manager.read(record, 3 * MiB, 4096) == data[3 * MiB: 3 * MiB + 4096]
            progress = manager.progress(record.backup_id)
            assert progress is not None and progress.attempts == 3

    run(main)
    assert "the next read retries" in caplog.text


def test_auth_and_server_faults_then_recovery(config: Config, store: LocalStore,
                                              sim: SimServer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    record, data = make_backup(config, store, tmp_path, "auth", MiB, capsys)

    async def main() -> None:
        wrong = make_config(tmp_path, password="not-the-password")
        async with open_staging_manager(make_runner(wrong), tmp_path / "st1",
                                        64 * MiB) as manager:
            with pytest.raises(StagingFailed) as info:
                await manager.read(record, 0, 10)
            assert isinstance(info.value.cause, TsmAuthFailed)
        async with open_staging_manager(make_runner(config), tmp_path / "st2",
                                        64 * MiB) as manager:
            sim.set(server_down=1)
            with pytest.raises(StagingFailed, match="ANS1017E"):
                await manager.read(record, 0, 10)
            sim.clear("server_down")
            assert await manager.read(record, 0, 10) == data[:10]

    run(main)


def test_hung_dsmc_times_out_and_corrupt_bytes_never_complete(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    record, data = make_backup(config, store, tmp_path, "bad", 2 * MiB, capsys)

    async def main() -> None:
        runner = DsmcRunner(config.tsm, timeout=1.5)
        async with open_staging_manager(runner, tmp_path / "staging", 64 * MiB) as manager:
            sim.set(fail_after_bytes=MiB, fail_mode="hang")
            assert await manager.read(record, 0, 10) == data[:10]
            with pytest.raises(StagingFailed, match="did not finish"):
                await manager.read(record, record.size - 10, 10)
            sim.clear("fail_after_bytes", "fail_mode")
            victim = sim.data_files()[0]
            blob = bytearray(victim.read_bytes())
            blob[-1] ^= 0xFF
            victim.write_bytes(bytes(blob))
            with pytest.raises(StagingFailed, match="sha256") as info:
                await manager.read(record, record.size - 10, 10)
            assert isinstance(info.value.cause, TsmIntegrityError)
            progress = manager.progress(record.backup_id)
            assert progress is not None and progress.state == "failed"
            assert not (tmp_path / "staging" / f"{record.backup_id}.ok").exists()

    run(main)


def test_bounded_area_evicts_lru_but_never_one_in_use(
        config: Config, store: LocalStore, sim: SimServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, data_a = make_backup(config, store, tmp_path, "a", 2 * MiB, capsys)
    b, data_b = make_backup(config, store, tmp_path, "b", 2 * MiB, capsys)
    c, data_c = make_backup(config, store, tmp_path, "c", 2 * MiB, capsys)
    big, _ = make_backup(config, store, tmp_path, "big", 6 * MiB, capsys)
    area = tmp_path / "staging"

    async def main() -> None:
        async with open_staging_manager(make_runner(config), area, 5 * MiB) as manager:
            with pytest.raises(StagingFailed, match="holds at most") as info:
                await manager.read(big, 0, 10)
            assert isinstance(info.value.cause, StagingNoSpace)
            manager.pin(a.backup_id)  # a file opened before its staging started: in use
            assert await manager.read(a, 0, 10) == data_a[:10]
            assert await manager.read(b, 0, 10) == data_b[:10]
            await manager.wait_complete(a)
            await manager.wait_complete(b)
            await trio.sleep(0.01)
            assert await manager.read(b, 10, 10) == data_b[10:20]  # b used last
            assert await manager.read(c, 0, 10) == data_c[:10]  # evicts b, not a
            await manager.wait_complete(c)
            assert manager.progress(b.backup_id) is None
            assert not (area / f"{b.backup_id}.img").exists()
            assert (area / f"{a.backup_id}.img").exists()
            assert manager.used_bytes() <= 5 * MiB
            # a pinned and c just staged: no room for b while both are in use
            manager.pin(c.backup_id)
            with pytest.raises(StagingFailed, match="in use or running") as info:
                await manager.read(b, 0, 10)
            assert isinstance(info.value.cause, StagingNoSpace)
            manager.unpin(a.backup_id)  # the fault clears: the retry succeeds (evicting a)
            assert await manager.read(b, 0, 10) == data_b[:10]
            assert manager.progress(a.backup_id) is None
            manager.unpin(c.backup_id)

    run(main)


def test_real_enospc_in_the_staging_directory(config: Config, store: LocalStore,
                                              sim: SimServer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A staging area on a 3 MiB tmpfs: dsmc meets a real ENOSPC (ANS4009E)."""
    import subprocess

    record, _ = make_backup(config, store, tmp_path, "full", 4 * MiB, capsys)
    small = tmp_path / "tmpfs"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        async def main() -> None:
            async with open_staging_manager(make_runner(config), small / "staging",
                                            64 * MiB) as manager:
                with pytest.raises(StagingFailed, match="ANS4009E") as info:
                    await manager.read(record, 3 * MiB, 10)
                assert "no space at the destination" in str(info.value.cause)
                assert list((small / "staging").glob("*.img")) == []

        run(main)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_one_manager_per_directory_and_run_stage(config: Config, store: LocalStore,
                                                 sim: SimServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    record, data = make_backup(config, store, tmp_path, "st", 3 * MiB, capsys)
    area = staging_dir(config)

    async def main() -> None:
        async with open_staging_manager(make_runner(config), area, 64 * MiB):
            second = StagingManager(make_runner(config), area, 64 * MiB)
            async with trio.open_nursery() as nursery:
                with pytest.raises(StagingBusy, match="in use by process"):
                    await nursery.start(second.serve)

    run(main)
    (area / "leftover.img").write_bytes(b"partial")
    started = time.monotonic()
    assert run_stage(config, record.backup_id, as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "complete" and doc["staged_bytes"] == record.size
    assert Path(doc["path"]).read_bytes() == data
    assert not (area / "leftover.img").exists()  # an unfinished staging is never adopted
    assert time.monotonic() - started < 20
