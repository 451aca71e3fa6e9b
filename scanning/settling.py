"""The settle rule (DESIGN §5).

The metadata store does not say when an Observing Program is complete. A program is
*settled* when its newest dataset's ``createDate`` is at least ``settle_days`` old; only
settled programs are qualified. Naive datetimes are taken as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["is_settled", "settles_at"]


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def settles_at(newest_create_date: datetime, settle_days: float) -> datetime:
    """When a program whose newest dataset was created at ``newest_create_date`` settles (UTC)."""
    if settle_days < 0:
        raise ValueError(f"settle_days must not be negative, got {settle_days!r}")
    return _utc(newest_create_date, "newest_create_date") + timedelta(days=settle_days)


def is_settled(newest_create_date: datetime, now: datetime, settle_days: float) -> bool:
    """True when ``now`` is at or after :func:`settles_at` (at least ``settle_days`` old)."""
    return _utc(now, "now") >= settles_at(newest_create_date, settle_days)
