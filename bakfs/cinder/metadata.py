"""The two JSON documents of a Cinder backup, `_metadata` and `_sha256file`, as dataclasses.

Written byte for byte as Cinder writes them (`json.dumps(sort_keys=True, indent=2)`, UTF-8,
no trailing newline); read tolerantly (a missing `extra_metadata`, a null or string
`volume_meta`, pre-incremental documents without `parent_id`) but never trustingly: a document
comes from a bucket others write to, so every value bakfs uses is checked before anything
relies on it. Numbers are bounded (`Limits`: offsets and lengths within the largest volume
bakfs accepts, object lengths within the largest object), md5s are 32 hex digits, names are
valid object keys and every text encodes as UTF-8. Whatever fails is a `BadMetadata` naming
the document and the value, so the backup is quarantined and nothing else is disturbed.
Pure code, no I/O.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bakfs.cinder import codec
from bakfs.cinder.extents import Digests
from bakfs.cinder.limits import Limits, current_limits
from bakfs.errors import BadMetadata, UnsupportedCompression

FORMAT_VERSION = "1.0.0"
_ABSENT = object()

MAX_KEY_BYTES = 1024  # S3's limit on an object key
MAX_TEXT = 64 * 1024  # characters of a name, description or date kept from a document
_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One data object: where its plain bytes go in the volume and how they are stored (the
    format's entry, and what the index and the cache know of an object)."""

    name: str
    offset: int
    length: int
    compression: str
    md5: str

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def cache_key(self) -> str:
        """Content address: equal md5 and length mean equal verified bytes."""
        return f"{self.md5}-{self.length}"

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {self.name: {"compression": self.compression, "length": self.length,
                            "md5": self.md5, "offset": self.offset}}


@dataclasses.dataclass(frozen=True)
class BackupMetadata:
    """A backup's `_metadata` document. `extra_metadata` is kept only when present."""

    backup_id: str
    volume_id: str
    created_at: str
    parent_id: str | None
    objects: tuple[ObjectEntry, ...]
    backup_name: str | None = None
    backup_description: str | None = None
    volume_meta: str | None = None
    version: str = FORMAT_VERSION
    extra_metadata: Any = _ABSENT

    @property
    def covered_size(self) -> int:
        """End of the furthest object: the volume size for a full backup."""
        return max((o.end for o in self.objects), default=0)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "backup_description": self.backup_description,
            "backup_id": self.backup_id,
            "backup_name": self.backup_name,
            "created_at": self.created_at,
            "objects": [o.to_json() for o in self.objects],
            "parent_id": self.parent_id,
            "version": self.version,
            "volume_id": self.volume_id,
            "volume_meta": self.volume_meta,
        }
        if self.extra_metadata is not _ABSENT:
            doc["extra_metadata"] = self.extra_metadata
        return _dump(doc)


@dataclasses.dataclass(frozen=True)
class Sha256File:
    """A backup's `_sha256file`: the SHA-256 of every block of the whole volume."""

    backup_id: str
    volume_id: str
    created_at: str
    chunk_size: int
    sha256s: Digests
    backup_name: str | None = None
    backup_description: str | None = None
    version: str = FORMAT_VERSION

    def to_json(self) -> bytes:
        """As json.dumps(sort_keys=True, indent=2) would write it, without building a list of
        millions of strings first: the hash list is spliced in as text."""
        placeholder = "@SHA256S@"
        head = _dump({
            "backup_description": self.backup_description,
            "backup_id": self.backup_id,
            "backup_name": self.backup_name,
            "chunk_size": self.chunk_size,
            "created_at": self.created_at,
            "sha256s": placeholder,
            "version": self.version,
            "volume_id": self.volume_id,
        })
        if len(self.sha256s):
            items = ",\n    ".join(f'"{h}"' for h in self.sha256s.hex_items())
            listing = f"[\n    {items}\n  ]"
        else:
            listing = "[]"
        return head.replace(f'"{placeholder}"'.encode(), listing.encode(), 1)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, indent=2).encode("utf-8")


def created_at_text(when: datetime) -> str:
    """`str()` of a timezone-aware UTC datetime, as Cinder records `created_at`."""
    return str(when.astimezone(UTC))


def minimal_volume_meta(name: str | None, description: str | None) -> str:
    """The smallest `volume_meta` Cinder accepts on restore (metadata version 2)."""
    base = {"display_name": name, "display_description": description, "encryption_key_id": None}
    return json.dumps({"version": 2, "volume-base-metadata": base})


def backup_documents(backup_id: str, volume_id: str, started_at: datetime,
                     parent_id: str | None, objects: Sequence[ObjectEntry], block_size: int,
                     hashes: Digests, name: str | None, description: str | None
                     ) -> tuple[Sha256File, BackupMetadata]:
    """The `_sha256file` and `_metadata` of a new backup, as a writer commits them."""
    created = created_at_text(started_at)
    sha_doc = Sha256File(backup_id, volume_id, created, block_size, hashes, name, description)
    metadata = BackupMetadata(
        backup_id=backup_id, volume_id=volume_id, created_at=created, parent_id=parent_id,
        objects=tuple(objects), backup_name=name, backup_description=description,
        volume_meta=minimal_volume_meta(name, description))
    return sha_doc, metadata


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMetadata(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadMetadata(f"{what} is nested too deeply to be a Cinder document") from None
    if not isinstance(doc, dict):
        raise BadMetadata(f"{what} is not a JSON object")
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise BadMetadata(f"{what} has version {_shown(version)}; only {FORMAT_VERSION} exists")
    return doc


def _shown(value: object) -> str:
    """A value for a message: short, and printable whatever it holds."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field(doc: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in doc:
        raise BadMetadata(f"{what} has no {key!r}")
    value = doc[key]
    if not isinstance(value, types) or (isinstance(value, bool) and types is int):
        raise BadMetadata(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _text(value: object, key: str, what: str, *, optional: bool = False) -> str | None:
    """A string of the document that bakfs keeps: it must encode as UTF-8 (JSON allows a
    lone surrogate such as \\udc80, which no file name, xattr or log line can carry)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadMetadata(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    if len(value) > MAX_TEXT:
        raise BadMetadata(f"{what}: {key!r} is {len(value)} characters long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMetadata(f"{what}: {key!r} is not valid Unicode ({_shown(value)})") from None
    return value


def check_key(name: object, what: str) -> str:
    """An object name as a store can hold it: UTF-8 text of at most 1024 bytes, no control
    characters, no empty, `.` or `..` path segments and none starting with a dot."""
    if not isinstance(name, str) or not name:
        raise BadMetadata(f"{what}: object name {_shown(name)} is not a valid object key")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadMetadata(f"{what}: object name {_shown(name)} is not valid Unicode") from None
    if size > MAX_KEY_BYTES or any(ord(c) < 32 or ord(c) == 127 for c in name) or any(
            part in ("", ".", "..") or part.startswith(".") for part in name.split("/")):
        raise BadMetadata(f"{what}: object name {_shown(name)} is not a valid object key")
    return name


def _entry(item: object, i: int, what: str, limits: Limits) -> ObjectEntry:
    """One item of `objects`, every value checked and bounded."""
    if not isinstance(item, dict) or len(item) != 1:
        raise BadMetadata(f"{what}: objects[{i}] is not a one-key object")
    ((name, info),) = item.items()
    name = check_key(name, what)
    where = f"{what}: object {name}"
    if not isinstance(info, dict):
        raise BadMetadata(f"{where} has no description")
    offset = _field(info, "offset", int, where)
    length = _field(info, "length", int, where)
    compression = _field(info, "compression", str, where)
    md5 = _field(info, "md5", str, where)
    if offset < 0 or length < 0:
        raise BadMetadata(f"{where} has a negative offset or length")
    if length > limits.max_object_length:
        raise BadMetadata(f"{where} claims {length} bytes, more than the largest object "
                          f"bakfs accepts ({limits.max_object_length}; see s3.object_size)")
    if offset + length > limits.max_volume_size:
        raise BadMetadata(f"{where} ends at byte {offset + length}, past the largest volume "
                          f"bakfs accepts ({limits.max_volume_size}; index.max_volume_size)")
    if not _MD5_RE.fullmatch(md5):
        raise BadMetadata(f"{where}: md5 {_shown(md5)} is not 32 hexadecimal digits")
    try:
        codec.family(compression[:16])
    except UnsupportedCompression as exc:
        raise BadMetadata(f"{where}: {exc}") from None
    if len(compression) > 16:
        raise BadMetadata(f"{where}: unknown compression {_shown(compression)}")
    return ObjectEntry(name=name, offset=offset, length=length, compression=compression,
                       md5=md5.lower())


def parse_metadata(raw: bytes, what: str = "_metadata",
                   limits: Limits | None = None) -> BackupMetadata:
    """Parse and check a `_metadata` document; BadMetadata says what is wrong. `limits`
    default to the configured ones (`bakfs.cinder.limits.configure`)."""
    limits = limits or current_limits()
    doc = _load(raw, what)
    objects = [_entry(item, i, what, limits)
               for i, item in enumerate(_field(doc, "objects", list, what))]
    _check_no_overlap(objects, what)
    if len({o.name for o in objects}) != len(objects):
        raise BadMetadata(f"{what} lists an object name twice")
    volume_meta = doc.get("volume_meta")
    if volume_meta is not None and not isinstance(volume_meta, str):
        try:
            volume_meta = json.dumps(volume_meta)
        except (TypeError, ValueError, RecursionError):
            raise BadMetadata(f"{what}: 'volume_meta' cannot be kept") from None
    created_at = doc.get("created_at", "")
    return BackupMetadata(
        backup_id=_text(_field(doc, "backup_id", str, what), "backup_id", what),  # type: ignore[arg-type]
        volume_id=_text(_field(doc, "volume_id", str, what), "volume_id", what),  # type: ignore[arg-type]
        created_at=_text(created_at if isinstance(created_at, str) else str(created_at),
                         "created_at", what),  # type: ignore[arg-type]
        parent_id=_text(doc.get("parent_id"), "parent_id", what, optional=True),
        objects=tuple(objects),
        backup_name=_text(doc.get("backup_name"), "backup_name", what, optional=True),
        backup_description=_text(doc.get("backup_description"), "backup_description", what,
                                 optional=True),
        volume_meta=_text(volume_meta, "volume_meta", what, optional=True),
        version=doc["version"],
        extra_metadata=doc.get("extra_metadata", _ABSENT),
    )


def _check_no_overlap(objects: Sequence[ObjectEntry], what: str) -> None:
    """Objects of one backup never overlap; if they do the document cannot be trusted."""
    ordered = sorted(objects, key=lambda o: o.offset)
    for a, b in itertools.pairwise(ordered):
        if b.offset < a.end:
            raise BadMetadata(f"{what}: objects {a.name} and {b.name} overlap")


def parse_sha256file(raw: bytes, what: str = "_sha256file") -> Sha256File:
    """Parse and check a `_sha256file` document."""
    doc = _load(raw, what)
    chunk_size = _field(doc, "chunk_size", int, what)
    if chunk_size <= 0:
        raise BadMetadata(f"{what}: chunk_size {chunk_size} is not positive")
    hashes = _field(doc, "sha256s", list, what)
    if not all(isinstance(h, str) and len(h) == 64 for h in hashes):
        raise BadMetadata(f"{what}: sha256s holds something that is not a SHA-256 hex digest")
    try:
        sha256s = Digests.from_hex(hashes)  # any digest, not only the first, may be bad
    except ValueError:
        raise BadMetadata(f"{what}: sha256s holds something that is not hexadecimal") from None
    return Sha256File(
        backup_id=_field(doc, "backup_id", str, what),
        volume_id=_field(doc, "volume_id", str, what),
        created_at=str(doc.get("created_at", "")),
        chunk_size=chunk_size,
        sha256s=sha256s,
        backup_name=doc.get("backup_name"),
        backup_description=doc.get("backup_description"),
        version=doc["version"],
    )
