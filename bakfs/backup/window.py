"""The CPU work of one window of a backup (`object_size` bytes of the volume): hash its
blocks, compare with the parent's hashes, cut the changed runs (the whole window for a full
backup), compress and md5 each run. Windows of zeros (often a third of a volume) are
recognised once and cost nothing more.

Pure CPU code, run in cpu threads; the same for the streaming sink and the simple writer.
"""

from __future__ import annotations

import dataclasses
import functools

from bakfs.cinder import codec, extents
from bakfs.cinder.extents import Digests
from bakfs.config import S3Options


@dataclasses.dataclass(frozen=True)
class PreparedObject:
    """One object ready to upload (its key is assigned later, in volume order)."""

    offset: int
    length: int
    stored: bytes | memoryview
    compression: str
    md5: str  # hex, of the plain bytes (what `_metadata` records); "" until hashed
    stored_md5: bytes | None  # digest of `stored` when known here (stored raw), else None
    plain: bytes | memoryview | None = None  # the plain bytes while their md5 is ""


def prepare_window(window: bytes | memoryview, index: int, options: S3Options,
                   parent_hashes: Digests | None, hash_md5: bool = True
                   ) -> tuple[Digests, list[PreparedObject]]:
    """CPU work for window `index` (bytes [index * object_size, ...)): hash its blocks, find
    the changed runs (all of it for a full backup), compress and md5 each. `hash_md5=False`
    leaves the md5s of data runs to the caller (`PreparedObject.plain`; `with_md5s`), who
    hashes many windows' side by side (bakfs.store.md5batch)."""
    block = options.block_size
    zero = _is_zero(window)
    hashes = (Digests(extents.zero_digests(len(window), block)) if zero
              else extents.block_digests(window, block))
    runs = extents.changed_runs(hashes, _parent_slice(parent_hashes, index, len(hashes),
                                                      options), 0, block, len(window))
    view = memoryview(window)
    base = index * options.object_size
    prepared = []
    for start, end in runs:
        if zero:
            stored, recorded, md5, stored_md5 = _zero_object(end - start, options.compression)
            prepared.append(PreparedObject(base + start, end - start, stored, recorded, md5,
                                           stored_md5))
            continue
        # the whole window as it is when it is one run: stored raw, it needs no copy
        whole = start == 0 and end == len(window) and isinstance(window, bytes)
        plain = window if whole else view[start:end]
        stored, recorded = codec.compress(plain, options.compression)
        if not hash_md5:
            prepared.append(PreparedObject(base + start, end - start, stored, recorded, "",
                                           None, plain))
            continue
        digest = codec.md5_digest(plain)
        stored_md5 = digest if stored is plain else None  # the upload hashes it
        prepared.append(PreparedObject(base + start, end - start, stored, recorded,
                                       digest.hex(), stored_md5))
    return hashes, prepared


def to_hash(prepared: list[PreparedObject], content_md5: bool) -> list[bytes | memoryview]:
    """The buffers whose md5s `prepare_window(hash_md5=False)` left: each data run's plain bytes,
    then (for a Content-MD5) its stored bytes when they differ."""
    buffers: list[bytes | memoryview] = []
    for item in prepared:
        if item.plain is not None:
            buffers.append(item.plain)
            if content_md5 and item.stored is not item.plain:
                buffers.append(item.stored)
    return buffers


def with_md5s(prepared: list[PreparedObject], content_md5: bool,
              digests: list[bytes]) -> list[PreparedObject]:
    """The objects with the md5s of `to_hash(prepared, content_md5)` filled in."""
    done, it = [], iter(digests)
    for item in prepared:
        if item.plain is None:
            done.append(item)
            continue
        digest = next(it)
        raw = item.plain is item.stored  # stored as it is: one digest serves both
        stored_md5 = digest if raw else (next(it) if content_md5 else None)
        done.append(dataclasses.replace(item, md5=digest.hex(), stored_md5=stored_md5,
                                        plain=None))
    return done


def _parent_slice(parent_hashes: Digests | None, index: int, blocks: int,
                  options: S3Options) -> Digests | None:
    """The parent's digests of window `index`'s blocks (one read of a spilled list)."""
    if parent_hashes is None:
        return None
    first = index * (options.object_size // options.block_size)
    return Digests(parent_hashes.block_range(first, blocks))


def hole_runs(parent_hashes: Digests | None, first_window: int, windows: int,
              options: S3Options) -> list[tuple[int, int]]:
    """The objects of `windows` whole windows of zeros (a hole of the source) from window
    `first_window` on, as (volume offset, length): every window for a full backup; for an
    incremental, the runs of blocks the parent did not have as zeros. Nothing is read or
    hashed: a zero block's digest is known."""
    size = options.object_size
    base = first_window * size
    if parent_hashes is None:
        return [(base + i * size, size) for i in range(windows)]
    block = options.block_size
    per_window = size // block
    zero = extents.zero_digests(block, block)
    blocks = windows * per_window
    parent = parent_hashes.block_range(first_window * per_window, blocks)
    runs: list[tuple[int, int]] = []
    if parent == zero * blocks:
        return runs  # the parent had zeros here too (the common case: one comparison)
    hashes = Digests(zero * per_window)
    for i in range(windows):
        window_parent = Digests(parent[i * per_window * 32:(i + 1) * per_window * 32])
        runs += [(base + i * size + a, b - a) for a, b in
                 extents.changed_runs(hashes, window_parent, 0, block, size)]
    return runs


def zero_object(length: int, algorithm: str) -> PreparedObject:
    """A run of zeros as an object to upload (compressed once per length and codec)."""
    stored, recorded, md5, stored_md5 = _zero_object(length, algorithm)
    return PreparedObject(0, length, stored, recorded, md5, stored_md5)


# Unused regions of a volume are zeros, often a third of it: their hashes, md5 and compressed
# form depend only on their length, so they are computed once.
@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


def _is_zero(window: bytes | memoryview) -> bool:
    """Compared in place: a window that is a view (as the windows of a backup through the
    mount are) is not copied first (4 MiB of fresh memory, for every window that starts
    with zeros)."""
    return _zeros(len(window)).startswith(window)


@functools.lru_cache(maxsize=16)
def _zero_object(length: int, algorithm: str) -> tuple[bytes | memoryview, str, str, bytes]:
    zeros = bytes(length)  # not kept: only its compressed form is
    stored, recorded = codec.compress(zeros, algorithm)
    return stored, recorded, codec.md5_hex(zeros), codec.md5_digest(stored)
