"""The JSON read API for the metadata store and the portal (DESIGN §9.4).

Token (``Authorization: Bearer …``) or session auth. Paginated with ``page`` / ``page_size``,
filterable, ``updated_since`` for incremental pulls. Bad parameters answer 400 with the reason.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from django.core.paginator import EmptyPage, Paginator
from django.http import JsonResponse
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware
from django.views.decorators.http import require_GET, require_POST

from inversions import selectors
from inversions.models import ObservingProgram
from inversions.states import State
from l2site.auth import is_science

MAX_PAGE_SIZE = 500


class BadRequest(ValueError):
    pass


def api_view(view):
    """JSON errors (401 for anonymous, 400 for bad parameters) instead of redirects and pages."""

    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return JsonResponse({"error": "authentication required (Bearer token or session)"}, status=401)
        try:
            return view(request, *args, **kwargs)
        except BadRequest as exc:
            return JsonResponse({"error": str(exc)}, status=400)

    wrapped.login_required = False  # answered here as JSON 401, not by LoginRequiredMiddleware
    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def int_param(request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.GET.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {raw[:40]!r}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def datetime_param(request, name: str) -> datetime | None:
    raw = request.GET.get(name)
    if raw in (None, ""):
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None:
        raise BadRequest(f"{name} must be an ISO 8601 date-time, e.g. 2024-01-31T12:00:00Z, not {raw[:40]!r}")
    return make_aware(value, timezone.utc) if is_naive(value) else value


def paginate(request, queryset, serialize):
    page_size = int_param(request, "page_size", 100, 1, MAX_PAGE_SIZE)
    number = int_param(request, "page", 1, 1, 10**9)
    paginator = Paginator(queryset, page_size)
    try:
        page = paginator.page(number)
    except EmptyPage:
        raise BadRequest(f"page {number} is past the last page ({paginator.num_pages})")
    return {
        "count": paginator.count,
        "page": number,
        "page_size": page_size,
        "pages": paginator.num_pages,
        "results": [serialize(item) for item in page.object_list],
    }


def program_summary(p: ObservingProgram) -> dict:
    return {
        "instrumentProgramExecutionId": p.instrument_program_execution_id,
        "observingProgramExecutionId": p.observing_program_execution_id,
        "primaryProposalId": p.primary_proposal_id,
        "primaryExperimentId": p.primary_experiment_id,
        "instrumentName": p.instrument_name,
        "state": p.state,
        "stateChangedAt": p.state_changed_at.isoformat(),
        "spectralLines": p.spectral_lines,
        "datasetCount": p.dataset_count,
        "startTime": p.start_time.isoformat() if p.start_time else None,
        "updatedAt": p.updated_at.isoformat(),
    }


@require_GET
@api_view
def programs(request):
    """Observing Programs: ?state=&instrument=&proposal=&updated_since=&page=&page_size="""
    qs = ObservingProgram.objects.order_by("updated_at", "id")
    state = request.GET.get("state")
    if state:
        if state not in State.values:
            raise BadRequest(f"state must be one of {', '.join(State.values)}")
        qs = qs.filter(state=state)
    if request.GET.get("instrument"):
        qs = qs.filter(instrument_name__iexact=request.GET["instrument"])
    if request.GET.get("proposal"):
        qs = qs.filter(primary_proposal_id=request.GET["proposal"])
    since = datetime_param(request, "updated_since")
    if since is not None:
        qs = qs.filter(updated_at__gt=since)
    return JsonResponse(paginate(request, qs, program_summary))


@require_GET
@api_view
def program(request, ipeid: str):
    """One program with its datasets, qualification report and history."""
    try:
        p = selectors.program_detail(ipeid)
    except ObservingProgram.DoesNotExist:
        return JsonResponse({"error": f"no Observing Program {ipeid!r}"}, status=404)
    history = list(p.transitions.all())
    qualification = next(
        (t.details for t in reversed(history) if t.to_state in (State.INVERTIBLE, State.NOT_INVERTIBLE)), None
    )
    body = program_summary(p) | {
        "claimedBy": p.claimed_by.username if p.claimed_by else None,
        "claimedAt": p.claimed_at.isoformat() if p.claimed_at else None,
        "qualification": qualification,
        "datasets": [
            {
                "datasetId": d.dataset_id,
                "productId": d.product_id,
                "superseded": d.superseded,
                "wavelengthMin": d.wavelength_min,
                "wavelengthMax": d.wavelength_max,
                "stokesParameters": d.stokes_parameters,
                "spectralLines": d.spectral_lines,
                "frameCount": d.frame_count,
                "createDate": d.create_date.isoformat(),
                "updateDate": d.update_date.isoformat(),
            }
            for d in p.datasets.all()
        ],
        "history": [
            {
                "from": t.from_state or None,
                "to": t.to_state,
                "at": t.at.isoformat(),
                "actor": t.actor,
                "reason": t.reason,
                "correction": t.is_correction,
                "details": t.details,
            }
            for t in history
        ],
    }
    return JsonResponse(body)


@require_POST
@api_view
def report_inverted(request, ipeid: str):
    """Report a Working program inverted (DESIGN §8): the science cluster's way.

    Body (JSON): ``{"collection", "path", "software_commit", "dataset_ids": [...], "notes"}``.
    The token's user must be in the science group. The result files are checked before the
    program becomes Inverted; a refused report answers 400 ``{"error": reason}`` and changes nothing.
    """
    from publishing.intake import ReportRejected
    from publishing.intake import report_inverted as intake

    if not is_science(request.user):
        return JsonResponse({"error": "only the science team reports programs inverted"}, status=403)
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body must be a JSON object")
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    program = ObservingProgram.objects.select_related("claimed_by").filter(instrument_program_execution_id=ipeid).first()
    if program is None:
        return JsonResponse({"error": f"no Observing Program {ipeid!r}"}, status=404)
    token = getattr(request, "api_token", None)
    actor = f"api:{token.name}" if token is not None else request.user.get_username()
    try:
        row = intake(
            program,
            user=request.user,
            collection=body.get("collection") or "",
            path=body.get("path") or "",
            software_commit=body.get("software_commit") or "",
            dataset_ids=body.get("dataset_ids") if body.get("dataset_ids") is not None else [],
            notes=body.get("notes") if body.get("notes") is not None else "",
            actor=actor,
            require_claim=False,
        )
    except ReportRejected as exc:
        payload = {"error": exc.message}
        if exc.field:
            payload["field"] = exc.field
        return JsonResponse(payload, status=400)
    return JsonResponse(
        {
            "instrumentProgramExecutionId": program.instrument_program_execution_id,
            "state": row.to_state,
            "at": row.at.isoformat(),
            "actor": row.actor,
            "details": row.details,
        }
    )
