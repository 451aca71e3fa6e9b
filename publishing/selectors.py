"""Reads for the publishing pages (no astropy here: the web process does not load the science code)."""
from __future__ import annotations

from inversions.models import ObservingProgram
from publishing.models import Inversion


def current_inversion(program: ObservingProgram) -> Inversion | None:
    """The program's newest accepted inversion."""
    return Inversion.objects.filter(program=program).order_by("-created_at", "-id").first()


def last_software_commit(user) -> str:
    """The inversion software commit the report form proposes: the last one ``user`` reported, else anyone's."""
    newest = Inversion.objects.order_by("-reported_at", "-id").values_list("software_commit", flat=True)
    mine = newest.filter(reported_by_user=user).first() if getattr(user, "pk", None) else None
    return mine or newest.first() or ""
