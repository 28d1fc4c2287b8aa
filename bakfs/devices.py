"""Claiming a block device before bakfs writes to it.

A restore onto a device that is mounted, or held by device-mapper, md, a VM or another
program, would change a live file system under its user. Linux refuses an O_EXCL open of a
block device in that state (EBUSY), so every path that writes a device opens it this way
first and says why when it is refused. Blocking code (an open). Knows nothing of bakfs's
other modules but its errors.
"""

from __future__ import annotations

import errno
import os

from bakfs.errors import TargetError


def claim_device(path: str, flags: int = os.O_WRONLY) -> int:
    """An exclusive descriptor of block device `path` opened with `flags`, or TargetError
    saying the device is in use (mounted, or held by another program) or cannot be opened."""
    try:
        return os.open(path, flags | os.O_EXCL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise TargetError(f"{path} is in use (mounted, or held by another program); "
                              "unmount or release it first") from None
        raise TargetError(f"cannot open {path} for writing: {exc.strerror}") from None


def check_device_free(path: str) -> None:
    """TargetError unless block device `path` could be claimed now (for a writer that opens
    it itself, such as dsmc): a mounted or held device is refused before anything starts."""
    os.close(claim_device(path, os.O_RDONLY))
