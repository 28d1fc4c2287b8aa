"""What a backup reads: a regular file, a block device, a pipe or stdin, opened and checked,
and read in whole windows. The holes of a sparse file are not read at all: `SEEK_DATA` and
`SEEK_HOLE` say where they are, and every whole window inside one is handed on as a `Hole`
(zeros by definition). A block device offers no holes through lseek (the kernel reports it
all as data) and is read whole; zero windows are then recognised after reading.

Blocking `open_source`; `read_chunks` reads on trio through the bridge's source thread.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

from bakfs.errors import SourceError
from bakfs.threads import Bridge


@dataclasses.dataclass(frozen=True)
class Hole:
    """`length` bytes of zeros the source did not read (a hole of a sparse file)."""

    length: int


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    file: BinaryIO
    size: int | None  # None for a pipe or stdin
    kind: str

    def close(self) -> None:
        if self.file is not sys.stdin.buffer:
            self.file.close()


def open_source(path: str) -> Source:
    """Open a regular file, a block device, a pipe or `-` (stdin) for reading."""
    if path == "-":
        return Source("-", sys.stdin.buffer, None, "stdin")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path} is a directory; give a file, a block device or -")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise SourceError(f"{path} is neither a regular file, a block device nor a pipe")
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by Source.close
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None
    if stat.S_ISFIFO(st.st_mode):
        return Source(path, f, None, "pipe")
    size = f.seek(0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
    f.seek(0)
    return Source(path, f, size, "block device" if stat.S_ISBLK(st.st_mode) else "file")


def next_run(fd: int, offset: int, window: int, size: int) -> tuple[bool, int]:
    """From `offset` (a multiple of `window`): (True, end) when [offset, end) is whole
    windows of hole, else (False, end) for the windows to read, up to where the next hole
    covers a whole window. Without hole support, everything is data."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after offset: a hole to the end
            return True, size
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ESPIPE):
            return False, size
        raise
    start = data - data % window
    if start > offset:
        return True, min(start, size)
    end = offset
    while True:
        hole = os.lseek(fd, max(data, end), os.SEEK_HOLE)  # the end of the file at the latest
        end = min(-(-hole // window) * window, size)
        if end >= size:
            return False, size
        try:
            data = os.lseek(fd, end, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False, end
            raise
        if data - data % window > end:  # a whole window of hole follows
            return False, end


def _pread(fd: int, length: int, offset: int) -> bytes:
    return os.pread(fd, length, offset)


async def read_chunks(source: Source, bridge: Bridge, read_size: int, window: int
                      ) -> AsyncIterator[bytes | Hole]:
    """The source's bytes in reads of `read_size` (whole windows, so the sink takes them
    without copying), and its holes as Holes of whole windows; SourceError names the
    offset of a failed read."""
    offset = 0
    if source.size is None:
        while True:
            data = await _read(source, bridge, offset, source.file.read, read_size)
            if not data:
                return
            offset += len(data)
            yield data
    fd = source.file.fileno()
    size = source.size
    while offset < size:
        try:
            hole, end = await bridge.run_source(next_run, fd, offset, window, size)
        except OSError as exc:
            raise SourceError(f"finding the holes of {source.path} failed at byte {offset}: "
                              f"{exc.strerror or exc}; nothing was committed") from None
        if hole:
            yield Hole(end - offset)
            offset = end
            continue
        while offset < end:
            data = await _read(source, bridge, offset, _pread, fd,
                               min(read_size, end - offset), offset)
            if not data:
                raise SourceError(f"{source.path} ended at byte {offset} of {size}; "
                                  "nothing was committed")
            offset += len(data)
            yield data


async def _read(source: Source, bridge: Bridge, offset: int, fn: Callable[..., bytes],
                *args: object) -> bytes:
    try:
        return await bridge.run_source(fn, *args)
    except OSError as exc:
        raise SourceError(f"reading {source.path} failed at byte {offset}: "
                          f"{exc.strerror or exc}; nothing was committed") from None
