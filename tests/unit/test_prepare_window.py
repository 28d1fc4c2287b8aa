"""The backup engine's per-window work, including its shortcut for all-zero windows."""

import dataclasses
import random

import pytest

from bakfs.backup.window import prepare_window, to_hash, with_md5s
from bakfs.cinder import codec, extents
from bakfs.config import S3Options

B = 4096
OPTIONS = S3Options(block_size=B, object_size=8 * B)


@pytest.mark.parametrize("compression", ["zstd", "zlib", "bz2", "none"])
@pytest.mark.parametrize("length", [8 * B, 3 * B + 17])
def test_zero_windows_give_what_the_general_path_gives(compression: str, length: int) -> None:
    options = dataclasses.replace(OPTIONS, compression=compression)
    zeros = bytes(length)
    parent = extents.block_digests(b"\x01" * B + bytes(B) + b"\x02" * (length - 2 * B), B)
    for parent_hashes in (None, parent):
        hashes, prepared = prepare_window(memoryview(zeros), 1, options, parent_hashes)
        assert hashes == extents.block_digests(zeros, B)
        runs = extents.changed_runs(hashes, parent_hashes, 8, B, length)
        assert [(p.offset - 8 * B, p.offset - 8 * B + p.length) for p in prepared] == runs
        for p in prepared:
            plain = codec.decompress(p.stored, p.compression)
            assert plain == bytes(p.length) and p.md5 == codec.md5_hex(plain)


def test_a_window_with_one_late_nonzero_byte_is_not_taken_for_zeros() -> None:
    window = bytearray(8 * B)
    window[-1] = 1
    hashes, prepared = prepare_window(bytes(window), 0, OPTIONS, None)
    assert hashes == extents.block_digests(bytes(window), B)
    assert codec.decompress(prepared[0].stored, prepared[0].compression) == window


@pytest.mark.parametrize("content_md5", [True, False])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_md5s_left_to_the_caller_come_out_the_same(compression: str, content_md5: bool) -> None:
    """prepare_window(hash_md5=False) + to_hash + with_md5s (the sink's batched md5s) equals
    prepare_window's own md5s, for data runs, zero runs and incompressible runs alike."""
    options = dataclasses.replace(OPTIONS, compression=compression)
    window = bytearray(8 * B)
    window[B:2 * B] = b"text " * (B // 5) + b"x" * (B % 5)
    window[5 * B:6 * B] = random.Random(5).randbytes(B)  # does not compress: stored raw
    parent = extents.block_digests(bytes(B) * 3 + bytes(window[3 * B:]), B)
    for parent_hashes in (None, parent):
        for data in (bytes(window), bytes(8 * B)):
            _h, expected = prepare_window(data, 2, options, parent_hashes)
            _h, left = prepare_window(data, 2, options, parent_hashes, hash_md5=False)
            buffers = to_hash(left, content_md5)
            got = with_md5s(left, content_md5, [codec.md5_digest(b) for b in buffers])
            for want, item in zip(expected, got, strict=True):
                assert item.plain is None and item.md5 == want.md5
                if want.stored_md5 is not None or content_md5:
                    assert item.stored_md5 == codec.md5_digest(item.stored)
