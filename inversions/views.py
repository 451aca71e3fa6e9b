"""Dashboard pages. Thin: reads come from selectors, every state change from lifecycle."""
from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from inversions import lifecycle, selectors
from inversions.models import ObservingProgram
from inversions.states import MAIN_LINE, State
from l2site.auth import is_operator, is_science, require_role


def overview(request):
    counts = selectors.state_counts()
    return render(
        request,
        "inversions/overview.html",
        {
            "nav": "overview",
            "counts": [(State(s), counts[s]) for s in State.values],
            "main_line": MAIN_LINE,
            "can_pick": is_science(request.user),
        },
    )


def program_list(request):
    qs = selectors.program_list()
    state = request.GET.get("state", "")
    if state in State.values:
        qs = qs.filter(state=state)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "inversions/program_list.html",
        {"nav": "programs", "page": page, "states": State.choices, "state": state},
    )


def program_detail(request, ipeid: str):
    try:
        program = selectors.program_detail(ipeid)
    except ObservingProgram.DoesNotExist:
        raise Http404("No such Observing Program")
    return render(
        request,
        "inversions/program_detail.html",
        {
            "nav": "programs",
            "program": program,
            "can_claim": is_science(request.user) and program.state in (State.PREPROCESSED, State.QUEUED),
            "can_release": is_science(request.user) and program.state == State.WORKING,
            "is_operator": is_operator(request.user),
        },
    )


@require_POST
@require_role(is_science, "Only the science team claims programs.")
def claim(request, ipeid: str):
    program = get_object_or_404(ObservingProgram, instrument_program_execution_id=ipeid)
    try:
        lifecycle.claim(program, user=request.user)
        messages.success(request, f"You are working on {program}.")
    except lifecycle.LifecycleError as exc:
        messages.error(request, str(exc))
    return redirect("program-detail", ipeid=ipeid)


@require_POST
@require_role(is_science, "Only the science team releases claims.")
def release(request, ipeid: str):
    program = get_object_or_404(ObservingProgram, instrument_program_execution_id=ipeid)
    to_state = State.QUEUED if request.POST.get("to") == State.QUEUED else State.PREPROCESSED
    try:
        lifecycle.release(program, user=request.user, to_state=to_state)
        messages.success(request, f"Released {program}.")
    except lifecycle.LifecycleError as exc:
        messages.error(request, str(exc))
    return redirect("program-detail", ipeid=ipeid)


@require_POST
@require_role(is_science, "Only the science team picks programs.")
def pick_next(request):
    program = lifecycle.claim_next(user=request.user)
    if program is None:
        messages.info(request, "Nothing is waiting: no program is Queued or Preprocessed.")
        return redirect("overview")
    messages.success(request, f"You are working on {program}.")
    return redirect("program-detail", ipeid=program.instrument_program_execution_id)
