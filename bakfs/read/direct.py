"""Writing large amounts of data to a file with O_DIRECT, for the cache's object files and
restore targets: the page-aligned bulk goes straight to the device, the unaligned tail (and
file systems that refuse O_DIRECT, such as tmpfs) through an ordinary descriptor.

Why: a buffered write copies every byte into the page cache first, and on this VM fresh
page-cache pages cost a host fault each; a restore would also push everything else out of
the cache. Data already in a page-aligned buffer (the restore's window) is written from it;
other data goes through a per-thread page-aligned bounce buffer.

Blocking code, for disk threads. Knows nothing of what the data is.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

ALIGN = 4096
BOUNCE = 1 << 20
_local = threading.local()
_refused_devices: set[int] = set()  # file systems that answered O_DIRECT with EINVAL


class DirectWriter:
    """Writes into one open file; `fd` is the caller's ordinary descriptor (it stays the
    caller's to close), the O_DIRECT one is opened here when the file system allows it."""

    def __init__(self, path: str | os.PathLike[str], fd: int) -> None:
        self.fd = fd
        self.direct_fd: int | None = None
        self._device = os.fstat(fd).st_dev
        if self._device not in _refused_devices:
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    _refused_devices.add(self._device)

    def write_aligned(self, view: memoryview, offset: int) -> None:
        """Write `view` at `offset`; `view` starts at a page-aligned address (a slice of an
        mmap at a multiple of ALIGN) and `offset` is a multiple of ALIGN."""
        bulk = len(view) - len(view) % ALIGN if self.direct_fd is not None else 0
        if bulk:
            try:
                pwrite_all(self.direct_fd, view[:bulk], offset)  # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._refuse()
                bulk = 0
        if bulk < len(view):
            pwrite_all(self.fd, view[bulk:], offset + bulk)

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """Write any data at `offset` (a multiple of ALIGN), through the bounce buffer."""
        view = memoryview(data)
        if self.direct_fd is None:
            pwrite_all(self.fd, view, offset)
            return
        bounce = _bounce()
        with memoryview(bounce) as buffer:
            for start in range(0, len(view), BOUNCE):
                piece = view[start:start + BOUNCE]
                buffer[:len(piece)] = piece
                self.write_aligned(buffer[:len(piece)], offset + start)

    def sync(self) -> None:
        if self.direct_fd is not None:
            os.fsync(self.direct_fd)
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the O_DIRECT descriptor (the caller closes its own)."""
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def _refuse(self) -> None:
        _refused_devices.add(self._device)
        self.close()


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _bounce() -> mmap.mmap:
    bounce = getattr(_local, "bounce", None)
    if bounce is None:
        bounce = _local.bounce = mmap.mmap(-1, BOUNCE)
    return bounce
