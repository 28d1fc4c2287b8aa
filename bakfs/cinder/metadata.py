"""The two JSON documents of a Cinder backup, `_metadata` and `_sha256file`, as dataclasses.

Written byte for byte as Cinder writes them (`json.dumps(sort_keys=True, indent=2)`, UTF-8,
no trailing newline); read tolerantly (a missing `extra_metadata`, a null or string
`volume_meta`, pre-incremental documents without `parent_id`) but never trustingly: a document
comes from a bucket others write to, so every value bakfs uses is checked before anything
relies on it. Numbers are bounded (`Limits`: offsets and lengths within the largest volume
bakfs accepts, object lengths within the largest object), md5s are 32 hex digits, names are
valid object keys and every text encodes as UTF-8. Whatever fails is a `BadMetadata` naming
the document and the value, so the backup is quarantined and nothing else is disturbed.
Both documents are written and read as streams of chunks (`iter_json`, `read_metadata`,
`read_sha256file`), never whole: a 1 TiB volume's `_sha256file` is 2.4 GB of JSON. The
objects of a `_metadata` are kept packed (`ObjectTable`) and the block digests in a
`Digests` list that spills to a file. Pure code, no I/O of its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import uuid
from array import array
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, overload

from bakfs.cinder import codec
from bakfs.cinder.extents import Digests, DigestWriter
from bakfs.cinder.jsonstream import ObjectReader
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


_NAME_RE = re.compile(r"(.*)-(\d{5,})", re.DOTALL)
_PACKABLE_MD5_RE = re.compile(r"[0-9a-f]{32}")  # stored as 16 bytes; else kept as text


class ObjectTable(Sequence[ObjectEntry]):
    """A backup's data objects, packed: about 45 bytes an object instead of ~400 as
    `ObjectEntry`s (a 16 TiB volume's `_metadata` lists 4 M objects). Names of the form
    `<base>-NNNNN` keep their number only; anything else is kept as given. Append-only;
    `end` is the furthest object end, `plain_bytes` the sum of the lengths."""

    __slots__ = ("_base_ids", "_base_names", "_bases", "_codec_ids", "_codecs", "_lengths", "_md5s",
                 "_numbers", "_odd", "_offsets", "end", "plain_bytes")

    def __init__(self, entries: Iterable[ObjectEntry] = ()) -> None:
        self._offsets = array("Q")
        self._lengths = array("Q")
        self._numbers = array("Q")
        self._base_ids = array("I")
        self._md5s = bytearray()
        self._codec_ids = bytearray()
        self._codecs: list[str] = []
        self._bases: dict[str, int] = {}
        self._base_names: list[str] = []
        self._odd: dict[int, tuple[str | None, str | None]] = {}  # name, md5 as given
        self.end = 0
        self.plain_bytes = 0
        for entry in entries:
            self.append(entry)

    def add(self, name: str, offset: int, length: int, compression: str, md5: str) -> None:
        """Append one object (ValueError if offset or length do not fit 64 bits)."""
        index = len(self._offsets)
        try:
            self._offsets.append(offset)
            self._lengths.append(length)
        except OverflowError:
            del self._offsets[index:]
            raise ValueError(f"object {name}: offset or length out of range") from None
        odd_name: str | None = None
        match = _NAME_RE.fullmatch(name)
        if match is not None and f"{int(match[2]):05d}" == match[2]:
            base = self._bases.get(match[1], -1)
            if base < 0:
                base = self._bases[match[1]] = len(self._base_names)
                self._base_names.append(match[1])
            self._base_ids.append(base)
            self._numbers.append(int(match[2]))
        else:
            self._base_ids.append(0)
            self._numbers.append(0)
            odd_name = name
        odd_md5: str | None = None
        if _PACKABLE_MD5_RE.fullmatch(md5):
            self._md5s += bytes.fromhex(md5)
        else:
            self._md5s += bytes(16)
            odd_md5 = md5
        if odd_name is not None or odd_md5 is not None:
            self._odd[index] = (odd_name, odd_md5)
        if compression not in self._codecs:
            self._codecs.append(compression)
        self._codec_ids.append(self._codecs.index(compression))
        self.end = max(self.end, offset + length)
        self.plain_bytes += length

    def append(self, entry: ObjectEntry) -> None:
        self.add(entry.name, entry.offset, entry.length, entry.compression, entry.md5)

    @property
    def codecs(self) -> set[str]:
        return set(self._codecs)

    def __len__(self) -> int:
        return len(self._offsets)

    def duplicate_name(self) -> str | None:
        """A name listed twice, if any. Numbered names that rise per base (every writer's)
        are checked in one pass without memory; anything else falls back to a set."""
        odd = [name for name, _md5 in self._odd.values() if name is not None]
        if len(set(odd)) != len(odd):
            return next(n for n in odd if odd.count(n) > 1)
        last: dict[int, int] = {}
        rising = True
        for i, (base, number) in enumerate(zip(self._base_ids, self._numbers, strict=True)):
            if i in self._odd and self._odd[i][0] is not None:
                continue
            if last.get(base, -1) >= number:
                rising = False
                break
            last[base] = number
        if rising:
            return None
        seen: set[tuple[int, int]] = set()
        for i, pair in enumerate(zip(self._base_ids, self._numbers, strict=True)):
            if i in self._odd and self._odd[i][0] is not None:
                continue
            if pair in seen:
                return self[i].name
            seen.add(pair)
        return None

    def offset_order(self) -> Sequence[int]:
        """Positions in ascending offset: as listed when the list is (every writer's)."""
        offsets = self._offsets
        if all(a <= b for a, b in itertools.pairwise(offsets)):
            return range(len(offsets))
        return sorted(range(len(offsets)), key=offsets.__getitem__)

    def _entry(self, i: int, bases: list[str]) -> ObjectEntry:
        name: str | None = None
        md5: str | None = None
        odd = self._odd.get(i)
        if odd is not None:
            name, md5 = odd
        if name is None:
            name = f"{bases[self._base_ids[i]]}-{self._numbers[i]:05d}"
        if md5 is None:
            md5 = self._md5s[i * 16:i * 16 + 16].hex()
        return ObjectEntry(name, self._offsets[i], self._lengths[i],
                           self._codecs[self._codec_ids[i]], md5)

    @overload
    def __getitem__(self, index: int) -> ObjectEntry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ObjectEntry]: ...
    def __getitem__(self, index: int | slice) -> ObjectEntry | Sequence[ObjectEntry]:
        bases = self._base_names
        if isinstance(index, slice):
            return [self._entry(i, bases) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._entry(index, bases)

    def __iter__(self) -> Iterator[ObjectEntry]:
        bases = self._base_names
        for i in range(len(self)):
            yield self._entry(i, bases)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ObjectTable({len(self)} objects)"


@dataclasses.dataclass(frozen=True)
class BackupMetadata:
    """A backup's `_metadata` document. `extra_metadata` is kept only when present."""

    backup_id: str
    volume_id: str
    created_at: str
    parent_id: str | None
    objects: Sequence[ObjectEntry]  # an ObjectTable when parsed or written by bakfs
    backup_name: str | None = None
    backup_description: str | None = None
    volume_meta: str | None = None
    version: str = FORMAT_VERSION
    extra_metadata: Any = _ABSENT

    @property
    def covered_size(self) -> int:
        """End of the furthest object: the volume size for a full backup."""
        if isinstance(self.objects, ObjectTable):
            return self.objects.end
        return max((o.end for o in self.objects), default=0)

    def to_json(self) -> bytes:
        return b"".join(self.iter_json())

    def iter_json(self) -> Iterator[bytes]:
        """The document as `json.dumps(sort_keys=True, indent=2)` writes it, in chunks, the
        object list formatted a few thousand entries at a time."""
        doc: dict[str, Any] = {
            "backup_description": self.backup_description,
            "backup_id": self.backup_id,
            "backup_name": self.backup_name,
            "created_at": self.created_at,
            "objects": None,
            "parent_id": self.parent_id,
            "version": self.version,
            "volume_id": self.volume_id,
            "volume_meta": self.volume_meta,
        }
        if self.extra_metadata is not _ABSENT:
            doc["extra_metadata"] = self.extra_metadata
        head, tail = _split_around(doc, "objects")
        yield head
        if not self.objects:
            yield b"[]"
        else:
            yield b"[\n    "
            batch: list[str] = []
            first = True
            for entry in self.objects:
                batch.append(_entry_json(entry))
                if len(batch) == 4096:
                    yield ((b"" if first else b",\n    ")
                           + ",\n    ".join(batch).encode("ascii"))
                    batch, first = [], False
            if batch:
                yield (b"" if first else b",\n    ") + ",\n    ".join(batch).encode("ascii")
            yield b"\n  ]"
        yield tail


def _entry_json(o: ObjectEntry) -> str:
    """One element of `objects` as json.dumps(indent=2) writes it at that depth."""
    return (f"{{\n      {encode_basestring_ascii(o.name)}: {{\n"
            f"        \"compression\": {encode_basestring_ascii(o.compression)},\n"
            f"        \"length\": {int(o.length)},\n"
            f"        \"md5\": {encode_basestring_ascii(o.md5)},\n"
            f"        \"offset\": {int(o.offset)}\n      }}\n    }}")


def _split_around(doc: dict[str, Any], key: str) -> tuple[bytes, bytes]:
    """The dumped document before and after the value of `key` (a placeholder no other
    value can contain)."""
    placeholder = f"@{uuid.uuid4().hex}@"
    text = _dump({**doc, key: placeholder})
    head, tail = text.split(f'"{placeholder}"'.encode(), 1)
    return head, tail


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
        return b"".join(self.iter_json())

    def iter_json(self) -> Iterator[bytes]:
        """As json.dumps(sort_keys=True, indent=2) would write it, in chunks of ~2 MiB,
        formatted by bytes.hex and str.replace (no Python string per block)."""
        head, tail = _split_around({
            "backup_description": self.backup_description,
            "backup_id": self.backup_id,
            "backup_name": self.backup_name,
            "chunk_size": self.chunk_size,
            "created_at": self.created_at,
            "sha256s": None,
            "version": self.version,
            "volume_id": self.volume_id,
        }, "sha256s")
        yield head
        if not len(self.sha256s):
            yield b"[]"
        else:
            yield b'[\n    "'
            separator = b'",\n    "'
            for n, chunk in enumerate(self.sha256s.chunks()):
                text = chunk.hex(",", 32).replace(",", '",\n    "').encode("ascii")
                yield text if n == 0 else separator + text
            yield b'"\n  ]'
        yield tail


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
    table = objects if isinstance(objects, ObjectTable) else ObjectTable(objects)
    metadata = BackupMetadata(
        backup_id=backup_id, volume_id=volume_id, created_at=created, parent_id=parent_id,
        objects=table, backup_name=name, backup_description=description,
        volume_meta=minimal_volume_meta(name, description))
    return sha_doc, metadata


def _check_version(doc: dict[str, Any], what: str) -> None:
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise BadMetadata(f"{what} has version {_shown(version)}; only {FORMAT_VERSION} exists")


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


def object_entry(item: object, i: int, what: str, limits: Limits) -> ObjectEntry:
    """One element of `objects`, every value checked and bounded."""
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


def _streamed_array(reader: ObjectReader, key: str, what: str) -> None:
    """Refuse, as `_field` would, a streamed member that is not an array."""
    if reader.peek() != "[":
        value = reader.value()
        raise BadMetadata(f"{what}: {key!r} has the wrong type ({type(value).__name__})")


def parse_metadata(raw: bytes, what: str = "_metadata",
                   limits: Limits | None = None) -> BackupMetadata:
    """Parse and check a `_metadata` document; BadMetadata says what is wrong. `limits`
    default to the configured ones (`bakfs.cinder.limits.configure`)."""
    return read_metadata([raw], what, limits)


def read_metadata(chunks: Iterable[bytes | memoryview], what: str = "_metadata",
                  limits: Limits | None = None) -> BackupMetadata:
    """`parse_metadata` of a document given in chunks; its objects are read one at a time
    into an ObjectTable, so memory follows the number of objects at ~45 bytes each."""
    limits = limits or current_limits()
    objects = ObjectTable()
    seen = []

    def read_objects(reader: ObjectReader) -> None:
        _streamed_array(reader, "objects", what)
        seen.append(True)
        for i, item in enumerate(reader.elements()):
            entry = object_entry(item, i, what, limits)
            try:
                objects.append(entry)
            except ValueError as exc:
                raise BadMetadata(f"{what}: {exc}") from None

    doc = ObjectReader(chunks, what).members({"objects": read_objects})
    _check_version(doc, what)
    if not seen:
        raise BadMetadata(f"{what} has no 'objects'")
    _check_no_overlap(objects, what)
    twice = objects.duplicate_name()
    if twice is not None:
        raise BadMetadata(f"{what} lists object {_shown(twice)} twice")
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
        objects=objects,
        backup_name=_text(doc.get("backup_name"), "backup_name", what, optional=True),
        backup_description=_text(doc.get("backup_description"), "backup_description", what,
                                 optional=True),
        volume_meta=_text(volume_meta, "volume_meta", what, optional=True),
        version=doc["version"],
        extra_metadata=doc.get("extra_metadata", _ABSENT),
    )


def _check_no_overlap(objects: ObjectTable, what: str) -> None:
    """Objects of one backup never overlap; if they do the document cannot be trusted.
    Objects in offset order (as every writer lists them) are checked without sorting."""
    offsets, lengths = objects._offsets, objects._lengths
    previous: int | None = None
    for i in objects.offset_order():
        if previous is not None and offsets[i] < offsets[previous] + lengths[previous]:
            a, b = objects[previous], objects[i]
            raise BadMetadata(f"{what}: objects {a.name} and {b.name} overlap")
        previous = i


def parse_sha256file(raw: bytes, what: str = "_sha256file") -> Sha256File:
    """Parse and check a `_sha256file` document."""
    return read_sha256file([raw], what)


def read_sha256file(chunks: Iterable[bytes | memoryview], what: str = "_sha256file"
                    ) -> Sha256File:
    """`parse_sha256file` of a document given in chunks: the digests go straight into a
    packed `Digests` list (spilled to a file when large), never into a list of strings."""
    writer = DigestWriter()
    seen = []

    def read_digests(reader: ObjectReader) -> None:
        _streamed_array(reader, "sha256s", what)
        seen.append(True)
        for piece in reader.array_pieces():
            writer.append_flushing(_pack_digests(piece, what))

    try:
        doc = ObjectReader(chunks, what).members({"sha256s": read_digests})
        _check_version(doc, what)
        if not seen:
            raise BadMetadata(f"{what} has no 'sha256s'")
        chunk_size = _field(doc, "chunk_size", int, what)
        if chunk_size <= 0:
            raise BadMetadata(f"{what}: chunk_size {chunk_size} is not positive")
        return Sha256File(
            backup_id=_field(doc, "backup_id", str, what),
            volume_id=_field(doc, "volume_id", str, what),
            created_at=str(doc.get("created_at", "")),
            chunk_size=chunk_size,
            sha256s=writer.finish(),
            backup_name=doc.get("backup_name"),
            backup_description=doc.get("backup_description"),
            version=doc["version"],
        )
    except BaseException:
        writer.close()
        raise


_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_STRIDE = 72  # '\n    "' + 64 hex digits + '",' : one element as Cinder and bakfs indent it


def _pack_digests(piece: str, what: str) -> bytes:
    """The digests of one piece of the `sha256s` array (elements between commas): checked by
    position when laid out as json.dumps(indent=2) writes them, else element by element."""
    raw = piece.rstrip().encode("ascii", "replace")
    n = (len(raw) + 1) // _STRIDE
    if n and len(raw) == _STRIDE * n - 1 and raw[0::_STRIDE] == b"\n" * n \
            and all(raw[k::_STRIDE] == b" " * n for k in range(1, 5)) \
            and raw[5::_STRIDE] == b'"' * n and raw[70::_STRIDE] == b'"' * n \
            and raw[71::_STRIDE] == b"," * (n - 1):
        hexes = raw.translate(None, b'\n ",')
        if len(hexes) == 64 * n:
            try:
                return bytes.fromhex(hexes.decode("ascii"))
            except ValueError:
                pass  # not hexadecimal: the slow path says so
    try:
        items = json.loads(f"[{piece}]") if piece.strip() else None
    except json.JSONDecodeError as exc:
        raise BadMetadata(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadMetadata(f"{what} is nested too deeply to be a Cinder document") from None
    if not items:
        raise BadMetadata(f"{what} is not valid JSON: an empty element in sha256s")
    if not all(isinstance(h, str) and len(h) == 64 for h in items):
        raise BadMetadata(f"{what}: sha256s holds something that is not a SHA-256 hex digest")
    if not all(_HEX_DIGEST.fullmatch(h) for h in items):
        raise BadMetadata(f"{what}: sha256s holds something that is not hexadecimal")
    return bytes.fromhex("".join(items))
