import bz2
import os
import resource
import time
import zlib

import pytest
import zstandard

from bakfs.cinder import codec
from bakfs.errors import IntegrityError, UnsupportedCompression

TEXT = b"the quick brown fox jumps over the lazy dog\n" * 2000


@pytest.mark.parametrize("name", ["zlib", "gzip", "bz2", "bzip2", "zstd", "ZSTD", "Zlib"])
def test_round_trip_records_the_configured_spelling_lowercased(name: str) -> None:
    stored, recorded = codec.compress(TEXT, name)
    assert recorded == name.lower()
    assert len(stored) < len(TEXT)
    assert codec.decompress(stored, recorded, len(TEXT)) == TEXT


def test_stream_formats_are_the_ones_cinder_reads() -> None:
    assert codec.compress(TEXT, "gzip")[0][:2] == b"\x78\x9c"  # zlib-wrapped, not gzip
    assert zlib.decompress(codec.compress(TEXT, "zlib")[0]) == TEXT
    packed = codec.compress(TEXT, "bz2")[0]
    assert packed[:4] == b"BZh9" and bz2.decompress(packed) == TEXT
    frame = codec.compress(TEXT, "zstd")[0]
    # python-zstd (Cinder) cannot decode a frame that does not record its content size
    assert zstandard.get_frame_parameters(frame).content_size == len(TEXT)


@pytest.mark.parametrize("name", ["zlib", "bz2", "zstd", "none", "off", "no"])
def test_incompressible_data_is_stored_raw_and_recorded_none(name: str) -> None:
    noise = os.urandom(65536)
    stored, recorded = codec.compress(noise, name)
    assert recorded == "none" and bytes(stored) == noise


def test_zstd_reader_decodes_every_frame() -> None:
    c = zstandard.ZstdCompressor()
    body = c.compress(b"a" * 5000) + c.compress(b"b" * 7000)
    assert codec.decompress(body, "zstd") == b"a" * 5000 + b"b" * 7000


@pytest.mark.parametrize("name", ["zlib", "bz2", "zstd"])
def test_damaged_bodies_fail_as_integrity_errors(name: str) -> None:
    stored = bytearray(codec.compress(TEXT, name)[0])
    stored[len(stored) // 2] ^= 0xFF
    del stored[-3:]
    with pytest.raises(IntegrityError):
        codec.decompress(bytes(stored), name, len(TEXT))


def test_unknown_names_are_refused() -> None:
    with pytest.raises(UnsupportedCompression, match="lz4"):
        codec.family("lz4")


def test_verify_checks_length_and_md5_and_names_the_object() -> None:
    codec.verify(b"abc", 3, codec.md5_hex(b"abc"), "k")
    with pytest.raises(IntegrityError, match=r"obj-1.*length"):
        codec.verify(b"abcd", 3, codec.md5_hex(b"abc"), "obj-1")
    with pytest.raises(IntegrityError, match=r"obj-2.*md5"):
        codec.verify(b"abd", 3, codec.md5_hex(b"abc"), "obj-2")


@pytest.mark.parametrize("algorithm", ["none", "zlib", "bz2", "zstd"])
@pytest.mark.parametrize("piece", [1, 1000, 1 << 20])
def test_decode_unchecked_matches_the_one_shot_decoder(algorithm: str, piece: int) -> None:
    plain = os.urandom(70_000) + bytes(200_000) + b"text " * 9000
    stored, recorded = codec.compress(plain, algorithm)
    stored = bytes(stored)
    chunks = [stored[i:i + piece] for i in range(0, len(stored), piece)]
    out, consumed = codec.decode_unchecked(chunks, recorded, len(plain), "k")
    codec.verify(out, len(plain), codec.md5_hex(plain), "k")
    assert out == plain and consumed == len(stored)


@pytest.mark.parametrize("algorithm", ["none", "zlib", "bz2", "zstd"])
def test_decode_unchecked_refuses_a_longer_or_shorter_object_and_verify_a_changed_one(
        algorithm: str) -> None:
    plain = b"abc" * 50_000
    stored, recorded = codec.compress(plain, algorithm)
    with pytest.raises(IntegrityError, match="more than"):  # more than recorded: stops at once
        codec.decode_unchecked([bytes(stored)], recorded, len(plain) - 1, "k")
    with pytest.raises(IntegrityError, match="not the recorded"):
        codec.decode_unchecked([bytes(stored)], recorded, len(plain) + 1, "k")
    out, _ = codec.decode_unchecked([bytes(stored)], recorded, len(plain), "k")
    with pytest.raises(IntegrityError, match="md5"):
        codec.verify(out, len(plain), "0" * 32, "k")
    truncated = bytes(stored)[:len(stored) // 2]
    with pytest.raises(IntegrityError):
        codec.decode_unchecked([truncated], recorded, len(plain), "k")


def test_decode_unchecked_is_bounded_by_the_recorded_length_against_a_bomb() -> None:
    """A zstd frame of 64 MiB of zeros recorded as 4 KiB: decoding stops after 4 KiB + 1,
    never making the 64 MiB."""
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20))
    with pytest.raises(IntegrityError, match="more than"):
        codec.decode_unchecked([bomb], "zstd", 4096, "k")
    zbomb = zlib.compress(bytes(64 << 20), 9)
    with pytest.raises(IntegrityError, match="more than"):
        codec.decode_unchecked([zbomb], "zlib", 4096, "k")


def test_decode_unchecked_reads_every_zstd_frame() -> None:
    first, second = os.urandom(5000), b"second frame" * 100
    c = zstandard.ZstdCompressor(write_content_size=True)
    stored = c.compress(first) + c.compress(second)
    out, _ = codec.decode_unchecked([stored], "zstd", len(first) + len(second), "k")
    codec.verify(out, len(first) + len(second), codec.md5_hex(first + second), "k")
    assert out == first + second


@pytest.mark.parametrize("name", ["zlib", "bz2", "zstd"])
@pytest.mark.parametrize("content_size", [True, False])
def test_a_bomb_is_refused_at_the_recorded_length(name: str, content_size: bool) -> None:
    """256 MiB of zeros packed into a few hundred KB, recorded as 4 KiB: refused as soon
    as the output passes 4 KiB, in milliseconds and without the 256 MiB (issue 14, item 4)."""
    plain = bytes(256 << 20)
    if name == "zstd":
        body = zstandard.ZstdCompressor(write_content_size=content_size).compress(plain)
    else:
        body = zlib.compress(plain, 9) if name == "zlib" else bz2.compress(plain, 9)
    del plain
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(IntegrityError, match="more than 4096 bytes") as info:
        codec.decompress(body, name, 4096, "volume_v/x-00001")
    assert info.value.key == "volume_v/x-00001"
    assert time.monotonic() - started < 0.5
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    assert grown < 16 * 1024


def test_short_output_is_refused_by_the_codec_itself() -> None:
    body = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    with pytest.raises(IntegrityError, match=f"decompresses to {len(TEXT)} bytes"):
        codec.decompress(body, "zstd", len(TEXT) + 1)
