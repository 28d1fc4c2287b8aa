"""What the TSM commands do: back up to TSM, list, delete, restore and stage backups kept in
IBM Spectrum Protect. Each function takes the configuration and returns what happened; the
CLI (`bakfs.cli.tsm`) prints it, and the mount uses `make_runner` and `make_tsm_backup`.

Blocking, plain code (dsmc through `DsmcRunner`, the records through the store), except
`stage`, which runs the staging manager under `trio.run`. Knows nothing of argparse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from bakfs.config import Config
from bakfs.errors import BakfsError, TsmError
from bakfs.store import open_store
from bakfs.store.base import ObjectStore
from bakfs.threads import plain_errors
from bakfs.tsm.records import (
    TsmRecord,
    check_text,
    delete_record,
    find_record,
    list_records,
    now,
    put_record,
)
from bakfs.tsm.runner import DsmcRunner
from bakfs.tsm.staging import StagingManager, open_staging_manager

log = logging.getLogger(__name__)

Progress = Callable[[int, str | None], None]  # bytes done, a short status text


def make_runner(config: Config) -> DsmcRunner:
    return DsmcRunner(config.tsm, timeout=config.tsm.timeout or None)


def staging_dir(config: Config) -> Path:
    return Path(config.tsm.staging_path)


def staging_max_bytes(config: Config) -> int:
    return config.tsm.staging_max_size


@contextlib.contextmanager
def _store(config: Config) -> Iterator[ObjectStore]:
    store = open_store(config)
    try:
        store.ensure_bucket()
        yield store
    finally:
        store.close()


def backup_to_tsm(config: Config, source: str, volume_id: str, backup_id: str, *,
                  name: str | None, description: str | None) -> tuple[TsmRecord, float]:
    """Back SOURCE up to TSM as backup `backup_id` of VOLUME and record it in the store."""
    with _store(config) as store:
        return make_tsm_backup(store, make_runner(config), source, volume_id, backup_id,
                               name=name, description=description)


def make_tsm_backup(store: ObjectStore, runner: DsmcRunner, source: str, volume_id: str,
                    backup_id: str, *, name: str | None = None,
                    description: str | None = None) -> tuple[TsmRecord, float]:
    """Back `source` up to TSM and commit its record to the store (last). Blocking: the mount
    calls it in a worker thread for a file written into `incoming/`. When the record cannot be
    written, the TSM object is deleted again (best effort), so no backup is half there."""
    check_text(name, description)  # before dsmc runs: the record must be writable after it
    result = runner.backup(source, backup_id)
    record = TsmRecord(
        backup_id=backup_id, volume_id=volume_id, mode=result.mode, path=result.path,
        size=result.size, sha256=result.sha256, created_at=now(),
        compression=runner.options.compression, source=os.path.realpath(source), name=name,
        description=description)
    try:
        put_record(store, record)
    except BakfsError as exc:
        log.error("recording TSM backup %s failed (%s); deleting its TSM object",
                  backup_id, exc)
        with contextlib.suppress(TsmError):
            runner.delete(record)
        raise
    return record, result.seconds


def list_tsm(config: Config, volume_id: str | None) -> list[TsmRecord]:
    """The TSM backups recorded in the store."""
    with _store(config) as store:
        return list_records(store, volume_id)


def delete_tsm(config: Config, backup_id: str) -> tuple[TsmRecord, str | None]:
    """Delete the TSM object and the record; returns the record and, when the TSM delete
    failed, why. As in Cinder, a failed TSM delete is logged but does not keep the record
    (the object is left for the TSM administrator)."""
    runner = make_runner(config)
    problem = None
    with _store(config) as store:
        record = find_record(store, backup_id)
        try:
            runner.delete(record)
        except TsmError as exc:
            log.error("TSM delete of backup %s failed: %s; removing its record anyway (the "
                      "object %s may remain on the TSM server)", backup_id, exc, record.path)
            problem = str(exc)
        delete_record(store, record)
    return record, problem


def restore_tsm(config: Config, backup_id: str, target: str) -> tuple[TsmRecord, str, float]:
    """Restore a TSM backup to TARGET (a file, created or replaced, or a block device) and
    check its size and sha256 against the record. Returns the record, the target written
    and the seconds it took."""
    runner = make_runner(config)
    with _store(config) as store:
        record = find_record(store, backup_id)
    start = time.monotonic()
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        scratch = staging_dir(config)
        scratch.mkdir(parents=True, exist_ok=True)
        runner.restore_to_device(record, target, str(scratch))
    else:
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise BakfsError(f"cannot restore to {target}: not a regular file or block device")
        target = os.path.abspath(target)
        try:
            runner.restore_to_file(record, target)
        except BaseException:
            if st is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
            raise
    return record, target, time.monotonic() - start


@dataclasses.dataclass(frozen=True)
class Staged:
    """The outcome of `stage`."""

    record: TsmRecord
    bytes: int
    state: str
    path: str  # the staging file, or the file read through the mount
    details: dict[str, object]  # what `--json` prints


def stage(config: Config, backup_id: str, *, mount: str | None = None,
          on_start: Callable[[int], Progress] | None = None) -> Staged:
    """Stage a TSM backup into the staging area ahead of reads. With `mount`, through that
    bakfs mount (which owns the staging area while it runs). `on_start(size)` may return a
    progress callback."""
    with _store(config) as store:
        record = find_record(store, backup_id)
    progress = on_start(record.size) if on_start is not None else None
    if mount is not None:
        return _stage_through_mount(record, Path(mount), progress)
    runner = make_runner(config)

    async def main() -> Staged:
        async def show(manager: StagingManager) -> None:
            while True:
                p = manager.progress(backup_id)
                if p is not None and progress is not None:
                    progress(p.staged_bytes, p.state)
                await manager.changed(backup_id)

        async with (open_staging_manager(runner, staging_dir(config),
                                         staging_max_bytes(config)) as manager,
                    trio.open_nursery() as nursery):
            await manager.stage(record)
            nursery.start_soon(show, manager)
            result = await manager.wait_complete(record)
            if progress is not None:
                progress(result.staged_bytes, result.state)
            nursery.cancel_scope.cancel()
        path = str(staging_dir(config) / f"{backup_id}.img")
        return Staged(record, result.staged_bytes, result.state, path,
                      {**result.as_dict(), "path": path})

    with plain_errors():
        return trio.run(main)


def _stage_through_mount(record: TsmRecord, mount: Path, progress: Progress | None) -> Staged:
    """Read the backup's file once through the mount: the mount stages it as it is read, and
    keeps the verified staging for later readers."""
    directory = mount / record.volume_id
    names = [n for n in os.listdir(directory) if n.endswith(f"Z-{record.backup_id}")] \
        if directory.is_dir() else []
    if not names:
        raise BakfsError(f"{mount} does not show TSM backup {record.backup_id} (yet); "
                         "is it a bakfs mount of this store?")
    path = directory / names[0]
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            done += len(chunk)
            if progress is not None:
                progress(done, None)
    state = os.getxattr(path, "user.bakfs.staging.state").decode()
    return Staged(record, done, state, str(path), {"backup_id": record.backup_id,
                                                   "bytes": done, "state": state,
                                                   "mount": str(mount)})
