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
#: Units of a dataset's numbers in the program answer ("" : a ratio or a count; the store gives light level none).
DATASET_UNITS = {
    "wavelengthMin": "nm", "wavelengthMax": "nm", "boundingBox": "arcsec", "exposureTime": "ms",
    "friedParameter": "m", "qualityAverageFriedParameter": "m", "polarimetricAccuracy": "",
    "qualityAveragePolarimetricAccuracy": "", "lightLevel": "LIGHTLVL as in the frames (no unit given)",
    "datasetSize": "GB", "frameCount": "frames", "aoLocked": "frames", "health": "frames", "gosStatus": "frames",
}


class BadRequest(ValueError):
    pass


def api_view(view):
    """JSON errors (401 for anonymous, 400 for bad parameters) instead of redirects and pages."""

    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return JsonResponse({"error": "authentication required (Bearer token or session)"}, status=401)
        try:
            if any("\x00" in value for values in request.GET.lists() for value in values[1]) or any(
                isinstance(value, str) and "\x00" in value for value in kwargs.values()
            ):
                raise BadRequest("parameters must not contain NUL characters")
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
        "wavelengthRanges": p.wavelength_ranges,
        "isEmbargoed": p.is_embargoed,
        "embargoEndDate": p.embargo_end_date.isoformat() if p.embargo_end_date else None,
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
        "intake": _latest_intake(p),
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
                "startTime": d.start_time.isoformat() if d.start_time else None,
                "endTime": d.end_time.isoformat() if d.end_time else None,
                "instrumentName": d.instrument_name or None,
                "boundingBox": d.bounding_box,
                "exposureTime": d.exposure_time,
                "health": d.health,
                "gosStatus": d.gos_status,
                "aoLocked": d.ao_locked,
                "lightLevel": d.light_level,
                "friedParameter": d.fried_parameter,
                "polarimetricAccuracy": d.polarimetric_accuracy,
                "qualityAverageFriedParameter": d.quality_average_fried_parameter,
                "qualityAveragePolarimetricAccuracy": d.quality_average_polarimetric_accuracy,
                "qualityReportObjectKey": d.quality_report_object_key or None,
                "browseMovieUrl": d.browse_movie_url or None,
                "browseMovieObjectKey": d.browse_movie_object_key or None,
                "asdfObjectKey": d.asdf_object_key or None,
                "bucket": d.bucket or None,
                "datasetSize": d.dataset_size,
                "hasAllStokes": d.has_all_stokes,
                "targetTypes": d.target_types,
                "status": d.status or None,
                "isEmbargoed": d.is_embargoed,
                "embargoEndDate": d.embargo_end_date.isoformat() if d.embargo_end_date else None,
                "noData": [{"field": f, "reason": r} for f, r in d.field_warnings or []],
            }
            for d in p.datasets.all()
        ],
        "datasetUnits": DATASET_UNITS,
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


def inversion_summary(inv) -> dict:
    """An inversion for the metadata store and the portal (the store's field names where it has them)."""
    program = inv.program
    return {
        "inversionId": inv.inversion_id,
        "instrumentProgramExecutionId": program.instrument_program_execution_id,
        "primaryProposalId": program.primary_proposal_id,
        "primaryExperimentId": program.primary_experiment_id,
        "programState": program.state,
        "datasetIds": list(inv.dataset_ids),
        "spectralLines": list(inv.spectral_lines),
        "softwareCommit": inv.software_commit,
        "rasterSteps": inv.raster_steps,
        "reportedBy": inv.reported_by,
        "reportedAt": inv.reported_at.isoformat(),
        "acceptedAt": inv.created_at.isoformat(),
        "generatedAt": inv.generated_at.isoformat() if inv.generated_at else None,
        "bucket": inv.bucket or None,
        "publishedCollection": inv.published_collection or None,
        "publishedPath": inv.published_path or None,
        "publishedAt": inv.published_at.isoformat() if inv.published_at else None,
        "asdfObjectKey": inv.asdf_object_key or None,
        "recordedInStoreAt": inv.store_recorded_at.isoformat() if inv.store_recorded_at else None,
        "fileCount": getattr(inv, "file_count", None),
        "updatedAt": inv.updated_at.isoformat(),
    }


def l2_file(f) -> dict:
    return {
        "filename": f.filename,
        "kind": f.kind,
        "step": f.step,
        "size": f.size,
        "sha256": f.sha256,
        "fileId": f.file_id or None,
        "objectKey": f.object_key or None,
    }


PUBLISHED_FILTER = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@require_GET
@api_view
def inversions(request):
    """Inversions, oldest change first: ?program=&proposal=&dataset=&published=&updated_since=&page=&page_size="""
    from django.db.models import Count

    from publishing.models import Inversion

    qs = Inversion.objects.select_related("program").annotate(file_count=Count("files")).order_by("updated_at", "id")
    for param, lookup in (("program", "program__instrument_program_execution_id"),
                          ("proposal", "program__primary_proposal_id")):
        value = request.GET.get(param)
        if value:
            qs = qs.filter(**{lookup: value[:200]})
    if request.GET.get("dataset"):
        qs = qs.filter(dataset_ids__contains=[request.GET["dataset"][:64]])
    published = request.GET.get("published")
    if published not in (None, ""):
        if published.lower() not in PUBLISHED_FILTER:
            raise BadRequest(f"published must be true or false, not {published[:20]!r}")
        qs = qs.filter(store_recorded_at__isnull=not PUBLISHED_FILTER[published.lower()])
    since = datetime_param(request, "updated_since")
    if since is not None:
        qs = qs.filter(updated_at__gt=since)
    return JsonResponse(paginate(request, qs, inversion_summary))


@require_GET
@api_view
def inversion(request, inversion_id: str):
    """One inversion with its result files and its L2 files."""
    from django.db.models import Count

    from publishing.models import Inversion

    inv = (Inversion.objects.select_related("program").annotate(file_count=Count("files"))
           .filter(inversion_id=inversion_id).first())
    if inv is None:
        return JsonResponse({"error": f"no inversion {inversion_id[:100]!r}"}, status=404)
    body = inversion_summary(inv) | {
        "notes": inv.notes,
        "reportedCollection": inv.reported_collection,
        "reportedPath": inv.reported_path,
        "resultFiles": inv.result_files,
        "files": [l2_file(f) for f in inv.files.order_by("kind", "step", "filename")],
    }
    return JsonResponse(body)


@require_POST
@api_view
def report_inverted(request, ipeid: str):
    """Report a Working program inverted (DESIGN §8): the science cluster's way.

    Body (JSON): ``{"collection", "path", "software_commit", "dataset_ids": [...], "notes"}``.
    The token's user must be in the science group. Everything that can be checked without the
    files is checked now: a refused report answers 400 ``{"error", "field"}`` and changes
    nothing. An accepted one answers 202 with the intake order; a worker then fetches and
    checks the files: the program becomes Inverted, or Error (step ``results``) with the reason
    (``GET /api/v1/programs/<id>`` shows which, and ``intake``).
    """
    from publishing.intake import ReportRejected, submit_report

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
        order = submit_report(
            program,
            user=request.user,
            actor=actor,
            collection=body.get("collection") or "",
            path=body.get("path") or "",
            software_commit=body.get("software_commit") or "",
            dataset_ids=body.get("dataset_ids") if body.get("dataset_ids") is not None else [],
            notes=body.get("notes") if body.get("notes") is not None else "",
            require_claim=False,
            source={"api_token": token.name} if token is not None else {"user": actor},
        )
    except ReportRejected as exc:
        payload = {"error": exc.message}
        if exc.field:
            payload["field"] = exc.field
        return JsonResponse(payload, status=400)
    return JsonResponse(intake_summary(order) | {"instrumentProgramExecutionId": program.instrument_program_execution_id},
                        status=202)


def _latest_intake(program) -> dict | None:
    from publishing.intake import latest_intake

    order = latest_intake(program)
    return intake_summary(order) if order is not None else None


def intake_summary(order) -> dict:
    """An intake order, for API answers."""
    return {
        "intake": order.pk,
        "status": order.status,
        "inversionId": order.details.get("inversion_id"),
        "reportedAt": order.details.get("reported_at"),
        "reportedBy": order.requested_by,
        "error": order.error or None,
        "report": order.details.get("report"),
    }
