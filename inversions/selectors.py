"""Reads for the pages and the API (writes live in inversions.lifecycle)."""
from __future__ import annotations

from django.db.models import Count, Prefetch

from inversions.models import Dataset, ObservingProgram, Transition
from inversions.states import State


def state_counts() -> dict[str, int]:
    counts = dict(ObservingProgram.objects.order_by().values_list("state").annotate(n=Count("id")))
    return {state: counts.get(state, 0) for state in State.values}


def program_list():
    return ObservingProgram.objects.select_related("claimed_by").only(
        "instrument_program_execution_id",
        "primary_proposal_id",
        "primary_experiment_id",
        "instrument_name",
        "state",
        "state_changed_at",
        "start_time",
        "dataset_count",
        "spectral_lines",
        "priority",
        "claimed_by__username",
        "claimed_at",
    )


def program_detail(ipeid: str) -> ObservingProgram:
    return (
        ObservingProgram.objects.select_related("claimed_by")
        .prefetch_related(
            Prefetch("transitions", queryset=Transition.objects.select_related("actor_user").order_by("at", "id")),
            Prefetch("datasets", queryset=Dataset.objects.defer("raw").order_by("wavelength_min", "dataset_id")),
        )
        .get(instrument_program_execution_id=ipeid)
    )
