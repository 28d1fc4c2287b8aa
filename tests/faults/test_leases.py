"""`gc` tells a live writer from a dead backup (issue 14, item 6): a lease its holder keeps
renewing protects the backup; a lease no longer renewed (its backup failed while the store was
out of the holder's reach, though the holder lives on) does not, and gc takes it over before
deleting, so a writer that comes back after all cannot commit over the hole."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trio

from bakfs.backup.plan import BackupPlan
from bakfs.backup.sink import run_backup_stream
from bakfs.catalog import leases
from bakfs.catalog.inventory import find_orphans, incomplete, remove_orphans
from bakfs.catalog.leases import VolumeLease, lock_key, read_lease
from bakfs.cinder import naming
from bakfs.errors import LeaseLost
from bakfs.store.s3 import S3Store
from tests.conftest import record_ranges


def _leftovers(store: S3Store, volume_id: str, backup_id: str) -> str:
    prefix = naming.make_prefix(volume_id, backup_id, datetime.now(UTC))
    for n in (1, 2, 3):
        store.put(naming.object_name(prefix, n), b"left over %d" % n)
    return str(prefix)


def _age(store: S3Store, lease: VolumeLease, seconds: float) -> None:
    """What a holder that stopped renewing leaves: its last `renewed` stamp, `seconds` ago."""
    holder, etag = read_lease(store, lease.volume_id)
    assert holder is not None
    doc = {"owner": holder.owner, "backup_id": holder.backup_id, "expires": holder.expires,
           "renewed": time.time() - seconds}
    store.put(lock_key(lease.volume_id), json.dumps(doc).encode(), if_match=etag)


def test_gc_leaves_a_live_writer_alone_and_collects_a_dead_backup(s3_store: S3Store) -> None:
    prefix = _leftovers(s3_store, "vol-g", "b-failed")
    lease = VolumeLease(s3_store, "vol-g", "b-failed")
    lease.acquire()  # held by this live process, renewed just now
    assert find_orphans(s3_store, "vol-g") == []
    assert [i.writing for i in incomplete(s3_store, "vol-g")] == [True]

    _age(s3_store, lease, leases.STALE_AFTER + 60)  # the writer stopped renewing
    orphan, = find_orphans(s3_store, "vol-g")
    assert orphan.lease is not None and "renewed" in orphan.lease.describe()
    assert len(orphan.objects) == 3
    assert remove_orphans(s3_store, [orphan]) == 3
    assert list(s3_store.list(prefix)) == []
    assert read_lease(s3_store, "vol-g") == (None, None)  # taken over, then dropped
    VolumeLease(s3_store, "vol-g", "next").acquire()  # the volume is free


def test_a_writer_that_renews_before_gc_deletes_keeps_its_backup(s3_store: S3Store) -> None:
    prefix = _leftovers(s3_store, "vol-r", "b-slow")
    lease = VolumeLease(s3_store, "vol-r", "b-slow")
    lease.acquire()
    _age(s3_store, lease, leases.STALE_AFTER + 60)
    orphans = find_orphans(s3_store, "vol-r")
    assert len(orphans) == 1
    _holder, etag = read_lease(s3_store, "vol-r")
    lease._etag = etag  # the writer comes back and renews (If-Match on the current version)
    lease.renew()
    assert remove_orphans(s3_store, orphans) == 0  # hands off
    assert len(list(s3_store.list(prefix))) == 3


def test_a_new_writer_takes_over_a_lease_nobody_renews(s3_store: S3Store) -> None:
    lease = VolumeLease(s3_store, "vol-n", "b-stuck")
    lease.acquire()
    _age(s3_store, lease, leases.STALE_AFTER + 60)
    VolumeLease(s3_store, "vol-n", "b-next").acquire()


def test_an_object_larger_than_any_lease_is_not_read_whole(s3_store: S3Store) -> None:
    """Whatever lies under a lease's key, reading it costs at most LEASE_LIMIT bytes: a huge
    object there counts as an unreadable lease (one ranged GET), which a writer takes over."""
    key = lock_key("vol-h")
    s3_store.put(key, b'{"owner": "' + b"x" * (4 << 20) + b'"}')
    asked = record_ranges(s3_store)
    holder, etag = read_lease(s3_store, "vol-h")
    assert holder is None and etag == s3_store.head(key).etag
    assert asked == [(0, leases.LEASE_LIMIT + 1)]
    lease = VolumeLease(s3_store, "vol-h", "b-after")
    lease.acquire()  # taken over, with a warning naming "an unreadable lease"
    holder, _etag = read_lease(s3_store, "vol-h")
    assert holder is not None and holder.backup_id == "b-after"


def test_a_writer_whose_lease_gc_took_over_cannot_commit(s3_store: S3Store) -> None:
    """The writer stalls past STALE_AFTER in the middle of its backup, gc collects it as an
    orphan; when the writer wakes it must not write a `_metadata` over deleted objects."""
    options = dataclasses.replace(s3_store.options, object_size=64 * 1024, block_size=4096)
    plan = BackupPlan(volume_id="vol-s", backup_id="b-stalled", options=options)
    lease = VolumeLease(s3_store, "vol-s", plan.backup_id)
    lease.acquire()
    data = random.Random(5).randbytes(512 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield data[:256 * 1024]
        await trio.sleep(0.5)  # let the first objects land
        _age(s3_store, lease, leases.STALE_AFTER + 60)  # the writer "stalled"
        orphans = await trio.to_thread.run_sync(find_orphans, s3_store, "vol-s")
        assert [o.ref.prefix.backup_id for o in orphans] == [plan.backup_id]
        await trio.to_thread.run_sync(remove_orphans, s3_store, orphans)
        yield data[256 * 1024:]

    with pytest.raises(LeaseLost):
        trio.run(run_backup_stream, s3_store, plan, chunks(), lease)
    assert [i.key for i in s3_store.list("") if i.key.endswith("_metadata")] == []
