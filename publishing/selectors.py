"""Reads for the publishing pages (no astropy here: the web process does not load the science code)."""
from __future__ import annotations

from inversions.models import ObservingProgram
from inversions.states import State
from publishing.models import Inversion

S = Inversion.Status


def published_inversion(program: ObservingProgram) -> Inversion | None:
    """The program's current publication (at most one inversion is published)."""
    return Inversion.objects.filter(program=program, status=S.PUBLISHED).first()


def current_inversion(program: ObservingProgram) -> Inversion | None:
    """The inversion the program is carried on with.

    A Published program: its current publication. Otherwise the most recently selected one
    (accepted by the intake, or being republished) that is neither archived nor superseded.
    """
    if program.state == State.PUBLISHED:
        found = published_inversion(program)
        if found is not None:
            return found
    return (Inversion.objects.filter(program=program).exclude(status__in=[S.ARCHIVED, S.SUPERSEDED])
            .order_by("-selected_at", "-created_at", "-id").first())


def pick_current(program: ObservingProgram, inversions: list[Inversion]) -> Inversion | None:
    """:func:`current_inversion` over an already loaded list of the program's inversions."""
    if program.state == State.PUBLISHED:
        found = next((i for i in inversions if i.status == S.PUBLISHED), None)
        if found is not None:
            return found
    live = [i for i in inversions if i.status not in (S.ARCHIVED, S.SUPERSEDED)]
    return max(live, key=lambda i: (i.selected_at, i.created_at, i.pk), default=None)


def program_inversions(program: ObservingProgram) -> list[Inversion]:
    """All of the program's inversions, newest first, with their status history."""
    return list(Inversion.objects.filter(program=program).select_related("superseded_by")
                .prefetch_related("events").order_by("-created_at", "-id"))


def last_software_commit(user) -> str:
    """The inversion software commit the report form proposes: the last one ``user`` reported, else anyone's."""
    newest = Inversion.objects.order_by("-reported_at", "-id").values_list("software_commit", flat=True)
    mine = newest.filter(reported_by_user=user).first() if getattr(user, "pk", None) else None
    return mine or newest.first() or ""
