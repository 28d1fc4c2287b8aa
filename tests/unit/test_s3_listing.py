"""The listing parser bakfs puts in front of botocore's (bakfs.store.s3listing): the same
objects botocore reads from a ListObjectsV2 page, and botocore's whole page for anything
it does not expect; keys decoded as botocore decodes them; an error sent with status 200
still retried."""

import random
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import botocore.handlers
import botocore.session
from botocore.parsers import RestXMLParser

from bakfs.config import S3Options, Secret
from bakfs.store.s3 import _make_client, _parse_timestamp
from bakfs.store.s3listing import decode_keys, parse_contents, unquote_key

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _page(contents: str, extra: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
            f"<Name>b</Name><Prefix>volume_</Prefix><KeyCount>2</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>{contents}"
            f"<NextContinuationToken>tok</NextContinuationToken>{extra}"
            f"</ListBucketResult>").encode()


OBJECT = ("<Contents><Key>volume_a%2Fk&amp;1</Key><LastModified>2026-12-01T09:33:01.848Z"
          "</LastModified><ETag>&quot;1f50&quot;</ETag><Size>19</Size>"
          "<Owner><ID>o</ID></Owner><StorageClass>STANDARD</StorageClass>"
          "<Type>Normal</Type></Contents>")


def _botocore(body: bytes) -> dict:
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("ListObjectsV2").output_shape
    parser = RestXMLParser(timestamp_parser=_parse_timestamp)
    return parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)


def test_objects_are_botocores_and_the_rest_of_the_page_is_left_to_it() -> None:
    body = _page(OBJECT + OBJECT.replace("k&amp;1", "k2"), "<CommonPrefixes><Prefix>p/</Prefix>"
                 "</CommonPrefixes>")
    parsed = parse_contents(body, _parse_timestamp)
    assert parsed is not None
    contents, rest = parsed
    theirs = _botocore(body)
    fields = ("Key", "LastModified", "ETag", "Size", "StorageClass")
    assert contents == [{f: c[f] for f in fields} for c in theirs["Contents"]]
    assert contents[0]["Key"] == "volume_a%2Fk&1" and contents[0]["ETag"] == '"1f50"'
    assert contents[0]["LastModified"] == datetime(2026, 12, 1, 9, 33, 1, 848000, tzinfo=UTC)
    left = _botocore(rest)
    assert "Contents" not in left
    assert {k: v for k, v in left.items() if k != "ResponseMetadata"} == {
        k: v for k, v in theirs.items() if k not in ("Contents", "ResponseMetadata")}


def test_anything_unexpected_is_left_to_botocore() -> None:
    assert parse_contents(b"<Error><Code>NoSuchBucket</Code></Error>", _parse_timestamp) is None
    assert parse_contents(b"<ListBucketResult><Contents>", _parse_timestamp) is None
    assert parse_contents(_page("<Contents><Size>1</Size></Contents>"), _parse_timestamp) is None
    assert parse_contents(_page(OBJECT.replace("<Size>19", "<Size>x19")),
                          _parse_timestamp) is None
    # an element the pattern would not strip (attributes): the counts disagree
    assert parse_contents(_page(OBJECT.replace("<Contents>", '<Contents a="1">')),
                          _parse_timestamp) is None
    assert parse_contents(_page(""), _parse_timestamp) == ([], _page(""))


def test_keys_are_decoded_as_botocore_decodes_them() -> None:
    """The fast decoding gives unquote_plus's result for every key, and botocore's handler,
    running after it, leaves the page as it is."""
    rng = random.Random(5)
    alphabet = ["a", "/", "%2F", "%2f", "%25", "%", "+", " ", "%C3%A4", "ä", "%2", "%zz", "_"]
    keys = ["", "plain", "volume_a%2Fb%2Fc", "x+y", "100%25", "%2F%2F", "a%2F+b"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    assert [unquote_key(k) for k in keys] == [unquote_plus(k, encoding="utf-8") for k in keys]

    def page() -> dict[str, Any]:
        return {"EncodingType": "url", "Prefix": "volume_a%2F", "StartAfter": "a+b",
                "Contents": [{"Key": k, "Size": 1} for k in keys[:500]],
                "CommonPrefixes": [{"Prefix": "p%2Fq+"}]}

    ours, theirs = page(), page()
    context = {"encoding_type_auto_set": True}
    decode_keys(ours, context)
    botocore.handlers.decode_list_object_v2(ours, context)  # runs after ours: a no-op
    botocore.handlers.decode_list_object_v2(theirs, {"encoding_type_auto_set": True})
    assert ours == theirs
    asked = page()  # the caller asked for url encoding itself: its keys are left encoded
    decode_keys(asked, {})
    assert asked == page()


def test_an_error_sent_with_status_200_is_still_retried() -> None:
    """A listing page that does not parse (cut short) or is an <Error> becomes a 500, as
    botocore's check (which bakfs skips for listing pages it reads itself) makes it; other
    operations still get botocore's check."""
    client = _make_client(S3Options(endpoint_url="http://127.0.0.1:9", bucket="b",
                                    access_key=Secret("k"), secret_key=Secret("s")))
    model = client.meta.service_model

    def emit(operation: str, body: bytes) -> tuple[int, dict[str, Any]]:
        response = {"status_code": 200, "body": body, "headers": {}}
        customized: dict[str, Any] = {}
        client.meta.events.emit(f"before-parse.s3.{operation}",
                                operation_model=model.operation_model(operation),
                                response_dict=response, customized_response_dict=customized)
        return response["status_code"], customized

    try:
        error = b"<Error><Code>InternalError</Code><Message>x</Message></Error>"
        assert emit("ListObjectsV2", error)[0] == 500
        assert emit("ListObjectsV2", _page(OBJECT)[:-40])[0] == 500  # cut short
        status, customized = emit("ListObjectsV2", _page(OBJECT))
        assert status == 200 and customized["Contents"][0]["Size"] == 19
        assert emit("CopyObject", error)[0] == 500
        assert emit("CompleteMultipartUpload", b"<CompleteMultipartUploadResult")[0] == 500
        assert emit("CopyObject", b"<CopyObjectResult><ETag>e</ETag></CopyObjectResult>")[0] \
            == 200
    finally:
        client.close()
