"""Cinder's incremental rule: which byte ranges of a volume become data objects.

The volume is read in windows of `object_size` bytes (the last may be short), hashed per
`block_size` block. A full backup stores every window whole. An incremental stores each
maximal run of blocks whose SHA-256 differs from the parent's, cut at window boundaries, so
one object never exceeds `object_size`. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

DIGEST_SIZE = 32


class Digests(Sequence[bytes]):
    """SHA-256 digests of consecutive blocks, packed in one bytes object: 32 bytes a block
    instead of a 64-character string each, so a 10 TiB volume's list fits in 10 GiB / 1024."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes = b"") -> None:
        if len(data) % DIGEST_SIZE:
            raise ValueError("packed digests must be a multiple of 32 bytes")
        self._data = bytes(data)

    @classmethod
    def from_hex(cls, hexes: Iterable[str]) -> Digests:
        return cls(bytes.fromhex("".join(hexes)))

    @classmethod
    def join(cls, parts: Iterable[Digests]) -> Digests:
        return cls(b"".join(p._data for p in parts))

    def hex_items(self) -> Iterator[str]:
        for i in range(0, len(self._data), DIGEST_SIZE):
            yield self._data[i:i + DIGEST_SIZE].hex()

    def __len__(self) -> int:
        return len(self._data) // DIGEST_SIZE

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
        return self._data[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digests) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"Digests({len(self)} blocks)"


def block_digests(window: bytes | memoryview, block_size: int) -> Digests:
    """SHA-256 of each block of a window; the last block is hashed at its short length."""
    view = memoryview(window)
    return Digests(b"".join(hashlib.sha256(view[i:i + block_size]).digest()
                            for i in range(0, len(view), block_size)))


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
