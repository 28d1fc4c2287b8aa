import json

import pytest

from bakfs.cinder.extents import Digests
from bakfs.cinder.metadata import (
    BackupMetadata,
    ObjectEntry,
    Sha256File,
    minimal_volume_meta,
    parse_metadata,
    parse_sha256file,
)
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
