"""Compression of data objects exactly as Cinder does it, and the checks of what comes back.

Cinder's names: none/off/no, zlib/gzip (both zlib-wrapped deflate, never gzip framing),
bz2/bzip2 and zstd (one frame that records its content size: python-zstd, which Cinder uses,
cannot decode a frame without it). An object is stored raw and recorded as "none" whenever
compressing does not make it smaller. Pure CPU functions: no I/O, no threads.
"""

from __future__ import annotations

import bz2
import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zstandard

from bakfs.errors import IntegrityError, UnsupportedCompression

# Recorded name (any case) -> codec family.
_FAMILIES = {
    "none": "none", "off": "none", "no": "none",
    "zlib": "zlib", "gzip": "zlib",
    "bz2": "bz2", "bzip2": "bz2",
    "zstd": "zstd",
}
WRITE_ALGORITHMS = ("none", "zlib", "bz2", "zstd")

ZLIB_LEVEL = 6  # zlib.compress's default, what Cinder gets
BZ2_LEVEL = 9  # bz2.compress's default
ZSTD_LEVEL = 3  # python-zstd's default
STEP = 512 << 10  # bytes decoded per step when a hash follows the decoder


def family(name: str) -> str:
    """The codec family of a recorded compression name, case-insensitively."""
    try:
        return _FAMILIES[name.lower()]
    except (KeyError, AttributeError):
        raise UnsupportedCompression(
            f"unknown compression {name!r}; Cinder knows none, off, no, zlib, gzip, bz2, "
            "bzip2 and zstd") from None


def compress(data: bytes | memoryview, algorithm: str) -> tuple[bytes | memoryview, str]:
    """(stored bytes, recorded name) for one object, following Cinder's rule: raw and
    "none" when compression is off or does not shrink the data."""
    kind = family(algorithm)
    if kind == "none":
        return data, "none"
    if kind == "zlib":
        packed = zlib.compress(data, ZLIB_LEVEL)
    elif kind == "bz2":
        packed = bz2.compress(data, BZ2_LEVEL)
    else:
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(
            data)
    if len(packed) >= len(data):
        return data, "none"
    return packed, algorithm.lower()


def decompress(body: bytes | memoryview, recorded: str, expected_length: int | None = None,
               key: str | None = None) -> bytes:
    """Plain bytes of a stored object; IntegrityError naming `key` if it cannot be decoded.
    Given the recorded length, no codec produces more than that plus one byte before the
    object is refused: a bomb (a few MB stored, gigabytes once decoded) costs no more memory
    or time than an honest object of the recorded length."""
    kind = family(recorded)
    what = f"object {key}" if key else "data"
    limit = -1 if expected_length is None else expected_length
    try:
        if kind == "none":
            plain = bytes(body)
        elif kind == "zlib":
            plain = _zlib_decompress(body, limit)
        elif kind == "bz2":
            plain = _bz2_decompress(body, limit)
        else:
            plain = _zstd_decompress(body, limit)
    except (zlib.error, OSError, ValueError, EOFError, zstandard.ZstdError) as exc:
        raise IntegrityError(f"{what}: cannot decompress as {recorded}: {exc}", key) from None
    if kind != "none" and limit >= 0 and len(plain) != limit:  # "none": verify says it
        size = f"more than {limit}" if len(plain) > limit else str(len(plain))
        raise IntegrityError(f"{what}: decompresses to {size} bytes, not the recorded "
                             f"{limit}", key)
    return plain


def _zlib_decompress(body: bytes | memoryview, limit: int) -> bytes:
    """At most limit + 1 bytes (all of them for a negative limit); trailing bytes after the
    stream are ignored, as zlib.decompress does."""
    dobj = zlib.decompressobj()
    plain = dobj.decompress(body, limit + 1 if limit >= 0 else 0)
    if len(plain) <= limit or limit < 0:
        plain += dobj.flush()
        if not dobj.eof:
            raise ValueError("incomplete or truncated stream")
    return plain


def _bz2_decompress(body: bytes | memoryview, limit: int) -> bytes:
    """Every stream (bz2.decompress reads concatenated ones too), at most limit + 1 bytes."""
    out = bytearray()
    data = bytes(body)
    while data:
        dobj = bz2.BZ2Decompressor()
        out += dobj.decompress(data, limit + 1 - len(out) if limit >= 0 else -1)
        if limit >= 0 and len(out) > limit:
            break
        if not dobj.eof:
            raise ValueError("compressed data ended before the end-of-stream marker")
        data = dobj.unused_data
    return bytes(out)


def _zstd_decompress(body: bytes | memoryview, limit: int) -> bytes:
    """Decode every frame, not just the first (zstandard's one-shot decompress stops there),
    at most limit + 1 bytes. A single frame that records exactly the expected content size
    (what Cinder and bakfs write) takes the one-shot path, about four times faster than the
    streaming decoder. A truncated frame yields fewer bytes, which the length check refuses."""
    dctx = zstandard.ZstdDecompressor()
    if limit >= 0:
        try:
            if zstandard.get_frame_parameters(body).content_size == limit:
                plain = dctx.decompress(body, max_output_size=limit)
                if len(plain) == limit:
                    return plain
        except zstandard.ZstdError:
            pass  # not such a frame: the general decoder below says what is wrong
    out = bytearray()
    with dctx.stream_reader(body, read_across_frames=True) as reader:
        while chunk := reader.read(1 << 20 if limit < 0 else min(1 << 20, limit + 1 - len(out))):
            out += chunk
            if 0 <= limit < len(out):
                break
    return bytes(out)


def md5_hex(data: bytes | memoryview) -> str:
    """Lowercase hex MD5 of plain data, as recorded in `_metadata`."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_digest(data: bytes | bytearray | memoryview) -> bytes:
    """Raw MD5 of data (hex() of it is `md5_hex`); also the Content-MD5 of an upload."""
    return hashlib.md5(data, usedforsecurity=False).digest()


def verify(data: bytes | bytearray | memoryview, length: int, md5: str, key: str) -> None:
    """Fail unless decoded data has the recorded length and md5: wrong bytes are never served."""
    check_length(len(data), length, key)
    check_digest(md5_digest(data), md5, key)


def check_length(actual: int, length: int, key: str) -> None:
    """IntegrityError unless decoded data's length is the recorded one."""
    if actual != length:
        raise IntegrityError(
            f"object {key}: decoded length {actual} differs from the recorded {length}", key)


def check_digest(digest: bytes, md5: str, key: str) -> None:
    """IntegrityError unless a raw md5 digest (however it was hashed) is the recorded md5."""
    if digest.hex() != md5.lower():
        raise IntegrityError(f"object {key}: md5 {digest.hex()} differs from the recorded "
                             f"{md5}", key)


def decode_unchecked(chunks: Iterable[bytes], recorded: str, length: int, key: str,
                     out: bytearray | None = None, filled: Callable[[int], None] | None = None
                     ) -> tuple[bytearray, int]:
    """Decode a stored object as its bytes arrive, into a buffer of exactly the recorded
    length (`out` when given); returns (plain bytes, stored bytes consumed). Its md5 is NOT
    checked yet: the caller must `verify` it (or check it in a batch, bakfs.store.md5batch)
    before any of it is used. `filled(n)` is told, as zstd decodes in steps of at most
    STEP bytes, that the first n bytes are final (a hash can follow the decoder).

    Decoding overlaps the transfer instead of following it, no copy of the stored object is
    kept, and output past the recorded length is an error at once (no bomb gets past it).
    IntegrityError names the object when it cannot be decoded, or is longer or shorter than
    recorded.
    """
    kind = family(recorded)
    out = bytearray(length) if out is None else out
    view = memoryview(out)
    source = _Counted(chunks)
    try:
        if kind == "zstd":
            done, extra = _zstd_into(source, view, filled)
        elif kind == "none":
            done, extra = _copy_into(source, view)
        else:
            decoder = zlib.decompressobj() if kind == "zlib" else bz2.BZ2Decompressor()
            done, extra = _decompressobj_into(source, view, decoder, kind)
    except (zlib.error, OSError, ValueError, EOFError, zstandard.ZstdError) as exc:
        raise IntegrityError(f"object {key}: cannot decompress as {recorded}: {exc}",
                             key) from None
    if extra or done != length:
        size = f"more than {length}" if extra else str(done)
        raise IntegrityError(f"object {key}: decompresses to {size} bytes, not the recorded "
                             f"{length}", key)
    return out, source.consumed


class _Counted:
    """The stored bytes as a file-like source for zstandard (a read returns the next chunk,
    however long), counting what was consumed."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self.consumed = 0

    def read(self, _size: int = -1) -> bytes:
        chunk = next(self._chunks, b"")
        self.consumed += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read():
            yield chunk


def _zstd_into(source: _Counted, view: memoryview,
               told: Callable[[int], None] | None = None) -> tuple[int, bool]:
    """Every frame (zstandard's one-shot decoder stops at the first) straight into view;
    in steps of STEP bytes when `told` follows the progress."""
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_size=1 << 20, read_across_frames=True)  # type: ignore[arg-type]
    filled = 0
    step = len(view) if told is None else STEP
    while filled < len(view):
        n = reader.readinto(view[filled:filled + step])
        if not n:
            break
        filled += n
        if told is not None:
            told(filled)
    return filled, bool(reader.read(1))


def _copy_into(source: _Counted, view: memoryview) -> tuple[int, bool]:
    filled = 0
    for chunk in source:
        take = min(len(chunk), len(view) - filled)
        view[filled:filled + take] = chunk[:take]
        filled += take
        if take < len(chunk):
            return filled, True
    return filled, False


def _decompressobj_into(source: _Counted, view: memoryview, decoder: Any,
                        kind: str) -> tuple[int, bool]:
    """zlib and bz2, bounded: never more than one byte past the recorded length is made."""
    filled = 0
    for chunk in source:
        if kind == "bz2" and decoder.eof:
            return filled, True  # bytes after the end of the stream
        data = chunk
        while True:
            room = len(view) - filled + 1  # one more than fits shows a longer object
            piece = decoder.decompress(data, room)
            if len(piece) > len(view) - filled:
                return filled + len(piece), True
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
            if kind == "zlib":
                data = decoder.unconsumed_tail
                if not data:
                    break
            else:
                data = b""
                if decoder.eof or decoder.needs_input:
                    break
    if kind == "zlib":
        tail = decoder.flush()
        if len(tail) > len(view) - filled:
            return filled + len(tail), True
        view[filled:filled + len(tail)] = tail
        filled += len(tail)
    elif not decoder.eof:
        raise EOFError("truncated bz2 stream")
    return filled, False
