"""A catalogue of 2,000 backups on radosgw, the CI size of an operator's 10,000: the index is
built with metadata GETs N wide (each `_metadata` read once), a refresh with nothing new is
the listing alone, a refresh after changes reads only the new documents and drops the gone
ones, `bakfs ls` answers from the index (`--cached`: without the store), and a mount lists a
volume of 1,000 backups from its tree."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from bakfs.backup.simple import write_backup
from bakfs.catalog.discovery import BackupRef, find_backups, newest_per_id, scan
from bakfs.catalog.inventory import delete
from bakfs.catalog.sync import LIST_RANGES, _load_each, open_index, refresh
from bakfs.cinder import naming
from bakfs.cinder.codec import compress, md5_hex
from bakfs.cinder.extents import Digests
from bakfs.cinder.metadata import ObjectEntry, backup_documents
from bakfs.cli import inventory as inventory_cli
from bakfs.config import S3Options
from bakfs.errors import StoreUnreachable
from bakfs.read.restore import restore_with
from bakfs.store.base import ObjectInfo, ObjectStore
from bakfs.store.s3 import S3Store
from bakfs.threads import Bridge
from tests.conftest import S3Server, empty_bucket
from tests.mount.fixtures import Mount, base_env, unmount
from tests.read.conftest import module_config

BIG_VOLUME = "vol-many"
VOLUMES = 100  # besides the big one, each with a full and 9 incrementals
POOL = 6  # s3.max_pool_connections of the refreshes below
OPTIONS = S3Options(object_size=4096, block_size=4096, compression="zstd")  # type: ignore[arg-type]
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
BLOCK_DATA = b"v" * 4096


class MeteredStore:
    """The real store, counting `_metadata` GETs and how many run at once."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.metadata_gets: collections.Counter[str] = collections.Counter()
        self.lists = 0
        self.prefixes: list[str] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self.inner.description

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            if key.endswith("_metadata"):
                self.metadata_gets[key] += 1
        try:
            return self.inner.get(key, byte_range)
        finally:
            with self._lock:
                self.running -= 1

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self.inner.iter_object(key, chunk_size)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            self.lists += 1
            self.prefixes.append(prefix)
        return self.inner.list(prefix, start_after)

    def reset(self) -> None:
        self.metadata_gets.clear()
        self.prefixes.clear()
        self.lists = self.most = 0


def _put_backup(store: S3Store, volume_id: str, n: int, parent: BackupRef | None
                ) -> BackupRef:
    """Backup n of a 4 KiB volume: a full one (one data object), or an incremental of
    `parent` that changed nothing (its two documents only), written as a writer would."""
    prefix = naming.make_prefix(volume_id, f"{volume_id}-b{n:04d}",
                                EPOCH + timedelta(seconds=n))
    objects = []
    if parent is None:
        key = naming.object_name(prefix, 1)
        stored, codec = compress(BLOCK_DATA, "zstd")
        store.put(key, stored)
        objects.append(ObjectEntry(key, 0, len(BLOCK_DATA), codec, md5_hex(BLOCK_DATA)))
    sha, metadata = backup_documents(
        prefix.backup_id, volume_id, prefix.started_at,
        parent.backup_id if parent else None, objects, 4096,
        Digests(hashlib.sha256(BLOCK_DATA).digest()), None, None)
    store.put(naming.sha256file_name(prefix), sha.to_json())
    store.put(naming.metadata_name(prefix), metadata.to_json())
    return BackupRef(prefix)


def _volume(store: S3Store, volume_id: str, count: int, chained: bool) -> list[BackupRef]:
    """`count` backups of one volume: a full and a chain of incrementals, or (not chained)
    a full and incrementals all standing on it."""
    refs = [_put_backup(store, volume_id, 0, None)]
    for n in range(1, count):
        refs.append(_put_backup(store, volume_id, n, refs[-1] if chained else refs[0]))
    return refs


@pytest.fixture(scope="module")
def catalogue(rgw: S3Server) -> Iterator[tuple[S3Store, dict[str, list[BackupRef]]]]:
    store = S3Store(rgw.options(f"bakfs-scale-{os.urandom(5).hex()}",
                                max_pool_connections=16))
    store.ensure_bucket()
    try:
        jobs = [(BIG_VOLUME, 1000, False)] + [(f"vol-{i:03d}", 10, True)
                                              for i in range(VOLUMES)]
        with ThreadPoolExecutor(16) as pool:
            made = list(pool.map(lambda job: (job[0], _volume(store, *job)), jobs))
        yield store, dict(made)
    finally:
        empty_bucket(store)
        store.close()


def _refresh(store: ObjectStore, path: Path) -> tuple[list[str], list[str], int]:
    async def main() -> tuple[list[str], list[str], int]:
        bridge = Bridge.create(s3_threads=POOL)
        index = await open_index(path, bridge)
        try:
            result = await refresh(store, index, bridge)
        finally:
            await bridge.run_index(index.close)
        return result.added, result.removed, result.backups
    return trio.run(main)


def _ls(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BAKFS_", "AWS_"))}
    result = subprocess.run([sys.executable, "-m", "bakfs", "ls", "--json", *args],
                            env={**clean, **env}, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_two_thousand_backups(catalogue: tuple[S3Store, dict[str, list[BackupRef]]],
                              rgw: S3Server, tmp_path: Path, start_mount: object) -> None:
    store, made = catalogue
    total = sum(len(refs) for refs in made.values())
    assert total == 2000
    metered = MeteredStore(store)
    index = tmp_path / "index"

    added, removed, backups = _refresh(metered, index)  # an empty index
    assert backups == total and len(added) == total and not removed
    assert len(metered.metadata_gets) == total and set(metered.metadata_gets.values()) == {1}
    assert 1 < metered.most <= POOL  # N wide, bounded by the s3 limiter

    metered.reset()
    assert _refresh(metered, index) == ([], [], total)
    assert not metered.metadata_gets and metered.most == 0  # the listing alone
    # in LIST_RANGES ranges side by side, split at volumes the index knows: the same backups
    # (vol-many holds half the backups: two of the three bounds fall in it, one is kept)
    assert 1 < metered.lists <= LIST_RANGES and set(metered.prefixes) == {"volume_"}
    assert scan(store, None, ["vol-050", "vol-007", "vol-050", "vol-none", "a", "w"]) == \
        scan(store)

    # three backups leave (the newest of three chains), two arrive
    gone = [made[f"vol-{i:03d}"][-1] for i in range(3)]
    for ref in gone:
        delete(store, ref.backup_id)
    new = [write_backup(store, io.BytesIO(b"w" * 4096), volume_id, OPTIONS,
                        parent=made[volume_id][-1], now=EPOCH + timedelta(hours=1))
           for volume_id in ("vol-050", "vol-051")]
    metered.reset()
    added, removed, backups = _refresh(metered, index)
    assert sorted(added) == sorted(r.backup_id for r in new)
    assert sorted(removed) == sorted(r.backup_id for r in gone)
    assert sorted(metered.metadata_gets) == sorted(r.metadata_key for r in new)
    assert backups == total - 1

    # `bakfs ls` answers from this index after one listing; --cached without the store
    env = {**rgw.env(store.bucket), "BAKFS_INDEX_PATH": str(index)}
    listed = _ls(env)
    assert len(listed) == total - 1 and all(b["kind"] in ("full", "incremental")
                                            for b in listed)
    assert [b["backup_id"] for b in listed if b["volume_id"] == "vol-050"][-1] == \
        new[0].backup_id
    down = {**env, "BAKFS_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "BAKFS_S3_RETRY_MAX_ATTEMPTS": "1", "BAKFS_S3_TIMEOUT": "2"}
    assert _ls(down, "--cached", BIG_VOLUME) == _ls(env, BIG_VOLUME)

    # a mount on this index shows the volume of 1,000 backups from its tree at once
    mount_env = {**base_env(rgw, store.bucket, tmp_path), "BAKFS_INDEX_PATH": str(index),
                 "BAKFS_INDEX_REFRESH_INTERVAL": "3600"}
    mount: Mount = start_mount(mount_env)  # type: ignore[operator]
    names = os.listdir(mount.path / BIG_VOLUME)
    assert len(names) == 1001 and "latest" in names
    assert len([n for n in os.listdir(mount.path) if n.startswith("vol-")]) == VOLUMES + 1


def test_a_restore_on_a_fresh_host_reads_only_its_own_volume(
        catalogue: tuple[S3Store, dict[str, list[BackupRef]]], rgw: S3Server,
        tmp_path: Path) -> None:
    """A restore with an empty index lists the store once and reads the `_metadata` of the
    backup's volume only, not the catalogue's 2,000; a later one of another volume adds
    that volume and keeps the first."""
    store, made = catalogue
    metered = MeteredStore(store)
    config = module_config(rgw, store.bucket, tmp_path)
    for volume_id in ("vol-007", "vol-042"):
        metered.reset()
        wanted = made[volume_id][4]
        target = tmp_path / f"{volume_id}.img"
        result = trio.run(lambda w=wanted, t=target: restore_with(  # type: ignore[misc]
            config, w.backup_id, str(t), store=metered))  # type: ignore[arg-type]
        assert result.bytes == 4096 and target.read_bytes() == BLOCK_DATA
        assert sorted(metered.metadata_gets) == sorted(r.metadata_key for r in made[volume_id])
        assert metered.lists == 1
    listed = _ls({**rgw.env(store.bucket), "BAKFS_INDEX_PATH": str(tmp_path / "index")},
                 "--cached")
    assert sorted({b["volume_id"] for b in listed}) == ["vol-007", "vol-042"]
    assert len(listed) == 20


def test_a_batch_of_documents_stops_at_an_unreachable_store(
        catalogue: tuple[S3Store, dict[str, list[BackupRef]]], rgw: S3Server) -> None:
    """One s3 thread reads several `_metadata` in a row; once the store cannot be reached,
    the rest of its batch fail with that error at once instead of each waiting for its
    own timeout, and a readable document is still read."""
    store, made = catalogue
    refs = made["vol-003"][:4]
    down = MeteredStore(S3Store(rgw.options(store.bucket, endpoint_url="http://127.0.0.1:9",
                                            retry_max_attempts=1)))
    out = _load_each(down, refs)  # type: ignore[arg-type]
    assert len(out) == 4 and all(isinstance(o, StoreUnreachable) for o in out)
    assert sum(down.metadata_gets.values()) == 1
    out = _load_each(store, refs)
    assert [o.backup_id for o in out] == [r.backup_id for r in refs]  # type: ignore[union-attr]


def test_ls_of_one_volume_lists_and_reads_that_volume_only(
        catalogue: tuple[S3Store, dict[str, list[BackupRef]]], rgw: S3Server,
        tmp_path: Path) -> None:
    """`bakfs ls VOLUME` on an empty index lists that volume's keys and reads its
    `_metadata`, not the bucket's 2,000."""
    store, made = catalogue
    metered = MeteredStore(store)
    config = module_config(rgw, store.bucket, tmp_path)
    listing, _tsm = trio.run(inventory_cli.catalogue, config, metered,  # type: ignore[arg-type]
                             "vol-042", False, False)
    assert [e.backup_id for e in listing.backups] == [r.backup_id for r in made["vol-042"]]
    assert [p for p in metered.prefixes if p.startswith("volume_")] == ["volume_vol-042/"]
    assert sorted(metered.metadata_gets) == sorted(r.metadata_key for r in made["vol-042"])


def test_a_first_mount_shows_every_volume_and_reads_one_before_the_index_is_built(
        catalogue: tuple[S3Store, dict[str, list[BackupRef]]], rgw: S3Server, tmp_path: Path,
        start_mount: object) -> None:
    """A mount on an empty index is up once the store is listed, with every volume's
    directory; a volume opened while the index is being built has its backups indexed next
    and served (the unit test in test_service shows the order). The build ends with the
    whole catalogue, and a re-mount of that index does not list the store first."""
    store, made = catalogue  # as the tests before left it
    per_volume = collections.Counter(r.volume_id for r in newest_per_id(find_backups(store)))
    env = {**base_env(rgw, store.bucket, tmp_path), "BAKFS_INDEX_PATH": str(tmp_path / "index"),
           "BAKFS_INDEX_REFRESH_INTERVAL": "3600", "BAKFS_S3_MAX_POOL_CONNECTIONS": "2"}
    mount: Mount = start_mount(env)  # type: ignore[operator]
    volumes = sorted(n for n in os.listdir(mount.path) if n.startswith("vol-"))
    assert volumes == sorted(made)
    late = mount.path / f"vol-{VOLUMES - 1:03d}"
    names = os.listdir(late)
    assert len(names) == per_volume[late.name] + 1 and "latest" in names
    assert (late / "latest").read_bytes() == BLOCK_DATA  # an incremental: nothing changed
    done = f"index: {per_volume.total()} backups of {len(per_volume)} volumes indexed"
    mount.wait_for_log(done, "the first build never ended", timeout=120)
    assert {v: len(os.listdir(mount.path / v)) - 1 for v in volumes} == per_volume
    text = mount.log_text()
    assert text.index("volumes listed") < text.index("mounted ") < text.index(done)
    unmount(mount.path, mount.process)
    again: Mount = start_mount(env)  # type: ignore[operator]
    assert sorted(n for n in os.listdir(again.path) if n.startswith("vol-")) == volumes
    assert "volumes listed" not in again.log_text()  # the index is filled: no LIST first
