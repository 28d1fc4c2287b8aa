"""The TSM commands behind the CLI: `tsm backup`, `tsm ls`, `tsm delete`, `tsm restore` and
`stage`. Each takes the configuration and parsed arguments and returns an exit code; errors
are `BakfsError`s for the CLI to print.

Blocking, plain code (dsmc through `DsmcRunner`, the catalog through the store), except
`run_stage`, which runs the staging manager under `trio.run`. Knows nothing of argparse.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import trio

from bakfs.blocking import plain_errors
from bakfs.cinder import naming
from bakfs.config import Config
from bakfs.errors import BakfsError, FormatError
from bakfs.progress import Progress, human_bytes
from bakfs.store import ObjectStore, open_store
from bakfs.tsm.catalog import (
    TsmRecord,
    delete_record,
    find_record,
    list_records,
    now,
    put_record,
)
from bakfs.tsm.dsmc import TsmError
from bakfs.tsm.runner import DsmcRunner
from bakfs.tsm.staging import open_staging_manager

log = logging.getLogger(__name__)

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


def run_tsm_backup(config: Config, source: str, volume_id: str, *, name: str | None,
                   description: str | None, as_json: bool) -> int:
    """Back SOURCE up to TSM as a new backup of VOLUME and record it in the store."""
    try:
        naming.validate_id("volume", volume_id)
    except FormatError as exc:
        raise BakfsError(f"--volume: {exc}") from None
    runner = make_runner(config)
    backup_id = str(uuid.uuid4())
    with _store(config) as store:
        if not as_json:
            print(f"TSM backup {backup_id} of volume {volume_id} from {source} ...",
                  file=sys.stderr)
        record, seconds = make_tsm_backup(store, runner, source, volume_id, backup_id,
                                          name=name, description=description)
    doc = {**record.as_dict(), "seconds": round(seconds, 3)}
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"TSM backup {backup_id} complete: {record.mode} mode, "
              f"{human_bytes(record.size)} ({record.size} bytes), sha256 {record.sha256[:16]}…,"
              f" in {seconds:.1f} s")
    return 0


def make_tsm_backup(store: ObjectStore, runner: DsmcRunner, source: str, volume_id: str,
                    backup_id: str, *, name: str | None = None,
                    description: str | None = None) -> tuple[TsmRecord, float]:
    """Back `source` up to TSM and commit its record to the store (last). Blocking: the mount
    calls it in a worker thread for a file written into `incoming/`. When the record cannot be
    written, the TSM object is deleted again (best effort), so no backup is half there."""
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


def _stage_through_mount(config: Config, record: TsmRecord, mount: Path, as_json: bool) -> int:
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
    with Progress(f"stage {record.backup_id[:8]}", record.size,
                  config.s3.enable_progress_timer) as bar, open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            done += len(chunk)
            bar.update_to(done)
    state = os.getxattr(path, "user.bakfs.staging.state").decode()
    if as_json:
        print(json.dumps({"backup_id": record.backup_id, "bytes": done, "state": state,
                          "mount": str(mount)}, indent=2))
    else:
        print(f"staged TSM backup {record.backup_id} through {mount} ({human_bytes(done)}, "
              f"{state})")
    return 0


def run_tsm_ls(config: Config, volume_id: str | None, as_json: bool) -> int:
    """List the TSM backups recorded in the store."""
    with _store(config) as store:
        records = list_records(store, volume_id)
    if as_json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    if not records:
        print("no TSM backups" + (f" for volume {volume_id}" if volume_id else ""))
        return 0
    volume = None
    for r in records:
        if r.volume_id != volume:
            volume = r.volume_id
            print(f"volume {volume}")
            print(f"  {'BACKUP':<36}  {'CREATED (UTC)':<19}  {'MODE':<5}  {'SIZE':>10}  "
                  "TSM OBJECT")
        print(f"  {r.backup_id:<36}  {r.created_at.strftime('%Y-%m-%d %H:%M:%S'):<19}  "
              f"{r.mode:<5}  {human_bytes(r.size):>10}  {r.path}")
    return 0


def run_tsm_delete(config: Config, backup_id: str) -> int:
    """Delete the TSM object and the record. As in Cinder, a failed TSM delete is logged but
    does not keep the record (the object is left for the TSM administrator)."""
    runner = make_runner(config)
    with _store(config) as store:
        record = find_record(store, backup_id)
        try:
            runner.delete(record)
        except TsmError as exc:
            log.error("TSM delete of backup %s failed: %s; removing its record anyway (the "
                      "object %s may remain on the TSM server)", backup_id, exc, record.path)
            print(f"warning: the TSM object {record.path} could not be deleted: {exc}",
                  file=sys.stderr)
        delete_record(store, record)
    print(f"deleted TSM backup {backup_id}")
    return 0


def run_tsm_restore(config: Config, backup_id: str, target: str) -> int:
    """Restore a TSM backup to TARGET (a file, created or replaced, or a block device) and
    check its size and sha256 against the record."""
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
    seconds = time.monotonic() - start
    print(f"restored TSM backup {backup_id} to {target}: {record.size} bytes, sha256 verified, "
          f"in {seconds:.1f} s")
    return 0


def run_stage(config: Config, backup_id: str, *, as_json: bool, mount: str | None = None) -> int:
    """Stage a TSM backup into the staging area ahead of reads, with a progress bar. With
    `mount`, through that bakfs mount (which owns the staging area while it runs)."""
    runner = make_runner(config)
    with _store(config) as store:
        record = find_record(store, backup_id)
    if mount is not None:
        return _stage_through_mount(config, record, Path(mount), as_json)

    async def main() -> dict[str, object]:
        async with open_staging_manager(runner, staging_dir(config),
                                        staging_max_bytes(config)) as manager:
            with Progress(f"stage {backup_id[:8]}", record.size,
                          config.s3.enable_progress_timer) as bar:
                async with trio.open_nursery() as nursery:
                    async def show() -> None:
                        while True:
                            p = manager.progress(backup_id)
                            if p is not None:
                                bar.update_to(p.staged_bytes, p.state)
                            await manager.changed(backup_id)

                    await manager.stage(record)
                    nursery.start_soon(show)
                    result = await manager.wait_complete(record)
                    bar.update_to(result.staged_bytes, result.state)
                    nursery.cancel_scope.cancel()
            return {**result.as_dict(), "path": str(staging_dir(config) / f"{backup_id}.img")}

    with plain_errors():
        doc = trio.run(main)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"staged TSM backup {backup_id}: {record.size} bytes in {doc['path']}")
    return 0
