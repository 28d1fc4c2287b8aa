"""Reading a backup's bytes back, the simple synchronous way: every object fetched whole,
decompressed, checked against its recorded length and md5, and only then used.

Blocking code; the read engine with its index, cache and read-ahead builds on `read_object`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from bakfs.cinder import codec
from bakfs.cinder.chain import Extent, overlay
from bakfs.cinder.metadata import ObjectEntry
from bakfs.discovery import BackupRef, load_chain
from bakfs.store.base import ObjectStore

_ZEROS = bytes(1 << 20)


def read_object(store: ObjectStore, entry: ObjectEntry) -> bytes:
    """The verified plain bytes of one data object."""
    body = store.get(entry.name)
    plain = codec.decompress(body, entry.compression, entry.length, entry.name)
    codec.verify(plain, entry.length, entry.md5, entry.name)
    return plain


def chain_extents(store: ObjectStore, ref: BackupRef) -> list[Extent]:
    """The extent map of a backup with its whole chain overlaid."""
    return overlay([metadata for _ref, metadata in load_chain(store, ref)])


def restore(store: ObjectStore, ref: BackupRef, out: BinaryIO,
            progress: Callable[[int], None] | None = None) -> str:
    """Write the whole volume to `out` (sequentially) and return its sha256 hex. Each object
    is fetched once even when it serves several extents; holes are written as zeros."""
    digest = hashlib.sha256()
    extents = chain_extents(store, ref)
    cached: tuple[str, bytes] | None = None
    for extent in extents:
        if extent.entry is None:
            remaining = extent.length
            while remaining:
                piece = _ZEROS[:min(remaining, len(_ZEROS))]
                out.write(piece)
                digest.update(piece)
                remaining -= len(piece)
        else:
            if cached is None or cached[0] != extent.entry.name:
                cached = (extent.entry.name, read_object(store, extent.entry))
            data = memoryview(cached[1])[extent.object_offset:extent.object_offset
                                         + extent.length]
            out.write(data)
            digest.update(data)
        if progress is not None:
            progress(extent.end)
    return digest.hexdigest()
