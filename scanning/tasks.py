"""Celery tasks of the scanning app."""
from __future__ import annotations

from celery import shared_task

from scanning.models import Scan
from scanning.scan import fail_lost_scans, run_scan


@shared_task(name="scanning.scan_metadata_store", acks_late=True, ignore_result=True)
def scan_metadata_store(scan_id: int | None = None, full: bool = False, triggered_by: str = "beat") -> dict:
    """Run a scan: the one an operator started (scan_id), or a new incremental one (beat).

    First, scans whose worker died are marked failed (``fail_lost_scans``), but this one: a
    message redelivered after its worker died runs its scan again, counting each record once
    (a scan already marked failed meanwhile is not run; the next scan reads what it missed).
    """
    fail_lost_scans(exclude=scan_id)
    scan = Scan.objects.filter(pk=scan_id, status=Scan.Status.RUNNING).first() if scan_id else None
    if scan_id and scan is None:
        return {"skipped": f"scan #{scan_id} is not waiting to run"}
    scan = run_scan(scan, full=full, triggered_by=triggered_by)
    return {"scan": scan.pk, "status": scan.status, "new": scan.new, "updated": scan.updated, "errors": scan.errors}
