"""The settle rule: a program is settled once its newest createDate is settle_days old."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from scanning.records import parse_record
from scanning.settling import is_settled, settles_at
from tests.scanning.expected_qualification import PID_2, load_raw

NEWEST = datetime(2024, 12, 19, 10, 30, tzinfo=UTC)


def test_settles_at_adds_settle_days():
    assert settles_at(NEWEST, 3) == datetime(2024, 12, 22, 10, 30, tzinfo=UTC)
    assert settles_at(NEWEST, 0) == NEWEST
    assert settles_at(NEWEST, 0.5) == datetime(2024, 12, 19, 22, 30, tzinfo=UTC)


def test_settled_exactly_at_the_boundary_not_before():
    boundary = settles_at(NEWEST, 3)
    assert not is_settled(NEWEST, boundary - timedelta(microseconds=1), 3)
    assert is_settled(NEWEST, boundary, 3)
    assert is_settled(NEWEST, boundary + timedelta(days=400), 3)


def test_naive_datetimes_are_utc_and_offsets_respected():
    naive = datetime(2024, 12, 19, 10, 30)
    assert settles_at(naive, 3) == settles_at(NEWEST, 3)
    assert settles_at(naive, 3).tzinfo == UTC
    # 2024-12-22 12:00+02:00 is 10:00 UTC: half an hour short of settling
    eastern = timezone(timedelta(hours=2))
    assert not is_settled(NEWEST, datetime(2024, 12, 22, 12, 0, tzinfo=eastern), 3)
    assert is_settled(NEWEST, datetime(2024, 12, 22, 12, 30, tzinfo=eastern), 3)


def test_negative_settle_days_refused():
    with pytest.raises(ValueError, match="settle_days"):
        settles_at(NEWEST, -1)


def test_non_datetime_refused():
    with pytest.raises(TypeError):
        settles_at("2024-12-19", 3)  # type: ignore[arg-type]


def test_settling_of_a_fixture_program():
    # id.136838.714796: newest dataset TIUJCV was created 2025-07-04T..., the others in 2024-02.
    records = [parse_record(r) for r in load_raw(PID_2)
               if r["instrumentProgramExecutionId"] == "id.136838.714796"]
    newest = max(r.create_date for r in records)
    assert newest.date().isoformat() == "2025-07-04"
    assert settles_at(newest, 3).date().isoformat() == "2025-07-07"
    assert not is_settled(newest, newest + timedelta(days=2, hours=23), 3)
    assert is_settled(newest, newest + timedelta(days=3), 3)
