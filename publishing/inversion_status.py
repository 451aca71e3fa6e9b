"""The one way to change an inversion's status (several inversions per program, DESIGN §4, §9).

    accepted ──> generated ──> published ──> superseded (a newer inversion of the program was published)
       └──────────┴──> archived ──restore──> the status before          (superseded ──> archived too)

A program's state still changes only through :mod:`inversions.lifecycle`; an inversion's
status through :func:`change` here, in the caller's transaction, with the inversion row locked
and an :class:`~publishing.models.InversionEvent` (who, when, why) written. Regenerating a
published inversion for a republish keeps it published (the store still holds it).
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from publishing.models import Inversion, InversionEvent

S = Inversion.Status

#: ordinary changes; restore (archived → the status before) is checked by :func:`restore`
ALLOWED: dict[str, frozenset[str]] = {
    S.ACCEPTED: frozenset({S.GENERATED, S.ARCHIVED}),
    S.GENERATED: frozenset({S.GENERATED, S.PUBLISHED, S.ARCHIVED}),  # generated again: a new set of files
    S.PUBLISHED: frozenset({S.PUBLISHED, S.SUPERSEDED}),  # published again: a republish
    S.SUPERSEDED: frozenset({S.ARCHIVED}),
    S.ARCHIVED: frozenset(),
}
#: statuses an inversion may be archived from: every one but published ("not published")
ARCHIVABLE = frozenset(s for s, targets in ALLOWED.items() if S.ARCHIVED in targets)


class StatusError(Exception):
    """A status change that cannot be made; the message says why, for people."""


def _label(status: str) -> str:
    return S(status).label if status in S.values else status


def change(inversion: Inversion, to_status: str, *, actor: str, user=None, reason: str = "",
           details: dict | None = None, fields: dict | None = None) -> InversionEvent:
    """Lock the inversion, check the change, write it and its history row (one transaction).

    ``fields``: other inversion fields written with it (``superseded_by``, ``republished_at`` …).
    """
    with transaction.atomic():
        locked = Inversion.objects.select_for_update().get(pk=inversion.pk)
        current = locked.status
        if to_status not in ALLOWED.get(current, frozenset()):
            raise StatusError(f"inversion {locked}: {_label(current)} → {_label(to_status)} is not allowed")
        return _write(locked, inversion, current, to_status, actor=actor, user=user, reason=reason,
                      details=details, fields=fields)


def _write(locked: Inversion, given: Inversion, current: str, to_status: str, *, actor, user, reason, details,
           fields) -> InversionEvent:
    now = timezone.now()
    locked.status, locked.status_changed_at, locked.updated_at = to_status, now, now
    for name, value in (fields or {}).items():
        setattr(locked, name, value)
    locked.save(update_fields=["status", "status_changed_at", "updated_at", *(fields or {})])
    for name in ("status", "status_changed_at", "updated_at", *(fields or {})):
        setattr(given, name, getattr(locked, name))
    return InversionEvent.objects.create(inversion=locked, from_status=current, to_status=to_status, at=now,
                                         actor=actor[:150], actor_user=user, reason=reason, details=details or {})


def accepted(inversion: Inversion, *, actor: str, user=None, reason: str = "result files checked") -> InversionEvent:
    """The first history row of an inversion the intake just recorded."""
    return InversionEvent.objects.create(inversion=inversion, from_status="", to_status=S.ACCEPTED,
                                         at=inversion.created_at, actor=actor[:150], actor_user=user, reason=reason)


def archive(inversion: Inversion, *, user, reason: str) -> InversionEvent:
    """The science team sets aside an inversion that is not published (mandatory reason)."""
    if not (reason or "").strip():
        raise StatusError("Archiving an inversion needs a reason.")
    with transaction.atomic():
        locked = Inversion.objects.select_for_update().get(pk=inversion.pk)
        if locked.status not in ARCHIVABLE:
            raise StatusError(f"inversion {locked} is {_label(locked.status)}: only an inversion that is not "
                              "published is archived")
        return _write(locked, inversion, locked.status, S.ARCHIVED, actor=user.get_username(), user=user,
                      reason=reason.strip(), details={}, fields=None)


def restore(inversion: Inversion, *, user, reason: str) -> InversionEvent:
    """An archived inversion back to the status it had before (mandatory reason)."""
    if not (reason or "").strip():
        raise StatusError("Restoring an inversion needs a reason.")
    with transaction.atomic():
        locked = Inversion.objects.select_for_update().get(pk=inversion.pk)
        if locked.status != S.ARCHIVED:
            raise StatusError(f"inversion {locked} is {_label(locked.status)}, not Archived: nothing to restore")
        before = (InversionEvent.objects.filter(inversion=locked, to_status=S.ARCHIVED)
                  .order_by("-at", "-id").values_list("from_status", flat=True).first())
        if before not in ARCHIVABLE:
            raise StatusError(f"inversion {locked}: the status before it was archived is not recorded")
        return _write(locked, inversion, S.ARCHIVED, before, actor=user.get_username(), user=user,
                      reason=reason.strip(), details={"restored": True}, fields=None)


def archive_inversion(inversion: Inversion, *, user, reason: str) -> InversionEvent:
    """Archive, keeping the program coherent.

    Refused while a generation or publication of it runs. Archiving the results an Inverted
    program is carried on with gives the program back its current publication (Inverted →
    Published, in its history) when it has one, and is refused otherwise (nothing would be left
    to publish: report new results, or correct the program).
    """
    from inversions import lifecycle
    from inversions.models import ObservingProgram, WorkOrder
    from inversions.states import State
    from publishing.selectors import current_inversion, published_inversion

    with transaction.atomic():
        program = ObservingProgram.objects.select_for_update().get(pk=inversion.program_id)
        busy = WorkOrder.objects.filter(program=program, kind__in=[WorkOrder.Kind.GENERATE, WorkOrder.Kind.PUBLISH],
                                        status__in=WorkOrder.ACTIVE, details__inversion_id=inversion.inversion_id)
        if busy.exists():
            raise StatusError(f"inversion {inversion} is being generated or published now: archive it afterwards")
        carried = program.state in (State.INVERTED, State.ERROR) and current_inversion(program) == inversion
        published = published_inversion(program) if carried else None
        if carried and (published is None or program.state != State.INVERTED):
            raise StatusError(f"{program} is {program.get_state_display()} with the results of {inversion}: "
                              "archiving them would leave nothing to publish")
        event = archive(inversion, user=user, reason=reason)
        if carried:
            lifecycle.transition(program, State.PUBLISHED, actor=user.get_username(), user=user,
                                 reason=f"newer results {inversion} archived: {reason.strip()}",
                                 details={"inversion_id": published.inversion_id, "archived": inversion.inversion_id},
                                 expected_from=(State.INVERTED,))
    return event
