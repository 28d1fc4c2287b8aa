"""The fetch a reader waits for: its md5 hashed a step behind the decoder (Md5Behind), on
the real local store, checked against OpenSSL and against damage."""

from __future__ import annotations

import hashlib
import random

import pytest

from bakfs.cinder import codec
from bakfs.cinder.metadata import ObjectEntry
from bakfs.errors import IntegrityError
from bakfs.store.base import ObjectStore
from bakfs.store.decode import PIPELINE_MIN, Md5Behind, fetch_counted, fetch_unchecked
from bakfs.store.localdir import LocalStore
from tests.conftest import record_ranges


def _object(store: LocalStore, name: str, plain: bytes, md5: str | None = None) -> ObjectEntry:
    stored, recorded = codec.compress(plain, "zstd")
    store.put(name, stored)
    return ObjectEntry(name, 0, len(plain), recorded, md5 or codec.md5_hex(plain))


def _plain(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)  # compressible, with incompressible stretches
    return b"".join(rnd.randbytes(4096) if rnd.random() < 0.3 else bytes([rnd.randrange(256)])
                    * 4096 for _ in range(size // 4096))


def test_md5_behind_equals_openssl_whatever_the_steps() -> None:
    data = random.Random(1).randbytes(3 << 20)
    buffer = bytearray(len(data))
    behind = Md5Behind(memoryview(buffer))
    at = 0
    for step in (1, 63, 64, 100_000, 1 << 20, len(data)):
        end = min(at + step, len(data))
        buffer[at:end] = data[at:end]
        behind.filled(end)
        at = end
    assert behind.digest() == hashlib.md5(data).digest()


def test_a_waited_for_object_is_hashed_behind_its_decoder(local_store: LocalStore) -> None:
    plain = _plain(6 << 20, 2)
    assert len(plain) >= PIPELINE_MIN
    obj = _object(local_store, "o1", plain)
    got, stored = fetch_counted(local_store, obj)
    assert got == plain and stored == len(local_store.get("o1"))
    assert fetch_unchecked(local_store, obj)[0] == plain


def test_a_waited_for_object_of_other_bytes_fails_naming_it(local_store: LocalStore) -> None:
    plain = _plain(6 << 20, 3)
    other = bytes(b ^ 1 for b in plain)  # decodes fine, of the recorded length
    obj = _object(local_store, "o2", other, md5=codec.md5_hex(plain))
    with pytest.raises(IntegrityError, match="o2: md5") as info:
        fetch_counted(local_store, obj)
    assert info.value.key == "o2"
    short = _object(local_store, "o3", plain[:-1], md5=codec.md5_hex(plain))
    with pytest.raises(IntegrityError, match="decompresses to"):
        fetch_counted(local_store, ObjectEntry("o3", 0, len(plain), "zstd", short.md5))


def test_a_raw_object_of_another_length_is_refused_without_reading_it_whole(
        store: ObjectStore) -> None:
    """A raw object that grew in the store (here 8 MiB where 64 KiB is recorded) is refused
    after one ranged GET of one byte more than recorded; a short or empty one too."""
    plain = random.Random(4).randbytes(64 << 10)
    obj = ObjectEntry("raw1", 0, len(plain), "none", codec.md5_hex(plain))
    store.put("raw1", plain)
    asked = record_ranges(store)
    assert fetch_unchecked(store, obj) == (plain, len(plain))
    assert fetch_counted(store, obj)[0] == plain
    assert asked == [(0, len(plain) + 1)] * 2
    for stored, message in ((plain + bytes(8 << 20), "holds more than the recorded 65536"),
                            (plain[:-1], "decoded length 65535 differs"),
                            (b"", "decoded length 0 differs")):
        store.put("raw1", stored)
        with pytest.raises(IntegrityError, match=message) as info:
            fetch_counted(store, obj)
        assert info.value.key == "raw1"
    assert asked[-3:] == [(0, len(plain) + 1)] * 3
