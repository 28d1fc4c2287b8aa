"""A delta restore's piece, checked against the `_sha256file` before it is written: the
first block that differs is named, with its offset in the volume."""

from __future__ import annotations

import pytest

from bakfs.cinder.extents import Digests, block_digests
from bakfs.errors import IntegrityError
from bakfs.read.delta import _assemble

B = 4096


def test_a_piece_that_matches_is_joined_zeros_included() -> None:
    data = b"\x01" * B + bytes(B) + b"\x02" * 100
    expected = Digests(bytes(32) * 3 + block_digests(data, B).block_range(0, 3))
    parts: list[memoryview | int] = [memoryview(data[:B]), B, memoryview(data[2 * B:])]
    assert _assemble(parts, 3 * B, B, expected, "b1") == data


def test_the_first_differing_block_is_named_with_its_offset() -> None:
    data = b"\x01" * (3 * B)
    good = block_digests(data, B)
    expected = Digests(bytes(32) * 5 + good.block_range(0, 1) + bytes(32) * 2)
    with pytest.raises(IntegrityError, match=r"backup b1: block 6 \(offset 24576\) as read"):
        _assemble([memoryview(data)], 5 * B, B, expected, "b1")


def test_a_piece_past_the_listed_blocks_differs() -> None:
    data = b"\x03" * (2 * B)
    expected = Digests(block_digests(data, B).block_range(0, 1))
    with pytest.raises(IntegrityError, match=r"block 1 \(offset 4096\)"):
        _assemble([memoryview(data)], 0, B, expected, "b1")
