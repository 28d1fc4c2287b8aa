"""One file of the chunk cache: an object's verified plain bytes, then a crc32 of every 64 KiB
block, then a footer (magic, block size, data length).

Why: the md5 of an object is checked once, when it is fetched; after that its bytes sit on a
local disk where a bit may flip, or a stray write land, while bakfs runs or not. Every read
of a cache file checks the crc32 of each block it touches (about 3 GB/s, against md5's
0.6), so damaged bytes are never served, and a 4 KiB read checks 64 KiB, not the object.

Blocking code (file I/O), for disk threads; `Reader.read_nowait` is the one call safe on the
trio thread (it never waits for the disk).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from bakfs.errors import CacheDamaged
from bakfs.read.direct import DirectWriter, pwrite_all

BLOCK = 64 << 10
MAGIC = b"bakfsC1\n"
_FOOTER = struct.Struct(">8sIQ")  # magic, block size, data length
_CRC = struct.Struct(">I")
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _blocks(length: int) -> int:
    return -(-length // BLOCK)


def file_size(length: int) -> int:
    """Bytes on disk of a cache file holding `length` bytes of data."""
    return length + _CRC.size * _blocks(length) + _FOOTER.size


def _table(data: bytes | bytearray | memoryview) -> bytes:
    view = memoryview(data)
    return b"".join(_CRC.pack(zlib.crc32(view[i:i + BLOCK]))
                    for i in range(0, len(view), BLOCK))


def write(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Create `path` holding `data` and its checksums, fsynced (O_DIRECT for the bulk)."""
    trailer = _table(data) + _FOOTER.pack(MAGIC, BLOCK, len(data))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = DirectWriter(path, fd)
        try:
            writer.write(data)
            pwrite_all(fd, memoryview(trailer), len(data))
            writer.sync()
        finally:
            writer.close()
    finally:
        os.close(fd)


class Reader:
    """An open cache file and its checksum table; reads return verified bytes or raise
    CacheDamaged."""

    def __init__(self, path: Path, fd: int, length: int, crcs: list[int]) -> None:
        self.path = path
        self.fd = fd
        self.length = length
        self._crcs = crcs

    @classmethod
    def open(cls, path: Path, length: int) -> Reader | None:
        """The file of an object of `length` bytes; None if there is none."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            count = _blocks(length)
            trailer = os.pread(fd, _CRC.size * count + _FOOTER.size, length)
            if len(trailer) != _CRC.size * count + _FOOTER.size \
                    or os.fstat(fd).st_size != file_size(length):
                raise CacheDamaged(f"{path} has the wrong size for {length} bytes of data")
            magic, block, recorded = _FOOTER.unpack_from(trailer, _CRC.size * count)
            if (magic, block, recorded) != (MAGIC, BLOCK, length):
                raise CacheDamaged(f"{path} has a damaged footer")
            crcs = [c for (c,) in _CRC.iter_unpack(trailer[:_CRC.size * count])]
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, length, crcs)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, start: int, end: int) -> memoryview:
        """Bytes [start, end) of the data, every block they touch checked."""
        first, stop = self._span(start, end)
        data = os.pread(self.fd, stop - first, first)
        return self._checked(data, first, start, end)

    def read_nowait(self, start: int, end: int) -> memoryview | None:
        """`read` from the page cache only (`preadv(RWF_NOWAIT)`): None at once when a page
        would have to come from the disk."""
        if _RWF_NOWAIT is None:
            return None
        first, stop = self._span(start, end)
        buffer = bytearray(stop - first)
        try:
            n = os.preadv(self.fd, [buffer], first, _RWF_NOWAIT)
        except BlockingIOError:
            return None
        if n != len(buffer):
            return None
        return self._checked(buffer, first, start, end)

    def _span(self, start: int, end: int) -> tuple[int, int]:
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"range [{start}, {end}) outside {self.length} bytes")
        return start - start % BLOCK, min(self.length, -(-end // BLOCK) * BLOCK)

    def _checked(self, data: bytes | bytearray, first: int, start: int,
                 end: int) -> memoryview:
        view = memoryview(data)
        if len(view) != min(self.length, -(-end // BLOCK) * BLOCK) - first:
            raise CacheDamaged(f"{self.path} ended early")
        for i in range(0, len(view), BLOCK):
            block = (first + i) // BLOCK
            if zlib.crc32(view[i:i + BLOCK]) != self._crcs[block]:
                raise CacheDamaged(f"{self.path}: block {block} (bytes {block * BLOCK}.."
                                   f"{min(self.length, (block + 1) * BLOCK)}) fails its "
                                   "checksum")
        return view[start - first:end - first]
