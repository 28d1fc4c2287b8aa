"""Property: whatever a bucket holds, parsing a `_metadata` or `_sha256file` either accepts it
or raises the project's FormatError, and what it accepts is safe for everything downstream
(issue 14, fuzz test). Real documents (a Cinder 29 worked example, a bakfs incremental) are
mutated by hypothesis: values replaced anywhere in the tree by hostile ones (huge, negative,
lone surrogates, wrong types), keys dropped and added, raw bytes flipped, cut and inserted.
2,000 examples each, every run."""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakfs.catalog.discovery import BackupRef, check_metadata
from bakfs.catalog.index import _EXT_KEY, _EXT_VAL, _encode_object
from bakfs.cinder import codec, naming
from bakfs.cinder.chain import overlay
from bakfs.cinder.extents import Digests
from bakfs.cinder.limits import Limits
from bakfs.cinder.metadata import (
    BackupMetadata,
    ObjectEntry,
    Sha256File,
    minimal_volume_meta,
    parse_metadata,
    parse_sha256file,
)
from bakfs.errors import FormatError

EXAMPLES = settings(max_examples=2000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CINDER_PREFIX = ("volume_0b3a5c1e-0000-4000-8000-000000000001/20261122235718/"
                 "az_nova_backup_1f000000-0000-4000-8000-00000000000f")
BAKFS_PREFIX = "volume_vol-a/20261201000000/az_nova_backup_b2"
LIMITS = Limits()

CINDER = json.dumps({  # the worked example of docs/cinder-format.md, as Cinder 29 wrote it
    "backup_description": "worked example",
    "backup_id": "1f000000-0000-4000-8000-00000000000f", "backup_name": "full",
    "created_at": "2026-11-22 23:57:18+00:00",
    "objects": [
        {f"{CINDER_PREFIX}-00001": {"compression": "zlib", "length": 65536,
                                    "md5": "bf150aed904a9841b42e29b60d5b91b2", "offset": 0}},
        {f"{CINDER_PREFIX}-00002": {"compression": "zlib", "length": 36864,
                                    "md5": "80ee1a110da3c13839a0d2bc2320f05e",
                                    "offset": 65536}}],
    "parent_id": None, "version": "1.0.0",
    "volume_id": "0b3a5c1e-0000-4000-8000-000000000001",
    "volume_meta": json.dumps({"version": 2, "volume-base-metadata": {
        "id": "0b3a5c1e-0000-4000-8000-000000000001", "size": 1, "display_name": "vol"}}),
}, sort_keys=True, indent=2).encode()

BAKFS = BackupMetadata(
    backup_id="b2", volume_id="vol-a", created_at="2026-12-01 00:00:00.123456+00:00",
    parent_id="b1", backup_name=None, backup_description="written into the bakfs mount",
    volume_meta=minimal_volume_meta(None, "written into the bakfs mount"),
    objects=(ObjectEntry(f"{BAKFS_PREFIX}-00001", 4096, 8192, "zstd", "0" * 31 + "1"),
             ObjectEntry(f"{BAKFS_PREFIX}-00002", 1 << 22, 12, "none", "ab" * 16)),
).to_json()

SHA256FILE = Sha256File("b2", "vol-a", "2026-12-01 00:00:00+00:00", 32768,
                        Digests.from_hex([f"{i:064x}" for i in range(5)]), None,
                        "x").to_json()

HOSTILE_INTS = st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 + 1, 2 ** 63 - 1,
                                2 ** 63, 2 ** 64, 2 ** 64 + 4096, -(2 ** 63), 10 ** 30])
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", "\udc80", "\ud800x", "a\udfff", "zz" * 16, "AB" * 16, "0" * 33, "..",
                     "../../etc/passwd", "/abs", "a//b", ".hidden", "\x00", "\n",
                     "x" * 2000, "zlib", "none", "gzip", "lz4", "1.0.0", "2.0.0",
                     f"{CINDER_PREFIX}-00009", f"{BAKFS_PREFIX}-00001", "bakfs-locks/v"]),
    st.text(max_size=40))
LEAVES = st.one_of(HOSTILE_INTS, st.integers(), HOSTILE_TEXT, st.booleans(), st.none(),
                   st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(HOSTILE_TEXT, inner, max_size=3)),
    max_leaves=8)


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*path, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A seed document after a few hostile edits, as raw bytes."""
    doc = copy.deepcopy(json.loads(seed))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        leaves = [p for p in paths if p and not isinstance(_parent(doc, p)[p[-1]],
                                                           dict | list)]
        path = draw(st.sampled_from(leaves if leaves and draw(st.booleans()) else paths))
        action = draw(st.sampled_from(["typed", "typed", "replace", "drop", "add", "rename"]))
        if not path:
            if action == "replace":
                doc = draw(VALUES)
            continue
        parent = _parent(doc, path)
        if action == "typed":  # the same type, a hostile value: past the obvious checks
            old = parent[path[-1]]
            parent[path[-1]] = draw(HOSTILE_INTS if isinstance(old, int) else HOSTILE_TEXT
                                    if isinstance(old, str) else VALUES)
        elif action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "drop":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(HOSTILE_TEXT)] = draw(VALUES)
        elif action == "add" and isinstance(parent, list):
            parent.append(draw(VALUES))
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(HOSTILE_TEXT)] = parent.pop(path[-1])
    raw = json.dumps(doc, sort_keys=draw(st.booleans())).encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 2))):  # then byte-level damage
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and raw:
            raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
        elif kind == "cut":
            raw = raw[:at]
        else:
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    return raw


def _safe_downstream(metadata: BackupMetadata, prefix: str) -> None:
    """What a parse accepted, every consumer can take: the checks promised hold, the
    document writes back, index rows pack, the overlay and the prefix check either work or
    say FormatError."""
    for obj in metadata.objects:
        obj.name.encode("utf-8")
        assert obj.offset >= 0 and 0 <= obj.length <= LIMITS.max_object_length
        assert obj.end <= LIMITS.max_volume_size
        assert len(obj.md5) == 32 and int(obj.md5, 16) >= 0 and obj.md5 == obj.md5.lower()
        codec.family(obj.compression)
        _encode_object(obj)
    for text in (metadata.backup_id, metadata.volume_id, metadata.created_at,
                 metadata.parent_id or "", metadata.backup_name or "",
                 metadata.backup_description or "", metadata.volume_meta or ""):
        text.encode("utf-8")
    parse_metadata(metadata.to_json())  # what we accepted, we accept again
    try:
        check_metadata(metadata, BackupRef(naming.parse_prefix(prefix)))
        extents = overlay([metadata]) if metadata.parent_id is None else []
    except FormatError:
        return
    for extent in extents:
        _EXT_KEY.pack(1, extent.offset)
        _EXT_VAL.pack(extent.length, 0, 1, 0, extent.object_offset)


@EXAMPLES
@given(st.one_of(mutated(CINDER).map(lambda raw: (raw, CINDER_PREFIX)),
                 mutated(BAKFS).map(lambda raw: (raw, BAKFS_PREFIX))))
def test_any_metadata_is_accepted_safely_or_refused_as_format_error(
        case: tuple[bytes, str]) -> None:
    raw, prefix = case
    try:
        metadata = parse_metadata(raw, limits=LIMITS)
    except FormatError:
        return
    _safe_downstream(metadata, prefix)


@EXAMPLES
@given(mutated(SHA256FILE))
def test_any_sha256file_is_accepted_or_refused_as_format_error(raw: bytes) -> None:
    try:
        doc = parse_sha256file(raw)
    except FormatError:
        return
    assert doc.chunk_size > 0
    assert all(len(d) == 32 for d in doc.sha256s)


def test_the_seeds_themselves_parse() -> None:
    assert len(parse_metadata(CINDER).objects) == 2
    assert parse_metadata(BAKFS).parent_id == "b1"
    assert len(parse_sha256file(SHA256FILE).sha256s) == 5
    struct.calcsize(">Q")  # the row formats above are the index's own
