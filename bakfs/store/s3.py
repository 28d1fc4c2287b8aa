"""The S3 object store, on one boto3 client built from bakfs's `[s3]` options.

The client is boto3's S3 client, made by botocore's session as `boto3.client` makes it,
without importing boto3 itself: its import pulls in s3transfer (for upload_file and the
resource layer, which bakfs does not use), ~50 ms of a first mount's start (measured).

Configured as Cinder's S3 driver configures boto3 (timeouts, pool size, retries, proxies, TLS
verification), with Content-MD5 on every put when `md5_validation` is on and the SSE-C headers
on every put, get and head when SSE-C is enabled. botocore's exceptions are translated here,
once, into bakfs's: StoreUnreachable (Cinder's S3ConnectionFailure) when the store cannot be
reached, StoreRefused and its subclasses (Cinder's S3ClientError) when it answered no.

Blocking code: the client is thread-safe, so one store serves many worker threads.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import itertools
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.parsers
import botocore.session
import urllib3.exceptions

from bakfs import __version__
from bakfs.config import S3Options
from bakfs.errors import (
    AccessDenied,
    AlreadyExists,
    ChecksumMismatch,
    ObjectMissing,
    StoreError,
    StoreRefused,
    StoreUnreachable,
)
from bakfs.store import s3listing
from bakfs.store.base import CHUNK, ObjectInfo, describe_s3

log = logging.getLogger(__name__)

PART_SIZE = 16 << 20  # multipart uploads start with parts of this size
MAX_PARTS = 10_000  # S3's limit; parts grow so that a stream of any size fits

_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
_BAD_DIGEST = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
# Errors while streaming a body after a 200: Cinder's reader retries these itself, on top of
# botocore's retries of the request.
_STREAM_ERRORS = (
    socket.timeout,
    ConnectionError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
)


class S3Store:
    """An S3 bucket as a bakfs object store."""

    def __init__(self, options: S3Options) -> None:
        if options.endpoint_url is None or options.access_key is None \
                or options.secret_key is None:
            raise StoreError("the S3 store needs s3.endpoint_url, s3.access_key and "
                             "s3.secret_key")
        self.options = options
        self.bucket = options.bucket
        self.endpoint = options.endpoint_url
        self._client = _make_client(options)
        self._sse: dict[str, str] = {}
        if options.sse_enabled:
            assert options.sse_customer_key is not None
            assert options.sse_customer_algorithm is not None
            self._sse = {"SSECustomerAlgorithm": options.sse_customer_algorithm,
                         "SSECustomerKey": options.sse_customer_key.reveal()}

    @property
    def description(self) -> str:
        return describe_s3(self.bucket, self.endpoint)

    def ensure_bucket(self) -> None:
        try:
            with self._errors("HEAD bucket", None):
                self._client.head_bucket(Bucket=self.bucket)
            return
        except ObjectMissing:
            if not self.options.create_bucket:
                raise ObjectMissing(f"{self.description} does not exist and s3.create_bucket "
                                    "is false") from None
        log.info("creating bucket %s at %s", self.bucket, self.endpoint)
        try:
            with self._errors("create bucket", None):
                self._client.create_bucket(Bucket=self.bucket)
        except StoreRefused as exc:
            cause = exc.__cause__
            code = _code(cause) if isinstance(cause, botocore.exceptions.ClientError) else ""
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False,
            if_match: str | None = None, md5: bytes | None = None) -> str | None:
        body = data if isinstance(data, bytes) else bytes(data)  # botocore takes no views
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body,
                                "ContentLength": len(body), **self._sse}
        if self.options.md5_validation:
            digest = md5 or hashlib.md5(body, usedforsecurity=False).digest()
            args["ContentMD5"] = base64.b64encode(digest).decode("ascii")
        if if_absent:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match  # unquoted: RGW 16 compares the raw header
        with self._errors("PUT", key):
            response = self._client.put_object(**args)
        return _etag(response.get("ETag"))

    def put_stream(self, key: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        """One PUT when the stream fits one part, else a multipart upload, each part with
        its Content-MD5 and SSE-C headers; a failed upload is aborted (no part is left)."""
        parts = _parts(chunks)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            return ObjectInfo(key, len(first), None, self.put(key, first))
        with self._errors("multipart PUT (start)", key):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **self._sse)["UploadId"]
        try:
            done = []
            size = 0
            for number, body in enumerate(itertools.chain((first, second), parts), 1):
                args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body,
                                        "UploadId": upload_id, "PartNumber": number,
                                        "ContentLength": len(body), **self._sse}
                if self.options.md5_validation:
                    args["ContentMD5"] = base64.b64encode(
                        hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
                with self._errors(f"multipart PUT (part {number})", key):
                    response = self._client.upload_part(**args)
                done.append({"ETag": response["ETag"], "PartNumber": number})
                size += len(body)
            with self._errors("multipart PUT (complete)", key):
                response = self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": done})
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                    UploadId=upload_id)
            raise
        return ObjectInfo(key, size, None, _etag(response.get("ETag")))

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, **self._sse}
        if byte_range is not None:
            start, end = byte_range
            if end <= start:
                return b""
            args["Range"] = f"bytes={start}-{end - 1}"
        attempts = max(1, self.options.retry_max_attempts)
        for attempt in range(1, attempts + 1):
            with self._errors("GET", key):
                response = self._client.get_object(**args)
                try:
                    return response["Body"].read()  # type: ignore[no-any-return]
                except _STREAM_ERRORS as exc:
                    if attempt == attempts:
                        raise
                    level = logging.DEBUG if attempt == 1 else logging.WARNING
                    log.log(level, "GET %s: body read failed (%s), attempt %d of %d",
                            key, exc, attempt, attempts)
        raise AssertionError("unreachable")

    def iter_object(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, **self._sse}
        with self._errors("GET", key):
            response = self._client.get_object(**args)
        body = response["Body"]
        try:
            with self._errors("GET", key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def head(self, key: str) -> ObjectInfo:
        with self._errors("HEAD", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key, **self._sse)
        return ObjectInfo(key, int(response["ContentLength"]), response.get("LastModified"),
                          _etag(response.get("ETag")))

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        after = {} if start_after is None else {"StartAfter": start_after}
        with self._errors("LIST", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **after):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], int(item["Size"]), item.get("LastModified"),
                                     _etag(item.get("ETag")))

    def delete(self, key: str) -> None:
        with self._errors("DELETE", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def close(self) -> None:
        self._client.close()

    @contextlib.contextmanager
    def _errors(self, operation: str, key: str | None) -> Iterator[None]:
        """Translate whatever boto3 raises into bakfs's errors, with a message that says what
        was being done where."""
        what = f"S3 {operation} {key or ''}".rstrip() + f" ({self.description})"
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise _refusal(exc, what, key, bool(self._sse), operation) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise AccessDenied(f"{what}: no credentials", key) from exc
        except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnreachable(f"{what}: cannot reach the store: {exc}", key) from exc


def _parts(chunks: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """The stream regrouped into parts of PART_SIZE bytes (the last shorter), doubling the
    part size every MAX_PARTS / 10 parts so that even a 38 GB document stays within S3's
    10 000 parts."""
    size = PART_SIZE
    buffer = bytearray()
    count = 0
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            with memoryview(buffer) as view:
                part = bytes(view[:size])
            del buffer[:size]
            yield part
            count += 1
            if count % (MAX_PARTS // 10) == 0:
                size *= 2
    if buffer or not count:
        yield bytes(buffer)


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _refusal(exc: botocore.exceptions.ClientError, what: str, key: str | None, sse: bool,
             operation: str) -> StoreError:
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = exc.response.get("Error", {}).get("Message") or code or f"HTTP {status}"
    text = f"{what}: the store refused: {code or status} ({message})"
    if code in _MISSING or status == 404:
        return ObjectMissing(text, key)
    if code in _BAD_DIGEST:
        return ChecksumMismatch(text + "; the data was changed on the way", key)
    if code in _PRECONDITION or status == 412:
        return AlreadyExists(text, key)
    if code in _DENIED or status == 403:
        return AccessDenied(text, key)
    if operation in ("GET", "HEAD") and status == 400:
        # S3 answers a missing or wrong SSE-C key with 400 (RGW: InvalidArgument).
        hint = ("is s3.sse_customer_key the key the object was written with?" if sse else
                "the object may be SSE-C encrypted: set s3.sse_customer_key and "
                "s3.sse_customer_algorithm")
        return AccessDenied(f"{text}; {hint}", key)
    if status >= 500:
        return StoreUnreachable(f"{what}: the store failed: {code or status} ({message})", key)
    return StoreRefused(text, key)


def _make_client(options: S3Options) -> Any:
    """One boto3 client configured as Cinder configures its own, plus path-style addressing
    for non-AWS endpoints (Ceph RGW, MinIO) and checksums only where required (RGW does not
    validate the newer flexible checksums; Content-MD5 does the job)."""
    assert options.endpoint_url is not None
    assert options.access_key is not None and options.secret_key is not None
    proxies = {}
    if options.http_proxy:
        proxies["http"] = options.http_proxy
    if options.https_proxy:
        proxies["https"] = options.https_proxy
    host = urlsplit(options.endpoint_url).hostname or ""
    config = botocore.config.Config(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        max_pool_connections=options.max_pool_connections,
        retries={"max_attempts": options.retry_max_attempts, "mode": options.retry_mode},
        proxies=proxies or None,
        s3={"addressing_style": "auto" if host.endswith("amazonaws.com") else "path",
            # With Content-MD5 on every PUT (a signed header the server checks the body
            # against), hashing each body again for SigV4 adds nothing but CPU; botocore
            # already skips it over https, this skips it over http too.
            "payload_signing_enabled": not options.md5_validation},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    verify: bool | str | None = options.ca_cert_file if options.verify_ssl else False
    session = _botocore_session()
    client = session.create_client(
        "s3",
        endpoint_url=options.endpoint_url,
        aws_access_key_id=options.access_key.reveal(),
        aws_secret_access_key=options.secret_key.reveal(),
        region_name=session.get_config_variable("region") or "us-east-1",
        verify=verify,
        config=config,
    )
    s3listing.register(client, _parse_timestamp)
    return client


class _S3OnlyLoader(botocore.loaders.Loader):
    """botocore's data loader, without the scan it makes of every service's directory
    (about 450 of them, some 1,800 stat calls) before it loads any one model: bakfs loads
    S3's only. On a cold page cache the scan alone took 0.1-0.2 s of a mount's first read."""

    @botocore.loaders.instance_cache
    def list_available_services(self, type_name: str) -> list[str]:
        try:
            return ["s3"] if self.list_api_versions("s3", type_name) else []
        except botocore.exceptions.DataNotFoundError:
            return []


def _botocore_session() -> botocore.session.Session:
    """A botocore session as boto3 makes one (AWS_DATA_PATH honoured), with the loader
    above; requests say they come from bakfs (the server's logs show it)."""
    core = botocore.session.get_session()
    core.user_agent_extra = f"bakfs/{__version__}"
    data_path = core.get_config_variable("data_path")
    paths = [] if data_path is None else [
        os.path.expanduser(os.path.expandvars(path)) for path in data_path.split(os.pathsep)]
    core.register_component("data_loader", _S3OnlyLoader(extra_search_paths=paths))
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_parse_timestamp)
    return core


def _parse_timestamp(value: str | int | float) -> datetime:
    """A response's date, as botocore's parser gives it, at a fraction of the cost:
    botocore hands every date to dateutil (~25 µs each), and a LIST page holds 1,000 of them,
    so the dates were half the client's CPU of listing a bucket. S3 sends ISO 8601 in bodies
    and RFC 1123 in headers, both read by the standard library here; any other form still
    goes to botocore's parser."""
    if isinstance(value, str):
        parsed: datetime | None = None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                parsed = email.utils.parsedate_to_datetime(value)
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return botocore.parsers.DEFAULT_TIMESTAMP_PARSER(value)  # type: ignore[no-any-return]
