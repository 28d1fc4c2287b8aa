"""Reading a backup's bytes back, the simple synchronous way: the chain overlaid from its
`_metadata` documents, every object fetched whole and verified (`store.decode`), each once
even when it serves several extents, holes written as zeros.

Blocking code, with no index and no cache: what `verify --deep` reassembles a volume with,
and the reference the read engine is tested against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from bakfs.catalog.discovery import BackupRef, load_chain
from bakfs.cinder.chain import Extent, overlay
from bakfs.store.base import ObjectStore
from bakfs.store.decode import fetch_verified

_ZEROS = bytes(1 << 20)


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


def chain_extents(store: ObjectStore, ref: BackupRef) -> list[Extent]:
    """The extent map of a backup with its whole chain overlaid."""
    return overlay([metadata for _ref, metadata in load_chain(store, ref)])


def restore(store: ObjectStore, ref: BackupRef, out: Sink,
            progress: Callable[[int], None] | None = None) -> str:
    """Write the whole volume to `out` (sequentially) and return its sha256 hex."""
    digest = hashlib.sha256()
    cached: tuple[str, bytes | bytearray] | None = None
    for extent in chain_extents(store, ref):
        if extent.entry is None:
            remaining = extent.length
            while remaining:
                piece = _ZEROS[:min(remaining, len(_ZEROS))]
                out.write(piece)
                digest.update(piece)
                remaining -= len(piece)
        else:
            if cached is None or cached[0] != extent.entry.name:
                cached = (extent.entry.name, fetch_verified(store, extent.entry))
            data = memoryview(cached[1])[extent.object_offset:extent.object_offset
                                         + extent.length]
            out.write(data)
            digest.update(data)
        if progress is not None:
            progress(extent.end)
    return digest.hexdigest()
