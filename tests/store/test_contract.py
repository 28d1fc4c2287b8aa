"""One contract, two stores: the embedded local store and S3 on radosgw behave alike."""

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from bakfs.errors import AlreadyExists, ChecksumMismatch, ObjectMissing
from bakfs.store.base import ObjectStore
from bakfs.store.streams import read_pieces


def test_put_get_head_and_ranges(store: ObjectStore) -> None:
    store.put("volume_v/20260101000000/az_nova_backup_b-00001", b"0123456789")
    key = "volume_v/20260101000000/az_nova_backup_b-00001"
    assert store.get(key) == b"0123456789"
    assert store.get(key, (2, 5)) == b"234"
    assert store.get(key, (8, 100)) == b"89"
    assert store.get(key, (5, 5)) == b""
    info = store.head(key)
    assert info.key == key and info.size == 10 and info.last_modified is not None
    # the date of a HEAD (a header) and of a listing (the body) are the same instant, now
    listed = next(iter(store.list(key)))
    assert listed.last_modified is not None and listed.last_modified.tzinfo is not None
    assert abs(listed.last_modified - info.last_modified) <= timedelta(seconds=1)
    assert abs(info.last_modified - datetime.now(UTC)) <= timedelta(minutes=5)
    store.put(key, memoryview(b"replaced"))
    assert store.get(key) == b"replaced"


def test_a_given_md5_is_what_the_store_checks(store: ObjectStore) -> None:
    """The backup engine hands over the md5 it already computed: a right one stores, a
    wrong one is refused (S3: BadDigest against the Content-MD5) and nothing is stored."""
    key = "volume_v/20260101000000/az_nova_backup_b-00002"
    store.put(key, b"payload", md5=hashlib.md5(b"payload").digest())
    assert store.get(key) == b"payload"
    with pytest.raises(ChecksumMismatch):
        store.put(key + "x", b"payload", md5=hashlib.md5(b"other").digest())
    with pytest.raises(ObjectMissing):
        store.get(key + "x")


def test_missing_objects_raise_object_missing(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing, match="nope"):
        store.get("nope")
    with pytest.raises(ObjectMissing):
        store.head("nope")
    store.delete("nope")  # deleting what is not there is fine, as in S3


def test_list_is_sorted_by_key_filtered_by_prefix_and_pages(store: ObjectStore) -> None:
    keys = [f"volume_a/t/k-{i:05d}" for i in range(1050)]
    keys += ["volume_a/t/k_metadata", "volume_a/t/k_sha256file", "volume_a/t2/x",
             "volume_ab/y", "volume_b/z"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    listed = [i.key for i in store.list("volume_a/")]
    assert listed == sorted(k for k in keys if k.startswith("volume_a/"))
    assert [i.key for i in store.list("volume_a")] == sorted(
        k for k in keys if k.startswith("volume_a"))
    assert [i.size for i in store.list("volume_b/")] == [len("volume_b/z")]
    assert list(store.list("volume_none/")) == []
    for after in ("volume_a/t/k-00999", "volume_a/", "volume_a/t/", "volume_a/t/k_",
                  "volume_a/t/k-01049x", "volume_a/t2/x", "volume_ab", "a", "volume_c"):
        assert [i.key for i in store.list("volume_", after)] == sorted(
            k for k in keys if k > after), after


def test_put_if_absent_is_atomic_and_exclusive(store: ObjectStore) -> None:
    store.put("lock", b"first", if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put("lock", b"second", if_absent=True)
    assert store.get("lock") == b"first"

    def claim(n: int) -> bool:
        try:
            store.put("race", str(n).encode(), if_absent=True)
            return True
        except AlreadyExists:
            return False

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(claim, range(16))) == 1


def test_delete_removes(store: ObjectStore) -> None:
    store.put("a/b/c", b"x")
    store.delete("a/b/c")
    with pytest.raises(ObjectMissing):
        store.get("a/b/c")
    assert list(store.list("a/")) == []


def test_put_if_match_swaps_only_the_expected_version(store: ObjectStore) -> None:
    store.put("lease", b"v1")
    etag = store.head("lease").etag
    assert etag and '"' not in etag
    store.put("lease", b"v2", if_match=etag)
    assert store.get("lease") == b"v2"
    with pytest.raises(AlreadyExists):
        store.put("lease", b"v3", if_match=etag)  # v1's etag no longer matches
    assert store.get("lease") == b"v2"
    assert [i.etag for i in store.list("lease")] == [store.head("lease").etag]


@pytest.mark.parametrize("size", [0, 1000, (16 << 20) + 12345])
def test_a_stream_is_stored_whole_and_read_back_in_pieces(store: ObjectStore,
                                                          size: int) -> None:
    """put_stream takes a document in chunks (S3: one PUT when it fits a part, else a
    multipart upload, each part with its Content-MD5); read_pieces gives it back a few MiB
    at a time."""
    key = "volume_v/20260101000000/az_nova_backup_b_sha256file"
    data = hashlib.sha256(b"seed").digest() * (size // 32) + b"t" * (size % 32)
    chunks = [data[i:i + 3_000_000] for i in range(0, len(data), 3_000_000)]
    info = store.put_stream(key, iter(chunks))
    assert info.size == size
    assert store.head(key).size == size
    pieces = list(read_pieces(store, key, piece=4 << 20))
    assert b"".join(pieces) == data
    assert all(len(p) <= 4 << 20 for p in pieces)
