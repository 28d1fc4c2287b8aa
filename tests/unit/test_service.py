"""The mount's service without FUSE: the handlers' calls made directly, on the embedded local
store, a real LMDB index and a real chunk cache."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from bakfs.backup.simple import write_backup
from bakfs.catalog import sync
from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.catalog.index import BackupRecord
from bakfs.config import CacheOptions, Config, IndexOptions, KiB, S3Options
from bakfs.errors import BackupFailed, OutOfOrderWrite, StoreUnreachable, VolumeBusy
from bakfs.mount.namespace import LATEST, METRICS, ROOT_INODE, STATUS, Node, Tree
from bakfs.mount.service import MountService
from bakfs.read.engine import open_engine
from bakfs.store.base import ObjectInfo
from bakfs.store.localdir import LocalStore
from bakfs.tsm.kept import read_kept
from bakfs.tsm.records import TsmRecord, put_record
from tests.read.conftest import CountingStore

BLOCK = 4 * KiB
OBJECT = 64 * KiB
SIZE = 5 * OBJECT + 1234


def _config(tmp_path: Path) -> Config:
    return Config(s3=S3Options(object_size=OBJECT, block_size=BLOCK),
                  cache=CacheOptions(path=str(tmp_path / "cache"), max_size=16 << 20,
                                     memory_size=1 << 20, readahead_max=256 * KiB),
                  index=IndexOptions(path=str(tmp_path / "index")))


def _image(seed: int) -> bytes:
    rng = random.Random(seed)
    data = bytearray(SIZE)
    for start in range(0, SIZE, BLOCK):
        if rng.random() < 0.6:
            data[start:start + BLOCK] = rng.randbytes(BLOCK)[:SIZE - start]
    return bytes(data)


def _serve(tmp_path: Path, store: CountingStore,
           body: Callable[[MountService], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_engine(_config(tmp_path), store) as engine, \
                trio.open_nursery() as nursery:
            service = MountService(engine.config, engine, Tree(0.0))
            service.nursery = nursery
            await service.refresh()
            await body(service)
            nursery.cancel_scope.cancel()

    trio.run(main)


@contextlib.asynccontextmanager
async def _re_mounted(tmp_path: Path, store: CountingStore) -> AsyncIterator[MountService]:
    """A re-mount's service: the tree from the index, the store's first listing started (as
    the daemon does), stopped on the way out."""
    async with open_engine(_config(tmp_path), store) as engine, \
            trio.open_nursery() as nursery:
        service = MountService(engine.config, engine, Tree(0.0))
        service.nursery = nursery
        await service.refresh(list_store=False)
        nursery.start_soon(service.first_listing)
        yield service
        nursery.cancel_scope.cancel()


def _backup_node(service: MountService, volume: str, backup_id: str) -> Node:
    directory = service.tree.lookup(ROOT_INODE, volume)
    assert directory is not None
    return next(n for n in service.tree.listing(directory.inode) if n.name.endswith(backup_id))


@pytest.fixture
def store(local_store: LocalStore) -> CountingStore:
    return CountingStore(local_store)


def test_reads_through_a_backup_node_count_and_describe_it(
        tmp_path: Path, local_store: LocalStore, store: CountingStore) -> None:
    image = _image(1)
    ref = write_backup(local_store, io.BytesIO(image), "vol-r",
                       S3Options(object_size=OBJECT, block_size=BLOCK))

    async def body(service: MountService) -> None:
        node = _backup_node(service, "vol-r", ref.backup_id)
        assert node.size == SIZE
        fh = service.open_handle(node)
        assert await service.read(fh, 0, SIZE) == image
        assert await service.read(fh, SIZE - 10, 100) == image[-10:]
        await service.release(fh)
        attrs = await service.xattrs(node)
        assert attrs["user.bakfs.backup_id"] == ref.backup_id
        assert attrs["user.bakfs.bytes_served"] == str(SIZE + 10)
        assert service.counters.reads == 2 and service.counters.bytes_served == SIZE + 10
        await service.measure_held()
        assert 0 < node.held <= SIZE  # type: ignore[operator]
        root = await service.xattrs(service.tree.root)
        assert root["user.bakfs.pid"] == str(os.getpid()) and root["user.bakfs.writers"] == "0"
        status = service.tree.lookup(ROOT_INODE, STATUS)
        metrics = service.tree.lookup(ROOT_INODE, METRICS)
        assert status is not None and metrics is not None
        text = await service.read(service.open_handle(status), 0, 1 << 16)
        assert b"backups shown: 1" in text and b"reads: 2" in text
        prom = await service.read(service.open_handle(metrics), 0, 1 << 16)
        assert b"bakfs_reads_total 2" in prom

    _serve(tmp_path, store, body)


def test_incoming_backups_are_planned_from_the_index_and_shown_without_a_listing(
        tmp_path: Path, local_store: LocalStore, store: CountingStore) -> None:
    first, second = _image(2), bytearray(_image(2))
    second[OBJECT:OBJECT + BLOCK] = bytes(reversed(second[OBJECT:OBJECT + BLOCK]))
    pid = os.getpid()  # a live writer that was not killed

    async def write(service: MountService, data: bytes) -> None:
        fh, node = await service.start_incoming("vol-in", pid)
        assert service.tree.lookup(service.tree.incoming.inode, "vol-in") is node
        for start in range(0, len(data), 100_000):
            await service.write(fh, start, data[start:start + 100_000])
        await service.finish(fh, closing=True)
        await service.release(fh)

    async def body(service: MountService) -> None:
        await write(service, first)
        listings = len(store.lists)
        await write(service, bytes(second))
        # the commit put the backup into the index and the tree: no listing of backups
        assert [p for p in store.lists[listings:] if p.startswith("volume_")] == []
        directory = service.tree.lookup(ROOT_INODE, "vol-in")
        assert directory is not None
        files = [n for n in service.tree.listing(directory.inode) if n.kind == "backup"]
        assert len(files) == 2 and service.counters.backups_committed == 2
        latest = service.tree.lookup(directory.inode, LATEST)
        newest = max(files, key=lambda n: n.mtime)
        assert latest is not None and latest.target == newest.name
        fh = service.open_handle(newest)
        assert await service.read(fh, 0, SIZE) == bytes(second)
        assert service.tree.listing(service.tree.incoming.inode) == []

    _serve(tmp_path, store, body)
    refs = find_backups(local_store, "vol-in")
    parents = sorted(load_metadata(local_store, r).parent_id or "" for r in refs)
    assert parents[0] == "" and parents[1] in {r.backup_id for r in refs}  # an incremental


def test_a_second_writer_is_busy_and_out_of_order_writes_fail(
        tmp_path: Path, store: CountingStore) -> None:
    async def body(service: MountService) -> None:
        fh, _node = await service.start_incoming("vol-busy", os.getpid())
        with pytest.raises(VolumeBusy):
            await service.start_incoming("vol-busy", os.getpid())
        await service.write(fh, 0, b"x" * 1000)
        with pytest.raises(OutOfOrderWrite):
            await service.write(fh, 500, b"y")  # back over what was written
        # the failed write abandoned the backup: the name is free again, nothing committed
        assert "vol-busy" not in service.writers
        with pytest.raises(BackupFailed):
            await service.finish(fh, closing=True)
        assert service.counters.backups_failed == 1

    _serve(tmp_path, store, body)
    assert find_backups(store.inner, "vol-busy") == []  # type: ignore[arg-type]


def test_sparse_writes_and_an_extending_truncate_are_zeros(
        tmp_path: Path, local_store: LocalStore, store: CountingStore) -> None:
    """cp of a sparse image seeks over holes and ends with ftruncate: both are zeros
    (issue 14, item 7)."""
    image = bytearray(_image(3))
    image[OBJECT:3 * OBJECT + 100] = bytes(2 * OBJECT + 100)  # a hole inside
    image[SIZE - OBJECT - 7:] = bytes(OBJECT + 7)  # and one at the end
    pid = os.getpid()

    async def body(service: MountService) -> None:
        fh, _node = await service.start_incoming("vol-sparse", pid)
        await service.write(fh, 0, bytes(image[:OBJECT]))
        await service.write(fh, 3 * OBJECT + 100, bytes(image[3 * OBJECT + 100:SIZE - OBJECT - 7]))
        incoming = service.tree.lookup(service.tree.incoming.inode, "vol-sparse")
        assert incoming is not None
        await service.truncate(incoming, SIZE)
        await service.finish(fh, closing=True)
        await service.release(fh)
        directory = service.tree.lookup(ROOT_INODE, "vol-sparse")
        assert directory is not None
        latest = service.tree.lookup(directory.inode, LATEST)
        assert latest is not None
        backup = service.tree.lookup(directory.inode, latest.target or "")
        assert backup is not None and backup.size == SIZE
        assert await service.read(service.open_handle(backup), 0, SIZE) == bytes(image)

    _serve(tmp_path, store, body)


def test_a_failed_truncate_or_an_empty_file_commits_nothing(
        tmp_path: Path, store: CountingStore) -> None:
    async def body(service: MountService) -> None:
        fh, node = await service.start_incoming("vol-shrink", os.getpid())
        await service.write(fh, 0, b"x" * 100_000)
        with pytest.raises(OutOfOrderWrite, match="truncate"):
            await service.truncate(node, 50_000)  # shrinking what was written
        fh2, node2 = await service.start_incoming("vol-far", os.getpid())
        with pytest.raises(BackupFailed, match="past the largest volume"):
            await service.truncate(node2, 1 << 62)  # no days of zeros
        await service.release(fh2)
        with pytest.raises(BackupFailed):  # the close reports it: nothing committed
            await service.finish(fh, closing=True)
        await service.release(fh)
        fh, node = await service.start_incoming("vol-empty", os.getpid())
        await service.finish(fh, closing=False)  # an fsync of nothing is not the end
        assert "vol-empty" in service.writers
        with pytest.raises(BackupFailed, match="empty file makes no backup"):
            await service.finish(fh, closing=True)
        await service.release(fh)
        assert service.counters.backups_failed == 3 and not service.writers

    _serve(tmp_path, store, body)
    assert find_backups(store.inner, "vol-shrink") == []  # type: ignore[arg-type]
    assert find_backups(store.inner, "vol-empty") == []  # type: ignore[arg-type]


def test_a_volume_of_another_size_says_to_write_it_full(
        tmp_path: Path, local_store: LocalStore, store: CountingStore) -> None:
    """Appending with >> (or any other size) fails with what to do through the mount, and
    incoming/<volume>.full makes a full backup whatever the volume's backups are (item 8)."""
    first = _image(4)
    write_backup(local_store, io.BytesIO(first), "vol-app",
                 S3Options(object_size=OBJECT, block_size=BLOCK))

    async def body(service: MountService) -> None:
        fh, _node = await service.start_incoming("vol-app", os.getpid())
        await service.write(fh, 0, b"more" * 1000)
        with pytest.raises(BackupFailed, match=r"incoming/vol-app\.full"):
            await service.finish(fh, closing=True)
        await service.release(fh)
        fh, node = await service.start_incoming("vol-app", os.getpid(), full=True,
                                                name="vol-app.full")
        assert node.name == "vol-app.full" and node.volume_id == "vol-app"
        await service.write(fh, 0, b"more" * 1000)
        await service.finish(fh, closing=True)
        await service.release(fh)
        assert service.tree.listing(service.tree.incoming.inode) == []

    _serve(tmp_path, store, body)
    metas = [load_metadata(local_store, r) for r in find_backups(local_store, "vol-app")]
    assert sorted(m.covered_size for m in metas) == [4000, SIZE]
    assert all(m.parent_id is None for m in metas)  # both full


class _HeldListing(CountingStore):
    """Lists the store's backups (`volume_...`) only once `release` is set; anything else
    (the TSM records) at once: a bucket whose catalogue takes long to list."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.release = threading.Event()

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        if prefix.startswith("volume_"):
            assert self.release.wait(30)
        return super().list(prefix, start_after)


def test_a_re_mounts_directory_listing_waits_for_the_tsm_records_not_the_store(
        tmp_path: Path, local_store: LocalStore) -> None:
    """The index's backups and the TSM records are listed at once; a backup made elsewhere
    since shows when the store's (slow) listing ends; a lookup of it waits for that."""
    options = S3Options(object_size=OBJECT, block_size=BLOCK)
    known = write_backup(local_store, io.BytesIO(_image(7)), "vol-k", options)
    store = _HeldListing(local_store)

    async def main() -> None:
        async with open_engine(_config(tmp_path), CountingStore(local_store)):
            pass  # the index now knows `known`: the next mount is a re-mount
        new = write_backup(local_store, io.BytesIO(_image(8)), "vol-k", options)
        put_record(local_store, TsmRecord(
            backup_id="tsm-1", volume_id="vol-t", mode="image", path="/dev/bakfs-tsm-1",
            size=SIZE, sha256="0" * 64, created_at=datetime(2026, 12, 1, tzinfo=UTC)))
        async with _re_mounted(tmp_path, store) as service:
            with trio.fail_after(10):
                await service.before_listing(service.tree.nodes[ROOT_INODE])
            names = {n.name for n in service.tree.listing(ROOT_INODE)}
            assert {"vol-k", "vol-t"} <= names  # the index's volume and the TSM one
            assert not any(n.name.endswith(new.backup_id) for n in service.tree.backups())
            assert not service.listed.is_set()
            store.release.set()
            with trio.fail_after(10):
                await service.wait_listed()
            assert _backup_node(service, "vol-k", new.backup_id) is not None
            assert _backup_node(service, "vol-k", known.backup_id) is not None

    trio.run(main)


def test_a_backup_into_incoming_is_written_while_the_store_is_listed(
        tmp_path: Path, local_store: LocalStore) -> None:
    """On a re-mount whose store takes minutes to list, `dd of=incoming/<volume>` looks the
    name up (absent: only this mount's writers put names there), starts its incremental on
    the parent the index knows and writes the whole volume while the listing runs. Its
    close then waits for the listing: the index takes the new backup after the refresh
    that listed the store without it."""
    options = S3Options(object_size=OBJECT, block_size=BLOCK)
    data = _image(11)
    known = write_backup(local_store, io.BytesIO(data), "vol-k", options)
    store = _HeldListing(local_store)

    async def main() -> None:
        async with open_engine(_config(tmp_path), CountingStore(local_store)):
            pass  # the index now knows `known`: the next mount is a re-mount
        async with _re_mounted(tmp_path, store) as service:
            with trio.fail_after(10):
                assert await service.find_name(service.tree.incoming, "vol-k") is None
                fh, _node = await service.start_incoming("vol-k", os.getpid())
                await service.write(fh, 0, data)
            assert not service.listed.is_set()  # the store's listing is still held
            store.release.set()
            with trio.fail_after(10):
                await service.finish(fh, closing=True)
                await service.release(fh)

    trio.run(main)
    new, = [r for r in find_backups(local_store, "vol-k") if r.backup_id != known.backup_id]
    assert load_metadata(local_store, new).parent_id == known.backup_id


class _HeldEveryListing(CountingStore):
    """Lists nothing, not even the TSM records, until `release` is set."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.release = threading.Event()

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        assert self.release.wait(30)
        return super().list(prefix, start_after)


def _tsm_record(backup_id: str, volume_id: str) -> TsmRecord:
    return TsmRecord(backup_id=backup_id, volume_id=volume_id, mode="image",
                     path=f"/dev/bakfs-{backup_id}", size=SIZE, sha256="0" * 64,
                     created_at=datetime(2026, 12, 1, tzinfo=UTC))


def test_a_re_mount_shows_the_tsm_records_the_index_kept_before_any_listing(
        tmp_path: Path, local_store: LocalStore) -> None:
    """The TSM records listed by the last mount are kept in the index: a re-mount lists
    them while no listing of the store has answered; a record made elsewhere since shows
    once the first listing ends; a refresh GETs only records it has not seen."""
    put_record(local_store, _tsm_record("tsm-1", "vol-t"))

    async def main() -> None:
        first = CountingStore(local_store)
        async with open_engine(_config(tmp_path), first) as engine:
            service = MountService(engine.config, engine, Tree(0.0))
            assert not await service.show_kept_records()  # a new index kept nothing
            await service.refresh()
            await service.refresh()  # nothing new: the LIST only
            assert first.gets[_tsm_key("vol-t", "tsm-1")] == 1
        put_record(local_store, _tsm_record("tsm-2", "vol-u"))  # made elsewhere since
        store = _HeldEveryListing(local_store)
        async with open_engine(_config(tmp_path), store) as engine, \
                trio.open_nursery() as nursery:
            service = MountService(engine.config, engine, Tree(0.0))
            service.nursery = nursery
            assert await service.show_kept_records()
            await service.refresh(list_store=False)
            nursery.start_soon(service.first_listing)
            with trio.fail_after(10):  # no listing has answered
                await service.before_listing(service.tree.nodes[ROOT_INODE])
            names = {n.name for n in service.tree.listing(ROOT_INODE)}
            assert "vol-t" in names and "vol-u" not in names
            store.release.set()
            with trio.fail_after(10):
                await service.wait_listed()
            assert "vol-u" in {n.name for n in service.tree.listing(ROOT_INODE)}
            assert store.gets[_tsm_key("vol-t", "tsm-1")] == 0  # kept, not fetched again
            assert store.gets[_tsm_key("vol-u", "tsm-2")] == 1
            nursery.cancel_scope.cancel()

    trio.run(main)


def _tsm_key(volume_id: str, backup_id: str) -> str:
    return f"bakfs-tsm/{volume_id}/{backup_id}.json"


def test_a_listing_that_answers_late_never_undoes_a_newer_one(
        tmp_path: Path, local_store: LocalStore) -> None:
    """A refresh's listing of the index that answers after a backup was committed and shown
    must not put the tree back as it was: `latest` would serve the older backup's bytes
    right after the writer's close returned (seen under load in tests/faults/test_load)."""
    options = S3Options(object_size=OBJECT, block_size=BLOCK)
    write_backup(local_store, io.BytesIO(_image(1)), "vol-r", options)

    async def main() -> None:
        async with open_engine(_config(tmp_path), CountingStore(local_store)) as engine:
            service = MountService(engine.config, engine, Tree(0.0))
            await service.refresh()
            original = service.catalog.list_backups
            listed_first, release = trio.Event(), trio.Event()
            calls = 0

            async def first_answers_late(volume_id: str | None = None) -> list[BackupRecord]:
                nonlocal calls
                calls += 1
                listed = await original(volume_id)
                if calls == 1:  # a snapshot from before the commit, held back
                    listed_first.set()
                    await release.wait()
                return listed

            service.catalog.list_backups = first_answers_late  # type: ignore[method-assign]
            show = functools.partial(service.refresh, list_store=False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(show)
                await listed_first.wait()
                newer = write_backup(local_store, io.BytesIO(_image(2)), "vol-r", options)
                await service.catalog.refresh()  # the commit's catalog.add, in effect
                nursery.start_soon(show)  # the commit's own showing
                await trio.sleep(0.5)  # ample for it to finish, unless it waits its turn
                release.set()
            assert _backup_node(service, "vol-r", newer.backup_id) is not None

    trio.run(main)


def test_a_tsm_backup_committed_through_the_mount_reaches_the_index_copy(
        tmp_path: Path, local_store: LocalStore) -> None:
    """A record the mount committed itself is shown at once and not fetched again, and the
    next listing puts it in the index's copy for the next start."""
    async def main() -> None:
        store = CountingStore(local_store)
        async with open_engine(_config(tmp_path), store) as engine:
            service = MountService(engine.config, engine, Tree(0.0))
            await service.refresh()
            committed = _tsm_record("tsm-c", "vol-c")
            put_record(local_store, committed)
            service.tsm_records.append(committed)  # as _show_committed does
            await service.refresh()
            assert store.gets[_tsm_key("vol-c", "tsm-c")] == 0
            assert await read_kept(service.catalog) == [committed]

    trio.run(main)


@contextlib.asynccontextmanager
async def _new_index_mount(tmp_path: Path, store: CountingStore
                           ) -> AsyncIterator[tuple[MountService, trio.Nursery]]:
    """A mount's service on a new index with the store's volumes listed, as the daemon has
    it when the mount comes up."""
    async with open_engine(_config(tmp_path), store, fill=False) as engine, \
            trio.open_nursery() as nursery:
        service = MountService(engine.config, engine, Tree(0.0))
        service.nursery = nursery
        await service.list_volumes()
        yield service, nursery
        nursery.cancel_scope.cancel()


class _OrderedGets(CountingStore):
    """Records the order in which `_metadata` documents are read."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.order: list[str] = []

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        if key.endswith("_metadata"):
            with self._lock:
                self.order.append(key.split("/")[0].removeprefix("volume_"))
        return super().get(key, byte_range)


def test_a_new_index_shows_the_volumes_at_once_and_indexes_an_opened_one_first(
        tmp_path: Path, local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first mount (a new index) shows each volume's directory from one listing, before
    any `_metadata` is read. A directory opened while the index is built has its volume
    indexed next, and waits for that volume only; a backup written into incoming/ meanwhile
    still stands on its volume's newest backup. At the end the tree shows the whole
    catalogue, and a volume whose one backup cannot be read is gone."""
    monkeypatch.setattr(sync, "VOLUMES_AT_ONCE", 1)  # one volume at a time: the order shows
    options = S3Options(object_size=OBJECT, block_size=BLOCK)
    made: dict[str, list[str]] = {}
    when = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(12):
        volume_id = f"vol-{i:02d}"
        full = write_backup(local_store, io.BytesIO(_image(i)), volume_id, options, now=when)
        incremental = write_backup(local_store, io.BytesIO(_image(100 + i)), volume_id,
                                   options, parent=full, now=when + timedelta(hours=1))
        made[volume_id] = [full.backup_id, incremental.backup_id]
    bad = write_backup(local_store, io.BytesIO(_image(50)), "vol-bad", options, now=when)
    local_store.put(bad.metadata_key, b"{not json")
    store = _OrderedGets(local_store)

    async def main() -> None:
        async with _new_index_mount(tmp_path, store) as (service, nursery):
            root = service.tree.nodes[ROOT_INODE]
            assert {n.name for n in service.tree.listing(ROOT_INODE) if n.kind == "dir"} == \
                {*made, "vol-bad"}
            assert not service.tree.backups() and not store.order  # the LIST alone
            assert "first index build: 0 of 13 volumes indexed" in service.status()
            nursery.start_soon(service.first_listing)
            wanted = service.tree.lookup(ROOT_INODE, "vol-07")
            assert wanted is not None
            with trio.fail_after(10):
                await service.before_listing(wanted)
                names = {n.name for n in service.tree.listing(wanted.inode)}
                assert len(names) == 3 and LATEST in names
                # vol-07 went next: at most the volume started before the want came first
                assert store.order[:4].count("vol-07") == 2
                # the volumes are known: a name that is none of them need not wait for all
                assert await service.find_name(root, "vol-none") is None
                fh, _node = await service.start_incoming("vol-11", os.getpid())
                await service.write(fh, 0, _image(200))
                await service.finish(fh, closing=True)
                await service.release(fh)
            with trio.fail_after(30):
                await service.wait_listed()
            assert {n.name for n in service.tree.listing(ROOT_INODE) if n.kind == "dir"} == \
                set(made)
            shown = {n.backup.backup_id for n in service.tree.backups() if n.backup}
            assert {b for ids in made.values() for b in ids} < shown
            assert len(shown) == 25
            assert [r.volume_id for r in service.unreadable] == ["vol-bad"]
            assert "first index build" not in service.status()

    trio.run(main)
    newest = max(find_backups(local_store, "vol-11"), key=lambda r: r.prefix.timestamp)
    assert load_metadata(local_store, newest).parent_id == made["vol-11"][1]


class _Outage(CountingStore):
    """`_metadata` GETs fail as an unreachable store's do while `down` is set."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.down = False

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        if self.down and key.endswith("_metadata"):
            raise StoreUnreachable("the store is away (test)", key)
        return super().get(key, byte_range)


def test_a_first_build_the_store_cuts_short_leaves_each_volume_to_be_indexed_when_opened(
        tmp_path: Path, local_store: LocalStore) -> None:
    """The store lists, then fails before any `_metadata` is read: the volumes stay shown,
    opening one fails (EIO in the mount, the reason logged) while the store is away, and
    once it is back the volume is indexed alone and shown; the next refresh shows all."""
    options = S3Options(object_size=OBJECT, block_size=BLOCK)
    made = {f"vol-{i}": write_backup(local_store, io.BytesIO(_image(i)), f"vol-{i}", options)
            for i in range(3)}
    store = _Outage(local_store)

    async def main() -> None:
        async with _new_index_mount(tmp_path, store) as (service, nursery):
            store.down = True
            nursery.start_soon(service.first_listing)
            with trio.fail_after(10):
                await service.wait_listed()  # the build gave up
            assert {n.name for n in service.tree.listing(ROOT_INODE) if n.kind == "dir"} == \
                set(made)
            directory = service.tree.lookup(ROOT_INODE, "vol-1")
            assert directory is not None
            with pytest.raises(StoreUnreachable):
                await service.before_listing(directory)
            assert await service.catalog.list_backups() == []
            store.down = False
            await service.before_listing(directory)
            assert _backup_node(service, "vol-1", made["vol-1"].backup_id) is not None
            assert [r.volume_id for r in await service.catalog.list_backups()] == ["vol-1"]
            assert service.tree.lookup(ROOT_INODE, "vol-2") is not None  # still to be indexed
            await service.refresh()
            assert {n.backup.backup_id for n in service.tree.backups() if n.backup} == \
                {ref.backup_id for ref in made.values()}
            assert not service.pending.volumes

    trio.run(main)


class _HeldVolumes(CountingStore):
    """The `_metadata` GETs of the volumes in `held` wait until `release` is set."""

    def __init__(self, inner: LocalStore, held: set[str]) -> None:
        super().__init__(inner)
        self.held = held
        self.release = threading.Event()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        if key.endswith("_metadata") and key.split("/")[0].removeprefix("volume_") in self.held:
            assert self.release.wait(30)
        return super().get(key, byte_range)


def test_a_backup_written_during_a_first_build_shows_before_the_build_ends(
        tmp_path: Path, local_store: LocalStore) -> None:
    """A backup written into incoming/ while a first build is held up on other volumes is
    committed, indexed and shown at its close; it does not wait for the rest of the
    build."""
    options = S3Options(object_size=OBJECT, block_size=BLOCK)
    for i in range(4):
        write_backup(local_store, io.BytesIO(_image(i)), f"vol-{i}", options)
    store = _HeldVolumes(local_store, {"vol-1", "vol-2", "vol-3"})

    async def main() -> None:
        async with _new_index_mount(tmp_path, store) as (service, nursery):
            nursery.start_soon(service.first_listing)
            try:
                with trio.fail_after(10):
                    fh, _node = await service.start_incoming("vol-0", os.getpid())
                    await service.write(fh, 0, _image(300))
                    await service.finish(fh, closing=True)
                    await service.release(fh)
                assert not service.listed.is_set()  # the build is still held up
                directory = service.tree.lookup(ROOT_INODE, "vol-0")
                assert directory is not None
                assert len([n for n in service.tree.listing(directory.inode)
                            if n.kind == "backup"]) == 2
            finally:
                store.release.set()
            with trio.fail_after(30):
                await service.wait_listed()
            assert len(service.tree.backups()) == 5

    trio.run(main)
