"""Reads about scans, shared by the scans page and the overview (no writes here).

``took`` says how long a scan took in words; ``last_scan``, ``running_scans`` and ``next_scan``
are what the overview and the scans page show about the latest, the running and the next scan.
"""
from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from scanning.models import Scan

SCAN_TASK = "scanning.scan_metadata_store"


def took(scan: Scan) -> str:
    """How long a scan took ("running" while it runs, "—" when the end was not recorded)."""
    if scan.status == Scan.Status.RUNNING:
        return "running"
    if scan.finished_at is None:
        return "—"
    seconds = max((scan.finished_at - scan.started_at).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def with_took(scans) -> list[Scan]:
    """The scans as a list, each with ``took`` set."""
    scans = list(scans)
    for scan in scans:
        scan.took = took(scan)
    return scans


def last_scan() -> Scan | None:
    """The newest scan that is not running (None before the first one)."""
    scan = Scan.objects.exclude(status=Scan.Status.RUNNING).order_by("-started_at", "-id").first()
    return with_took([scan])[0] if scan else None


def running_scans() -> list[Scan]:
    """The newest three running scans."""
    return with_took(Scan.objects.filter(status=Scan.Status.RUNNING).order_by("-started_at", "-id")[:3])


def next_scan() -> datetime | None:
    """When beat runs the periodic scan next (None: not scheduled or disabled)."""
    try:
        from django_celery_beat.models import PeriodicTask

        task = (
            PeriodicTask.objects.filter(task=SCAN_TASK, enabled=True)
            .select_related("interval", "crontab", "solar", "clocked")
            .order_by("id")
            .first()
        )
        if task is None:
            return None
        now = timezone.now()
        remaining = task.schedule.remaining_estimate(task.last_run_at or now)
        return max(now, now + remaining)
    except Exception:  # a schedule we cannot read must not break the overview
        return None
