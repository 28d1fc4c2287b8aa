"""The LMDB chunk index: a catalog of volumes and backups, and per backup the extent map of its
whole resolved incremental chain, so a read of any byte range finds its objects in O(log n).

The index is a cache of the store, never the truth: a missing, corrupt or older-schema index
is wiped and rebuilt from the `_metadata` objects (see `bakfs.catalog.sync`).

Named databases (all keys big-endian so LMDB's byte order is numeric order):

    meta      b"schema" -> SCHEMA_VERSION, b"next_seq" -> u32
    backups   backup_id (utf-8) -> JSON `BackupRecord`
    volumes   volume_id NUL timestamp NUL backup_id -> b""      (backups of a volume, in order)
    objects   seq u32 | n u32 -> offset u64, length u64, md5 16 bytes, codec, name
    extents   seq u32 | volume offset u64 -> length u64, kind u8, owner seq u32, owner n u32,
              offset in object u64

`seq` is a small number given to each indexed backup; an object is addressed by its backup's
seq and its position in that backup's `objects` list. A backup's extents tile [0, size) and
may point at objects of its ancestors. Kinds: data, hole (no object covers the range) and
zero (an object whose md5 is the md5 of `length` zero bytes: never fetched).

Damage is found, never served: every value but the schema mark ends with a CRC-32 of its key
and value (`_seal`), so a flipped bit in a row, or in the key it is stored under, is an
`IndexCorrupt`; a data extent must lie inside its object and where its object says it is;
and any LMDB error is an `IndexCorrupt` too. The caller rebuilds the index from the store
(`reset` wipes it, even while other threads use it: they wait at `_gate`). `check` reads
every row, for `bakfs index refresh`.

A backup becomes visible (status "ok") only in the transaction that finishes it; rows are
written in bounded batches before that under status "building", which a later open purges.

Blocking code, one short transaction per public call (begun and ended inside the call, never
held across an await); callers on trio run these through `bakfs.threads`. Knows nothing of
trio, boto3 or FUSE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import lmdb

from bakfs.cinder.metadata import ObjectEntry
from bakfs.errors import BackupNotFound, IndexCorrupt

log = logging.getLogger(__name__)

SCHEMA_VERSION = b"bakfs-index-4"  # 2: own_bytes, stored_bytes, codecs; 3: row checksums;
# 4: data_bytes, and zero objects without an object row
MAP_SIZE = 1 << 40  # address space only; the file grows as needed
BATCH_ROWS = 20_000

KIND_DATA = 0
KIND_HOLE = 1
KIND_ZERO = 2

STATUS_OK = "ok"
STATUS_BUILDING = "building"
STATUS_BROKEN = "broken"

_SEQ = struct.Struct(">I")
_OBJ_KEY = struct.Struct(">II")
_EXT_KEY = struct.Struct(">IQ")
_OBJ_VAL = struct.Struct(">QQ16sB")  # offset, length, md5, len(codec); then codec, name
_EXT_VAL = struct.Struct(">QBIIQ")  # length, kind, owner seq, owner n, offset in object
_CRC = struct.Struct(">I")
NO_OWNER = 0xFFFFFFFF

P = ParamSpec("P")
R = TypeVar("R")


def _seal(key: bytes, payload: bytes) -> bytes:
    """The stored value: the payload and a CRC-32 of key and payload."""
    return payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(key)))


def _unseal(key: bytes, value: bytes, what: str) -> bytes:
    """The payload of a stored value, or IndexCorrupt if key or value changed since."""
    payload = value[:-_CRC.size]
    if len(value) < _CRC.size or _CRC.unpack(value[-_CRC.size:])[0] != zlib.crc32(
            payload, zlib.crc32(key)):
        raise IndexCorrupt(f"a damaged {what} row (its checksum does not match)")
    return payload


class _Gate:
    """Many users of the environment at once, or one `reset` alone: a reset waits for the
    calls in progress and holds new ones until the fresh environment is open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._closing = False

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._closing)
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._closing)
            self._closing = True
            self._cond.wait_for(lambda: self._users == 0)
        try:
            yield
        finally:
            with self._cond:
                self._closing = False
                self._cond.notify_all()


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """A public call on the environment: waits out a reset, and turns any LMDB error (a
    damaged file, a full map) into IndexCorrupt, which callers answer with a rebuild."""
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        index = args[0]
        assert isinstance(index, Index)
        with index._gate.use():
            try:
                return method(*args, **kwargs)
            except lmdb.Error as exc:
                raise IndexCorrupt(f"LMDB failed: {type(exc).__name__}: {exc}") from None
    return wrapper


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """A range of a backup's volume: served by [object_offset, +length) of `obj` (kind data),
    or zeros (kind hole or zero, obj None for holes)."""

    offset: int
    length: int
    kind: int
    obj: ObjectEntry | None
    object_offset: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    def clip(self, start: int, end: int) -> Span:
        start, end = max(start, self.offset), min(end, self.end)
        return Span(start, end - start, self.kind, self.obj,
                    self.object_offset + (start - self.offset))


@dataclasses.dataclass(frozen=True)
class BackupRecord:
    """A backup as the catalog knows it."""

    backup_id: str
    volume_id: str
    prefix: str
    timestamp: str
    parent_id: str | None
    created_at: str
    name: str | None
    description: str | None
    size: int
    chain: tuple[str, ...]  # ancestors' and own ids, full backup first
    fingerprint: str  # of the `_metadata` object (size and date), to notice a rewrite
    seq: int = 0
    status: str = STATUS_BUILDING
    error: str | None = None
    object_count: int = 0
    extent_count: int = 0
    own_bytes: int = 0  # plain (uncompressed) bytes of this backup's own data objects
    stored_bytes: int = 0  # what those objects occupy in the store (after compression)
    codecs: tuple[str, ...] = ()  # the compression of its own objects, e.g. ("zstd",)
    zero_objects: int = 0
    data_bytes: int | None = None  # volume bytes served by data objects (not holes, zeros)

    def to_json(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc["chain"] = list(self.chain)
        doc["codecs"] = list(self.codecs)
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BackupRecord:
        try:
            doc = json.loads(raw)
            doc["chain"] = tuple(doc["chain"])
            doc["codecs"] = tuple(doc["codecs"])
            if doc.keys() == _RECORD_FIELDS:
                # every field present (a record this version wrote): filled in directly, as
                # the frozen dataclass's __init__ took a third of the decode, 25 ms of a
                # re-mount at 10,000 backups
                record = object.__new__(cls)
                record.__dict__.update(doc)
                return record
            return cls(**doc)  # an older record: its missing fields get their defaults
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise IndexCorrupt(f"unreadable backup record in the index: {exc}") from None


_RECORD_FIELDS = frozenset(field.name for field in dataclasses.fields(BackupRecord))


def _volume_key(record: BackupRecord) -> bytes:
    return b"\0".join((record.volume_id.encode(), record.timestamp.encode(),
                       record.backup_id.encode()))


class Index:
    """The LMDB environment and its databases. Open with `Index.open(path)`."""

    def __init__(self, path: Path, env: lmdb.Environment, rebuilt: str | None) -> None:
        self.path = path
        self.rebuilt = rebuilt  # why the index was wiped at open (or since), or None
        self._gate = _Gate()
        self._attach(env)

    def _attach(self, env: lmdb.Environment) -> None:
        self.env = env
        self._meta = env.open_db(b"meta")
        self._backups = env.open_db(b"backups")
        self._volumes = env.open_db(b"volumes")
        self._objects = env.open_db(b"objects")
        self._extents = env.open_db(b"extents")

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> Index:
        """Open the index at `path`, wiping it first when it is unreadable, damaged, of
        another schema or left half-built; `rebuilt` then says why (the caller refreshes it
        from the store)."""
        path = Path(path)
        reason: str | None = None
        if path.is_dir() and not (path / "data.mdb").exists():
            reason = "it was empty"  # made ahead by the user or a tool: nothing to warn about
        elif path.exists():
            try:
                index = cls._existing(path)
            except lmdb.Error as exc:
                reason = f"LMDB cannot open it ({exc})"
            else:
                try:
                    reason = index._schema_problem() or index._purge_unfinished()
                except IndexCorrupt as exc:
                    reason = f"it is damaged ({exc})"
                if reason is None:
                    return index
                index.env.close()
            log.warning("index %s is not usable: %s; rebuilding it", path, reason)
            shutil.rmtree(path, ignore_errors=True)
        else:
            reason = "it did not exist"
        return cls(path, cls._create_env(path), reason)

    @classmethod
    def _existing(cls, path: Path) -> Index:
        env = cls._open_env(path)
        try:
            return cls(path, env, None)
        except BaseException:
            env.close()
            raise

    @staticmethod
    def _open_env(path: Path) -> lmdb.Environment:
        return lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=8, subdir=True,
                         readahead=False, max_readers=256)

    @classmethod
    def _create_env(cls, path: Path) -> lmdb.Environment:
        path.mkdir(parents=True, exist_ok=True)
        env = cls._open_env(path)
        with env.begin(write=True) as txn:
            txn.put(b"schema", SCHEMA_VERSION, db=env.open_db(b"meta", txn=txn))
        return env

    @_guarded
    def _schema_problem(self) -> str | None:
        with self.env.begin() as txn:
            schema = txn.get(b"schema", db=self._meta)
        if schema == SCHEMA_VERSION:
            return None
        return f"schema {schema!r} is not {SCHEMA_VERSION!r}" if schema else \
            "it has no schema mark"

    def close(self) -> None:
        self.env.close()

    def reset(self, reason: str) -> None:
        """Wipe the index and start an empty one in its place, while other threads may be
        about to use it (they wait, then see the new one): the answer to any damage."""
        with self._gate.alone():
            log.warning("index %s: %s; rebuilding it from the store", self.path, reason)
            self.env.close()
            shutil.rmtree(self.path, ignore_errors=True)
            self._attach(self._create_env(self.path))
            self.rebuilt = reason

    @_guarded
    def get_meta(self, name: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(name, db=self._meta)
        return None if value is None else _unseal(name, bytes(value), "meta")

    @_guarded
    def set_meta(self, name: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(name, _seal(name, value), db=self._meta)

    def _purge_unfinished(self) -> None:
        """Drop the records a killed writer left half-built. Every backup and volume row's
        checksum is checked, but only rows that may be half-built are decoded: an open
        must not cost a JSON decode per backup (0.16 s at 10,000)."""
        marker = f'"status": "{STATUS_BUILDING}"'.encode()
        suspects = []
        with self.env.begin() as txn:
            for key, value in txn.cursor(db=self._backups):
                if marker in _unseal(bytes(key), bytes(value), "backup"):
                    suspects.append(bytes(key).decode())
            for key, value in txn.cursor(db=self._volumes):
                _unseal(bytes(key), bytes(value), "volume")
        for backup_id in suspects:
            record = self.get_backup(backup_id)
            if record is not None and record.status == STATUS_BUILDING:
                log.info("index: dropping half-built backup %s", record.backup_id)
                self.drop_backup(record.backup_id)

    # -- catalog reads ---------------------------------------------------------------------

    @_guarded
    def get_backup(self, backup_id: str) -> BackupRecord | None:
        with self.env.begin() as txn:
            return self._record(txn, backup_id.encode())

    def _record(self, txn: lmdb.Transaction, key: bytes) -> BackupRecord | None:
        raw = txn.get(key, db=self._backups)
        if raw is None:
            return None
        record = BackupRecord.from_json(_unseal(key, raw, "backup"))
        if record.backup_id.encode() != key:
            raise IndexCorrupt(f"the record stored as {key!r} is of {record.backup_id}")
        return record

    @_guarded
    def list_backups(self, volume_id: str | None = None,
                     include_unfinished: bool = False) -> list[BackupRecord]:
        """Backups (of one volume, or all) in volume, timestamp, id order."""
        out = []
        prefix = b"" if volume_id is None else volume_id.encode() + b"\0"
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._volumes)
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor.iternext():
                if not key.startswith(prefix):
                    break
                _unseal(key, value, "volume")
                record = self._record(txn, key.rsplit(b"\0", 1)[-1])
                if record is not None:
                    if _volume_key(record) != key:
                        raise IndexCorrupt(f"volume row {key!r} and the record of "
                                           f"{record.backup_id} disagree")
                    if include_unfinished or record.status != STATUS_BUILDING:
                        out.append(record)
        return out

    def list_volumes(self) -> list[str]:
        return sorted({r.volume_id for r in self.list_backups()})

    @_guarded
    def split_volumes(self, parts: int) -> list[str]:
        """Volume ids that split the index's backups into `parts` runs of about as many
        backups each (their listing, split there, lists about as many keys in each range),
        from the keys of the volume rows alone: a few ms at 10,000 backups. None (no split)
        for an index of fewer than two backups per part; fewer than `parts - 1` where one
        volume holds more than a part."""
        with self.env.begin() as txn:
            count = txn.stat(self._volumes)["entries"]
            if parts < 2 or count < parts * 2:
                return []
            step = count / parts
            out: list[str] = []
            cursor = txn.cursor(db=self._volumes)
            for n, key in enumerate(cursor.iternext(keys=True, values=False)):
                if n >= step * (len(out) + 1):
                    volume = bytes(key).split(b"\0", 1)[0].decode()
                    if not out or out[-1] != volume:
                        out.append(volume)
                    if len(out) == parts - 1:
                        break
        return out

    @_guarded
    def stats(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {
                "backups": txn.stat(self._backups)["entries"],
                "objects": txn.stat(self._objects)["entries"],
                "extents": txn.stat(self._extents)["entries"],
            }

    # -- extent lookups --------------------------------------------------------------------

    @_guarded
    def lookup(self, backup_id: str, offset: int, size: int,
               more: int = 0) -> tuple[BackupRecord, list[Span]]:
        """The spans (unclipped) that cover [offset, offset + size) of the backup's volume,
        plus up to `more` following ones (for the caller's cache). One read transaction:
        a B-tree seek and a cursor walk, never a scan of the whole map."""
        with self.env.begin() as txn:
            record = self._record(txn, backup_id.encode())
            if record is None:
                raise BackupNotFound(f"backup {backup_id} is not in the index")
            if record.status != STATUS_OK:
                raise BackupNotFound(f"backup {backup_id} cannot be read: "
                                     f"{record.error or record.status}")
            end = min(offset + size, record.size)
            spans: list[Span] = []
            if offset >= record.size or size <= 0:
                return record, spans
            extra = 0
            for span in self._walk(txn, record, offset):
                if span.offset >= end:
                    extra += 1
                    if extra > more:
                        break
                spans.append(span)
            if not spans or spans[-1].end < end:
                raise IndexCorrupt(f"backup {backup_id}: extents end before {end}")
        return record, spans

    def _walk(self, txn: lmdb.Transaction, record: BackupRecord,
              offset: int) -> Iterator[Span]:
        """The backup's spans from the one covering `offset` on, each checked: its row's
        checksum, the tiling (no gap, nothing past the volume's end) and, for data, that it
        lies inside its object where the object says it is."""
        seq = _SEQ.pack(record.seq)
        start_key = _EXT_KEY.pack(record.seq, offset)
        cursor = txn.cursor(db=self._extents)
        ok = cursor.set_range(start_key)
        if not ok or bytes(cursor.key()) != start_key:
            # the span covering `offset` starts before it: step back one
            ok = cursor.prev() if ok else cursor.last()
        objects: dict[tuple[int, int], ObjectEntry] = {}
        previous: Span | None = None
        backup_id = record.backup_id
        while ok and bytes(cursor.key()[:4]) == seq:
            span = self._span(txn, record, bytes(cursor.key()), bytes(cursor.value()), objects)
            if previous is None:
                if not span.offset <= offset < span.end:
                    raise IndexCorrupt(f"backup {backup_id}: no extent covers {offset}")
            elif span.offset != previous.end:
                raise IndexCorrupt(f"backup {backup_id}: gap at {previous.end}")
            yield span
            previous = span
            ok = cursor.next()

    def _span(self, txn: lmdb.Transaction, record: BackupRecord, key: bytes, value: bytes,
              objects: dict[tuple[int, int], ObjectEntry]) -> Span:
        try:
            _seq, offset = _EXT_KEY.unpack(key)
            length, kind, owner, n, object_offset = _EXT_VAL.unpack(
                _unseal(key, value, "extent"))
        except struct.error as exc:
            raise IndexCorrupt(f"unreadable extent row: {exc}") from None
        where = f"backup {record.backup_id}: extent at {offset}"
        if length <= 0 or offset + length > record.size:
            raise IndexCorrupt(f"{where} has length {length} in a volume of {record.size}")
        obj = None
        if kind == KIND_DATA:
            obj = objects.get((owner, n))
            if obj is None:
                if owner > record.seq:
                    raise IndexCorrupt(f"{where} names an object of a later backup")
                obj_key = _OBJ_KEY.pack(owner, n)
                raw = txn.get(obj_key, db=self._objects)
                if raw is None:
                    raise IndexCorrupt(f"{where} names a missing object row")
                obj = _decode_object(_unseal(obj_key, raw, "object"))
                objects[(owner, n)] = obj
            if object_offset + length > obj.length or obj.offset + object_offset != offset:
                raise IndexCorrupt(f"{where} does not lie in its object {obj.name} "
                                   f"({object_offset}+{length} of {obj.length} bytes at "
                                   f"{obj.offset})")
        elif kind not in (KIND_HOLE, KIND_ZERO):
            raise IndexCorrupt(f"{where} has unknown kind {kind}")
        return Span(offset, length, kind, obj, object_offset)

    @_guarded
    def check(self) -> list[str]:
        """Read every row and every readable backup's whole map; the problems found (empty
        when the index is sound). For `bakfs index refresh`: cost proportional to the index
        (a few seconds per million extents), memory to one backup's objects."""
        problems: list[str] = []
        with self.env.begin() as txn:
            for db, what in ((self._meta, "meta"), (self._objects, "object"),
                             (self._extents, "extent"), (self._volumes, "volume")):
                for key, value in txn.cursor(db=db):
                    if db is self._meta and bytes(key) == b"schema":
                        continue
                    try:
                        _unseal(bytes(key), bytes(value), what)
                    except IndexCorrupt as exc:
                        problems.append(f"{exc} at key {bytes(key)!r}")
            records = []
            for key, _value in txn.cursor(db=self._backups):
                try:
                    record = self._record(txn, bytes(key))
                except IndexCorrupt as exc:
                    problems.append(str(exc))
                    continue
                if record is not None and record.status == STATUS_OK:
                    records.append(record)
            for record in records:
                try:
                    end = 0
                    for span in self._walk(txn, record, 0):
                        end = span.end
                    if end != record.size:
                        raise IndexCorrupt(f"backup {record.backup_id}: extents end at {end}, "
                                           f"not {record.size}")
                except IndexCorrupt as exc:
                    problems.append(str(exc))
        return problems

    # -- writes ----------------------------------------------------------------------------

    @_guarded
    def begin_backup(self, record: BackupRecord) -> int:
        """Register a backup as being built; returns its seq. Replaces any earlier record of
        the same id (drop it first to free its rows)."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"next_seq", db=self._meta)
            seq = _SEQ.unpack(_unseal(b"next_seq", raw, "meta"))[0] if raw else 1
            txn.put(b"next_seq", _seal(b"next_seq", _SEQ.pack(seq + 1)), db=self._meta)
            record = dataclasses.replace(record, seq=seq, status=STATUS_BUILDING)
            self._put_record(txn, record)
        return seq

    def _put_record(self, txn: lmdb.Transaction, record: BackupRecord) -> None:
        key = record.backup_id.encode()
        txn.put(key, _seal(key, record.to_json()), db=self._backups)
        volume_key = _volume_key(record)
        txn.put(volume_key, _seal(volume_key, b""), db=self._volumes)

    @_guarded
    def add_objects(self, seq: int, first_n: int, objects: Sequence[ObjectEntry]) -> None:
        with self.env.begin(write=True) as txn:
            for i, obj in enumerate(objects):
                key = _OBJ_KEY.pack(seq, first_n + i)
                txn.put(key, _seal(key, _encode_object(obj)), db=self._objects)

    @_guarded
    def add_extents(self, seq: int, rows: Iterable[tuple[int, int, int, int, int, int]]) -> None:
        """Rows of (offset, length, kind, owner seq, owner n, offset in object)."""
        with self.env.begin(write=True) as txn:
            for offset, length, kind, owner, n, object_offset in rows:
                key = _EXT_KEY.pack(seq, offset)
                txn.put(key, _seal(key, _EXT_VAL.pack(length, kind, owner, n, object_offset)),
                        db=self._extents)

    @_guarded
    def add_numbered_objects(self, seq: int, objects: Iterable[tuple[int, ObjectEntry]]
                             ) -> None:
        """Object rows at the given positions (the objects extents point at; zero objects
        need none)."""
        with self.env.begin(write=True) as txn:
            for n, obj in objects:
                key = _OBJ_KEY.pack(seq, n)
                txn.put(key, _seal(key, _encode_object(obj)), db=self._objects)

    @_guarded
    def put_backups(self, items: Sequence[tuple[BackupRecord,
                                                Iterable[tuple[int, ObjectEntry]],
                                                Iterable[tuple[int, int, int, int, int, int]]]]
                    ) -> list[BackupRecord]:
        """Small backups whole, in one transaction: each gets its seq, its object rows (at
        their positions) and extent rows, and its record with status ok. An extent's owner
        -(k + 1) names the k-th backup of `items` (whose seq is given here), so a chain of
        new backups is indexed at once: thousands of backups cost a few commits, not four
        each."""
        out: list[BackupRecord] = []
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"next_seq", db=self._meta)
            first = _SEQ.unpack(_unseal(b"next_seq", raw, "meta"))[0] if raw else 1
            txn.put(b"next_seq", _seal(b"next_seq", _SEQ.pack(first + len(items))),
                    db=self._meta)
            for k, (record, objects, rows) in enumerate(items):
                seq = first + k
                for n, obj in objects:
                    key = _OBJ_KEY.pack(seq, n)
                    txn.put(key, _seal(key, _encode_object(obj)), db=self._objects)
                count = 0
                for offset, length, kind, owner, n, object_offset in rows:
                    if owner < 0:
                        owner = first - owner - 1
                    key = _EXT_KEY.pack(seq, offset)
                    txn.put(key, _seal(key, _EXT_VAL.pack(length, kind, owner, n,
                                                          object_offset)), db=self._extents)
                    count += 1
                record = dataclasses.replace(record, seq=seq, status=STATUS_OK,
                                             extent_count=count)
                self._put_record(txn, record)
                out.append(record)
        return out

    @_guarded
    def extent_rows(self, seq: int, offset: int, limit: int
                    ) -> list[tuple[int, int, int, int, int, int]]:
        """Up to `limit` raw extent rows of backup `seq` from volume offset `offset` on (a
        row starting there or after), as (offset, length, kind, owner seq, owner n, offset
        in object): what an incremental's extents are merged from."""
        out = []
        prefix = _SEQ.pack(seq)
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._extents)
            ok = cursor.set_range(_EXT_KEY.pack(seq, offset))
            while ok and len(out) < limit:
                key = bytes(cursor.key())
                if key[:4] != prefix:
                    break
                try:
                    _seq, start = _EXT_KEY.unpack(key)
                    length, kind, owner, n, object_offset = _EXT_VAL.unpack(
                        _unseal(key, bytes(cursor.value()), "extent"))
                except struct.error as exc:
                    raise IndexCorrupt(f"unreadable extent row: {exc}") from None
                out.append((start, length, kind, owner, n, object_offset))
                ok = cursor.next()
        return out

    @_guarded
    def data_bytes(self, seq: int) -> int:
        """Bytes of data extents of backup `seq` (what is not holes or zero objects), summed
        in one cursor walk without building spans."""
        total = 0
        prefix = _SEQ.pack(seq)
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._extents)
            ok = cursor.set_range(prefix)
            while ok and bytes(cursor.key()[:4]) == prefix:
                value = _unseal(bytes(cursor.key()), bytes(cursor.value()), "extent")
                length, kind = _EXT_VAL.unpack_from(value)[:2]
                if kind == KIND_DATA:
                    total += length
                ok = cursor.next()
        return total

    @_guarded
    def finish_backup(self, record: BackupRecord) -> None:
        """Publish a built backup (status ok) or record it as broken, in one transaction."""
        with self.env.begin(write=True) as txn:
            self._put_record(txn, record)

    @_guarded
    def put_broken(self, record: BackupRecord) -> None:
        """Catalog a backup that cannot be read (its chain is broken), with the reason."""
        with self.env.begin(write=True) as txn:
            self._put_record(txn, dataclasses.replace(record, status=STATUS_BROKEN, seq=0))

    @_guarded
    def drop_backup(self, backup_id: str) -> bool:
        """Remove a backup and its rows, in bounded batches; the record goes first so no
        reader sees a half-deleted map. False if it was not there."""
        with self.env.begin(write=True) as txn:
            record = self._record(txn, backup_id.encode())
            if record is None:
                return False
            txn.delete(backup_id.encode(), db=self._backups)
            txn.delete(_volume_key(record), db=self._volumes)
        if record.seq:
            for db in (self._extents, self._objects):
                while self._delete_batch(db, _SEQ.pack(record.seq)):
                    pass
        return True

    def _delete_batch(self, db: Any, prefix: bytes) -> bool:
        """Delete up to BATCH_ROWS rows whose key starts with `prefix`; True if any were."""
        deleted = 0
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=db)
            if not cursor.set_range(prefix):
                return False
            while bytes(cursor.key()[:len(prefix)]) == prefix and deleted < BATCH_ROWS:
                if not cursor.delete():
                    break
                deleted += 1
                if not cursor.key():
                    break
        return deleted > 0


def _encode_object(obj: ObjectEntry) -> bytes:
    codec = obj.compression.encode()
    return (_OBJ_VAL.pack(obj.offset, obj.length, bytes.fromhex(obj.md5), len(codec))
            + codec + obj.name.encode())


def _decode_object(raw: bytes) -> ObjectEntry:
    try:
        offset, length, md5, codec_len = _OBJ_VAL.unpack_from(raw)
        start = _OBJ_VAL.size
        codec = raw[start:start + codec_len].decode()
        name = raw[start + codec_len:].decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"unreadable object row: {exc}") from None
    return ObjectEntry(name, offset, length, codec, md5.hex())
