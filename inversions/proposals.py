"""Proposal pages (``/proposals/``, ``/proposals/<id>``): the programs grouped under their proposal.

The list is one aggregate over the programs (a count per state); a proposal's page shows each
experiment's description once, then one row per program: state, lines, r₀ (cm) and the ticks of
its qualification checklist. Queries are fixed whatever the number of programs.
"""
from __future__ import annotations

import math

from django.conf import settings
from django.db.models import Count, Max, Min, Prefetch, Q
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from inversions import selectors
from inversions.models import Dataset, ObservingProgram, Transition
from inversions.states import State
from l2site.viewhelpers import paginate

#: states counted per proposal, in this order
COUNTED = (State.INVERTIBLE, State.PREPROCESSED, State.QUEUED, State.WORKING, State.INVERTED, State.PUBLISHED,
           State.ERROR, State.NOT_INVERTIBLE)


def r0_cm(datasets) -> float | None:
    """The lowest per-dataset median Fried parameter (m in the record), in cm: the warning's measure."""
    medians = []
    for d in datasets:
        value = d.fried_parameter.get("med") if isinstance(d.fried_parameter, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            medians.append(value * 100)
    return min(medians) if medians else None


def _ticks(history) -> list[dict]:
    q = selectors.qualification(history)
    return [{"name": r.get("name", "?"), "passed": bool(r.get("passed")), "value": r.get("value_text", "")}
            for r in (q.rules if q else [])]


@require_GET
def proposal_list(request):
    counts = {f"n_{s.value}": Count("id", filter=Q(state=s)) for s in COUNTED}
    rows = (ObservingProgram.objects.values("primary_proposal_id")
            .annotate(n=Count("id"), first=Min("start_time"), last=Max("start_time"), **counts)
            .order_by("primary_proposal_id"))
    page = paginate(request, rows, settings.L2_PAGE_SIZE)
    proposals = [{**r, "states": [{"state": s.value, "label": s.label, "n": r[f"n_{s.value}"]}
                                   for s in COUNTED if r[f"n_{s.value}"]]} for r in page]
    return render(request, "inversions/proposal_list.html", {"nav": "proposals", "page": page, "proposals": proposals})


@require_GET
def proposal_detail(request, proposal_id: str):
    programs = list(
        ObservingProgram.objects.filter(primary_proposal_id=proposal_id)
        .select_related("claimed_by")
        .prefetch_related(
            Prefetch("datasets", queryset=Dataset.objects.filter(superseded=False).only(
                "id", "program_id", "fried_parameter", "dataset_id")),
            Prefetch("transitions", queryset=Transition.objects.filter(
                to_state__in=[*selectors.QUALIFIED, State.DISCOVERED]).order_by("at", "id")),
        )
        .order_by("primary_experiment_id", "start_time", "instrument_program_execution_id")
    )
    if not programs:
        raise Http404(f"No programs of proposal {proposal_id}")
    experiments: dict[str, dict] = {}
    for p in programs:
        group = experiments.setdefault(p.primary_experiment_id or "", {
            "id": p.primary_experiment_id, "description": p.experiment_description, "programs": []})
        if not group["description"] and p.experiment_description:
            group["description"] = p.experiment_description
        group["programs"].append({"program": p, "r0": r0_cm(p.datasets.all()), "ticks": _ticks(list(p.transitions.all()))})
    context = {"nav": "proposals", "proposal_id": proposal_id, "experiments": list(experiments.values()),
               "count": len(programs),
               "amber_cm": settings.L2_FRIED_AMBER * 100, "red_cm": settings.L2_FRIED_RED * 100}
    return render(request, "inversions/proposal_detail.html", context)
