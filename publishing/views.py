"""Publishing on the program page (DESIGN §9, §11): result intake, generation, publication.

The program page includes ``publishing/partials/program_publishing.html`` through the
``program_publishing`` tag (:mod:`publishing.templatetags.publishing_tags`); while any publishing
work runs, the partial polls :func:`program_publishing` and stops once nothing runs.
Generating and publishing are for operators; Publish first shows what will be published
(:func:`publish_confirm`) and needs a confirming POST naming the inversion shown.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from inversions import work_orders
from inversions.models import ObservingProgram, WorkOrder
from inversions.states import State
from l2site.auth import is_operator, require_role
from publishing.models import L2File
from publishing.selectors import current_inversion

ACTIVE = WorkOrder.ACTIVE
INTAKE = WorkOrder.Kind.INTAKE


@dataclass
class OrderView:
    """A work order as the partial shows it."""

    order: WorkOrder
    done: int | None = None
    total: int | None = None
    unit: str = ""

    @property
    def active(self) -> bool:
        return self.order.status in ACTIVE

    @property
    def percent(self) -> float | None:
        return 100.0 * self.done / self.total if self.total and self.done is not None else None


def _view(order: WorkOrder | None, done_key: str, total_key: str, unit: str) -> OrderView | None:
    if order is None:
        return None
    p = order.progress or {}
    return OrderView(order, p.get(done_key), p.get(total_key), unit)


#: states in which the program page shows its Level 2 part (none before anyone worked on it)
SHOWN_IN = (State.WORKING, State.INVERTED, State.PUBLISHED, State.ERROR)


_UNKNOWN = object()


def publishing_context(program: ObservingProgram, user, *, known_inversion=_UNKNOWN) -> dict:
    """What the publishing partial shows for ``program`` and ``user`` (at most 3 queries).

    ``known_inversion``: the program's current inversion when the caller has just read it (the
    program page's results card), to save the query.
    """
    if program.state not in SHOWN_IN:
        return {"program": program, "show": False}
    latest = {o.kind: o for o in WorkOrder.objects.filter(
        program=program, kind__in=[INTAKE, WorkOrder.Kind.GENERATE, WorkOrder.Kind.PUBLISH],
    ).order_by("kind", "-created_at", "-id").distinct("kind")}
    intake, generate, publish = (latest.get(k) for k in (INTAKE, WorkOrder.Kind.GENERATE, WorkOrder.Kind.PUBLISH))
    if not (latest or program.state != State.WORKING):
        inversion = None
    elif known_inversion is not _UNKNOWN:
        inversion = known_inversion
    else:
        inversion = current_inversion(program)
    if inversion is not None:  # orders of an earlier inversion are not this one's
        if generate is not None and generate.details.get("inversion_id") != inversion.inversion_id:
            generate = None
        if publish is not None and publish.details.get("inversion_id") != inversion.inversion_id:
            publish = None
    files = list(inversion.files.all()) if inversion else []
    frames = [f for f in files if f.kind == L2File.Kind.FRAME]
    operator = is_operator(user)
    state = program.state
    running = [o for o in (intake, generate, publish) if o is not None and o.status in ACTIVE]
    show_intake = intake is not None and (intake.status in ACTIVE or (
        intake.status == WorkOrder.Status.FAILED and (inversion is None or intake.created_at > inversion.created_at)))
    return {
        "program": program,
        "inversion": inversion,
        "intake": _view(intake, "files", "files_total", "files") if show_intake else None,
        "generate": _view(generate, "frames_done", "frames_total", "frames"),
        "publish": _view(publish, "files_done", "files_total", "files"),
        "l2_files": len(files),
        "l2_frames": len(frames),
        "l2_bytes": sum(f.size for f in files),
        "running": bool(running),
        "can_generate": operator and state == State.INVERTED and inversion is not None and not running,
        "can_publish": operator and state == State.INVERTED and inversion is not None and not running
        and inversion.generated_at is not None,
        "is_operator": operator,
        "show": bool(inversion or show_intake or state in (State.INVERTED, State.PUBLISHED)),
    }


def _program(ipeid: str) -> ObservingProgram:
    return get_object_or_404(ObservingProgram.objects.select_related("claimed_by"), instrument_program_execution_id=ipeid)


@require_GET
def program_publishing(request, ipeid: str):
    """The publishing partial alone (polled while work runs)."""
    program = _program(ipeid)
    response = render(request, "publishing/partials/program_publishing.html", publishing_context(program, request.user))
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_POST
@require_role(is_operator, "Only operators generate L2 files.")
def generate(request, ipeid: str):
    from publishing import pipeline  # the science code: loaded by the views that need it

    program = _program(ipeid)
    force = request.POST.get("force") == "1"
    try:
        requested = pipeline.request_generate(program, actor=request.user.get_username(), user=request.user, force=force)
    except pipeline.Refused as exc:
        messages.error(request, f"Not generated: {exc}")
    else:
        if requested.created:
            messages.success(request, f"Generating the L2 files of {program} (order #{requested.order.pk}): "
                                      "progress is shown below.")
        elif requested.skipped:
            messages.info(request, f"Nothing to do: {requested.reason}. Tick “again” to generate them anyway.")
        else:
            messages.info(request, f"Not started: {requested.reason}.")
    return redirect("program-detail", ipeid=ipeid)


@require_http_methods(["GET", "POST"])
@require_role(is_operator, "Only operators publish.")
def publish_confirm(request, ipeid: str):
    """GET: what will be published (files, sizes, destination, the store record). POST: publish it."""
    from publishing import pipeline

    program = _program(ipeid)
    try:
        plan = pipeline.publish_plan(program)
    except pipeline.Refused as exc:
        messages.error(request, f"Not published: {exc}")
        return redirect("program-detail", ipeid=ipeid)
    if request.method == "POST":
        confirmed = request.POST.get("inversion", "")
        if confirmed != plan.inversion.inversion_id:
            messages.error(request, "Not published: the confirmation does not name the inversion shown "
                                    f"({plan.inversion.inversion_id}); please review it again.")
        else:
            try:
                requested = pipeline.request_publish(program, actor=request.user.get_username(), user=request.user)
            except pipeline.Refused as exc:
                messages.error(request, str(exc))
            else:
                if requested.created:
                    messages.success(request, f"Publishing {plan.inversion} (order #{requested.order.pk}): files go to "
                                              f"{plan.collection}:{plan.path}, then the metadata store is told.")
                    return redirect("program-detail", ipeid=ipeid)
                messages.info(request, f"Not started: {requested.reason}.")
                return redirect("program-detail", ipeid=ipeid)
        status = 400
    else:
        status = 200
    context = {"nav": "programs", "program": program, "plan": plan, "frames": sum(f.kind == L2File.Kind.FRAME for f in plan.files)}
    return render(request, "publishing/publish_confirm.html", context, status=status)

