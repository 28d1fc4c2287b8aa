"""One object per backup file of the mount, whichever store keeps the backup: it says what
the namespace shows (id, size, date) and reads the bytes. `S3Backup` reads through the read
engine (chunk objects, verified and cached); `TsmBackup` through the TSM staging area (a
dsmc restore, served as it progresses). The service asks a node's backup, never "S3 or
TSM?".

Async, on trio. Knows nothing of pyfuse3 or errno.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bakfs.catalog.index import BackupRecord
from bakfs.errors import BakfsError
from bakfs.mount import status
from bakfs.read.engine import Engine
from bakfs.tsm.records import TsmRecord
from bakfs.tsm.staging import StagingManager


def record_time(record: BackupRecord) -> float:
    """A backup's creation time: `created_at` when it parses, else its prefix's stamp."""
    try:
        when = datetime.fromisoformat(record.created_at)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError):
        return datetime.strptime(record.timestamp, "%Y%m%d%H%M%S").replace(
            tzinfo=UTC).timestamp()


class S3Backup:
    """A backup in the object store, read through the engine."""

    def __init__(self, record: BackupRecord, engine: Engine) -> None:
        self.record = record
        self.engine = engine
        self.backup_id = record.backup_id
        self.volume_id = record.volume_id
        self.size = record.size
        self.created = record_time(record)
        self.depth = len(record.chain)

    def opened(self) -> None:
        """A file handle was opened (nothing to keep for S3)."""

    def closed(self) -> None:
        """A file handle was closed."""

    async def read(self, offset: int, size: int, stream: object) -> bytes | memoryview:
        return await self.engine.read(self.record, offset, size, stream=stream)

    async def held(self) -> int:
        """Bytes that are not holes or zero objects: counted when the backup was indexed, or
        (an index from before that) summed in one walk of its extent rows; no object is
        fetched, no span of a 16 TiB volume is built."""
        if not self.size:
            return 0
        if self.record.data_bytes is not None:
            return self.record.data_bytes
        catalog = self.engine.catalog
        return await catalog.bridge.run_index(catalog.index.data_bytes, self.record.seq)

    def xattrs(self, served: int) -> dict[str, str]:
        return status.record_xattrs(self.record, served)


class TsmStaging:
    """The mount's staging area for TSM-held backups, or why there is none."""

    def __init__(self) -> None:
        self.manager: StagingManager | None = None
        self.error: str | None = None

    def get(self) -> StagingManager:
        if self.manager is None:
            raise BakfsError(f"TSM backups cannot be read: {self.error or 'not started'}")
        return self.manager


class TsmBackup:
    """A backup kept in TSM, read while it stages."""

    depth = 1

    def __init__(self, record: TsmRecord, staging: TsmStaging) -> None:
        self.record = record
        self.staging = staging
        self.backup_id = record.backup_id
        self.volume_id = record.volume_id
        self.size = record.size
        when = record.created_at
        self.created = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    def opened(self) -> None:
        """An open file keeps its staging from being evicted."""
        if self.staging.manager is not None:
            self.staging.manager.pin(self.backup_id)

    def closed(self) -> None:
        if self.staging.manager is not None:
            self.staging.manager.unpin(self.backup_id)

    async def read(self, offset: int, size: int, stream: object) -> bytes | memoryview:
        return await self.staging.get().read(self.record, offset, size)

    async def held(self) -> int:
        return self.size

    def xattrs(self, served: int) -> dict[str, str]:
        manager = self.staging.manager
        progress = manager.progress(self.backup_id) if manager is not None else None
        return status.tsm_xattrs(self.record, progress, served)


Backup = S3Backup | TsmBackup  # each a `namespace.BackupFile`
