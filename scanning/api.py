"""Scans in the JSON API: their counts (bad records and warnings apart), and one scan's records.

``GET /api/v1/scans`` (newest first, ``status``, ``page``, ``page_size``) and
``GET /api/v1/scans/<id>`` (its bad records and warnings, ``MAX_LISTED`` of each, with their
counts). Same authentication and errors as the rest of the API (``publishing.api``).
"""
from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from publishing.api import BadRequest, api_view, paginate
from scanning.models import Scan

MAX_LISTED = 500


def scan_summary(scan: Scan) -> dict:
    return {
        "id": scan.pk,
        "status": scan.status,
        "full": scan.full,
        "startedAt": scan.started_at.isoformat(),
        "finishedAt": scan.finished_at.isoformat() if scan.finished_at else None,
        "triggeredBy": scan.triggered_by,
        "pages": scan.pages,
        "records": scan.records,
        "new": scan.new,
        "updated": scan.updated,
        "unchanged": scan.unchanged,
        "errors": scan.errors,
        "warnings": scan.warnings,
        "programsNew": scan.programs_new,
        "programsQualified": scan.programs_qualified,
        "newestUpdateDate": scan.newest_update_date.isoformat() if scan.newest_update_date else None,
        "error": scan.error or None,
    }


@require_GET
@api_view
def scans(request):
    """Scans, newest first: ?status=&page=&page_size="""
    qs = Scan.objects.order_by("-started_at", "-id")
    status = request.GET.get("status")
    if status:
        if status not in Scan.Status.values:
            raise BadRequest(f"status must be one of {', '.join(Scan.Status.values)}")
        qs = qs.filter(status=status)
    return JsonResponse(paginate(request, qs, scan_summary))


@require_GET
@api_view
def scan(request, pk: int):
    """One scan with its bad records (raw JSON as kept) and its warnings."""
    found = Scan.objects.filter(pk=pk).first()
    if found is None:
        return JsonResponse({"error": f"no scan {pk}"}, status=404)
    errors = found.record_errors.order_by("id")[:MAX_LISTED]
    warnings = found.record_warnings.order_by("id")[:MAX_LISTED]
    return JsonResponse(scan_summary(found) | {
        "badRecords": [{"datasetId": e.dataset_id or None, "field": e.field or None, "reason": e.reason, "raw": e.raw}
                       for e in errors],
        "recordWarnings": [{"datasetId": w.dataset_id, "field": w.field, "reason": w.reason} for w in warnings],
    })
