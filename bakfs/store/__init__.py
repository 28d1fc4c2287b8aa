"""Object stores: S3 (boto3) and the embedded local directory store, behind one interface."""

from __future__ import annotations

from pathlib import Path

from bakfs.config import Config
from bakfs.store.base import ObjectInfo, ObjectStore

__all__ = ["ObjectInfo", "ObjectStore", "open_store"]


def open_store(config: Config) -> ObjectStore:
    """The store the configuration names: S3 when an endpoint is set, else the local store."""
    if config.uses_s3:
        from bakfs.store.s3 import S3Store

        return S3Store(config.s3)
    from bakfs.store.localdir import LocalStore

    return LocalStore(Path(config.local.path), config.s3.bucket,
                      create_bucket=config.s3.create_bucket)
