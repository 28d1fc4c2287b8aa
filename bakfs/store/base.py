"""The narrow, synchronous interface every object store offers bakfs.

Stores are plain blocking code, safe to call from several threads at once; callers on trio
run them in worker threads. Every failure leaves a store as one of the `bakfs.errors`
StoreError subclasses (mapped once, inside the store), never as a library's own exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Protocol

CHUNK = 1 << 20  # pieces of a streamed GET


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a head tells about one object."""

    key: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None  # unquoted; changes whenever the object is rewritten


class ObjectStore(Protocol):
    """A bucket of objects addressed by key, as Cinder's chunked drivers use one."""

    @property
    def description(self) -> str:
        """Where the objects live, for messages (no secrets)."""
        ...

    def ensure_bucket(self) -> None:
        """Make sure the bucket exists, creating it if allowed."""
        ...

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False,
            if_match: str | None = None, md5: bytes | None = None) -> str | None:
        """Store `data` whole under `key`, integrity-checked on the way in (`md5`: the
        data's MD5 digest when the caller already has it), and return the new object's etag
        (unquoted; None if the store gives none). With `if_absent` the put fails with
        AlreadyExists when the key exists; with `if_match` it fails with AlreadyExists
        unless the object's current etag is that one. Both are atomic."""
        ...

    def put_stream(self, key: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        """Store the concatenated chunks under `key` without holding them all (a document
        of several GB: S3 multipart upload, each part with its Content-MD5); returns its
        size and etag."""
        ...

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The object's bytes, or bytes [start, end) of it."""
        ...

    def iter_object(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes as they arrive, in pieces of about `chunk_size`; errors while
        streaming are this store's errors too."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size and date of one object; ObjectMissing if there is none."""
        ...

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (and sorts after `start_after`), in
        key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def describe_s3(bucket: str, endpoint: str | None) -> str:
    """How messages name an S3 store (also before its client exists)."""
    return f"S3 bucket {bucket} at {endpoint}"


def describe_local(path: object) -> str:
    """How messages name the embedded local store."""
    return f"local store {path}"
