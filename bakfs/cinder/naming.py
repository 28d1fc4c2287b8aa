"""Object names of Cinder's S3 chunked backups: build them and parse them back.

A backup's objects share a prefix `volume_<volume_id>/<YYYYmmddHHMMSS>/az_<az>_backup_<backup_id>`;
data objects add `-%05d` (a minimum width: object 100000 is `-100000`), and the two JSON
documents add `_metadata` and `_sha256file`. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

from bakfs.errors import FormatError

TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
METADATA_SUFFIX = "_metadata"
SHA256FILE_SUFFIX = "_sha256file"

# Ids bakfs accepts for volumes and backups it creates: they become path components of object
# names and of the mount, so no separators, no leading dot, and a sane length. Cinder's UUIDs
# fit. Names read from a store are parsed with the looser patterns below.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_PREFIX_RE = re.compile(
    r"volume_(?P<volume_id>[^/]+)/(?P<timestamp>\d{14})/az_(?P<az>[^/]*?)_backup_(?P<backup_id>[^/]+?)"
)
_KEY_RE = re.compile(
    _PREFIX_RE.pattern + r"(?:-(?P<number>\d{5,})|(?P<doc>_metadata|_sha256file))"
)
_SPLIT_RE = re.compile(
    f"(?P<prefix>{_PREFIX_RE.pattern})" + r"(?P<rest>-\d{5,}|_metadata|_sha256file)")


@dataclasses.dataclass(frozen=True)
class BackupPrefix:
    """The parts of one backup's object-name prefix."""

    volume_id: str
    timestamp: str
    availability_zone: str
    backup_id: str

    def __str__(self) -> str:
        return (f"volume_{self.volume_id}/{self.timestamp}/"
                f"az_{self.availability_zone}_backup_{self.backup_id}")

    @property
    def started_at(self) -> datetime:
        """When the writer started the backup (UTC, second resolution)."""
        return timestamp_datetime(self.timestamp)


def timestamp_datetime(t: str) -> datetime:
    """A prefix's 14-digit timestamp as a UTC datetime (strptime cost 13 µs a backup)."""
    return datetime(int(t[:4]), int(t[4:6]), int(t[6:8]), int(t[8:10]), int(t[10:12]),
                    int(t[12:14]), tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class ParsedKey:
    """An object key split into its backup prefix and what it is: a data object's sequence
    number, or one of the two documents."""

    prefix: BackupPrefix
    number: int | None
    document: str | None  # "metadata" or "sha256file"


def validate_id(kind: str, value: str) -> str:
    """Return `value` if usable as a volume or backup id, else raise FormatError saying why."""
    if not value:
        raise FormatError(f"{kind} id is empty")
    if "/" in value or "\0" in value:
        raise FormatError(f"{kind} id {value!r} contains a path separator")
    if value in (".", ".."):
        raise FormatError(f"{kind} id {value!r} is not allowed")
    if len(value) > 128:
        raise FormatError(f"{kind} id is {len(value)} characters long; at most 128 are allowed")
    if not _ID_RE.fullmatch(value):
        raise FormatError(f"{kind} id {value!r} may use only letters, digits, '.', '_' and '-', "
                          "and must start with a letter or digit")
    return value


def make_prefix(volume_id: str, backup_id: str, started_at: datetime,
                availability_zone: str = "nova") -> BackupPrefix:
    """The prefix Cinder would give a backup started at `started_at` (converted to UTC)."""
    validate_id("volume", volume_id)
    validate_id("backup", backup_id)
    if started_at.tzinfo is None:
        raise ValueError("started_at must be timezone-aware")
    stamp = started_at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    return BackupPrefix(volume_id, stamp, availability_zone, backup_id)


def object_name(prefix: BackupPrefix | str, number: int) -> str:
    """Name of data object `number` (1-based sequence, not a chunk index)."""
    if number < 1:
        raise ValueError(f"object numbers start at 1, not {number}")
    return f"{prefix}-{number:05d}"


def metadata_name(prefix: BackupPrefix | str) -> str:
    return f"{prefix}{METADATA_SUFFIX}"


def sha256file_name(prefix: BackupPrefix | str) -> str:
    return f"{prefix}{SHA256FILE_SUFFIX}"


def volume_listing_prefix(volume_id: str | None = None) -> str:
    """The key prefix under which a volume's backups (or, with None, all backups) live."""
    return "volume_" if volume_id is None else f"volume_{volume_id}/"


def parse_prefix(text: str) -> BackupPrefix:
    """Parse a backup prefix string; FormatError if it is not one."""
    m = _PREFIX_RE.fullmatch(text)
    if not m:
        raise FormatError(f"{text!r} is not a Cinder backup prefix")
    return BackupPrefix(m["volume_id"], m["timestamp"], m["az"], m["backup_id"])


def split_key(key: str) -> tuple[str, str] | None:
    """`parse_key` for a listing of thousands of keys: the backup's prefix as text and what
    follows it (`-00001`, `_metadata` or `_sha256file`), with nothing built per key."""
    m = _SPLIT_RE.fullmatch(key)
    return None if m is None else (m["prefix"], m["rest"])


def parse_key(key: str) -> ParsedKey | None:
    """Split an object key of a backup; None for keys that are no backup's objects."""
    m = _KEY_RE.fullmatch(key)
    if not m:
        return None
    prefix = BackupPrefix(m["volume_id"], m["timestamp"], m["az"], m["backup_id"])
    if m["number"] is not None:
        return ParsedKey(prefix, int(m["number"]), None)
    return ParsedKey(prefix, None, m["doc"].lstrip("_"))
