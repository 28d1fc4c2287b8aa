"""A store opened in the background, so a mount can start without waiting for it.

Building the S3 client (importing boto3, loading its service model) and checking the bucket
take about 0.4 s here, most of a mount's start-up. A mount whose index already knows the
backups can show them, and serve what its cache holds, before that is done; anything that
needs the store waits for it in the worker thread that makes the call, and fails with the
reason the store could not be opened. The opening starts at the first call or at `start()`:
started later, it does not compete (for the GIL) with the rest of the start-up.

A failed opening is not final: the store may be down for a while (the mount comes up
anyway). The first call at least RETRY_AFTER seconds after a failure opens it again, in its
own thread, while calls arriving meanwhile fail at once with the last reason; once open, the
store stays open. So a mount started during an outage recovers when the store comes back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from bakfs.store.base import CHUNK, ObjectInfo, ObjectStore
from bakfs.threads import Background

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds after a failed opening before a call tries again


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
        self._failed_at = float("-inf")
        self._retrying = threading.Lock()  # one opening again at a time
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
            self._attempt()
        except BaseException:  # kept in _error for every caller
            pass
        finally:
            self._ready.set()

    def _attempt(self) -> ObjectStore:
        try:
            store = self._opener()
        except BaseException as exc:  # handed to every caller, as the store's own error
            with self._lock:
                self._error = exc
                self._failed_at = time.monotonic()
            log.debug("opening %s failed: %s", self._description, exc)
            raise
        with self._lock:
            if self._closed:  # closed while opening: nobody will use it
                store.close()
            self._store = store
            self._error = None
        return store

    def wait(self) -> ObjectStore:
        """The open store (blocking until the first opening ends), opened again if it failed
        at least RETRY_AFTER seconds ago, else the error that opening it raised."""
        self.start()
        self._ready.wait()
        if self._store is not None:
            return self._store
        if time.monotonic() - self._failed_at >= RETRY_AFTER and \
                self._retrying.acquire(blocking=False):
            try:
                if self._store is None:
                    log.debug("opening %s again", self._description)
                    return self._attempt()
            finally:
                self._retrying.release()
        with self._lock:
            store, error = self._store, self._error
        if store is not None:
            return store
        assert error is not None
        raise error.with_traceback(None)  # not a traceback grown by every caller

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

    def iter_object(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        return self.wait().iter_object(key, chunk_size)

    def head(self, key: str) -> ObjectInfo:
        return self.wait().head(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return self.wait().list(prefix, start_after)

    def delete(self, key: str) -> None:
        self.wait().delete(key)

    def close(self) -> None:
        """Never blocks: a store still opening is closed by its opener when it is done."""
        with self._lock:
            self._closed = True
            store = self._store
        if store is not None:
            store.close()
