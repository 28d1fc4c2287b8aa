"""Shared fixtures: a clean environment, the real radosgw S3 server, stores to test against.

The S3 server is Ceph's RADOS Gateway started by scripts/start-radosgw.sh (idempotent: it
reuses a running cluster). If it cannot start, the S3 tests fail; they are never skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from bakfs.config import S3Options, Secret
from bakfs.store.base import ObjectStore
from bakfs.store.localdir import LocalStore
from bakfs.store.s3 import S3Store

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.mount.fixtures"]  # real FUSE mounts, for tests/mount and tests/interop


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def options(self, bucket: str, **changes: object) -> S3Options:
        base = S3Options(endpoint_url=self.endpoint, bucket=bucket,
                         access_key=Secret(self.access_key), secret_key=Secret(self.secret_key),
                         retry_max_attempts=2, timeout=20)
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def env(self, bucket: str) -> dict[str, str]:
        return {"BAKFS_S3_ENDPOINT_URL": self.endpoint, "BAKFS_S3_BUCKET": bucket,
                "BAKFS_S3_ACCESS_KEY": self.access_key, "BAKFS_S3_SECRET_KEY": self.secret_key}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's AWS_* or BAKFS_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BAKFS_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def rgw() -> S3Server:
    """Ceph radosgw on 127.0.0.1, started (or reused) once per test session."""
    result = subprocess.run([str(ROOT / "scripts" / "start-radosgw.sh")], capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"radosgw did not start:\n{result.stderr[-3000:]}")
    values = dict(re.findall(r"^(S3_\w+)=(.*)$", result.stdout, re.MULTILINE))
    return S3Server(values["S3_ENDPOINT"], values["S3_ACCESS_KEY"], values["S3_SECRET_KEY"])


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh bucket name; the bucket, if the test made one on radosgw, is removed afterwards
    so that runs sharing one cluster do not fill it."""
    name = f"bakfs-test-{uuid.uuid4().hex[:12]}"
    yield name
    if "rgw" in request.fixturenames:
        store = S3Store(request.getfixturevalue("rgw").options(name))
        try:
            empty_bucket(store)
        except Exception as exc:  # a failed clean-up must not fail the test
            warnings.warn(f"could not remove test bucket {name}: {exc}", stacklevel=1)
        finally:
            store.close()


def empty_bucket(store: S3Store) -> None:
    """Delete every object and then the bucket itself; a bucket that is not there is fine."""
    try:
        store._client.head_bucket(Bucket=store.bucket)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            return
        raise
    keys = [{"Key": info.key} for info in store.list("")]
    for i in range(0, len(keys), 1000):  # one request per 1000 keys
        store._client.delete_objects(Bucket=store.bucket,
                                     Delete={"Objects": keys[i:i + 1000], "Quiet": True})
    store._client.delete_bucket(Bucket=store.bucket)


@pytest.fixture
def s3_store(rgw: S3Server, bucket_name: str) -> Iterator[S3Store]:
    store = S3Store(rgw.options(bucket_name))
    store.ensure_bucket()
    yield store
    empty_bucket(store)
    store.close()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store", "volumebackups")
    store.ensure_bucket()
    return store


def record_ranges(store: ObjectStore) -> list[tuple[int, int] | None]:
    """From now on, the byte range of every GET `store` makes (None: the whole object), so a
    test can show what was read of an object, not only what came of it."""
    asked: list[tuple[int, int] | None] = []
    get = store.get

    def recorded(key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        asked.append(byte_range)
        return get(key, byte_range)

    store.get = recorded  # type: ignore[method-assign]
    return asked
