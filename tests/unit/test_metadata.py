import json

import pytest

from bakfs.cinder.extents import Digests
from bakfs.cinder.limits import CINDER_OBJECT_SIZE, Limits
from bakfs.cinder.metadata import (
    BackupMetadata,
    ObjectEntry,
    Sha256File,
    minimal_volume_meta,
    parse_metadata,
    parse_sha256file,
)
from bakfs.config import Config, IndexOptions, S3Options
from bakfs.errors import BadMetadata

NAME = "volume_v/20261122235718/az_nova_backup_b-00001"


def _metadata(**changes: object) -> BackupMetadata:
    base = BackupMetadata(
        backup_id="b", volume_id="v", created_at="2026-11-22 23:57:18+00:00", parent_id=None,
        objects=(ObjectEntry(NAME, 0, 65536, "zlib", "bf150aed904a9841b42e29b60d5b91b2"),),
        backup_name="full", backup_description="worked example",
        volume_meta=minimal_volume_meta("full", None))
    return BackupMetadata(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_metadata_is_written_as_cinder_writes_it() -> None:
    raw = _metadata().to_json()
    doc = json.loads(raw)
    # Cinder: json.dumps(sort_keys=True, indent=2), UTF-8, no trailing newline
    assert raw == json.dumps(doc, sort_keys=True, indent=2).encode()
    assert not raw.endswith(b"\n")
    assert set(doc) == {"backup_description", "backup_id", "backup_name", "created_at",
                        "objects", "parent_id", "version", "volume_id", "volume_meta"}
    assert doc["version"] == "1.0.0"
    assert doc["objects"] == [{NAME: {"compression": "zlib", "length": 65536,
                                      "md5": "bf150aed904a9841b42e29b60d5b91b2", "offset": 0}}]
    # volume_meta is a JSON document encoded as a string
    assert json.loads(doc["volume_meta"])["version"] == 2


def test_round_trip_and_tolerance_for_what_other_writers_do() -> None:
    original = _metadata(parent_id="a", extra_metadata={"x": 1})
    assert parse_metadata(original.to_json()) == original
    doc = json.loads(_metadata().to_json())
    doc["volume_meta"] = None
    doc["objects"][0][NAME]["md5"] = doc["objects"][0][NAME]["md5"].upper()
    parsed = parse_metadata(json.dumps(doc).encode())
    assert parsed.volume_meta is None
    assert parsed.objects[0].md5 == "bf150aed904a9841b42e29b60d5b91b2"
    assert "extra_metadata" not in json.loads(parsed.to_json())


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(version="2.0.0"), "version"),
    (lambda d: d.pop("objects"), "objects"),
    (lambda d: d["objects"][0][NAME].update(compression="lz4"), "lz4"),
    (lambda d: d["objects"][0][NAME].update(offset="0"), "wrong type"),
    (lambda d: d["objects"].append({NAME + "2": {"offset": 100, "length": 10,
                                                 "compression": "none", "md5": "0" * 32}}),
     "overlap"),
])
def test_bad_documents_are_refused_with_the_reason(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(_metadata().to_json())
    mutate(doc)
    with pytest.raises(BadMetadata, match=message):
        parse_metadata(json.dumps(doc).encode())


def test_not_json_is_refused() -> None:
    with pytest.raises(BadMetadata, match="not valid JSON"):
        parse_metadata(b"\x00garbage")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_sha256file_round_trip_and_checks(count: int) -> None:
    hexes = [f"{i:064x}" for i in range(count)]
    doc = Sha256File("b", "v", "2026-11-22 23:57:18+00:00", 32768, Digests.from_hex(hexes),
                     "n\u00e9", None)
    raw = doc.to_json()
    # byte for byte what Cinder's json.dumps(sort_keys=True, indent=2) writes
    assert raw == json.dumps(json.loads(raw), sort_keys=True, indent=2).encode()
    assert json.loads(raw)["sha256s"] == hexes
    assert json.loads(raw)["chunk_size"] == 32768
    assert parse_sha256file(raw) == doc
    bad = json.loads(raw)
    bad["sha256s"].append("short")
    if count == 0:
        return
    with pytest.raises(BadMetadata, match="SHA-256"):
        parse_sha256file(json.dumps(bad).encode())


# Hostile documents (issue 14, items 3 and 4): every value bakfs uses is checked, so each of
# these is a BadMetadata naming what is wrong, never a ValueError, struct.error,
# UnicodeEncodeError or gigabytes of memory further down.
@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["objects"][0][NAME].update(md5="zz" * 16), "not 32 hexadecimal"),
    (lambda d: d["objects"][0][NAME].update(md5="ab" * 17), "not 32 hexadecimal"),
    (lambda d: d["objects"][0][NAME].update(offset=2 ** 64), "past the largest volume"),
    (lambda d: d["objects"][0][NAME].update(offset=2 ** 63 - 65536), "past the largest volume"),
    (lambda d: d["objects"][0][NAME].update(length=2 ** 40), "claims 1099511627776 bytes"),
    (lambda d: d["objects"].__setitem__(0, {NAME + "\udc80": d["objects"][0][NAME]}),
     "not valid Unicode"),
    (lambda d: d["objects"].__setitem__(0, {"../x": d["objects"][0][NAME]}),
     "not a valid object key"),
    (lambda d: d["objects"].__setitem__(0, {"a\nb": d["objects"][0][NAME]}),
     "not a valid object key"),
    (lambda d: d["objects"].__setitem__(0, {"k" * 1025: d["objects"][0][NAME]}),
     "not a valid object key"),
    (lambda d: d.update(backup_name="x\udc80"), "backup_name"),
    (lambda d: d.update(parent_id=7), "parent_id"),
    (lambda d: d.update(created_at="\ud800"), "created_at"),
    (lambda d: d.update(backup_description=["not", "text"]), "backup_description"),
])
def test_hostile_values_are_refused_with_the_reason(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(_metadata().to_json())
    mutate(doc)
    with pytest.raises(BadMetadata, match=message):
        parse_metadata(json.dumps(doc).encode())


def test_limits_come_from_the_configuration() -> None:
    doc = json.loads(_metadata().to_json())
    doc["objects"][0][NAME]["offset"] = (1 << 30) - 100  # ends 64 KiB past 1 GiB
    raw = json.dumps(doc).encode()
    assert parse_metadata(raw).covered_size == (1 << 30) - 100 + 65536
    small = Limits.from_config(Config(index=IndexOptions(max_volume_size=1 << 30)))
    with pytest.raises(BadMetadata, match=r"index\.max_volume_size"):
        parse_metadata(raw, limits=small)
    assert small.max_object_length == 2 * CINDER_OBJECT_SIZE
    big_objects = Limits.from_config(Config(s3=S3Options(object_size=512 << 20)))
    assert big_objects.max_object_length == 1 << 30


def test_sha256file_with_a_bad_digest_anywhere_is_refused() -> None:
    hexes = ["ab" * 32, "zz" * 32]  # the second, not the first
    raw = Sha256File("b", "v", "", 4096, Digests.from_hex(hexes[:1])).to_json()
    doc = json.loads(raw)
    doc["sha256s"] = hexes
    with pytest.raises(BadMetadata, match="hexadecimal"):
        parse_sha256file(json.dumps(doc).encode())
