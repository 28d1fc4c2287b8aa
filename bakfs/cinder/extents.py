"""Cinder's incremental rule: which byte ranges of a volume become data objects.

The volume is read in windows of `object_size` bytes (the last may be short), hashed per
`block_size` block. A full backup stores every window whole. An incremental stores each
maximal run of blocks whose SHA-256 differs from the parent's, cut at window boundaries, so
one object never exceeds `object_size`. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def block_hashes(window: bytes | memoryview, block_size: int) -> list[str]:
    """SHA-256 hex of each block of a window; the last block is hashed at its short length."""
    view = memoryview(window)
    return [hashlib.sha256(view[i:i + block_size]).hexdigest()
            for i in range(0, len(view), block_size)]


def changed_runs(hashes: Sequence[str], parent_hashes: Sequence[str] | None, first_block: int,
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
