"""MD5 of the objects in flight, hashed side by side in SIMD lanes.

MD5 is serial within one buffer: a core hashes one stream at ~0.9 GB/s (OpenSSL), and that
was a third of a cold restore's CPU. A restore or a backup has several objects in flight, so
`native/md5lanes.c` hashes up to 16 buffers at once, one per vector lane (AVX-512; 8 with
AVX2): ~7 GB/s of aggregate on 16, ~0.9 GB/s already on 2 (AMD EPYC, sha_ni).

A lane is slower than OpenSSL on one stream (~0.45 against ~0.9 GB/s), so one buffer alone
is OpenSSL's. How buffers meet in a batch is bakfs.store.md5batch's business. Without the
native module (a CPU without AVX2, or a build without a compiler) every digest is OpenSSL's.

Pure CPU code; `digests` releases the GIL while it hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from bakfs.cinder.codec import md5_digest

Buffer = bytes | bytearray | memoryview


try:
    from bakfs.cinder import _md5lanes as _built  # type: ignore[attr-defined]
except ImportError:  # not built (scripts/build-native): OpenSSL alone
    _built = None

NATIVE: ModuleType | None = _built if _built is not None and _built.lanes() else None
LANES = NATIVE.lanes() if NATIVE is not None else 1


def digests(buffers: Sequence[Buffer]) -> list[bytes]:
    """Raw MD5 digests of buffers, in order: side by side in lanes when there are several."""
    if NATIVE is None or len(buffers) < 2:
        return [md5_digest(b) for b in buffers]
    return NATIVE.digests(buffers)  # type: ignore[no-any-return]
