"""Object stores: S3 (boto3) and the embedded local directory store, behind one interface
(`base`), a store opened in the background (`opening`), and the verified decode of data
objects every reader uses (`decode`). Knows nothing of backups beyond a data object's
recorded length, md5 and codec."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bakfs.config import Config
from bakfs.store.base import ObjectInfo, ObjectStore, describe_local, describe_s3
from bakfs.store.localdir import LocalStore
from bakfs.store.opening import OpeningStore

__all__ = ["ObjectInfo", "ObjectStore", "describe_store", "open_store", "open_store_in_background",
           "store_identity"]


def open_store(config: Config) -> ObjectStore:
    """The store the configuration names: S3 when an endpoint is set, else the local store."""
    if config.uses_s3:
        # lazy: botocore and its S3 model take ~0.3 s to load; the local store and the
        # mount's start from its index never wait for them
        from bakfs.store.s3 import S3Store

        return S3Store(config.s3)
    return LocalStore(Path(config.local.path), config.s3.bucket,
                      create_bucket=config.s3.create_bucket)


def describe_store(config: Config) -> str:
    """The configured store's description (as its `description` says it), without opening
    it."""
    if config.uses_s3:
        return describe_s3(config.s3.bucket, config.s3.endpoint_url)
    return describe_local(Path(config.local.path) / config.s3.bucket)


def store_identity(config: Config) -> str:
    """Names the bucket and SSE-C key an index was built for (a digest: no secret in it).
    The endpoint is left out: one store is often reached under several names."""
    key = config.s3.sse_customer_key.reveal() if config.s3.sse_enabled else ""
    assert key is not None
    where = "s3" if config.uses_s3 else f"local {config.local.path}"
    text = f"{where}\0{config.s3.bucket}\0{key}".encode()
    return hashlib.sha256(text).hexdigest()[:32]


def open_store_in_background(config: Config) -> OpeningStore:
    """The configured store, opened (and its bucket checked or created) in a thread from
    its first call or `start()` on, while the caller goes on. See `bakfs.store.opening`."""

    def opener() -> ObjectStore:
        store = open_store(config)
        try:
            store.ensure_bucket()  # a fresh store has no bucket yet: create it (if allowed)
        except BaseException:
            store.close()
            raise
        return store

    return OpeningStore(opener, describe_store(config))
