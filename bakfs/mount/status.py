"""What the mount tells about itself: extended attributes of its files, `.status` (readable
text) and `.metrics` (Prometheus text format), rendered from plain values.

Pure code: nothing here reads the store, the index or the staging area; the service hands
over what it knows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

from bakfs.catalog.index import BackupRecord
from bakfs.read.cache import CacheStats
from bakfs.tsm.records import TsmRecord
from bakfs.tsm.staging import StagingProgress


@dataclasses.dataclass
class Counters:
    reads: int = 0
    bytes_served: int = 0
    read_errors: int = 0
    backups_committed: int = 0
    backups_failed: int = 0
    refreshes: int = 0


class Writer(Protocol):
    """What status shows of a backup being written into `incoming/`."""

    volume_id: str
    written: int

    @property
    def backup_id(self) -> str: ...

    @property
    def uploaded(self) -> int: ...

    @property
    def backend(self) -> str: ...

    @property
    def reason(self) -> str: ...


def root_xattrs(pid: int, writers: int, store: str) -> dict[str, str]:
    return {"user.bakfs.pid": str(pid), "user.bakfs.writers": str(writers),
            "user.bakfs.store": store}


def writer_xattrs(writer: Writer) -> dict[str, str]:
    return {"user.bakfs.backup_id": writer.backup_id,
            "user.bakfs.written": str(writer.written),
            "user.bakfs.uploaded": str(writer.uploaded),
            "user.bakfs.backend": writer.backend,
            "user.bakfs.plan": writer.reason}


def record_xattrs(record: BackupRecord, served: int) -> dict[str, str]:
    return {"user.bakfs.backup_id": record.backup_id,
            "user.bakfs.volume_id": record.volume_id,
            "user.bakfs.parent_id": record.parent_id or "",
            "user.bakfs.chain": ",".join(record.chain),
            "user.bakfs.created": record.created_at,
            "user.bakfs.own_bytes": str(record.own_bytes),  # plain bytes of its objects
            "user.bakfs.stored_bytes": str(record.stored_bytes),  # their size in the store
            "user.bakfs.codec": ",".join(record.codecs),
            "user.bakfs.objects": str(record.object_count),
            "user.bakfs.status": record.status,
            "user.bakfs.prefix": record.prefix,
            "user.bakfs.bytes_served": str(served)}


def tsm_xattrs(record: TsmRecord, progress: StagingProgress | None,
               served: int) -> dict[str, str]:
    values = {"user.bakfs.backup_id": record.backup_id,
              "user.bakfs.volume_id": record.volume_id,
              "user.bakfs.backend": "tsm", "user.bakfs.tsm_mode": record.mode,
              "user.bakfs.tsm_path": record.path, "user.bakfs.sha256": record.sha256,
              "user.bakfs.status": "ok",
              "user.bakfs.bytes_served": str(served)}
    if progress is not None:
        values.update({k: v.decode() for k, v in progress.xattrs().items()})
    return values


def status_text(store: str, backups_shown: int, counters: Counters, cache: CacheStats,
                staging: Iterable[StagingProgress] | None, staging_error: str | None,
                writers: Iterable[Writer], unreadable: Sequence[BackupRecord] = (),
                indexing: tuple[int, int] | None = None) -> str:
    """`indexing`: (volumes indexed, volumes listed) while a first build runs."""
    c = counters
    lines = [f"store: {store}",
             f"backups shown: {backups_shown}",
             *([f"first index build: {indexing[0]} of {indexing[1]} volumes indexed "
                "(a volume opened is indexed next)"] if indexing else []),
             f"reads: {c.reads}", f"bytes served: {c.bytes_served}",
             f"read errors: {c.read_errors}",
             f"objects fetched from the store: {cache.fetches}",
             f"bytes fetched from the store: {cache.fetched_bytes}",
             f"cache hits: {cache.memory_hits} in memory, {cache.disk_hits} on disk",
             f"backups committed: {c.backups_committed}",
             f"backups failed: {c.backups_failed}", f"refreshes: {c.refreshes}"]
    if staging is not None:
        for p in staging:
            lines.append(f"staging TSM backup {p.backup_id}: {p.state}, {p.staged_bytes} of "
                         f"{p.total_bytes} bytes" + (f" ({p.error})" if p.error else ""))
    elif staging_error:
        lines.append(f"TSM staging unavailable: {staging_error}")
    lines.append(f"unreadable backups: {len(unreadable)}")
    for record in unreadable:  # quarantined: listed with the reason, never served
        lines.append(f"unreadable {record.volume_id}/{record.backup_id}: "
                     f"{record.error or record.status}")
    for writer in sorted(writers, key=lambda w: w.volume_id):
        lines.append(f"writing incoming/{writer.volume_id} ({writer.backend}): backup "
                     f"{writer.backup_id}, {writer.written} bytes written, "
                     f"{writer.uploaded} uploaded")
    return "\n".join(lines) + "\n"


def metrics_text(counters: Counters, cache: CacheStats, writers: int,
                 unreadable: int = 0) -> str:
    c = counters
    rows = [("bakfs_reads_total", "counter", "reads served", c.reads),
            ("bakfs_served_bytes_total", "counter", "bytes served to readers", c.bytes_served),
            ("bakfs_read_errors_total", "counter", "reads failed with EIO", c.read_errors),
            ("bakfs_fetched_objects_total", "counter", "objects fetched from the store",
             cache.fetches),
            ("bakfs_fetched_bytes_total", "counter", "stored bytes fetched from the store",
             cache.fetched_bytes),
            ("bakfs_cache_hits_total", "counter", "chunk cache hits (memory and disk)",
             cache.memory_hits + cache.disk_hits),
            ("bakfs_backups_committed_total", "counter", "backups written via incoming/",
             c.backups_committed),
            ("bakfs_backups_failed_total", "counter", "incoming backups that failed",
             c.backups_failed),
            ("bakfs_incoming_writers", "gauge", "backups being written", writers),
            ("bakfs_unreadable_backups", "gauge", "backups quarantined as unreadable",
             unreadable)]
    out = []
    for name, kind, text, value in rows:
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(out) + "\n"
