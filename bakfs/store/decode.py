"""Data objects as every reader takes them: the stored bytes decompressed and checked against
the length and md5 their `_metadata` records, so no reader ever sees unverified bytes.

Blocking code: `fetch_verified` calls the store; `decode_verified` is CPU work only (callers
on trio run the two in an s3 and a cpu thread respectively).
"""

from __future__ import annotations

from bakfs.cinder import codec
from bakfs.cinder.metadata import ObjectEntry
from bakfs.store.base import ObjectStore


def decode_verified(body: bytes, obj: ObjectEntry) -> bytes:
    """Plain bytes of a fetched object, or IntegrityError naming it."""
    plain = codec.decompress(body, obj.compression, obj.length, obj.name)
    codec.verify(plain, obj.length, obj.md5, obj.name)
    return plain


def fetch_verified(store: ObjectStore, obj: ObjectEntry) -> bytes:
    """GET one data object and return its verified plain bytes."""
    return decode_verified(store.get(obj.name), obj)


def matches(plain: bytes, obj: ObjectEntry) -> bool:
    """Whether bytes kept earlier (a cache file) are still the object's plain bytes."""
    return len(plain) == obj.length and codec.md5_hex(plain) == obj.md5.lower()
