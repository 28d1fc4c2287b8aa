"""One hostile `_metadata` in the bucket takes down nothing else (issue 14, items 3 and 4):
each kind is catalogued as unreadable with the reason, the healthy backups of other volumes
are indexed, read and restored, `ls` lists the bad ones as unreadable, and a decompression
bomb fails its read at once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bakfs import cli
from bakfs.config import Config
from bakfs.errors import IntegrityError
from bakfs.read.engine import open_engine
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.hostile import MUTATIONS, plant, plant_bomb, plant_sealed
from tests.read.conftest import make_versions, read_backup, write_chain

SIZE = 6 * 64 * 1024 + 777


def test_hostile_documents_are_quarantined_and_the_rest_works(
        rgw: S3Server, s3_store: S3Store, engine_config: Callable[..., Config], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_chain(s3_store, make_versions(SIZE, 2, seed=31), "vol-good")
    planted = [plant(s3_store, "vol-evil", kind) for kind in MUTATIONS]
    planted.append(plant_sealed(s3_store, rgw.options(s3_store.bucket), "vol-evil"))

    async def main() -> None:
        async with open_engine(engine_config(), s3_store) as engine:  # a new index: listed
            healthy = await engine.catalog.list_backups("vol-good")
            assert [r.status for r in healthy] == ["ok", "ok"]
            broken = {r.backup_id: r for r in await engine.catalog.list_backups("vol-evil")}
            assert {r.status for r in broken.values()} == {"broken"}
            assert set(broken) == {p.backup_id for p in planted}
            for bad in planted:
                assert bad.reason in (broken[bad.backup_id].error or ""), bad
            assert await read_backup(engine, good.ids[-1], 0, SIZE) == good.images[-1]
            again = await engine.catalog.refresh()  # retried, and as unreadable as before
            assert set(again.broken) == {p.backup_id for p in planted} and not again.added

    trio.run(main)

    for name, value in rgw.env(s3_store.bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BAKFS_INDEX_PATH", str(tmp_path / "fresh-index"))  # a fresh catalogue
    monkeypatch.setenv("BAKFS_CACHE_PATH", str(tmp_path / "fresh-cache"))
    target = tmp_path / "restored.img"
    assert cli.main(["restore", good.ids[0], str(target)]) == 0
    assert target.read_bytes() == good.images[0]
    capsys.readouterr()
    assert cli.main(["ls", "vol-evil", "--json"]) == 0
    listed = {b["backup_id"]: b for b in json.loads(capsys.readouterr().out)}
    for bad in planted:
        assert listed[bad.backup_id]["kind"] == "unreadable"
        assert bad.reason in listed[bad.backup_id]["error"]
    assert cli.main(["ls"]) == 0
    assert "vol-good" in capsys.readouterr().out


def test_a_decompression_bomb_fails_its_read_at_once(
        s3_store: S3Store, engine_config: Callable[..., Config]) -> None:
    bomb = plant_bomb(s3_store, "vol-bomb", plain_size=2 << 30)

    async def main() -> None:
        async with open_engine(engine_config(), s3_store, refresh=True) as engine:
            started = time.monotonic()
            with pytest.raises(IntegrityError, match=bomb.reason):
                await read_backup(engine, bomb.backup_id, 0, 4096)
            assert time.monotonic() - started < 2

    trio.run(main)
