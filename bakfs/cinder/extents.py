"""Cinder's incremental rule: which byte ranges of a volume become data objects.

The volume is read in windows of `object_size` bytes (the last may be short), hashed per
`block_size` block. A full backup stores every window whole. An incremental stores each
maximal run of blocks whose SHA-256 differs from the parent's, cut at window boundaries, so
one object never exceeds `object_size`. Pure functions, no I/O of their own: a large digest
list lives in a `bakfs.spill.SpillArray`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from bakfs.cinder.blockhash import sha256_blocks
from bakfs.spill import SpillArray

DIGEST_SIZE = 32
CHUNK_BLOCKS = 1 << 15  # digests handed out at a time by `chunks` (1 MiB)


class Digests(Sequence[bytes]):
    """SHA-256 digests of consecutive blocks, packed: 32 bytes a block instead of a
    64-character string each. Small lists are one bytes object; a large one (a 1 TiB volume
    has 32 M blocks: 1 GiB of digests) lives in a spill file, read a range at a time
    (`block_range`, `chunks`), so it costs no memory. Immutable once built."""

    __slots__ = ("_count", "_data", "_spill")

    def __init__(self, data: bytes = b"") -> None:
        if len(data) % DIGEST_SIZE:
            raise ValueError("packed digests must be a multiple of 32 bytes")
        self._data: bytes | None = bytes(data)
        self._spill: SpillArray | None = None
        self._count = len(data) // DIGEST_SIZE

    @classmethod
    def from_spill(cls, spill: SpillArray) -> Digests:
        """The digests a writer appended to `spill` (which this object now owns)."""
        if len(spill) % DIGEST_SIZE:
            raise ValueError("packed digests must be a multiple of 32 bytes")
        digests = cls()
        digests._count = len(spill) // DIGEST_SIZE
        if spill.spilled:
            digests._data, digests._spill = None, spill
        else:
            digests._data = spill.read(0, len(spill))
            spill.close()
        return digests

    @classmethod
    def from_hex(cls, hexes: Iterable[str]) -> Digests:
        return cls(bytes.fromhex("".join(hexes)))

    @classmethod
    def join(cls, parts: Iterable[Digests]) -> Digests:
        writer = DigestWriter()
        for part in parts:
            for chunk in part.chunks():
                writer.append_flushing(chunk)
        return writer.finish()

    def mismatched(self, first: int, data: bytes | memoryview, block_size: int) -> list[int]:
        """The numbers of the blocks of `data`, block `first` of this list on (the last one
        may be short), whose SHA-256 is not the recorded one; hashed in one call without the
        GIL (`cinder.blockhash`). A block past the list's end never matches."""
        packed = sha256_blocks(data, block_size)
        recorded = self.block_range(first, len(packed) // DIGEST_SIZE)
        return [first + i for i in differing(packed, recorded)]

    def block_range(self, first: int, count: int) -> bytes:
        """The packed digests of blocks [first, first + count), clipped to the list."""
        first = max(first, 0)
        if self._data is not None:
            return self._data[first * DIGEST_SIZE:(first + count) * DIGEST_SIZE]
        assert self._spill is not None
        return self._spill.read(first * DIGEST_SIZE, max(count, 0) * DIGEST_SIZE)

    def chunks(self, blocks: int = CHUNK_BLOCKS) -> Iterator[bytes]:
        """The packed list in pieces of `blocks` digests, in order."""
        for first in range(0, self._count, blocks):
            yield self.block_range(first, blocks)

    def hex_items(self) -> Iterator[str]:
        for chunk in self.chunks():
            for i in range(0, len(chunk), DIGEST_SIZE):
                yield chunk[i:i + DIGEST_SIZE].hex()

    def close(self) -> None:
        """Release the spill file (a list in memory needs nothing)."""
        if self._spill is not None:
            self._spill.close()

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.block_range(index, 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Digests) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self.chunks(), other.chunks(), strict=True))

    def __hash__(self) -> int:
        return hash((self._count, self.block_range(0, 1024)))

    def __repr__(self) -> str:
        return f"Digests({len(self)} blocks{', spilled' if self._spill else ''})"


class DigestWriter:
    """Builds a `Digests` list in order, spilling to a file when it grows large. `append`
    never does I/O; `flush` (blocking) does when `wants_flush`; `append_flushing` both."""

    __slots__ = ("_spill",)

    def __init__(self) -> None:
        self._spill = SpillArray()

    def __len__(self) -> int:
        return len(self._spill) // DIGEST_SIZE

    def append(self, packed: bytes | memoryview) -> None:
        self._spill.append(packed)

    @property
    def wants_flush(self) -> bool:
        return self._spill.wants_flush

    def flush(self) -> None:
        self._spill.flush()

    def append_flushing(self, packed: bytes | memoryview) -> None:
        self._spill.append_flushing(packed)

    def finish(self) -> Digests:
        """The list (blocking: writes out what is buffered when spilled)."""
        self._spill.flush(force=True)
        return Digests.from_spill(self._spill)

    def close(self) -> None:
        self._spill.close()


def differing(packed: bytes, expected: bytes) -> list[int]:
    """The positions of the digests that differ between two packed lists (a position past
    the shorter one's end differs)."""
    if packed == expected:
        return []
    count = max(len(packed), len(expected)) // DIGEST_SIZE
    return [i for i in range(count) if packed[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]
            != expected[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]]


def block_digests(window: bytes | memoryview, block_size: int) -> Digests:
    """SHA-256 of each block of a window; the last block is hashed at its short length."""
    return Digests(sha256_blocks(window, block_size))


@functools.lru_cache(maxsize=64)
def zero_digests(length: int, block_size: int) -> bytes:
    """The packed digests of a window of `length` zero bytes (at most `object_size`) in
    blocks of `block_size`: only the digests of a whole zero block and of the short tail are
    ever computed."""
    whole, tail = divmod(length, block_size)
    packed = _zero_block(block_size) * whole
    return packed + (_zero_block(tail) if tail else b"")


@functools.lru_cache(maxsize=16)
def _zero_block(size: int) -> bytes:
    return hashlib.sha256(bytes(size)).digest()


def changed_runs(hashes: Sequence[bytes], parent_hashes: Sequence[bytes] | None,
                 first_block: int,
                 block_size: int, window_length: int) -> list[tuple[int, int]]:
    """Byte ranges, relative to the window, to store as objects.

    `hashes` are this window's block hashes, `first_block` the index of its first block in the
    volume, `parent_hashes` the parent's whole list (None for a full backup, which stores the
    whole window). A block beyond the end of the parent's list counts as changed.
    """
    if parent_hashes is None:
        return [(0, window_length)] if window_length else []
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for i, digest in enumerate(hashes):
        index = first_block + i
        changed = index >= len(parent_hashes) or parent_hashes[index] != digest
        if changed and start is None:
            start = i * block_size
        elif not changed and start is not None:
            runs.append((start, i * block_size))
            start = None
    if start is not None:
        runs.append((start, window_length))
    return runs
