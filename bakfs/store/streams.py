"""Reading objects whatever their size in the store, in bounded memory: a large one as a
stream of pieces (a 1 TiB volume's `_sha256file`, 2.4 GB, passes through memory a few MiB at
a time), a small document whole but never past its bound (a lease or a TSM record replaced by
gigabytes is refused after a few KiB). Built on the stores' ranged GET, so every store can do
it and a small document costs the one GET it always did.

Blocking code: it calls the store.
"""

from __future__ import annotations

from collections.abc import Iterator

from bakfs.errors import AccessDenied, BadMetadata, IntegrityError, ObjectMissing, StoreRefused
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


def get_document(store: ObjectStore, key: str, limit: int, what: str) -> bytes:
    """A small document whole, from one GET of at most `limit` + 1 bytes; BadMetadata naming
    the key when it holds more than `limit` (no `what` is that large)."""
    data = get_at_most(store, key, limit + 1)
    if len(data) > limit:
        raise BadMetadata(f"{key} holds more than {limit} bytes: not a {what}")
    return data


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
