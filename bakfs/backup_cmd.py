"""`bakfs backup SOURCE --volume ID`: choose full or incremental, take the volume's lease, and
stream the source through the backup engine with progress and a summary.

Parent choice follows Cinder: the newest complete backup of the volume, incremental only when
its block size matches and the volume kept its size (bakfs compares bytes, not GiB). When the
user did not name a parent, a mismatch means a full backup and says why; a named parent that
does not fit is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO

import trio

from bakfs.backup_engine import BackupPlan, BackupStats, run_backup_stream
from bakfs.cinder import naming
from bakfs.config import Config
from bakfs.discovery import BackupRef, find_backup, load_chain, load_sha256file, newest_backup
from bakfs.errors import BakfsError, FormatError
from bakfs.locking import VolumeLease
from bakfs.progress import Progress, human_bytes
from bakfs.store import ObjectStore, open_store

log = logging.getLogger(__name__)



class SourceError(BakfsError):
    """The source cannot be read."""


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    file: BinaryIO
    size: int | None  # None for a pipe or stdin
    kind: str


def open_source(path: str) -> Source:
    """Open a regular file, a block device, a pipe or `-` (stdin) for reading."""
    if path == "-":
        return Source("-", sys.stdin.buffer, None, "stdin")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path} is a directory; give a file, a block device or -")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise SourceError(f"{path} is neither a regular file, a block device nor a pipe")
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None
    if stat.S_ISFIFO(st.st_mode):
        return Source(path, f, None, "pipe")
    size = f.seek(0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
    f.seek(0)
    return Source(path, f, size, "block device" if stat.S_ISBLK(st.st_mode) else "file")


def plan_backup(store: ObjectStore, config: Config, volume_id: str, size: int | None, *,
                parent_id: str | None, full: bool, name: str | None,
                description: str | None) -> tuple[BackupPlan, str]:
    """The plan and a sentence saying why it is full or incremental."""
    naming.validate_id("volume", volume_id)
    options = config.s3
    base = BackupPlan(volume_id=volume_id, backup_id=str(uuid.uuid4()), options=options,
                      name=name, description=description)
    if full:
        return base, "full backup (--full)"
    if parent_id is not None:
        parent = find_backup(store, parent_id, volume_id)
        problem, plan = _incremental_on(store, base, parent, size)
        if problem:
            raise BakfsError(f"cannot make an incremental on {parent_id}: {problem}")
        return plan, f"incremental on {parent_id} (--parent)"
    newest = newest_backup(store, volume_id)
    if newest is None:
        return base, f"full backup: volume {volume_id} has no earlier backup"
    problem, plan = _incremental_on(store, base, newest, size)
    if problem:
        return base, f"full backup: {problem}"
    return plan, f"incremental on the newest backup {newest.backup_id}"


def _incremental_on(store: ObjectStore, base: BackupPlan, parent: BackupRef,
                    size: int | None) -> tuple[str | None, BackupPlan]:
    sha = load_sha256file(store, parent)
    if sha.chunk_size != base.options.block_size:
        return (f"backup {parent.backup_id} tracks {sha.chunk_size}-byte blocks and "
                f"s3.block_size is {base.options.block_size} (the block size changed)"), base
    parent_size = load_chain(store, parent)[0][1].covered_size
    if size is not None and size != parent_size:
        verb = "grew" if size > parent_size else "shrank"
        return (f"the volume {verb} from {parent_size} to {size} bytes since backup "
                f"{parent.backup_id}"), base
    return None, dataclasses.replace(base, parent=parent, parent_hashes=sha.sha256s,
                                     parent_size=parent_size)


async def stream_backup(store: ObjectStore, plan: BackupPlan, source: Source,
                        progress: Progress) -> tuple[BackupRef, dict[str, float | int]]:
    """Take the lease, feed the engine from the source in a worker thread, commit. SIGTERM
    and Ctrl-C abandon the backup cleanly: nothing is committed, its objects are removed."""
    lease = VolumeLease(store, plan.volume_id, plan.backup_id)
    await trio.to_thread.run_sync(lease.acquire)
    disk = trio.CapacityLimiter(1)
    offset = 0
    # whole windows per read, so the engine takes them without copying
    read_size = plan.options.object_size * max(1, (4 << 20) // plan.options.object_size)

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal offset
        while True:
            try:
                # abandoned on cancel: a read has no side effect, and a pipe or a hung
                # device may never return
                data = await trio.to_thread.run_sync(source.file.read, read_size,
                                                     limiter=disk, abandon_on_cancel=True)
            except OSError as exc:
                raise SourceError(f"reading {source.path} failed at byte {offset}: "
                                  f"{exc.strerror or exc}; nothing was committed") from None
            if not data:
                return
            offset += len(data)
            yield data

    def show(stats: BackupStats) -> None:
        progress.update_to(stats.bytes_read, f"changed {human_bytes(stats.bytes_changed)}, "
                                             f"sent {human_bytes(stats.bytes_uploaded)}")

    result: tuple[BackupRef, BackupStats] | None = None
    async with trio.open_nursery() as nursery:
        body = trio.CancelScope()
        nursery.start_soon(_cancel_on_sigterm, body)
        with body:
            result = await run_backup_stream(store, plan, chunks(), lease, show)
        nursery.cancel_scope.cancel()
    if result is None:
        raise BakfsError(f"interrupted by SIGTERM: backup {plan.backup_id} abandoned, "
                         "nothing was committed")
    return result[0], result[1].as_dict()


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.warning("SIGTERM: abandoning the backup")
            scope.cancel()
            return


def run_backup(config: Config, source_path: str, volume_id: str, *, parent_id: str | None,
               full: bool, name: str | None, description: str | None,
               as_json: bool) -> int:
    try:
        naming.validate_id("volume", volume_id)
    except FormatError as exc:
        raise BakfsError(f"--volume: {exc}") from None
    source = open_source(source_path)
    store = open_store(config)
    try:
        store.ensure_bucket()
        plan, reason = plan_backup(store, config, volume_id, source.size, parent_id=parent_id,
                                   full=full, name=name, description=description)
        log.info("%s", reason)
        if not as_json:
            print(f"backup {plan.backup_id} of volume {volume_id} ({source.kind} "
                  f"{source.path}): {reason}", file=sys.stderr)
        with Progress("backup", source.size, config.s3.enable_progress_timer) as progress:
            ref, stats = trio.run(stream_backup, store, plan, source, progress,
                                  restrict_keyboard_interrupt_to_checkpoints=True)
    finally:
        store.close()
        if source.file is not sys.stdin.buffer:
            source.file.close()
    summary = {"backup_id": ref.backup_id, "volume_id": volume_id,
               "parent_id": plan.parent.backup_id if plan.parent else None,
               "kind": "incremental" if plan.parent else "full", "reason": reason,
               "prefix": str(ref.prefix), **stats}
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"backup {ref.backup_id} complete: read {human_bytes(stats['bytes_read'])}, "
              f"stored {stats['objects']} objects ({human_bytes(stats['bytes_changed'])} "
              f"changed, {human_bytes(stats['bytes_uploaded'])} sent) in "
              f"{stats['seconds']:.1f} s")
    return 0
