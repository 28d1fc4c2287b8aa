"""Reading a backup's bytes back, the simple synchronous way: the chain overlaid from its
`_metadata` documents in one streaming merge (`pieces`), every object fetched whole and
verified (`store.decode`), each once even when it serves several pieces; holes and all-zero
objects are zeros, never fetched.

Blocking code, with no index and no cache: what `verify --deep` reassembles a volume with,
and the reference the read engine is tested against. Memory: the chain's packed object
tables and one object, whatever the volume size.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from bakfs.catalog.discovery import BackupRef, load_chain
from bakfs.catalog.index import KIND_DATA, KIND_HOLE, NO_OWNER
from bakfs.catalog.sync import Layer, Row, overlay_rows
from bakfs.cinder.chain import check_chain
from bakfs.cinder.metadata import BackupMetadata, ObjectEntry, ObjectTable
from bakfs.store.base import ObjectStore
from bakfs.store.decode import fetch_verified

_ZEROS = bytes(1 << 20)


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """A range of the volume: bytes [inner, inner + length) of `entry`'s plain data, or
    zeros (entry None: a hole or an all-zero object)."""

    offset: int
    length: int
    entry: ObjectEntry | None
    inner: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def pieces(chain: Sequence[BackupMetadata]) -> Iterator[Piece]:
    """The volume of a chain (full backup first) as consecutive pieces, newest layer
    winning: each layer merged over the ones below as they stream."""
    check_chain(chain)
    size = chain[0].covered_size
    tables = [m.objects if isinstance(m.objects, ObjectTable) else ObjectTable(m.objects)
              for m in chain]
    rows: Iterator[Row] = iter([(0, size, KIND_HOLE, NO_OWNER, 0, 0)])
    for depth, (metadata, table) in enumerate(zip(chain, tables, strict=True)):
        layer = Layer(table, depth, size, f"_metadata of {metadata.backup_id}")
        rows = overlay_rows(rows, layer.rows(), size)
    for offset, length, kind, owner, n, inner in rows:
        entry = tables[owner][n] if kind == KIND_DATA else None
        yield Piece(offset, length, entry, inner)


def chain_pieces(store: ObjectStore, ref: BackupRef) -> Iterator[Piece]:
    """The pieces of a backup with its whole chain."""
    return pieces([metadata for _ref, metadata in load_chain(store, ref)])


def restore(store: ObjectStore, ref: BackupRef, out: Sink,
            progress: Callable[[int], None] | None = None) -> str:
    """Write the whole volume to `out` (sequentially) and return its sha256 hex."""
    digest = hashlib.sha256()
    cached: tuple[str, bytes | bytearray] | None = None
    for piece in chain_pieces(store, ref):
        if piece.entry is None:
            remaining = piece.length
            while remaining:
                zeros = _ZEROS[:min(remaining, len(_ZEROS))]
                out.write(zeros)
                digest.update(zeros)
                remaining -= len(zeros)
        else:
            if cached is None or cached[0] != piece.entry.name:
                cached = (piece.entry.name, fetch_verified(store, piece.entry))
            data = memoryview(cached[1])[piece.inner:piece.inner + piece.length]
            out.write(data)
            digest.update(data)
        if progress is not None:
            progress(piece.end)
    return digest.hexdigest()
