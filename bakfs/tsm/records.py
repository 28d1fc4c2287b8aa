"""The catalog of TSM-held backups: one small JSON record per backup in the object store, at
`bakfs-tsm/<volume_id>/<backup_id>.json`, outside every `volume_` prefix (Cinder refuses
foreign keys under a backup's prefix, and the S3 discovery never sees these).

A record is what dsmc cannot tell reliably: the TSM object's name and mode, and the exact
size and sha256 of its bytes, measured by bakfs. It is written last, after dsmc reported
success: the commit point. A TSM object without a record is an orphan, never a listed backup.
A record is read with a bounded GET (RECORD_LIMIT), and none larger is ever written.

Blocking code: it calls the store. Knows nothing of dsmc, trio or FUSE.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from bakfs.cinder import naming
from bakfs.errors import BackupNotFound, BadMetadata, ConfigError, ObjectMissing
from bakfs.store.base import ObjectStore
from bakfs.store.streams import get_document
from bakfs.tsm.dsmc import MODES, Mode

PREFIX = "bakfs-tsm/"
RECORD_VERSION = 1
# A record holds a few hundred bytes: ids, two paths (at most 4 KiB each), a digest and a
# name and description of at most TEXT_LIMIT characters. None is written larger than this,
# and no more than this is read of whatever lies under a record's key.
RECORD_LIMIT = 256 << 10
TEXT_LIMIT = 255  # characters of a name or a description, as Cinder's API allows


@dataclasses.dataclass(frozen=True)
class TsmRecord:
    """One TSM backup. `path` is the object's name on the TSM server (the link dsmc read:
    `/dev/<prefix>-<backup_id>` in image mode, `<dir>/<prefix>-<backup_id>` in file mode);
    `size` and `sha256` describe its bytes exactly."""

    backup_id: str
    volume_id: str
    mode: Mode
    path: str
    size: int
    sha256: str
    created_at: datetime
    compression: bool = True
    source: str | None = None
    name: str | None = None
    description: str | None = None

    @property
    def key(self) -> str:
        return record_key(self.volume_id, self.backup_id)

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["created_at"] = self.created_at.isoformat()
        doc["backend"] = "tsm"
        doc["version"] = RECORD_VERSION
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> TsmRecord:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise BadMetadata(f"{key} is not a bakfs TSM record: {exc}") from None
        return cls.from_dict(doc, key)

    @classmethod
    def from_dict(cls, doc: Any, key: str) -> TsmRecord:
        try:
            mode = doc["mode"]
            if mode not in MODES:
                raise ValueError(f"mode {mode!r}")
            record = cls(
                backup_id=str(doc["backup_id"]), volume_id=str(doc["volume_id"]), mode=mode,
                path=str(doc["path"]), size=int(doc["size"]), sha256=str(doc["sha256"]),
                created_at=datetime.fromisoformat(doc["created_at"]),
                compression=bool(doc.get("compression", True)), source=doc.get("source"),
                name=doc.get("name"), description=doc.get("description"))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMetadata(f"{key} is not a bakfs TSM record: {exc}") from None
        if record.size < 0 or len(record.sha256) != 64:
            raise BadMetadata(f"{key}: size or sha256 out of range")
        if key != record.key:
            raise BadMetadata(f"{key} describes backup {record.backup_id} of volume "
                              f"{record.volume_id}, not the one its name says")
        return record


def record_key(volume_id: str, backup_id: str) -> str:
    naming.validate_id("volume", volume_id)
    naming.validate_id("backup", backup_id)
    return f"{PREFIX}{volume_id}/{backup_id}.json"


def now() -> datetime:
    return datetime.now(UTC)


def put_record(store: ObjectStore, record: TsmRecord) -> None:
    """Write the record (the commit point); an existing record is never overwritten."""
    body = record.to_json()
    if len(body) > RECORD_LIMIT:
        raise BadMetadata(f"the record of TSM backup {record.backup_id} would hold {len(body)} "
                          f"bytes, more than the {RECORD_LIMIT} a record may")
    store.put(record.key, body, if_absent=True)


def read_record(store: ObjectStore, volume_id: str, backup_id: str) -> TsmRecord:
    key = record_key(volume_id, backup_id)
    try:
        return _read(store, key)
    except ObjectMissing:
        raise BackupNotFound(f"no TSM backup {backup_id} of volume {volume_id} in "
                             f"{store.description}") from None


def _read(store: ObjectStore, key: str) -> TsmRecord:
    return TsmRecord.from_json(get_document(store, key, RECORD_LIMIT, "bakfs TSM record"), key)


def check_text(name: str | None, description: str | None) -> None:
    """ConfigError unless a backup's name and description fit a record (TEXT_LIMIT)."""
    for what, text in (("name", name), ("description", description)):
        if text is not None and len(text) > TEXT_LIMIT:
            raise ConfigError(f"a TSM backup's {what} is at most {TEXT_LIMIT} characters, "
                              f"not {len(text)}")


def list_records(store: ObjectStore, volume_id: str | None = None,
                 known: Iterable[TsmRecord] = ()) -> list[TsmRecord]:
    """Every TSM record (of one volume, or all), oldest first per volume. Unreadable records
    raise BadMetadata naming the key. A record is never rewritten, so one of `known` (an
    earlier listing) still listed under its key is kept without a GET: a listing with
    nothing new is the LIST alone."""
    prefix = PREFIX if volume_id is None else f"{PREFIX}{naming.validate_id('volume', volume_id)}/"
    earlier = {record.key: record for record in known}
    records = [earlier.get(info.key) or _read(store, info.key)
               for info in store.list(prefix) if info.key.endswith(".json")]
    records.sort(key=lambda r: (r.volume_id, r.created_at, r.backup_id))
    return records


def find_record(store: ObjectStore, backup_id: str) -> TsmRecord:
    """The record of this backup id, whichever volume it belongs to."""
    naming.validate_id("backup", backup_id)
    for info in store.list(PREFIX):
        if info.key.endswith(f"/{backup_id}.json"):
            return TsmRecord.from_json(store.get(info.key), info.key)
    raise BackupNotFound(f"no TSM backup {backup_id} in {store.description}")


def delete_record(store: ObjectStore, record: TsmRecord) -> None:
    store.delete(record.key)
