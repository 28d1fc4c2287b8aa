"""A store opened in the background recovers from an outage at its opening (issue 14,
item 5): the first opening fails while the store is away, a call after the store is back
opens it again."""

from __future__ import annotations

import time

import pytest

from bakfs.errors import StoreUnreachable
from bakfs.store import opening
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.mount.proxy import TcpProxy


def test_a_failed_opening_is_tried_again_once_the_store_is_back(
        rgw: S3Server, s3_store: S3Store) -> None:
    proxy = TcpProxy(rgw.endpoint)  # not started: connections are refused
    options = rgw.options(s3_store.bucket, endpoint_url=proxy.url, timeout=2,
                          retry_max_attempts=1)
    opened: list[S3Store] = []

    def opener() -> S3Store:
        store = S3Store(options)
        try:
            store.ensure_bucket()
        except BaseException:
            store.close()
            raise
        opened.append(store)
        return store

    store = opening.OpeningStore(opener, "the test bucket through a proxy")
    try:
        with pytest.raises(StoreUnreachable):
            store.wait()
        with pytest.raises(StoreUnreachable):  # too soon to try again: the same reason
            store.head("nothing")
        with proxy:
            time.sleep(opening.RETRY_AFTER)
            s3_store.put("k", b"v")
            assert store.get("k") == b"v"  # opened again, without a new OpeningStore
            assert len(opened) == 1
        assert store.wait() is opened[0]  # open stays open (the proxy's outage is S3's now)
    finally:
        store.close()
