"""A store opened in the background, so a mount can start without waiting for it.

Building the S3 client (importing boto3, loading its service model) and checking the bucket
take about 0.4 s here, most of a mount's start-up. A mount whose index already knows the
backups can show them, and serve what its cache holds, before that is done; anything that
needs the store waits for it in the worker thread that makes the call, and fails with the
reason the store could not be opened. The opening starts at the first call or at `start()`:
started later, it does not compete (for the GIL) with the rest of the start-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from bakfs.store.base import ObjectInfo, ObjectStore
from bakfs.threads import Background

log = logging.getLogger(__name__)


class OpeningStore:
    """An ObjectStore that opens the real one in a background thread."""

    def __init__(self, opener: Callable[[], ObjectStore], description: str) -> None:
        self._opener = opener
        self._description = description
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._store: ObjectStore | None = None
        self._error: BaseException | None = None
        self._closed = False

    def start(self) -> None:
        """Begin opening in a background thread (once; later calls do nothing)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        Background(self._open, "store-open")

    def _open(self) -> None:
        try:
            store = self._opener()
        except BaseException as exc:  # handed to every caller, as the store's own error
            self._error = exc
            log.debug("opening %s failed: %s", self._description, exc)
        else:
            with self._lock:
                if self._closed:  # closed while opening: nobody will use it
                    store.close()
                self._store = store
        finally:
            self._ready.set()

    def wait(self) -> ObjectStore:
        """The open store (blocking until it is), or the error that opening it raised."""
        self.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._store is not None
        return self._store

    @property
    def description(self) -> str:
        return self._description

    def ensure_bucket(self) -> None:
        self.wait().ensure_bucket()

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False,
            if_match: str | None = None, md5: bytes | None = None) -> str | None:
        return self.wait().put(key, data, if_absent=if_absent, if_match=if_match, md5=md5)

    def put_stream(self, key: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        return self.wait().put_stream(key, chunks)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        return self.wait().get(key, byte_range)

    def head(self, key: str) -> ObjectInfo:
        return self.wait().head(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.wait().list(prefix)

    def delete(self, key: str) -> None:
        self.wait().delete(key)

    def close(self) -> None:
        """Never blocks: a store still opening is closed by its opener when it is done."""
        with self._lock:
            self._closed = True
            store = self._store
        if store is not None:
            store.close()
