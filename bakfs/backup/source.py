"""What a backup reads: a regular file, a block device, a pipe or stdin, opened and checked,
and read in whole windows.

Blocking `open_source`; `read_chunks` reads on trio through the bridge's source thread.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from collections.abc import AsyncIterator
from typing import BinaryIO

from bakfs.errors import SourceError
from bakfs.threads import Bridge


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


async def read_chunks(source: Source, bridge: Bridge, read_size: int) -> AsyncIterator[bytes]:
    """The source's bytes in reads of `read_size` (whole windows, so the sink takes them
    without copying); SourceError names the offset of a failed read."""
    offset = 0
    while True:
        try:
            data = await bridge.run_source(source.file.read, read_size)
        except OSError as exc:
            raise SourceError(f"reading {source.path} failed at byte {offset}: "
                              f"{exc.strerror or exc}; nothing was committed") from None
        if not data:
            return
        offset += len(data)
        yield data
