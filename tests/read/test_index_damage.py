"""A damaged index is found and repaired from the store, never served (issue 14, item 2):
a flipped bit in an extent row, a row consistent with itself but pointing outside its object,
LMDB pages damaged under a running engine, and `bakfs index refresh` repairing what it finds."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bakfs import cli
from bakfs.catalog import index as index_module
from bakfs.catalog.index import KIND_DATA, Index
from bakfs.config import Config
from bakfs.read.engine import open_engine
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.read.conftest import Chain, make_versions, read_backup, write_chain

SIZE = 12 * 64 * 1024 + 5000
PAGE = 4096


def _damage_extents(index: Index, backup_id: str, *, reseal: bool) -> int:
    """Add 512 to the offset-in-object of every data extent of a backup (the bytes then come
    from the wrong place in the object), keeping the row's checksum right when `reseal` (a
    row consistent with itself, but not with its object). Returns the rows changed."""
    record = index.get_backup(backup_id)
    assert record is not None
    changed = 0
    with index.env.begin(write=True) as txn:
        db = index.env.open_db(b"extents", txn=txn)
        for key, value in list(txn.cursor(db=db)):
            if key[:4] != record.seq.to_bytes(4, "big") or value[8] != KIND_DATA:
                continue
            body = bytearray(value)
            inner = struct.unpack_from(">Q", body, 17)[0]
            struct.pack_into(">Q", body, 17, inner ^ 512)
            if reseal:
                body = bytearray(index_module._seal(key, bytes(body[:-4])))
            txn.put(key, bytes(body), db=db)
            changed += 1
    return changed


def _read_all(config: Config, store: S3Store, chain: Chain,
              damage: Callable[[Index], None]) -> tuple[bytes, str | None]:
    async def main() -> tuple[bytes, str | None]:
        async with open_engine(config, store, refresh=True) as engine:
            damage(engine.catalog.index)
            data = await read_backup(engine, chain.ids[-1], 0, SIZE)
            return data, engine.catalog.index.rebuilt

    return trio.run(main)


@pytest.mark.parametrize("reseal", [False, True], ids=["bit-flip", "consistent-row"])
def test_an_extent_pointing_elsewhere_in_its_object_is_never_served(
        s3_store: S3Store, engine_config: Callable[..., Config], reseal: bool) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=21), "vol-flip")
    changed: list[int] = []
    data, reason = _read_all(engine_config(), s3_store, chain, lambda index: changed.append(
        _damage_extents(index, chain.ids[-1], reseal=reseal)))
    assert changed[0] > 0
    assert data == chain.images[-1]
    expected = "does not lie in its object" if reseal else "its checksum does not match"
    assert reason is not None and expected in reason


def _break_pages(path: Path) -> None:
    """Make every page of data.mdb but the two meta pages the wrong type (flags 0): any
    B-tree access after this fails inside LMDB (MDB_CORRUPTED)."""
    with open(path / "data.mdb", "r+b") as f:
        size = f.seek(0, 2)
        for page in range(2, size // PAGE):
            f.seek(page * PAGE + 10)
            f.write(b"\0\0")


def test_lmdb_failing_under_a_running_engine_means_rebuild_not_traceback(
        s3_store: S3Store, engine_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=22), "vol-pages")
    config = engine_config()
    data, reason = _read_all(config, s3_store, chain,
                             lambda index: _break_pages(Path(config.index.path)))
    assert data == chain.images[-1]
    assert reason is not None and "LMDB failed" in reason
    assert "rebuilding it from the store" in caplog.text


def test_index_refresh_finds_and_repairs_damage_and_restore_is_right(
        rgw: S3Server, s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    chain = write_chain(s3_store, make_versions(SIZE, 2, seed=23), "vol-repair")
    for name, value in rgw.env(s3_store.bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BAKFS_INDEX_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("BAKFS_CACHE_PATH", str(tmp_path / "cache"))
    assert cli.main(["index", "refresh", "--json"]) == 0
    capsys.readouterr()
    index = Index.open(tmp_path / "index")
    try:
        assert index.check() == []
        assert _damage_extents(index, chain.ids[-1], reseal=False) > 0
        assert index.check()  # found
    finally:
        index.close()
    assert cli.main(["index", "refresh", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "damaged" in doc["rebuilt"] and sorted(doc["added"]) == sorted(chain.ids)
    index = Index.open(tmp_path / "index")
    try:
        assert index.check() == []  # repaired
        assert _damage_extents(index, chain.ids[-1], reseal=True) > 0  # damage it again
    finally:
        index.close()
    target = tmp_path / "restored.img"
    assert cli.main(["restore", chain.ids[-1], str(target), "--json"]) == 0
    assert target.read_bytes() == chain.images[-1]  # never the wrong bytes
