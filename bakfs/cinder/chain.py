"""Overlay of an incremental chain into one extent map of the volume.

Restore semantics are Cinder's plain overlay: the byte at position p comes from the newest
layer with an object covering p; the full backup covers everything. Zeros written by an
incremental overwrite the parent like any other data (Cinder 23-28 skipped them when
restoring into a new volume, which is wrong). Pure code, no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Sequence

from bakfs.cinder.metadata import BackupMetadata, ObjectEntry
from bakfs.errors import BadMetadata


@dataclasses.dataclass(frozen=True)
class Extent:
    """A range of the volume served by one slice of one object, or a hole (entry None) read
    as zeros."""

    offset: int
    length: int
    entry: ObjectEntry | None
    backup_id: str | None

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def object_offset(self) -> int:
        """Where this extent starts inside the object's plain data."""
        return 0 if self.entry is None else self.offset - self.entry.offset

    def clip(self, start: int, end: int) -> Extent:
        """The part of this extent within [start, end)."""
        start, end = max(start, self.offset), min(end, self.end)
        return dataclasses.replace(self, offset=start, length=end - start)


def check_chain(layers: Sequence[BackupMetadata]) -> None:
    """Layers must run full first, each the parent of the next, all of one volume."""
    if not layers:
        raise BadMetadata("an empty chain has no backup to read")
    if layers[0].parent_id is not None:
        raise BadMetadata(f"chain starts at {layers[0].backup_id}, which is an incremental of "
                          f"{layers[0].parent_id}: its parent is missing")
    for parent, child in itertools.pairwise(layers):
        if child.parent_id != parent.backup_id:
            raise BadMetadata(f"backup {child.backup_id} has parent {child.parent_id}, "
                              f"not {parent.backup_id}")
        if child.volume_id != parent.volume_id:
            raise BadMetadata(f"backup {child.backup_id} is of volume {child.volume_id}, its "
                              f"parent of {parent.volume_id}")


def overlay(layers: Sequence[BackupMetadata]) -> list[Extent]:
    """Sorted, non-overlapping extents tiling [0, volume size) for a chain given oldest first.
    Gaps that no object covers become holes."""
    check_chain(layers)
    size = layers[0].covered_size
    pieces: list[Extent] = []
    starts: list[int] = []
    for layer in layers:
        for entry in sorted(layer.objects, key=lambda o: o.offset):
            if entry.length == 0:
                continue
            if entry.end > size:
                raise BadMetadata(f"object {entry.name} of backup {layer.backup_id} ends at "
                                  f"{entry.end}, past the volume size {size}")
            _insert(pieces, starts, Extent(entry.offset, entry.length, entry, layer.backup_id))
    return _fill_holes(pieces, size)


def _insert(pieces: list[Extent], starts: list[int], new: Extent) -> None:
    """Put `new` over whatever it covers, keeping the uncovered parts of older pieces."""
    i = max(bisect.bisect_right(starts, new.offset) - 1, 0)
    while i < len(pieces) and pieces[i].end <= new.offset:
        i += 1
    j = i
    replacement: list[Extent] = []
    while j < len(pieces) and pieces[j].offset < new.end:
        old = pieces[j]
        if old.offset < new.offset:
            replacement.append(old.clip(old.offset, new.offset))
        j += 1
    replacement.append(new)
    if j > i and pieces[j - 1].end > new.end:
        replacement.append(pieces[j - 1].clip(new.end, pieces[j - 1].end))
    pieces[i:j] = replacement
    starts[i:j] = [p.offset for p in replacement]


def _fill_holes(pieces: list[Extent], size: int) -> list[Extent]:
    out: list[Extent] = []
    position = 0
    for piece in pieces:
        if piece.offset > position:
            out.append(Extent(position, piece.offset - position, None, None))
        out.append(piece)
        position = piece.end
    if position < size:
        out.append(Extent(position, size - position, None, None))
    return out


def extents_in(extents: Sequence[Extent], offset: int, length: int) -> list[Extent]:
    """The extents (clipped) that serve [offset, offset + length) of the volume."""
    end = offset + length
    i = max(bisect.bisect_right([e.offset for e in extents], offset) - 1, 0)
    out = []
    while i < len(extents) and extents[i].offset < end:
        if extents[i].end > offset:
            out.append(extents[i].clip(offset, end))
        i += 1
    return out
