"""Publishing on the program page (DESIGN §9, §11): result intake, generation, publication.

The program page includes ``publishing/partials/program_publishing.html`` through the
``program_publishing`` tag (:mod:`publishing.templatetags.publishing_tags`); while any publishing
work runs, the partial polls :func:`program_publishing` and stops once nothing runs.
Generating and publishing are for operators; Publish first shows what will be published
(:func:`publish_confirm`) and needs a confirming POST naming the inversion shown.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from inversions.models import ObservingProgram, WorkOrder
from inversions.states import State
from inversions import lifecycle
from l2site.auth import is_operator, is_science, require_role
from publishing import inversion_status
from publishing.models import Inversion, L2File
from publishing.selectors import pick_current, program_inversions

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


def publishing_context(program: ObservingProgram, user, *, inversions: list[Inversion] | None = None) -> dict:
    """What the publishing partial shows for ``program`` and ``user`` (at most 4 queries).

    ``inversions``: the program's inversions (:func:`program_inversions`) when the caller has them.
    """
    if program.state not in SHOWN_IN:
        return {"program": program, "show": False}
    latest = {o.kind: o for o in WorkOrder.objects.filter(
        program=program, kind__in=[INTAKE, WorkOrder.Kind.GENERATE, WorkOrder.Kind.PUBLISH],
    ).order_by("kind", "-created_at", "-id").distinct("kind")}
    intake, generate, publish = (latest.get(k) for k in (INTAKE, WorkOrder.Kind.GENERATE, WorkOrder.Kind.PUBLISH))
    inversions = program_inversions(program) if inversions is None else inversions
    inversion = pick_current(program, inversions) if (latest or program.state != State.WORKING) else None
    if program.state == State.WORKING and inversion is not None and inversion.status == Inversion.Status.PUBLISHED:
        inversion = None  # a re-inversion is being worked: the published one is listed below
    if inversion is not None:  # orders of an earlier inversion are not this one's
        if generate is not None and generate.details.get("inversion_id") != inversion.inversion_id:
            generate = None
        if publish is not None and publish.details.get("inversion_id") != inversion.inversion_id:
            publish = None
    files = list(inversion.files.all()) if inversion else []
    frames = [f for f in files if f.kind == L2File.Kind.FRAME]
    operator = is_operator(user)
    science = is_science(user)
    state = program.state
    running = [o for o in (intake, generate, publish) if o is not None and o.status in ACTIVE]
    show_intake = intake is not None and (intake.status in ACTIVE or (
        intake.status == WorkOrder.Status.FAILED and (inversion is None or intake.created_at > inversion.created_at)))
    return {
        "program": program,
        "inversion": inversion,
        "l2_at": l2_files_at(inversion),
        "l2_files_list": files,
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
        "is_science": science,
        "inversions": inversions,
        "can_reinvert": science and state == State.PUBLISHED,
        "can_republish": operator and state == State.PUBLISHED and not running and inversion is not None
        and inversion.status == Inversion.Status.PUBLISHED,
        "show": bool(inversion or inversions or show_intake or state in (State.INVERTED, State.PUBLISHED)),
    }


def l2_files_at(inversion) -> dict | None:
    """Where an inversion's L2 files are: published, or generated on scratch ("Open in Globus")."""
    if inversion is None:
        return None
    if inversion.published_collection and inversion.published_path:
        return {"collection": inversion.published_collection, "path": inversion.published_path}
    if inversion.l2_path:
        return {"collection": settings.L2_SCRATCH_COLLECTION, "path": inversion.l2_path}
    return None


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



@require_POST
@require_role(is_science, "Only the science team starts a new inversion.")
def reinvert(request, ipeid: str):
    """A Published program is inverted again: Published → Working ("re-inversion"), claimed by the user."""
    program = _program(ipeid)
    reason = request.POST.get("reason", "").strip()[:500]
    try:
        lifecycle.reinvert(program, user=request.user, reason=reason)
    except lifecycle.LifecycleError as exc:
        messages.error(request, f"Not started: {exc}")
    else:
        messages.success(request, f"{program} is yours to invert again; report the new results when they are ready. "
                                  "The current publication stays until the new one is published.")
    return redirect("program-detail", ipeid=ipeid)


@require_POST
@require_role(is_operator, "Only operators republish.")
def republish(request, ipeid: str):
    """Regenerate and republish the published inversion after a fix (with the reason)."""
    from publishing import pipeline

    program = _program(ipeid)
    reason = request.POST.get("reason", "").strip()[:500]
    try:
        requested = pipeline.request_republish(program, actor=request.user.get_username(), user=request.user,
                                               reason=reason)
    except (pipeline.Refused, lifecycle.LifecycleError) as exc:
        messages.error(request, f"Not republished: {exc}")
    else:
        messages.success(request, f"Republishing {requested.order.details.get('inversion_id')} (order "
                                  f"#{requested.order.pk}): its files are generated again, then published under the "
                                  "same keys and its store record replaced.")
    return redirect("program-detail", ipeid=ipeid)


def _set_aside(request, ipeid: str, inversion_id: str, *, restore: bool):
    program = _program(ipeid)
    inversion = get_object_or_404(Inversion, program=program, inversion_id=inversion_id)
    reason = request.POST.get("reason", "").strip()[:500]
    try:
        if restore:
            inversion_status.restore(inversion, user=request.user, reason=reason)
        else:
            inversion_status.archive_inversion(inversion, user=request.user, reason=reason)
    except (inversion_status.StatusError, lifecycle.LifecycleError) as exc:
        messages.error(request, f"Not {'restored' if restore else 'archived'}: {exc}")
    else:
        messages.success(request, f"Inversion {inversion} {'restored' if restore else 'archived'}.")
    return redirect("program-detail", ipeid=ipeid)


@require_POST
@require_role(is_science, "Only the science team archives inversions.")
def archive_inversion(request, ipeid: str, inversion_id: str):
    return _set_aside(request, ipeid, inversion_id, restore=False)


@require_POST
@require_role(is_science, "Only the science team restores inversions.")
def restore_inversion(request, ipeid: str, inversion_id: str):
    return _set_aside(request, ipeid, inversion_id, restore=True)
