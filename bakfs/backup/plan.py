"""Choosing what a new backup will be: full, or incremental on which parent.

Parent choice follows Cinder: the newest complete backup of the volume, incremental only when
its block size matches and the volume kept its size (bakfs compares bytes, not GiB). When the
user did not name a parent, a mismatch means a full backup and says why; a named parent that
does not fit is an error. The candidate parent comes from the store's listing (`bakfs
backup`) or from the index (the mount, which knows its backups already); either way its
`_sha256file` is read, since an incremental compares every block with it.

Blocking code: it calls the store.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from bakfs.catalog.discovery import (
    BackupRef,
    find_backup,
    load_chain,
    load_sha256file,
    newest_backup,
)
from bakfs.cinder import naming
from bakfs.cinder.extents import Digests
from bakfs.config import S3Options
from bakfs.errors import BakfsError
from bakfs.store.base import ObjectStore


@dataclasses.dataclass(frozen=True)
class BackupPlan:
    """What to back up: which volume, on which parent, with which options."""

    volume_id: str
    backup_id: str
    options: S3Options
    parent: BackupRef | None = None
    parent_hashes: Digests | None = None
    parent_size: int | None = None  # an incremental must end at exactly this size
    name: str | None = None
    description: str | None = None
    started_at: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))

    @property
    def prefix(self) -> naming.BackupPrefix:
        return naming.make_prefix(self.volume_id, self.backup_id, self.started_at,
                                  self.options.availability_zone)


@dataclasses.dataclass(frozen=True)
class ParentCandidate:
    """A backup an incremental may stand on, and the size of its volume."""

    ref: BackupRef
    size: int


def newest_parent(store: ObjectStore, volume_id: str) -> ParentCandidate | None:
    """The volume's newest complete backup, from a listing of the store."""
    newest = newest_backup(store, volume_id)
    if newest is None:
        return None
    return ParentCandidate(newest, load_chain(store, newest)[0][1].covered_size)


def named_parent(store: ObjectStore, volume_id: str, parent_id: str) -> ParentCandidate:
    """The backup the user named as parent; BackupNotFound if it is not a backup of this
    volume."""
    ref = find_backup(store, parent_id, volume_id)
    return ParentCandidate(ref, load_chain(store, ref)[0][1].covered_size)


def plan_backup(store: ObjectStore, options: S3Options, volume_id: str, size: int | None, *,
                parent: ParentCandidate | None, parent_named: bool = False, full: bool = False,
                name: str | None = None, description: str | None = None
                ) -> tuple[BackupPlan, str]:
    """The plan and a sentence saying why it is full or incremental. `size` is the source's
    size when known (None for a pipe: checked when the backup ends)."""
    naming.validate_id("volume", volume_id)
    base = BackupPlan(volume_id=volume_id, backup_id=str(uuid.uuid4()), options=options,
                      name=name, description=description)
    if full:
        return base, "full backup (--full)"
    if parent is None:
        return base, f"full backup: volume {volume_id} has no earlier backup"
    parent_id = parent.ref.backup_id
    problem, plan = _incremental_on(store, base, parent, size)
    if parent_named:
        if problem:
            raise BakfsError(f"cannot make an incremental on {parent_id}: {problem}")
        return plan, f"incremental on {parent_id} (--parent)"
    if problem:
        return base, f"full backup: {problem}"
    return plan, f"incremental on the newest backup {parent_id}"


def _incremental_on(store: ObjectStore, base: BackupPlan, parent: ParentCandidate,
                    size: int | None) -> tuple[str | None, BackupPlan]:
    ref = parent.ref
    sha = load_sha256file(store, ref)
    if sha.chunk_size != base.options.block_size:
        return (f"backup {ref.backup_id} tracks {sha.chunk_size}-byte blocks and "
                f"s3.block_size is {base.options.block_size} (the block size changed)"), base
    if size is not None and size != parent.size:
        verb = "grew" if size > parent.size else "shrank"
        return (f"the volume {verb} from {parent.size} to {size} bytes since backup "
                f"{ref.backup_id}"), base
    return None, dataclasses.replace(base, parent=ref, parent_hashes=sha.sha256s,
                                     parent_size=parent.size)
