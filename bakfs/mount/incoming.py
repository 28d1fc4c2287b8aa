"""Backups made by writing into the mount: `incoming/<volume id>` streamed into the backup
sink, committed when the writer closes the file, abandoned when it was killed.

A FUSE flush cannot tell a `close()` from the kernel closing the files of a process that is
being killed; both look alike. So the writer's pid is kept from `create`, and at flush time a
writer that is exiting because of a signal (`procfs.process_killed`) has its backup abandoned
instead of committed. An incremental also commits only when exactly the parent's size was
written. The parent is chosen by the service from what the index knows; `incoming/<volume>.full`
makes a full backup whatever the volume's backups are.

Sparse writers are welcome: a write past the end so far (`cp` seeking over a hole) and a
truncate that extends the file (`cp` ending on a hole) add zeros up to there. A truncate that
would shrink what was written fails, and so does the backup: nothing that failed is ever
committed.

Knows nothing of pyfuse3 or errno: it raises bakfs errors that `fuse_ops` maps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from pathlib import Path

import trio

from bakfs.backup.plan import ParentCandidate, plan_backup
from bakfs.backup.sink import BackupSink
from bakfs.catalog.discovery import BackupRef
from bakfs.catalog.leases import VolumeLease
from bakfs.cinder.limits import current_limits
from bakfs.cinder.metadata import BackupMetadata
from bakfs.config import Config
from bakfs.errors import BackupFailed, BakfsError, OutOfOrderWrite, StoreUnreachable, WriterKilled
from bakfs.mount.namespace import FULL_SUFFIX
from bakfs.procfs import process_killed
from bakfs.store.base import ObjectStore
from bakfs.threads import Bridge
from bakfs.tsm.operations import make_runner, make_tsm_backup
from bakfs.tsm.records import TsmRecord
from bakfs.tsm.runner import DsmcRunner

log = logging.getLogger(__name__)


class _WriterState:
    """What both kinds of incoming backup check the same way: writes arrive in order, a
    finished backup reports its outcome again, a killed writer abandons its backup."""

    volume_id: str
    writer_pid: int
    backup_id: str
    written: int
    done: bool
    result: object
    error: str | None

    def _check_open(self) -> None:
        if self.done:
            raise BackupFailed(f"incoming/{self.volume_id}: the backup is already "
                               f"{'committed' if self.result else 'abandoned'}")

    def _check_write(self, offset: int) -> None:
        self._check_open()
        if offset < self.written:
            raise OutOfOrderWrite(
                f"incoming/{self.volume_id}: write at offset {offset}, but {self.written} "
                "bytes were written so far; backups are written sequentially (dd, cp, cat)")
        self._check_bound(offset)

    def _check_bound(self, size: int) -> None:
        """A seek or truncate far past any volume would feed zeros for days: refused."""
        largest = current_limits().max_volume_size
        if size > largest:
            raise BackupFailed(f"incoming/{self.volume_id}: {size} bytes is past the largest "
                               f"volume bakfs accepts ({largest}; index.max_volume_size)")

    def _check_truncate(self, size: int) -> None:
        self._check_open()
        if size < self.written:
            raise OutOfOrderWrite(
                f"incoming/{self.volume_id}: truncate to {size} bytes, but {self.written} "
                "bytes were written so far; a backup cannot take bytes back")
        self._check_bound(size)

    def _outcome_again(self) -> object:
        if self.result is not None:
            return self.result
        raise BackupFailed(self.error or f"incoming/{self.volume_id}: abandoned")

    async def _killed_writer(self, bridge: Bridge) -> str | None:
        """The reason to abandon the backup when its writer was killed, else None."""
        if not await bridge.run_disk(process_killed, self.writer_pid):
            return None
        self.error = (f"incoming/{self.volume_id}: the writer (pid {self.writer_pid}) was "
                      f"killed after {self.written} bytes; backup {self.backup_id} abandoned")
        log.warning("%s", self.error)
        return self.error


@dataclasses.dataclass
class IncomingBackup(_WriterState):
    """One backup being written through `incoming/`."""

    volume_id: str
    writer_pid: int
    sink: BackupSink
    reason: str
    bridge: Bridge
    written: int = 0
    done: bool = False
    result: BackupRef | None = None
    error: str | None = None

    @classmethod
    async def start(cls, nursery: trio.Nursery, store: ObjectStore, config: Config,
                    volume_id: str, writer_pid: int, bridge: Bridge,
                    parent: ParentCandidate | None, *, full: bool = False) -> IncomingBackup:
        """Plan (incremental on `parent` when it fits, full when asked), take the volume's
        lease and start the sink. VolumeBusy when another writer holds the volume."""
        try:
            plan, reason = await bridge.run_s3(
                lambda: plan_backup(store, config.s3, volume_id, None, parent=parent,
                                    full=full, description="written into the bakfs mount"))
        except StoreUnreachable:
            raise
        except BakfsError as exc:
            if parent is None:
                raise
            raise BackupFailed(
                f"incoming/{volume_id}: cannot make an incremental on the newest backup "
                f"{parent.ref.backup_id}: {exc}; write incoming/{volume_id}{FULL_SUFFIX} to "
                "make a full backup") from None
        lease = VolumeLease(store, volume_id, plan.backup_id)
        await bridge.run_s3(lease.acquire)
        try:
            sink = await BackupSink.start(nursery, store, plan, lease, bridge)
        except BaseException:
            with trio.CancelScope(shield=True):
                await bridge.run_s3(lease.release)
            raise
        log.info("incoming/%s: backup %s started (%s)", volume_id, plan.backup_id, reason)
        return cls(volume_id, writer_pid, sink, reason, bridge)

    @property
    def backup_id(self) -> str:
        return self.sink.plan.backup_id

    @property
    def uploaded(self) -> int:
        return self.sink.stats.bytes_uploaded

    @property
    def backend(self) -> str:
        return "s3"

    @property
    def metadata(self) -> BackupMetadata | None:
        """The committed `_metadata` (None before the commit)."""
        return self.sink.metadata

    @property
    def lease(self) -> VolumeLease | None:
        return self.sink.lease

    async def write(self, offset: int, data: bytes) -> int:
        self._check_write(offset)
        await self._zeros_to(offset)
        await self.sink.write(data)
        self.written += len(data)
        return len(data)

    async def truncate(self, size: int) -> None:
        """A truncate that extends the file adds zeros (a sparse file's last hole)."""
        self._check_truncate(size)
        await self._zeros_to(size)

    async def _zeros_to(self, offset: int) -> None:
        """Zeros from what was written so far up to `offset` (a hole the writer skipped)."""
        if offset <= self.written:
            return
        zeros = bytes(min(offset - self.written, self.sink.plan.options.object_size))
        while self.written < offset:
            n = min(offset - self.written, len(zeros))
            await self.sink.write(zeros if n == len(zeros) else zeros[:n])
            self.written += n

    async def finish(self) -> BackupRef:
        """Commit (or, when the writer was killed, abandon); idempotent."""
        if self.done:
            return self._outcome_again()  # type: ignore[return-value]
        self.done = True
        if (killed := await self._killed_writer(self.bridge)) is not None:
            await self.sink.abort()
            raise WriterKilled(killed)
        try:
            self._check_size()
            self.result = await self.sink.commit()
        except BakfsError as exc:
            self.error = str(exc)
            with trio.CancelScope(shield=True):
                await self.sink.abort()  # no-op when commit aborted it already
            raise
        log.info("incoming/%s: backup %s committed (%d bytes)", self.volume_id,
                 self.backup_id, self.written)
        return self.result

    def _check_size(self) -> None:
        """An incremental must be the whole volume, in one go; say what to do instead."""
        plan = self.sink.plan
        if plan.parent is None or plan.parent_size is None or self.written == plan.parent_size:
            return
        raise BackupFailed(
            f"incoming/{self.volume_id}: {self.written} bytes were written, but the volume "
            f"is {plan.parent_size} bytes (its backup {plan.parent.backup_id}): a backup "
            "through the mount is the whole volume written in one go (appending with >> "
            "starts a new backup of the appended bytes only); to back up a volume of another "
            f"size, write it to incoming/{self.volume_id}{FULL_SUFFIX}")

    async def abandon(self, why: str) -> None:
        if not self.done:
            self.done = True
            self.error = f"incoming/{self.volume_id}: {why}; backup {self.backup_id} abandoned"
            log.warning("%s", self.error)
            await self.sink.abort()


@dataclasses.dataclass
class TsmIncomingBackup(_WriterState):
    """A backup written into `incoming/` for a volume kept in TSM: spooled to a local file
    (sequentially, so memory stays flat), then handed to dsmc at close through the runner,
    with its record committed to the store last. The same interface as IncomingBackup."""

    volume_id: str
    writer_pid: int
    backup_id: str
    spool: Path
    store: ObjectStore
    runner: DsmcRunner
    max_size: int
    bridge: Bridge
    reason: str = "TSM backup (tsm.incoming_volumes)"
    written: int = 0
    uploaded: int = 0
    done: bool = False
    result: TsmRecord | None = None
    error: str | None = None
    backend: str = "tsm"

    @classmethod
    async def start(cls, store: ObjectStore, config: Config, volume_id: str,
                    writer_pid: int, bridge: Bridge) -> TsmIncomingBackup:
        backup_id = str(uuid.uuid4())
        directory = Path(config.tsm.staging_path + "-incoming")
        spool = directory / f"{volume_id}-{backup_id}.img"

        def create() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            spool.touch(mode=0o600, exist_ok=False)

        await bridge.run_disk(create)
        log.info("incoming/%s: TSM backup %s started, spooled to %s", volume_id, backup_id,
                 spool)
        return cls(volume_id, writer_pid, backup_id, spool, store, make_runner(config),
                   config.tsm.staging_max_size, bridge)

    @property
    def lease(self) -> VolumeLease | None:
        return None  # TSM backups take no lease in the store

    async def write(self, offset: int, data: bytes) -> int:
        self._check_write(offset)
        self._check_room(offset + len(data))
        await self.bridge.run_disk(_write_at, self.spool, offset, data)
        self.written = offset + len(data)
        return len(data)

    async def truncate(self, size: int) -> None:
        """Extending leaves a hole in the spool file: zeros, without writing them."""
        self._check_truncate(size)
        self._check_room(size)
        await self.bridge.run_disk(os.truncate, self.spool, size)
        self.written = size

    def _check_room(self, size: int) -> None:
        if size > self.max_size:
            raise BackupFailed(f"incoming/{self.volume_id}: more than tsm.staging_max_size "
                               f"({self.max_size} bytes) to spool for TSM")

    async def finish(self) -> TsmRecord:
        if self.done:
            return self._outcome_again()  # type: ignore[return-value]
        self.done = True
        try:
            if (killed := await self._killed_writer(self.bridge)) is not None:
                raise WriterKilled(killed)
            try:
                self.result, _seconds = await self.bridge.run_s3(
                    lambda: make_tsm_backup(self.store, self.runner, str(self.spool),
                                            self.volume_id, self.backup_id,
                                            description="written into the bakfs mount"))
            except BakfsError as exc:
                self.error = str(exc)
                raise
            self.uploaded = self.written
            log.info("incoming/%s: TSM backup %s committed (%d bytes)", self.volume_id,
                     self.backup_id, self.written)
            return self.result
        finally:
            with trio.CancelScope(shield=True):
                await self.bridge.run_disk(lambda: self.spool.unlink(missing_ok=True))

    async def abandon(self, why: str) -> None:
        if not self.done:
            self.done = True
            self.error = f"incoming/{self.volume_id}: {why}; TSM backup {self.backup_id} abandoned"
            log.warning("%s", self.error)
            await self.bridge.run_disk(lambda: self.spool.unlink(missing_ok=True))


def _write_at(path: Path, offset: int, data: bytes) -> None:
    """Write at `offset`; a gap before it stays a hole (zeros)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
    finally:
        os.close(fd)
