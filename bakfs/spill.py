"""A growing byte array that leaves memory when it gets large: the per-block and per-object
lists of a 1–16 TiB volume (1 GiB of block digests per TiB) must not live in RSS.

Bytes are appended at the end and read back by range. Up to `memory_limit` bytes stay in a
bytearray; beyond that everything moves to an unlinked temporary file (in `$TMPDIR`), read
with `pread`, so the page cache holds it, not the process. Appending never does I/O by
itself: `flush()` writes the buffered tail out (blocking: code on trio calls it through a
disk thread when `wants_flush` says so); `append_flushing` is the same for blocking code.
Reads are thread-safe once appending has ended.
"""

from __future__ import annotations

import os
import tempfile
import threading

MEMORY_LIMIT = 8 << 20  # kept in memory below this (a 256 GiB volume's block digests)
FLUSH_BYTES = 1 << 20  # the tail is written out in pieces of at least this size


class SpillArray:
    """Append-only bytes, in memory while small, in an unlinked temp file when large."""

    __slots__ = ("_fd", "_file_bytes", "_lock", "_memory_limit", "_tail")

    def __init__(self, memory_limit: int = MEMORY_LIMIT) -> None:
        self._memory_limit = memory_limit
        self._tail = bytearray()  # everything while in memory; else what follows the file
        self._fd: int | None = None
        self._file_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._file_bytes + len(self._tail)

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes at the end (memory only; see `flush`)."""
        self._tail += data

    @property
    def wants_flush(self) -> bool:
        """Whether `flush` would write something out now."""
        if self._fd is None:
            return len(self._tail) > self._memory_limit
        return len(self._tail) >= FLUSH_BYTES

    def flush(self, force: bool = False) -> None:
        """Write the buffered tail to the file (creating it once past the memory limit);
        blocking. With `force`, whatever the tail's size (once spilled)."""
        if not (self.wants_flush or (force and self._fd is not None and self._tail)):
            return
        with self._lock:
            if self._fd is None:
                fd, path = tempfile.mkstemp(prefix="bakfs-spill-")
                os.unlink(path)
                self._fd = fd
            view = memoryview(self._tail)
            written = 0
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], self._file_bytes + written)
            view.release()
            self._file_bytes += len(self._tail)
            self._tail = bytearray()

    def append_flushing(self, data: bytes | bytearray | memoryview) -> None:
        """`append`, then `flush` when due: for blocking code."""
        self.append(data)
        if self.wants_flush:
            self.flush()

    def read(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length), clipped to the end."""
        end = min(start + length, len(self))
        if start >= end:
            return b""
        parts = []
        if start < self._file_bytes:
            assert self._fd is not None
            stop = min(end, self._file_bytes)
            while start < stop:
                piece = os.pread(self._fd, stop - start, start)
                if not piece:
                    raise OSError(f"spill file ended at {start} of {self._file_bytes} bytes")
                parts.append(piece)
                start += len(piece)
        if end > start:
            base = self._file_bytes
            parts.append(bytes(self._tail[start - base:end - base]))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._tail = bytearray()
            self._file_bytes = 0

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
