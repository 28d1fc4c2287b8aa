"""A listing page's objects, read straight from the XML: botocore's generic parser walks the
service model for every field of every object, 11 ms per page of 1,000 keys here, where
ElementTree and one loop take 2.5 ms. Listing is most of what `bakfs ls` and every refresh
cost, and a bucket of backups holds millions of objects.

Hooked into botocore's own pipeline (`before-parse` of ListObjectsV2): the request is still
boto3's, signed, retried and checked as any other, and botocore still parses the rest of
the page (truncation, continuation token, common prefixes). Only the `Contents` of a
well-formed `ListBucketResult` are taken out of the body and parsed here, with the fields
bakfs reads (Key, Size, ETag, LastModified, StorageClass); anything unexpected leaves the
page to botocore whole. Two more of botocore's steps cost as much again per page, and are
done here the same way, cheaper:
- its check for an error sent with status 200 parses every S3 response's body once more
  (5 ms a page): a listing page the parse here reads is a `ListBucketResult`, no error;
  any other page still gets botocore's test (a body that does not parse, or an `<Error>`,
  is a 500, retried);
- the keys come url-encoded (boto3 asks for it), and botocore decodes each with
  `unquote_plus` (4 µs a key, as every `/` is a `%2F`): decoded here with the same result,
  replacing `%2F` first and leaving anything else to `unquote_plus`.

Blocking code (it runs in the thread that makes the request). Knows nothing of backups.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import botocore.handlers

OPERATION = "ListObjectsV2"
EVENT = f"before-parse.s3.{OPERATION}"
DECODE_EVENT = f"after-call.s3.{OPERATION}"
ERROR_CHECK_EVENT = "before-parse.s3.*"
HANDLER_ID = "bakfs-s3listing"  # unregister(EVENT, unique_id=HANDLER_ID) gives botocore's
# botocore's unique ids are one namespace for all events
DECODE_ID = f"{HANDLER_ID}-decode"
ERROR_CHECK_ID = f"{HANDLER_ID}-error-check"
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.DOTALL)
_FIELDS = ("Key", "LastModified", "ETag", "Size", "StorageClass")
# what botocore url-decodes in a ListObjectsV2 answer (botocore.handlers.decode_list_object_v2)
_TOP_LEVEL = ("Delimiter", "Prefix", "StartAfter")
_NESTED = (("Contents", "Key"), ("CommonPrefixes", "Prefix"))


def register(client: Any, parse_timestamp: Callable[[str], datetime]) -> None:
    """Parse the objects of the client's ListObjectsV2 pages here."""
    events = client.meta.events

    def contents_ahead(response_dict: dict[str, Any],
                       customized_response_dict: dict[str, Any], **_: object) -> None:
        if response_dict.get("status_code") != 200:
            return
        body = response_dict.get("body")
        if not isinstance(body, bytes):
            return
        parsed = parse_contents(body, parse_timestamp)
        if parsed is None:
            if checks_errors and looks_like_error(200, body):
                response_dict["status_code"] = 500  # botocore's rule: retried
            return
        contents, rest = parsed
        response_dict["body"] = rest
        if contents:
            customized_response_dict["Contents"] = contents

    # botocore's check of a 200 answer for an error (a body that does not parse, cut short on
    # the way, or an <Error>) is made here for a listing page: one that parse_contents reads
    # is neither; any other goes through botocore's own test
    original: Callable[..., None] | None = getattr(botocore.handlers, "_handle_200_error",
                                                    None)
    looks_like_error: Callable[[int, bytes], bool] = getattr(
        botocore.handlers, "_looks_like_special_case_error", lambda _status, _body: False)
    checks_errors = original is not None and hasattr(botocore.handlers,
                                                      "_looks_like_special_case_error")
    events.register(EVENT, contents_ahead, unique_id=HANDLER_ID)
    events.register_first(DECODE_EVENT, decode_keys, unique_id=DECODE_ID)
    if checks_errors and original is not None:
        def error_check_elsewhere(operation_model: Any, **kwargs: Any) -> None:
            if operation_model.name != OPERATION:  # a listing page is checked above
                original(operation_model=operation_model, **kwargs)

        events.unregister(ERROR_CHECK_EVENT, original)
        events.register_first(ERROR_CHECK_EVENT, error_check_elsewhere,
                              unique_id=ERROR_CHECK_ID)


def decode_keys(parsed: dict[str, Any], context: dict[str, Any], **_: object) -> None:
    """botocore's decoding of a listing's url-encoded keys (which runs after this one, and
    is told here that it has been done), with the same result at a fraction of the cost."""
    if parsed.get("EncodingType") != "url" or not context.get("encoding_type_auto_set"):
        return
    for name in _TOP_LEVEL:
        if name in parsed:
            parsed[name] = unquote_key(parsed[name])
    for outer, inner in _NESTED:
        for member in parsed.get(outer, ()):
            member[inner] = unquote_key(member[inner])
    context["encoding_type_auto_set"] = False  # botocore's decoding: nothing left to do


def unquote_key(value: str) -> str:
    """`unquote_plus(value)`; a key whose only escapes are `%2F` (most: every `/`) without
    calling it."""
    if "%" not in value and "+" not in value:
        return value
    plain = value.replace("%2F", "/")
    if "%" not in plain and "+" not in plain:
        return plain
    return unquote_plus(value, encoding="utf-8")


def parse_contents(body: bytes, parse_timestamp: Callable[[str], datetime]
                   ) -> tuple[list[dict[str, Any]], bytes] | None:
    """The page's objects as botocore gives them, and the page without them; None when the
    page is not the plain `ListBucketResult` this expects."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    namespace = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{namespace}ListBucketResult":
        return None
    tags = {f"{namespace}{name}": name for name in _FIELDS}
    contents: list[dict[str, Any]] = []
    for element in root.iterfind(f"{namespace}Contents"):
        item: dict[str, Any] = {}
        for field in element:
            name = tags.get(field.tag)
            if name is not None:
                item[name] = field.text or ""
        if "Key" not in item:
            return None
        try:
            if "Size" in item:
                item["Size"] = int(item["Size"])
            if "LastModified" in item:
                item["LastModified"] = parse_timestamp(item["LastModified"])
        except ValueError:
            return None
        contents.append(item)
    rest, removed = _CONTENTS.subn(b"", body)
    if removed != len(contents):  # an element this pattern does not see: botocore's page
        return None
    return contents, rest
