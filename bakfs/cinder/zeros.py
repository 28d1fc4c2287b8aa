"""Cinder's all-zero objects, recognised without fetching them: the md5 of `n` zero bytes
for any n up to MAX_LENGTH. An object whose recorded md5 and length match is all zeros, and
reads of it are served as zeros. Pure CPU code, thread-safe.

Memory stays small whatever lengths are asked: the running md5 state is kept every STEP
bytes (a few hundred bytes each) and the digests of lengths asked in a bounded memo. A
length past MAX_LENGTH is never called zero: such an object is fetched and checked like any
other, so no document can make this module hash or keep gigabytes.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any

MiB = 1 << 20


class ZeroDigests:
    """md5 of `n` zero bytes, each checkpoint computed once; see the module docstring."""

    STEP = 256 * 1024
    MAX_LENGTH = 1024 * MiB
    MEMO = 4096  # digests of distinct lengths kept

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zeros = bytes(self.STEP)
        self._states: list[Any] = [hashlib.md5(usedforsecurity=False)]  # at k * STEP bytes
        self._memo: collections.OrderedDict[int, str] = collections.OrderedDict()

    def of(self, length: int) -> str:
        if not 0 <= length <= self.MAX_LENGTH:
            raise ValueError(f"zero digests are kept for 0 to {self.MAX_LENGTH} bytes, "
                             f"not {length}")
        with self._lock:
            digest = self._memo.get(length)
            if digest is not None:
                self._memo.move_to_end(length)
                return digest
            k, tail = divmod(length, self.STEP)
            while len(self._states) <= k:
                state = self._states[-1].copy()
                state.update(self._zeros)
                self._states.append(state)
            state = self._states[k].copy()
            state.update(memoryview(self._zeros)[:tail])
            digest = state.hexdigest()
            self._memo[length] = digest
            if len(self._memo) > self.MEMO:
                self._memo.popitem(last=False)
            return digest

    def is_zero(self, length: int, md5: str) -> bool:
        if not 0 <= length <= self.MAX_LENGTH:
            return False
        return self.of(length) == md5.lower()


ZERO_DIGESTS = ZeroDigests()
