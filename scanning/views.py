"""The scans page: history with counts and bad records, start a scan, watch it run (DESIGN §5, §11)."""
from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from l2site.auth import is_operator, require_role
from l2site.viewhelpers import paginate, roles, wants_partial
from scanning.models import Scan
from scanning.selectors import next_scan, running_scans, took, with_took

#: A scan no worker has taken yet (its message waits in the queue) blocks a new one this long.
RUNNING_BLOCKS_FOR = timedelta(hours=1)
ERRORS_PER_PAGE = 100


def fail_lost_scans() -> int:
    """Running scans whose worker died are marked failed at every look (scanning.scan.fail_lost_scans)."""
    from scanning.scan import fail_lost_scans as fail

    return fail()


def start_scan(*, full: bool, triggered_by: str) -> Scan:
    """Create the scan row and hand it to a worker (scanning.scan.start_scan, imported when used)."""
    from scanning.scan import start_scan as start

    return start(full=full, triggered_by=triggered_by)


#: the event a finished scan's last progress answer sends (the scans table listens for it)
SCAN_FINISHED = "l2-scan-finished"


def _progress_response(request, scan: Scan):
    scan.took = took(scan)
    response = render(request, "scanning/partials/scan_progress.html", {"scan": scan})
    if request.headers.get("HX-Request") and not scan.is_running:
        response["HX-Trigger"] = SCAN_FINISHED  # the scans table loads itself again: the new row shows
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def scan_list(request):
    fail_lost_scans()
    scans = Scan.objects.order_by("-started_at", "-id").annotate(bad_records=Count("record_errors", distinct=True))
    page = paginate(request, scans, settings.L2_PAGE_SIZE)
    partial = wants_partial(request)
    context = {
        "nav": "scans",
        "partial": partial,
        "page": page,
        "scans": with_took(page.object_list),
        "running": running_scans(),
        "next_scan": next_scan(),
        **roles(request.user),
    }
    template = "scanning/partials/scan_table.html" if partial else "scanning/scans.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


@require_GET
def scan_detail(request, pk: int):
    scan = get_object_or_404(Scan, pk=pk)
    scan.took = took(scan)
    page = paginate(request, scan.record_errors.order_by("id"), ERRORS_PER_PAGE)
    errors = list(page.object_list)
    for e in errors:
        e.raw_text = json.dumps(e.raw, indent=2, sort_keys=True, default=str) if e.raw is not None else ""
    warnings_page = paginate(request, scan.record_warnings.order_by("id"), ERRORS_PER_PAGE, param="wpage")
    context = {"nav": "scans", "scan": scan, "page": page, "errors": errors, "warnings_page": warnings_page,
               "warnings": list(warnings_page.object_list), **roles(request.user)}
    return render(request, "scanning/scan_detail.html", context)


@require_GET
def scan_progress(request, pk: int):
    """The progress partial; it polls itself (every 2 s) only while the scan runs."""
    fail_lost_scans()
    return _progress_response(request, get_object_or_404(Scan, pk=pk))


@require_POST
@require_role(is_operator, "Only operators start scans.")
def scan_start(request):
    full = request.POST.get("full") in ("1", "on", "true")
    fail_lost_scans()  # a scan whose worker died blocks nothing
    busy = (Scan.objects.filter(status=Scan.Status.RUNNING)  # a worker has it, or it waits to be taken
            .filter(Q(locked_at__isnull=False) | Q(started_at__gte=timezone.now() - RUNNING_BLOCKS_FOR)).first())
    if busy is not None:
        messages.warning(request, f"Scan #{busy.pk} is already running: watch it below.")
        scan = busy
    else:
        try:
            scan = start_scan(full=full, triggered_by=request.user.get_username())
        except Exception as exc:  # broker down, scanning unavailable …: say so, change nothing
            messages.error(request, f"The scan could not be started: {exc}")
            return _progress_or_redirect(request, None)
        messages.success(request, f"{'Full' if full else 'Incremental'} scan #{scan.pk} started.")
    return _progress_or_redirect(request, scan)


def _progress_or_redirect(request, scan: Scan | None):
    if wants_partial(request):
        if scan is not None:
            scan.took = took(scan)
        response = render(request, "scanning/partials/scan_started.html", {"scan": scan})
        patch_vary_headers(response, ["HX-Request"])
        return response
    return redirect("scan-list")
