import hashlib

import pytest

from bakfs.cinder import extents

B = 32768
C = 65536


def test_block_digests_hash_the_short_tail_unpadded() -> None:
    data = b"x" * (B + 10)
    digests = extents.block_digests(data, B)
    assert list(digests) == [hashlib.sha256(b"x" * B).digest(),
                             hashlib.sha256(b"x" * 10).digest()]
    assert list(digests.hex_items()) == [d.hex() for d in digests]
    assert extents.Digests.from_hex(digests.hex_items()) == digests
    assert digests[-1] == digests[1] and len(digests[0:2]) == 2
    with pytest.raises(IndexError):
        digests[2]


def test_differing_names_each_digest_that_differs_and_those_past_the_shorter_list() -> None:
    a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))
    assert extents.differing(a + b + c, a + b + c) == []
    assert extents.differing(a + b + c, a + c + c) == [1]
    assert extents.differing(a + b + c, b + b + a) == [0, 2]
    assert extents.differing(a + b + c, a) == [1, 2]  # a clipped expected list
    assert extents.differing(b"", b"") == []


def test_full_backup_stores_whole_windows() -> None:
    assert extents.changed_runs(["a", "b"], None, 0, B, C) == [(0, C)]
    assert extents.changed_runs([], None, 0, B, 0) == []


def _runs_for_volume(old: bytes, new: bytes) -> list[tuple[int, int]]:
    parent = extents.block_digests(old, B)
    runs = []
    for start in range(0, len(new), C):
        window = new[start:start + C]
        hashes = extents.block_digests(window, B)
        runs += [(start + a, start + b)
                 for a, b in extents.changed_runs(hashes, parent, start // B, B, len(window))]
    return runs


def test_cinder_worked_example_runs_are_cut_at_window_boundaries() -> None:
    # cinder-format.md section 7: 100 KiB volume, one byte changed in b1, b2 and b3 (the 4 KiB
    # tail): two objects, b1 alone (cut at the 64 KiB window) and b2+b3 to the short end.
    old = bytes(range(256)) * 400
    new = bytearray(old)
    for offset in (B + 5, 2 * B + 5, 3 * B + 5):
        new[offset] ^= 1
    assert _runs_for_volume(old, bytes(new)) == [(B, 2 * B), (2 * B, 102400)]


def test_unchanged_volume_has_no_objects_and_zeroing_counts_as_change() -> None:
    old = b"\x01" * (4 * B)
    assert _runs_for_volume(old, old) == []
    new = bytearray(old)
    new[B:2 * B] = bytes(B)
    assert _runs_for_volume(old, bytes(new)) == [(B, 2 * B)]


def test_block_past_the_parents_list_counts_as_changed() -> None:
    assert extents.changed_runs(["a", "b"], ["a"], 0, B, 2 * B) == [(B, 2 * B)]


def test_mismatched_names_the_blocks_whose_hash_is_not_the_recorded_one() -> None:
    blocks = [b"a" * B, b"b" * B, b"c" * 10]  # the last block short
    recorded = extents.Digests(b"".join(hashlib.sha256(b).digest() for b in blocks))
    assert recorded.mismatched(0, b"".join(blocks), B) == []
    assert recorded.mismatched(1, blocks[1] + blocks[2], B) == []
    assert recorded.mismatched(0, blocks[0] + b"x" * B + blocks[2], B) == [1]
    assert recorded.mismatched(1, blocks[0] + blocks[2], B) == [1]  # numbered from block 1
    assert recorded.mismatched(2, b"c" * B + b"d", B) == [2, 3]  # block 3 is past the list
