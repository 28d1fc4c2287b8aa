"""The LMDB chunk index: incremental refresh, rebuild, a corrupt or foreign index rebuilt,
holes and all-zero objects never fetched, lookups in a 1 TiB map, the CLI commands."""

from __future__ import annotations

import json
import resource
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
import trio

from bakfs import cli
from bakfs.catalog.index import (
    KIND_DATA,
    KIND_HOLE,
    KIND_ZERO,
    SCHEMA_VERSION,
    BackupRecord,
    Index,
)
from bakfs.catalog.sync import open_index, refresh
from bakfs.cinder.metadata import ObjectEntry
from bakfs.cinder.zeros import ZERO_DIGESTS, ZeroDigests
from bakfs.config import Config, IndexOptions, LocalOptions
from bakfs.errors import IndexCorrupt
from bakfs.read.engine import open_engine
from bakfs.store.localdir import LocalStore
from bakfs.store.s3 import S3Store
from bakfs.threads import Bridge, Limiters
from tests.conftest import S3Server
from tests.read.conftest import CountingStore, make_versions, read_backup, write_chain

SIZE = 12 * 64 * 1024 + 5000


def _refresh(config: Config, store: S3Store):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        bridge = Bridge(Limiters.create())
        index = await open_index(config.index.path, bridge)
        try:
            return await refresh(store, index, bridge)
        finally:
            index.close()
    return trio.run(main)


def test_refresh_is_incremental_and_drops_deleted(
        s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    config = engine_config()
    a = write_chain(s3_store, make_versions(SIZE, 3, seed=1), "vol-a")
    first = _refresh(config, s3_store)
    assert sorted(first.added) == sorted(a.ids)
    assert first.rebuilt == "it did not exist"
    assert (first.backups, first.volumes) == (3, 1)

    b = write_chain(s3_store, make_versions(SIZE, 1, seed=2), "vol-b")
    second = _refresh(config, s3_store)
    assert second.added == b.ids  # only the new backup was read
    assert second.removed == [] and second.rebuilt is None
    assert (second.backups, second.volumes) == (4, 2)

    # deleting the middle backup of vol-a drops it and the incremental standing on it
    for info in list(s3_store.list(str(a.refs[1].prefix))):
        s3_store.delete(info.key)
    third = _refresh(config, s3_store)
    assert third.removed == [a.ids[1]]
    assert third.added == []
    assert third.broken == {a.ids[2]: third.broken[a.ids[2]]}
    assert "not in the store" in third.broken[a.ids[2]]
    index = Index.open(config.index.path)
    try:
        assert {r.backup_id for r in index.list_backups("vol-a")} == {a.ids[0], a.ids[2]}
        assert index.get_backup(a.ids[2]).status == "broken"  # type: ignore[union-attr]
        assert index.get_backup(a.ids[1]) is None
        assert index.list_volumes() == ["vol-a", "vol-b"]
    finally:
        index.close()


def test_corrupt_or_foreign_index_is_rebuilt(
        s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    config = engine_config()
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=3), "vol-c")
    _refresh(config, s3_store)
    data = Path(config.index.path) / "data.mdb"
    data.write_bytes(b"this is not an LMDB file" * 1000)

    async def read_all() -> tuple[str | None, bytes]:
        async with open_engine(config, s3_store) as engine:
            data = await read_backup(engine, chain.ids[1], 0, SIZE)
            return engine.catalog.index.rebuilt, data

    reason, got = trio.run(read_all)
    assert reason is not None and "LMDB" in reason
    assert got == chain.images[1]

    # an index of another schema version is not trusted either
    index = Index.open(config.index.path)
    with index.env.begin(write=True) as txn:
        txn.put(b"schema", b"bakfs-index-0", db=index.env.open_db(b"meta", txn=txn))
    index.close()
    reason, got = trio.run(read_all)
    assert reason is not None and SCHEMA_VERSION.decode() in reason
    assert got == chain.images[1]


def test_an_index_built_for_another_store_is_emptied_by_the_engine(tmp_path: Path) -> None:
    """One index path, two stores in turn (an operator switching buckets or SSE-C keys in
    the config): the engine must not serve the first store's rows for the second."""
    index = IndexOptions(path=str(tmp_path / "index"))
    first, second = (LocalStore(tmp_path / name, "volumebackups") for name in ("a", "b"))
    for store in (first, second):
        store.ensure_bucket()
    chain = write_chain(first, make_versions(SIZE, 1, seed=4), "vol-first")

    async def backups(store: LocalStore) -> tuple[str | None, list[str]]:
        config = Config(local=LocalOptions(path=str(store.root)), index=index)
        async with open_engine(config, store, refresh=True) as engine:
            listed = await engine.catalog.list_backups()
            return engine.catalog.index.rebuilt, [r.backup_id for r in listed]

    assert trio.run(backups, first)[1] == chain.ids
    reason, listed = trio.run(backups, second)
    assert listed == [] and reason is not None and "another store" in reason
    assert trio.run(backups, first)[1] == chain.ids


def test_an_empty_or_markless_directory_is_taken_quietly_or_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "made-ahead"
    empty.mkdir()
    index = Index.open(empty)
    index.close()
    assert index.rebuilt == "it was empty" and not caplog.records  # nothing to warn about
    foreign = tmp_path / "foreign"
    env = lmdb.open(str(foreign), max_dbs=2)
    env.open_db(b"theirs")
    env.close()
    index = Index.open(foreign)
    index.close()
    assert index.rebuilt == "it has no schema mark"
    assert "no schema mark; rebuilding" in caplog.text and "Permission" not in caplog.text


def test_rebuild_from_nothing_via_cli(rgw: S3Server, s3_store: S3Store, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=4), "vol-cli")
    for name, value in rgw.env(s3_store.bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BAKFS_INDEX_PATH", str(tmp_path / "cli-index"))
    monkeypatch.setenv("BAKFS_CACHE_PATH", str(tmp_path / "cli-cache"))
    assert cli.main(["index", "refresh", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["added"]) == sorted(chain.ids) and doc["backups"] == 2
    assert cli.main(["index", "refresh", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == []
    assert cli.main(["index", "rebuild", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc["added"]) == sorted(chain.ids)
    assert doc["rebuilt"] == "a rebuild was asked for"
    assert cli.main(["index", "refresh"]) == 0
    assert "2 backups of 1 volumes" in capsys.readouterr().out

    target = tmp_path / "restored.img"
    assert cli.main(["restore", chain.ids[1], str(target), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert target.read_bytes() == chain.images[1]
    assert out["bytes"] == SIZE and out["objects_fetched"] > 0
    assert cli.main(["restore", "no-such-backup", str(tmp_path / "x")]) == 1
    assert "no complete backup no-such-backup" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_zero_objects_and_holes_are_never_fetched(
        s3_store: S3Store, counting: CountingStore,
        engine_config: Callable[..., Config]) -> None:
    versions = make_versions(SIZE, 2, seed=5)
    chain = write_chain(s3_store, versions, "vol-z")
    config = engine_config()

    async def main() -> None:
        async with open_engine(config, counting) as engine:
            _record, spans = engine.catalog.index.lookup(chain.ids[1], 0, SIZE)
            kinds = {s.kind for s in spans}
            assert KIND_ZERO in kinds and KIND_DATA in kinds
            for span in spans:
                if span.kind != KIND_DATA:
                    assert await read_backup(engine, chain.ids[1], span.offset, span.length) == \
                        bytes(span.length)
            assert counting.data_gets() == {}
            assert await read_backup(engine, chain.ids[1], 0, SIZE) == versions[1]

    trio.run(main)


def test_zero_digests() -> None:
    import hashlib

    for n in (0, 1, 4095, 4096, 4097, 65536, 100_000, 5000, 12):
        assert ZERO_DIGESTS.of(n) == hashlib.md5(bytes(n)).hexdigest()
    assert ZERO_DIGESTS.is_zero(65536, hashlib.md5(bytes(65536)).hexdigest().upper())
    assert not ZERO_DIGESTS.is_zero(65536, hashlib.md5(b"x").hexdigest())


def test_lookup_in_a_one_tib_map(tmp_path: Path) -> None:
    """A 1 TiB volume of 262 144 objects of 4 MiB: a 4 KiB read resolves to one span by a
    B-tree seek (the map is never loaded whole)."""
    obj = 4 << 20
    count = (1 << 40) // obj
    index = Index.open(tmp_path / "big")
    try:
        record = BackupRecord(backup_id="big", volume_id="v", prefix="p", timestamp="1",
                              parent_id=None, created_at="", name=None, description=None,
                              size=1 << 40, chain=("big",), fingerprint="f")
        seq = index.begin_backup(record)
        batch = 20_000
        for start in range(0, count, batch):
            n = min(batch, count - start)
            index.add_objects(seq, start, [ObjectEntry(f"obj-{i:06d}", i * obj, obj, "zstd",
                                                     f"{i:032x}") for i in range(start,
                                                                                start + n)])
            index.add_extents(seq, [(i * obj, obj, KIND_HOLE if i % 7 == 0 else KIND_DATA,
                                     seq, i, 0) for i in range(start, start + n)])
        import dataclasses
        index.finish_backup(dataclasses.replace(record, seq=seq, status="ok"))
        _record, spans = index.lookup("big", (1 << 40) - 3 * obj + 12345, 4096)
        assert len(spans) == 1
        assert spans[0].obj is not None and spans[0].obj.name == f"obj-{count - 3:06d}"
        _record, spans = index.lookup("big", 7 * obj + obj - 10, 20)
        assert [s.kind for s in spans] == [KIND_HOLE, KIND_DATA]
        _record, spans = index.lookup("big", 0, 1, more=5)
        assert len(spans) == 6
        assert index.drop_backup("big")
        assert index.stats() == {"backups": 0, "objects": 0, "extents": 0}
    finally:
        index.close()


def test_impossible_row_found_while_reading_triggers_a_rebuild(
        s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=6), "vol-bad-row")
    config = engine_config()

    async def main() -> None:
        async with open_engine(config, s3_store, refresh=True) as engine:
            record = engine.catalog.index.get_backup(chain.ids[1])
            assert record is not None
            # damage every extent row of the backup (a bad kind byte)
            with engine.catalog.index.env.begin(write=True) as txn:
                db = engine.catalog.index.env.open_db(b"extents", txn=txn)
                cursor = txn.cursor(db=db)
                for key, value in list(cursor):
                    if key[:4] == record.seq.to_bytes(4, "big"):
                        txn.put(key, value[:8] + b"\x09" + value[9:], db=db)
            assert await read_backup(engine, chain.ids[1], 0, SIZE) == chain.images[1]
            assert "its checksum does not match" in (engine.catalog.index.rebuilt or "")

    trio.run(main)


def test_rewritten_metadata_is_reindexed(s3_store: S3Store,
                                         engine_config: Callable[..., Config]) -> None:
    config = engine_config()
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=7), "vol-rw")
    _refresh(config, s3_store)
    key = chain.refs[0].metadata_key
    doc = json.loads(s3_store.get(key))
    doc["backup_name"] = "renamed"
    s3_store.put(key, json.dumps(doc, sort_keys=True, indent=2).encode())
    result = _refresh(config, s3_store)
    # the full backup changed, and so the incremental standing on it is re-resolved too
    assert sorted(result.added) == sorted(chain.ids)
    assert result.removed == []
    index = Index.open(config.index.path)
    try:
        assert index.get_backup(chain.ids[0]).name == "renamed"  # type: ignore[union-attr]
    finally:
        index.close()


def test_zero_digests_stay_small_for_any_claimed_length() -> None:
    """A length of 2^40 is not hashed (it was: one digest kept per 4 KiB, 20 GB of RSS)."""
    zeros = ZeroDigests()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert not zeros.is_zero(1 << 40, "0" * 32)
    assert zeros.is_zero(64 << 20, ZERO_DIGESTS.of(64 << 20))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 8 * 1024
    with pytest.raises(ValueError):
        zeros.of(1 << 40)


def test_a_backup_left_half_built_is_dropped_when_the_index_is_opened(tmp_path: Path
                                                                      ) -> None:
    """A killed writer leaves its record `building`: the next open drops it, and only it
    (the open decodes only the rows that may be half-built)."""
    import dataclasses

    def record(backup_id: str, name: str | None = None) -> BackupRecord:
        return BackupRecord(backup_id=backup_id, volume_id="v", prefix="p", timestamp="1",
                            parent_id=None, created_at="", name=name, description=None,
                            size=4096, chain=(backup_id,), fingerprint="f")

    index = Index.open(tmp_path / "index")
    try:
        done = record("done", name='"status": "building"')  # the marker inside a value
        index.finish_backup(dataclasses.replace(done, seq=index.begin_backup(done),
                                                status="ok"))
        index.begin_backup(record("killed"))
    finally:
        index.close()
    index = Index.open(tmp_path / "index")
    try:
        assert [r.backup_id for r in index.list_backups(include_unfinished=True)] == ["done"]
        assert index.get_backup("killed") is None
    finally:
        index.close()


def test_a_record_decodes_to_what_was_stored_and_older_ones_get_defaults() -> None:
    """Records this version wrote are decoded by the fast path; one written before a field
    existed (no `data_bytes`) gets its default; a record with a field bakfs does not know is
    damage, not data."""
    record = BackupRecord(backup_id="b-1", volume_id="vol-1", prefix="volume_vol-1/x",
                          timestamp="20261201000000", parent_id=None,
                          created_at="2026-12-01T00:00:00", name="n", description=None,
                          size=1 << 30, chain=("b-1",), fingerprint="f", status="ok",
                          codecs=("zstd",), data_bytes=4096)
    decoded = BackupRecord.from_json(record.to_json())
    assert decoded == record and isinstance(decoded.chain, tuple)
    older = json.loads(record.to_json())
    del older["data_bytes"]
    assert BackupRecord.from_json(json.dumps(older).encode()).data_bytes is None
    with pytest.raises(IndexCorrupt):
        BackupRecord.from_json(json.dumps({**older, "unknown": 1}).encode())


def test_the_volumes_a_listing_is_split_at_share_the_backups_out(tmp_path: Path) -> None:
    """`split_volumes` names volumes (in key order) that cut the index's backups into about
    equal runs, from the volume rows' keys alone; none for a small index."""
    index = Index.open(tmp_path / "index")
    try:
        assert index.split_volumes(4) == []
        for v in range(40):
            for b in range(1 if v % 2 else 9):  # uneven volumes
                index.put_broken(BackupRecord(
                    backup_id=f"b-{v:02d}-{b}", volume_id=f"vol-{v:02d}", prefix="p",
                    timestamp=f"{b}", parent_id=None, created_at="", name=None,
                    description=None, size=0, chain=(f"b-{v:02d}-{b}",), fingerprint="f",
                    status="broken", error="test"))
        bounds = index.split_volumes(4)
        assert len(bounds) == 3 and bounds == sorted(set(bounds))
        rows = [r.volume_id for r in index.list_backups()]  # 200 backups in volume order
        before = [sum(1 for v in rows if v < bound) for bound in bounds]
        assert all(abs(n - 50 * (i + 1)) <= 9 for i, n in enumerate(before)), before
        assert index.split_volumes(1) == [] and len(index.split_volumes(40)) <= 39
    finally:
        index.close()
