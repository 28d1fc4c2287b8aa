"""The S3 behaviours bakfs relies on, shown on a real radosgw: Content-MD5 enforced, SSE-C on
every data and metadata request, credentials checked, conditional PUT, errors told apart."""

import dataclasses
import hashlib
import io
from typing import Any

import pytest

from bakfs.backup.simple import write_backup
from bakfs.catalog.discovery import find_backups, load_metadata
from bakfs.config import Secret
from bakfs.errors import (
    AccessDenied,
    ChecksumMismatch,
    ObjectMissing,
    StoreUnreachable,
)
from bakfs.read.simple import restore
from bakfs.store import s3listing
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server

KEY = Secret("0123456789abcdef0123456789abcdef")


def _corrupt_in_transit(store: S3Store) -> None:
    """Flip a byte of every PutObject body after Content-MD5 was computed (but before SigV4
    hashes the payload, which would refuse it on its own), as a bad buffer would."""

    def flip(request: Any, **_: Any) -> None:
        body = request.data
        data = bytearray(body.read() if hasattr(body, "read") else body)
        data[0] ^= 0xFF
        request.data = bytes(data)

    store._client.meta.events.register("before-sign.s3.PutObject", flip)


def test_wrong_content_md5_is_refused_and_nothing_is_stored(s3_store: S3Store,
                                                            rgw: S3Server) -> None:
    damaged = S3Store(s3_store.options)
    _corrupt_in_transit(damaged)
    with pytest.raises(ChecksumMismatch, match="BadDigest"):
        damaged.put("obj", b"payload")
    with pytest.raises(ObjectMissing):
        s3_store.get("obj")


def test_content_md5_header_follows_md5_validation(s3_store: S3Store) -> None:
    """With Content-MD5 the body is not hashed again for SigV4 (UNSIGNED-PAYLOAD, as
    botocore does over https); without it, the signature covers the body."""
    seen: list[tuple[bool, bytes]] = []
    for validate in (True, False):
        store = S3Store(dataclasses.replace(s3_store.options, md5_validation=validate))
        store._client.meta.events.register(
            "before-send.s3.PutObject",
            lambda request, **_: seen.append(("Content-MD5" in request.headers,
                                              request.headers["X-Amz-Content-SHA256"])))
        store.put(f"k{validate}", b"x")
        assert s3_store.get(f"k{validate}") == b"x"
    assert seen == [(True, b"UNSIGNED-PAYLOAD"), (False, hashlib.sha256(b"x").hexdigest().encode())]


def test_sse_c_protects_data_and_both_json_documents(s3_store: S3Store) -> None:
    options = dataclasses.replace(s3_store.options, sse_customer_key=KEY,
                                  sse_customer_algorithm="AES256", object_size=65536)
    encrypted = S3Store(options)
    source = io.BytesIO(b"secret volume data " * 10000)
    ref = write_backup(encrypted, source, "vol-sse", options)
    out = io.BytesIO()
    restore(encrypted, ref, out)
    assert out.getvalue() == source.getvalue()

    keys = [i.key for i in s3_store.list("volume_vol-sse/")]
    assert any(k.endswith("_metadata") for k in keys)
    assert any(k.endswith("_sha256file") for k in keys)
    wrong = S3Store(dataclasses.replace(options, sse_customer_key=Secret("f" * 32)))
    for key in keys:  # without the key, or with another, nothing is readable
        with pytest.raises(AccessDenied, match="SSE-C"):
            s3_store.get(key)
        with pytest.raises(AccessDenied, match="sse_customer_key"):
            wrong.get(key)
        with pytest.raises(AccessDenied):
            s3_store.head(key)
    assert find_backups(s3_store) == [ref]  # listing needs no key
    with pytest.raises(AccessDenied):
        load_metadata(s3_store, ref)


def test_wrong_credentials_are_access_denied_and_the_secret_stays_hidden(
        s3_store: S3Store) -> None:
    secret = "wrong-secret-that-must-not-show"
    bad = S3Store(dataclasses.replace(s3_store.options, secret_key=Secret(secret)))
    with pytest.raises(AccessDenied) as info:
        bad.get("anything")
    assert secret not in str(info.value)
    assert "SignatureDoesNotMatch" in str(info.value)


def test_unreachable_store_is_told_apart_from_a_refusal(rgw: S3Server) -> None:
    options = dataclasses.replace(rgw.options("b"), endpoint_url="http://127.0.0.1:9",
                                  retry_max_attempts=1, timeout=2)
    with pytest.raises(StoreUnreachable, match="cannot reach the store"):
        S3Store(options).get("k")


def test_bucket_is_created_only_when_allowed(rgw: S3Server, bucket_name: str) -> None:
    store = S3Store(rgw.options(bucket_name, create_bucket=False))
    with pytest.raises(ObjectMissing, match="create_bucket is false"):
        store.ensure_bucket()
    store = S3Store(rgw.options(bucket_name))
    store.ensure_bucket()
    store.ensure_bucket()  # a second time is fine
    store._client.delete_bucket(Bucket=bucket_name)


def test_a_body_that_breaks_off_while_streaming_is_fetched_again(s3_store: S3Store) -> None:
    """Cinder's reader retries GETs whose body fails after the 200 (socket errors, incomplete
    reads); botocore's own retries do not cover that."""
    import botocore.exceptions

    s3_store.put("flaky", b"the whole object")
    breaks = [1]

    class BreakingBody:
        def __init__(self, body: Any) -> None:
            self.body = body

        def read(self) -> bytes:
            if breaks:
                breaks.pop()
                raise botocore.exceptions.IncompleteReadError(actual_bytes=3,
                                                              expected_bytes=16)
            return self.body.read()  # type: ignore[no-any-return]

    def wrap(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Body"] = BreakingBody(parsed["Body"])

    s3_store._client.meta.events.register("after-call.s3.GetObject", wrap)
    assert s3_store.get("flaky") == b"the whole object"
    assert breaks == []
    breaks.extend([1] * 5)  # more breaks than attempts: the error says what happened
    with pytest.raises(StoreUnreachable, match="flaky"):
        s3_store.get("flaky")


def test_a_listing_read_by_the_fast_parser_is_what_botocore_reads(
        s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Contents of a listing page are parsed and their keys decoded by bakfs
    (s3listing): every key, size, etag and date is what botocore's own parser and decoding
    give, odd characters and pages included."""
    keys = [f"volume_a/{i:04d}" for i in range(1005)] + [
        "volume_a/x y+z", "volume_a/ä€", "volume_a/a&b<c>\"d'", "volume_a/100%25",
        "volume_a/t\tab"]
    for key in keys:
        s3_store.put(key, key.encode())
    pages: list[int] = []
    parse = s3listing.parse_contents

    def counted(body: bytes, parse_timestamp: Any) -> Any:
        parsed = parse(body, parse_timestamp)
        assert parsed is not None  # radosgw's pages are all read by the fast parser
        pages.append(len(parsed[0]))
        return parsed

    monkeypatch.setattr(s3listing, "parse_contents", counted)
    ours = [dataclasses.astuple(info) for info in s3_store.list("volume_a/")]
    assert pages == [1000, 10]
    monkeypatch.setattr(s3listing, "register", lambda client, parse_timestamp: None)
    plain = S3Store(s3_store.options)  # botocore's parser, decoding and error check alone
    try:
        theirs = [dataclasses.astuple(info) for info in plain.list("volume_a/")]
    finally:
        plain.close()
    assert pages == [1000, 10]  # botocore's parser alone read these
    assert len(ours) == len(keys) and sorted(k for k, *_ in ours) == sorted(keys)
    assert ours == theirs
