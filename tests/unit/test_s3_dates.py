"""The S3 client's date parser: the standard library's reading of S3's two date forms, the
same instants botocore's own (dateutil) parser gives, at a fraction of the cost."""

import botocore.parsers
import pytest

from bakfs.store.s3 import _parse_timestamp


@pytest.mark.parametrize("value", [
    "2026-12-01T09:40:00.000Z",  # a listing's LastModified
    "2026-12-01T09:40:00Z",
    "2026-12-01T09:40:00.123456+02:00",
    "Tue, 01 Dec 2026 09:40:00 GMT",  # a GET's or HEAD's Last-Modified header
    "2026-12-01T09:40:00",  # no zone: left to botocore
    "1764582000",  # epoch seconds: left to botocore
    1764582000,
])
def test_dates_are_the_instants_botocore_gives(value: str | int) -> None:
    ours = _parse_timestamp(value)
    theirs = botocore.parsers.DEFAULT_TIMESTAMP_PARSER(value)
    assert ours == theirs
    assert (ours.tzinfo is None) == (theirs.tzinfo is None)


def test_a_date_botocore_cannot_read_fails_as_it_did() -> None:
    with pytest.raises(ValueError):
        botocore.parsers.DEFAULT_TIMESTAMP_PARSER("not a date")
    with pytest.raises(ValueError):
        _parse_timestamp("not a date")
