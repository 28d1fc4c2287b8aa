"""A restore's target: a new sparse file, an existing file, or a block device, written in
large aligned windows.

A TARGET that does not exist becomes a new sparse file: 64 KiB windows that are all zero are
not written (Cinder does the same with 1 MiB windows for a new volume) and the file is
truncated to the volume size. It is written as `.TARGET.bakfs-partial` beside TARGET and
linked to TARGET only when complete, so no interrupted restore leaves a TARGET that looks
whole. An existing regular file or a block device gets every byte written in place (its old
contents must not show through); a device is claimed exclusively (`bakfs.devices`), so one
that is mounted or held by another program is refused. Data goes through one page-aligned
window, reused for every request, and out with O_DIRECT where the target allows it
(`bakfs.read.direct`).

Blocking code, for a disk thread.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat

from bakfs.devices import claim_device
from bakfs.errors import TargetError
from bakfs.read.direct import DirectWriter

WINDOW = 8 << 20
ZERO_WINDOW = 64 << 10
_ZEROS = bytes(ZERO_WINDOW)


class Target:
    """The open target; `write` takes consecutive parts of one window of the volume."""

    def __init__(self, path: str, fd: int, sparse: bool, created: bool,
                 final: str | None = None) -> None:
        self.path = path  # where the bytes go now
        self.final = final  # a new file's real name, linked to `path` when complete
        self.fd = fd
        self.sparse = sparse
        self.created = created
        self.writer = DirectWriter(path, fd)
        self.buffer = mmap.mmap(-1, WINDOW)
        self.view = memoryview(self.buffer)

    def write(self, offset: int, parts: list[memoryview | int]) -> int:
        """Write consecutive parts (data views; ints are runs of zeros) at `offset`, a
        multiple of WINDOW. A sparse target skips all-zero windows. Returns the bytes
        written."""
        view = self.view
        pos = 0
        for part in parts:
            if isinstance(part, int):
                end = pos + part
                while pos < end:
                    n = min(end - pos, ZERO_WINDOW)
                    view[pos:pos + n] = _ZEROS[:n]
                    pos += n
            else:
                view[pos:pos + len(part)] = part
                pos += len(part)
        length = pos
        if not self.sparse:
            self.writer.write_aligned(view[:length], offset)
            return length
        written = 0
        start = None
        for pos in range(0, length, ZERO_WINDOW):
            end = min(pos + ZERO_WINDOW, length)
            zero = _ZEROS.startswith(view[pos:end])  # compared in place, no copy
            if zero and start is not None:
                self.writer.write_aligned(view[start:pos], offset + start)
                written += pos - start
                start = None
            elif not zero and start is None:
                start = pos
        if start is not None:
            self.writer.write_aligned(view[start:length], offset + start)
            written += length - start
        return written

    def finish(self, size: int) -> None:
        if self.sparse or stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.ftruncate(self.fd, size)
        self.writer.sync()

    def close(self, complete: bool = False) -> None:
        """Release the target; a new file becomes TARGET when `complete`, else goes."""
        self.writer.close()
        os.close(self.fd)
        self.view.release()
        self.buffer.close()
        if self.final is None:
            return
        if complete:
            try:
                os.link(self.path, self.final)  # never over a file made meanwhile
            except FileExistsError:
                raise TargetError(f"{self.final} appeared while the restore ran; the "
                                  f"restored volume is left in {self.path}") from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def partial_name(target: str) -> str:
    """Where a new TARGET is written until it is complete."""
    head, tail = os.path.split(os.path.abspath(target))
    return os.path.join(head, f".{tail}.bakfs-partial")


def open_target(target: str, size: int) -> Target:
    """Open TARGET for writing `size` bytes."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetError(f"cannot use {target}: {exc.strerror}") from None
    try:
        if st is None:
            partial = partial_name(target)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)  # left by a restore that was killed
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            return Target(partial, fd, True, True, final=target)
        if stat.S_ISBLK(st.st_mode):
            fd = claim_device(target)  # never one that is mounted or held
            device_size = os.lseek(fd, 0, os.SEEK_END)
            if device_size < size:
                os.close(fd)
                raise TargetError(f"{target} holds {device_size} bytes; the volume needs {size}")
            return Target(target, fd, False, False)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(target, os.O_WRONLY)
            return Target(target, fd, False, False)
    except OSError as exc:
        raise TargetError(f"cannot open {target} for writing: {exc.strerror}") from None
    raise TargetError(f"{target} is neither a regular file nor a block device")
