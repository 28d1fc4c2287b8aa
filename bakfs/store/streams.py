"""Reading a large object as a stream of pieces: a 1 TiB volume's `_sha256file` (2.4 GB)
must pass through memory a few MiB at a time. Built on the stores' ranged GET, so every
store can do it and a small document costs the one GET it always did.

Blocking code: it calls the store.
"""

from __future__ import annotations

from collections.abc import Iterator

from bakfs.errors import AccessDenied, IntegrityError, ObjectMissing, StoreRefused
from bakfs.store.base import ObjectStore

READ_PIECE = 8 << 20


def get_at_most(store: ObjectStore, key: str, limit: int) -> bytes:
    """The first `limit` bytes of an object (all of it when shorter), in one ranged GET: an
    object far longer than expected costs no more memory than `limit`."""
    try:
        return store.get(key, (0, limit))
    except StoreRefused as exc:
        # S3 refuses any range of an empty object (416 InvalidRange)
        if isinstance(exc, ObjectMissing | AccessDenied) or store.head(key).size:
            raise
        return b""


def read_pieces(store: ObjectStore, key: str, piece: int = READ_PIECE) -> Iterator[bytes]:
    """The object's bytes in order, `piece` bytes per GET: one GET for an object smaller
    than that, else a HEAD for its size and a ranged GET per piece."""
    first = get_at_most(store, key, piece)
    yield first
    if len(first) < piece:
        return
    size = store.head(key).size
    offset = len(first)
    while offset < size:
        data = store.get(key, (offset, min(offset + piece, size)))
        if not data:
            raise IntegrityError(f"{key} ended at {offset} of {size} bytes while being read "
                                 "(it was replaced or removed meanwhile)", key)
        yield data
        offset += len(data)
