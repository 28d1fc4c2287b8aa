"""Cinder's backup-import record (`backup_url`) for a backup bakfs wrote.

Cinder knows only backups with a database row; `cinder backup-import <service> <url>` creates
one from this record: base64 of the JSON of the Backup object's fields. The importer needs
`id, size, display_name, display_description, container, service_metadata, object_count`;
bakfs also gives `volume_id`, `parent_id` (import parents first) and the dates. Pure code.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from bakfs.cinder.metadata import BackupMetadata
from bakfs.cinder.naming import BackupPrefix

S3_BACKUP_SERVICE = "cinder.backup.drivers.s3.S3BackupDriver"
GiB = 1 << 30


def _cinder_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backup_record(metadata: BackupMetadata, prefix: BackupPrefix, bucket: str,
                  volume_size: int) -> dict[str, Any]:
    """The fields of a Cinder Backup object describing this backup."""
    created = _cinder_time(prefix.started_at)
    return {
        "id": metadata.backup_id,
        "volume_id": metadata.volume_id,
        "parent_id": metadata.parent_id,
        "display_name": metadata.backup_name,
        "display_description": metadata.backup_description,
        "container": bucket,
        "service_metadata": str(prefix),
        "service": S3_BACKUP_SERVICE,
        "availability_zone": prefix.availability_zone,
        "size": max(1, -(-volume_size // GiB)),
        "object_count": len(metadata.objects),
        "status": "available",
        "num_dependent_backups": 0,
        "created_at": created,
        "updated_at": created,
        "data_timestamp": created,
        "snapshot_id": None,
        "encryption_key_id": None,
        "metadata": {},
        "driver_info": {},
    }


def backup_url(record: dict[str, Any]) -> str:
    """Encode a record as Cinder's `backup-export` does: base64 of its UTF-8 JSON."""
    return base64.b64encode(json.dumps(record).encode("utf-8")).decode("ascii")


def decode_backup_url(url: str) -> dict[str, Any]:
    """The record inside a `backup_url`."""
    value = json.loads(base64.b64decode(url.encode("ascii"), validate=True))
    if not isinstance(value, dict):
        raise ValueError("a backup_url holds a JSON object")
    return value
