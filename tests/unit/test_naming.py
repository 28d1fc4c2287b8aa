from datetime import UTC, datetime, timedelta, timezone

import pytest

from bakfs.cinder import naming
from bakfs.errors import FormatError

VOL = "0b3a5c1e-0000-4000-8000-000000000001"
BAK = "1f000000-0000-4000-8000-00000000000f"


def test_prefix_is_cinders_layout_in_utc() -> None:
    started = datetime(2026, 11, 23, 0, 57, 18, tzinfo=timezone(timedelta(hours=1)))
    prefix = naming.make_prefix(VOL, BAK, started)
    assert str(prefix) == f"volume_{VOL}/20261122235718/az_nova_backup_{BAK}"
    assert prefix.started_at == datetime(2026, 11, 22, 23, 57, 18, tzinfo=UTC)


def test_object_names_have_at_least_five_digits_and_grow() -> None:
    prefix = naming.make_prefix(VOL, BAK, datetime(2026, 1, 2, tzinfo=UTC), "az1")
    assert naming.object_name(prefix, 1).endswith("_backup_" + BAK + "-00001")
    assert naming.object_name(prefix, 100000).endswith("-100000")
    assert naming.metadata_name(prefix).endswith(BAK + "_metadata")
    assert naming.sha256file_name(prefix).endswith(BAK + "_sha256file")
    with pytest.raises(ValueError):
        naming.object_name(prefix, 0)


def test_parse_key_round_trips_every_kind_of_object() -> None:
    prefix = naming.make_prefix(VOL, BAK, datetime(2026, 1, 2, tzinfo=UTC))
    assert naming.parse_key(naming.object_name(prefix, 123456)) == naming.ParsedKey(
        prefix, 123456, None)
    assert naming.parse_key(naming.metadata_name(prefix)) == naming.ParsedKey(
        prefix, None, "metadata")
    assert naming.parse_key(naming.sha256file_name(prefix)) == naming.ParsedKey(
        prefix, None, "sha256file")
    assert naming.parse_prefix(str(prefix)) == prefix


def test_backup_id_ending_in_digits_is_not_mistaken_for_an_object_number() -> None:
    prefix = naming.make_prefix("v1", "b-00001", datetime(2026, 1, 2, tzinfo=UTC))
    parsed = naming.parse_key(naming.object_name(prefix, 2))
    assert parsed is not None and parsed.prefix.backup_id == "b-00001" and parsed.number == 2


@pytest.mark.parametrize("key", [
    "volume_x/2026/az_nova_backup_y-00001",          # short timestamp
    "volume_x/20260101000000/az_nova_backup_y-0001",  # four digits
    "volume_x/20260101000000/az_nova_backup_y_index",
    "other/file",
    "volume_x/20260101000000/az_nova_backup_y",       # the bare prefix is no object
])
def test_parse_key_ignores_foreign_keys(key: str) -> None:
    assert naming.parse_key(key) is None


@pytest.mark.parametrize(("value", "reason"), [
    ("", "empty"), ("a/b", "separator"), ("..", "not allowed"), ("x" * 129, "at most 128"),
    (".hidden", "start with"), ("sp ace", "letters"),
])
def test_bad_ids_are_refused_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(FormatError, match=reason):
        naming.validate_id("volume", value)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        naming.make_prefix(VOL, BAK, datetime(2026, 1, 1))


def test_split_key_agrees_with_parse_key() -> None:
    prefix = naming.make_prefix("vol-1", "b-1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    for key in (naming.object_name(prefix, 7), naming.object_name(prefix, 123456),
                naming.metadata_name(prefix), naming.sha256file_name(prefix),
                f"{prefix}-12", f"{prefix}_other", "volume_x/2026/az_nova_backup_b-00001",
                f"{prefix}/nested-00001", "bakfs-locks/vol-1"):
        parsed, split = naming.parse_key(key), naming.split_key(key)
        assert (parsed is None) == (split is None), key
        if parsed is not None and split is not None:
            assert naming.parse_prefix(split[0]) == parsed.prefix
            assert split[0] + split[1] == key
            assert (split[1][0] == "-") == (parsed.number is not None)
