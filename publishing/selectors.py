"""Reads for the publishing pages (no astropy here: the web process does not load the science code)."""
from __future__ import annotations

from inversions.models import ObservingProgram
from publishing.models import Inversion


def current_inversion(program: ObservingProgram) -> Inversion | None:
    """The program's newest accepted inversion."""
    return Inversion.objects.filter(program=program).order_by("-created_at", "-id").first()
