"""`bakfs verify --deep`'s block checker: the reassembled volume, fed in pieces of any size
and runs of zeros, is compared block by block with the `_sha256file`; the first twenty
blocks that differ are named and the rest counted."""

from __future__ import annotations

import random

from bakfs.cinder.extents import Digests, block_digests
from bakfs.read.verify import _BlockChecker

B = 4096


def _feed(checker: _BlockChecker, volume: bytes, zeros: tuple[int, int]) -> None:
    """The volume in uneven pieces, with the range `zeros` given as a run of zeros."""
    at, rnd = 0, random.Random(3)
    while at < len(volume):
        if at == zeros[0]:
            checker.zeros(zeros[1] - zeros[0])
            at = zeros[1]
            continue
        end = min(at + rnd.randrange(1, 5 * B), len(volume), zeros[0] if at < zeros[0]
                  else len(volume))
        checker.write(volume[at:end])
        at = end
    checker.finish()


def test_a_sound_volume_has_no_differing_block() -> None:
    volume = random.Random(1).randbytes(10 * B) + bytes(6 * B) + b"\x05" * 1000
    checker = _BlockChecker(block_digests(volume, B), B)
    _feed(checker, volume, (10 * B, 16 * B))
    assert checker.bad == [] and checker.bad_count == 0 and checker.index == 17


def test_blocks_that_differ_are_named_in_data_and_in_zero_runs() -> None:
    volume = random.Random(2).randbytes(40 * B) + bytes(6 * B)
    packed = bytearray(bytes(block_digests(volume, B).block_range(0, 46)))
    for block in (1, 7, 42, *range(15, 35)):  # 23 blocks: twenty named, three counted
        packed[32 * block] ^= 1
    checker = _BlockChecker(Digests(bytes(packed)), B)
    _feed(checker, volume, (40 * B, 46 * B))
    assert checker.bad == [1, 7, *range(15, 33)] and checker.bad_count == 23
