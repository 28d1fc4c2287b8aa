"""Writing one backup in Cinder's format, the simple synchronous way.

Reads the source sequentially in object-size windows, hashes blocks, stores the windows (full)
or the changed runs (incremental) as objects, then `_sha256file`, then `_metadata` last: a
backup is visible only once complete. Holds one window in memory at a time.

Blocking code: the reference the streaming, parallel sink (`backup.sink`) is tested
against, sharing its per-window work (`backup.window`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO

from bakfs.backup.window import prepare_window
from bakfs.catalog.discovery import BackupRef, load_chain, load_sha256file
from bakfs.cinder import naming
from bakfs.cinder.extents import Digests, DigestWriter
from bakfs.cinder.metadata import ObjectTable, backup_documents
from bakfs.config import S3Options
from bakfs.errors import BakfsError
from bakfs.store.base import ObjectStore

log = logging.getLogger(__name__)


def write_backup(store: ObjectStore, source: BinaryIO, volume_id: str, options: S3Options, *,
                 parent: BackupRef | None = None, backup_id: str | None = None,
                 name: str | None = None, description: str | None = None,
                 now: datetime | None = None,
                 progress: Callable[[int], None] | None = None) -> BackupRef:
    """Back up `source` (read from its current position to EOF) as a new backup of
    `volume_id`, incremental on `parent` when given. Returns the new backup."""
    naming.validate_id("volume", volume_id)
    backup_id = backup_id or str(uuid.uuid4())
    now = now or datetime.now(UTC)
    block = options.block_size
    parent_hashes: Digests | None = None
    parent_size = 0
    if parent is not None:
        if parent.volume_id != volume_id:
            raise BakfsError(f"parent {parent.backup_id} is a backup of volume "
                             f"{parent.volume_id}, not {volume_id}")
        parent_sha = load_sha256file(store, parent)
        if parent_sha.chunk_size != block:
            raise BakfsError(
                f"parent {parent.backup_id} tracks {parent_sha.chunk_size}-byte blocks, "
                f"s3.block_size is {block}: the block size changed, do a full backup")
        parent_hashes = parent_sha.sha256s
        parent_size = load_chain(store, parent)[0][1].covered_size  # the full backup's size

    store.ensure_bucket()
    prefix = naming.make_prefix(volume_id, backup_id, now, options.availability_zone)
    entries = ObjectTable()
    hashes = DigestWriter()
    offset = 0
    while window := source.read(options.object_size):
        window_hashes, prepared = prepare_window(window, offset // options.object_size,
                                                 options, parent_hashes)
        for item in prepared:
            key = naming.object_name(prefix, len(entries) + 1)
            store.put(key, item.stored, md5=item.stored_md5)
            entries.add(key, item.offset, item.length, item.compression, item.md5)
        hashes.append_flushing(window_hashes.block_range(0, len(window_hashes)))
        offset += len(window)
        if progress is not None:
            progress(offset)
    if parent is not None and offset != parent_size:
        # Cinder refuses a grown volume and silently keeps stale tail bytes of a shrunken one.
        raise BakfsError(f"the source is {offset} bytes but parent {parent.backup_id} is "
                         f"{parent_size}: an incremental needs the same size, do a full backup")

    sha_doc, metadata = backup_documents(
        backup_id, volume_id, now, parent.backup_id if parent else None, entries, block,
        hashes.finish(), name, description)
    try:
        store.put_stream(naming.sha256file_name(prefix), sha_doc.iter_json())
    finally:
        sha_doc.sha256s.close()
    store.put_stream(naming.metadata_name(prefix), metadata.iter_json())
    log.debug("backup %s of volume %s complete: %d bytes, %d objects", backup_id, volume_id,
             offset, len(entries))
    return BackupRef(prefix)
