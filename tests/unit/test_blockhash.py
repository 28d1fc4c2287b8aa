"""The block hasher (native/blockhash.c) against hashlib, a block at a time: every length
around a block's edge, every kind of buffer a caller hands it, and the fallback the same."""

from __future__ import annotations

import hashlib
import random

import pytest

from bakfs.cinder import blockhash
from bakfs.cinder.blockhash import sha256_blocks

BLOCK = 32 * 1024


def one_at_a_time(data: bytes, block_size: int) -> bytes:
    return b"".join(hashlib.sha256(data[i:i + block_size]).digest()
                    for i in range(0, len(data), block_size))


def test_the_native_hasher_is_built() -> None:
    """scripts/install builds it: a failed build must not pass unnoticed as hashlib."""
    assert blockhash.NATIVE is not None, "run scripts/build-native (needs libssl-dev)"


@pytest.mark.parametrize("native", [True, False], ids=["native", "hashlib"])
def test_every_length_and_buffer_kind_hashes_as_hashlib(native: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(blockhash, "NATIVE", None)
    elif blockhash.NATIVE is None:
        pytest.fail("run scripts/build-native")
    rnd = random.Random(7)
    data = rnd.randbytes(3 * BLOCK + 100)
    for length in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 100):
        part = data[:length]
        want = one_at_a_time(part, BLOCK)
        assert len(want) == 32 * -(-length // BLOCK)
        assert sha256_blocks(part, BLOCK) == want
        assert sha256_blocks(bytearray(part), BLOCK) == want
        assert sha256_blocks(memoryview(data)[:length], BLOCK) == want
    # a view that starts inside its buffer, and blocks of another size
    assert sha256_blocks(memoryview(data)[5:], 4096) == one_at_a_time(data[5:], 4096)


@pytest.mark.parametrize("native", [True, False], ids=["native", "hashlib"])
def test_a_block_size_below_one_is_refused(native: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(blockhash, "NATIVE", None)
    for size in (0, -1):
        with pytest.raises(ValueError, match="block size"):
            sha256_blocks(b"data", size)
