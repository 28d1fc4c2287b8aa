"""Fixtures of the store tests: one `store` for each kind, so every test written against it
runs on the embedded local store and on S3 (radosgw) alike."""

from __future__ import annotations

import pytest

from bakfs.store.base import ObjectStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]
