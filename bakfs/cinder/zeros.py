"""Cinder's all-zero objects, recognised without fetching them: the md5 of `n` zero bytes
for any n, each step computed once. An object whose recorded md5 and length match is all
zeros, and reads of it are served as zeros. Pure CPU code, thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any


class ZeroDigests:
    """md5 of `n` zero bytes for any n, each step computed once: an object whose recorded md5
    and length match is all zeros and need not be fetched. Thread-safe."""

    STEP = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hasher = hashlib.md5(usedforsecurity=False)
        self._done = 0
        self._digests: dict[int, str] = {0: self._hasher.hexdigest()}
        self._zeros = bytes(self.STEP)

    def of(self, length: int) -> str:
        with self._lock:
            aligned = length - length % self.STEP
            while self._done < aligned:
                self._hasher.update(self._zeros)
                self._done += self.STEP
                self._digests[self._done] = self._hasher.hexdigest()
            if length in self._digests:
                return self._digests[length]
            base = self._digests_state(aligned)
            base.update(bytes(length - aligned))
            digest = base.hexdigest()
            self._digests[length] = digest
            return digest

    def _digests_state(self, aligned: int) -> Any:
        # The running hasher is at self._done >= aligned; recompute from scratch only when a
        # shorter tail is asked after a longer one (rare: tails are few).
        if aligned == self._done:
            return self._hasher.copy()
        h = hashlib.md5(usedforsecurity=False)
        zeros = bytes(1 << 20)
        left = aligned
        while left:
            n = min(left, len(zeros))
            h.update(zeros[:n])
            left -= n
        return h

    def is_zero(self, length: int, md5: str) -> bool:
        return self.of(length) == md5.lower()


ZERO_DIGESTS = ZeroDigests()
