"""Hostile backups planted in a bucket, for the tests of quarantine (issue 14, items 3-4):
one `_metadata` per kind of bad input an attacker or a broken writer could leave, each under a
real backup prefix with one real data object, so only the document itself is at fault."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bakfs.cinder import naming
from bakfs.config import S3Options, Secret
from bakfs.store.base import ObjectStore
from bakfs.store.s3 import S3Store

BLOCK = 4096
Doc = dict[str, Any]


def _entry(doc: Doc) -> dict[str, Any]:
    ((_name, info),) = doc["objects"][0].items()
    return info  # type: ignore[no-any-return]


def _rename(doc: Doc, new: str) -> None:
    ((_name, info),) = doc["objects"][0].items()
    doc["objects"][0] = {new: info}


# name -> (what it does to the document, words the quarantine reason must hold)
MUTATIONS: dict[str, tuple[Callable[[Doc, str], None], str]] = {
    "md5-not-hex": (lambda d, o: _entry(d).update(md5="zz" * 16), "hexadecimal"),
    "offset-2^64": (lambda d, o: _entry(d).update(offset=2 ** 64), "largest volume"),
    "surrogate-name": (lambda d, o: _rename(d, o + "\udc80"), "not valid Unicode"),
    "length-2^40": (lambda d, o: _entry(d).update(length=2 ** 40), "largest object"),
    "volume-2^63": (lambda d, o: _entry(d).update(offset=2 ** 63 - BLOCK), "largest volume"),
    "foreign-object": (lambda d, o: _rename(d, "bakfs-locks/other"),
                       "not one of this backup's objects"),
    "name-twice": (lambda d, o: d["objects"].append({o: dict(_entry(d), offset=BLOCK)}),
                   "twice"),
    "not-json": (lambda d, o: d.update(_raw=b"\xff{not json"), "not valid JSON"),
    "nested-deep": (lambda d, o: d.update(_raw=b"[" * 200_000 + b"]" * 200_000),
                    "nested too deeply"),
    "wrong-types": (lambda d, o: d.update(backup_name={"a": 1}, parent_id=["x"]),
                    "wrong type"),
}


@dataclasses.dataclass(frozen=True)
class Planted:
    backup_id: str
    prefix: str
    reason: str  # words the quarantine reason must hold


def plant(store: ObjectStore, volume_id: str, kind: str) -> Planted:
    """A backup of `volume_id` whose `_metadata` is hostile in the way `kind` names."""
    mutate, reason = MUTATIONS[kind]
    backup_id = f"{kind.replace('^', '')}-{uuid.uuid4().hex[:8]}"
    doc, prefix = _document(store, volume_id, backup_id)
    mutate(doc, next(iter(doc["objects"][0])))
    raw = doc.pop("_raw", None)
    store.put(naming.metadata_name(prefix), raw if raw is not None else
              json.dumps(doc, sort_keys=True, indent=2).encode())
    return Planted(backup_id, str(prefix), reason)


def _document(store: ObjectStore, volume_id: str, backup_id: str,
              body: bytes = b"\x07" * BLOCK, compression: str = "none",
              length: int = BLOCK) -> tuple[Doc, naming.BackupPrefix]:
    prefix = naming.make_prefix(volume_id, backup_id, datetime.now(UTC))
    name = naming.object_name(prefix, 1)
    store.put(name, body)
    plain = body if compression == "none" else b""
    doc = {"backup_id": backup_id, "volume_id": volume_id, "version": "1.0.0",
           "created_at": str(datetime.now(UTC)), "parent_id": None, "backup_name": None,
           "backup_description": None, "volume_meta": None,
           "objects": [{name: {"offset": 0, "length": length, "compression": compression,
                               "md5": hashlib.md5(plain[:length]).hexdigest()}}]}
    return doc, prefix


def plant_bomb(store: ObjectStore, volume_id: str, plain_size: int = 1 << 30) -> Planted:
    """A backup whose one object is a zlib bomb: `plain_size` zeros packed into about a
    thousandth of that, recorded as a 4 KiB object. Its recorded md5 is not that of zeros
    (an all-zero object would be served without a fetch), so a read fetches the bomb."""
    backup_id = f"bomb-{uuid.uuid4().hex[:8]}"
    doc, prefix = _document(store, volume_id, backup_id, zlib_bomb(plain_size >> 20), "zlib",
                            BLOCK)
    _entry(doc)["md5"] = hashlib.md5(b"\x07" * BLOCK).hexdigest()
    store.put(naming.metadata_name(prefix), json.dumps(doc).encode())
    return Planted(backup_id, str(prefix), "decompresses to more than 4096 bytes")


def zlib_bomb(mib: int) -> bytes:
    """A valid zlib stream of `mib` MiB of zeros (about 1 KB a MiB), made in milliseconds:
    each MiB is flushed to the same bytes, so they are repeated rather than compressed, and
    the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    chunk = bytes(1 << 20)
    packer = zlib.compressobj(9)
    first = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    unit = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    adler = ((mib << 20) % 65521) << 16 | 1
    return first + unit * (mib - 1) + b"\x03\x00" + adler.to_bytes(4, "big")


def plant_sealed(store: S3Store, options: S3Options, volume_id: str) -> Planted:
    """A sound backup whose `_metadata` was written with an SSE-C key this reader lacks: the
    store refuses to hand it over (AccessDenied), which is this backup's problem alone."""
    backup_id = f"sealed-{uuid.uuid4().hex[:8]}"
    doc, prefix = _document(store, volume_id, backup_id)
    keyed = S3Store(dataclasses.replace(options, sse_customer_key=Secret("k" * 32),
                                        sse_customer_algorithm="AES256"))
    try:
        keyed.put(naming.metadata_name(prefix), json.dumps(doc).encode())
    finally:
        keyed.close()
    return Planted(backup_id, str(prefix), "SSE-C")

