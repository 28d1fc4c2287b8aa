"""The SHA-256 of every block of a buffer, in one call that releases the GIL.

Cinder's format keeps a SHA-256 of every 32 KiB block, so a backup hashes its whole volume
and `verify-device` the whole device. hashlib hashes one block per call and takes the GIL
back after each one (~25 µs of work). While another thread holds the GIL, as the mount's
FUSE thread does while it takes in the writes of a backup into `incoming/`, each hashing
thread then waits up to the interpreter's switch interval (5 ms) per block: 256 MiB hashed
by two threads took 22 s beside a busy thread instead of 0.18 s alone (Intel Xeon). The
native module (`native/blockhash.c`, built by scripts/build-native) hashes a whole buffer
with the GIL released once, with OpenSSL as hashlib does: 0.38 s in the same test. Without
it every block is hashlib's.

Pure CPU code, safe in any thread.
"""

from __future__ import annotations

import hashlib
from types import ModuleType

Buffer = bytes | bytearray | memoryview

try:
    from bakfs.cinder import _blockhash as _built  # type: ignore[attr-defined]
except ImportError:  # not built (scripts/build-native): hashlib, a block at a time
    _built = None

NATIVE: ModuleType | None = _built


def sha256_blocks(buffer: Buffer, block_size: int) -> bytes:
    """The packed 32-byte SHA-256 of each `block_size` block of `buffer`, the last block at
    its short length (none for an empty buffer)."""
    if NATIVE is not None:
        return NATIVE.sha256_blocks(buffer, block_size)  # type: ignore[no-any-return]
    if block_size <= 0:
        raise ValueError("the block size must be positive")
    view = memoryview(buffer).cast("B")
    return b"".join(hashlib.sha256(view[i:i + block_size]).digest()
                    for i in range(0, len(view), block_size))
