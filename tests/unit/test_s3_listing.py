"""The listing parser bakfs puts in front of botocore's (bakfs.store.s3listing): the same
objects botocore reads from a ListObjectsV2 page, and botocore's whole page for anything
it does not expect."""

from datetime import UTC, datetime

import botocore.session
from botocore.parsers import RestXMLParser

from bakfs.store.s3 import _parse_timestamp
from bakfs.store.s3listing import parse_contents

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
