"""The one way to change an Observing Program's state (DESIGN §4).

Every change — by the scan, a worker, a view, the API or an admin — goes through
:func:`apply`: the rows are locked (``SELECT … FOR UPDATE``), each change is checked
against the transition table in :mod:`inversions.states`, and the history row, the cached
state on the program and the outbox event are written in one database transaction. An
illegal change raises :class:`IllegalTransition` naming both states and writes nothing.

The small functions below (claim, release, enqueue, retry, correct …) are the verbs the
rest of the code uses; each is a thin layer over :func:`apply`.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inversions.bulk import COPY_THRESHOLD, bulk_update_values, copy_rows, insert_models, reserve_ids
from inversions.models import ObservingProgram, OutboxEvent, Transition
from inversions.states import BEFORE_WORKING, State, allowed_targets, label

log = logging.getLogger(__name__)

UPDATE_BATCH = 1000


class LifecycleError(Exception):
    """A state change that cannot be made; the message says why, for people."""


class IllegalTransition(LifecycleError):
    def __init__(self, program: ObservingProgram, from_state: str, to_state: str, why: str = ""):
        self.program, self.from_state, self.to_state = program, from_state, to_state
        message = f"{program}: {label(from_state)} → {label(to_state)} is not allowed"
        super().__init__(f"{message} ({why})" if why else message)


class StateChanged(LifecycleError):
    """The program is no longer in the state the caller saw (someone else moved it)."""

    def __init__(self, program: ObservingProgram, expected: Iterable[str], found: str):
        self.program, self.expected, self.found = program, tuple(expected), found
        wanted = " or ".join(label(s) for s in self.expected)
        super().__init__(f"{program} is {label(found)} now, not {wanted}: it was changed meanwhile")


class JSONText(str):
    """A transition's details already serialised as JSON (the scan's qualification reports): stored as they are."""


def _details(details: dict | JSONText) -> dict:
    return json.loads(details) if isinstance(details, JSONText) else details


@dataclass(frozen=True)
class Change:
    """One requested transition."""

    program_id: int
    to_state: str
    reason: str = ""
    details: dict | JSONText = field(default_factory=dict)
    #: Refuse (StateChanged) unless the program is in one of these states when locked.
    expected_from: tuple[str, ...] | None = None
    #: For Queued: the priority to set.
    priority: int | None = None
    #: For Working: who holds the claim (by default the acting user), e.g. the claimant before an Error.
    claimant: Any = None


#: The program fields a transition writes (state, and the claim and queue fields kept in step with it).
STATE_FIELDS = ["state", "state_changed_at", "updated_at", "priority", "queued_at", "claimed_by", "claimed_at"]


def apply(
    changes: Sequence[Change], *, actor: str, user=None, correction: bool = False, returning: bool = True,
    locked: Sequence[ObservingProgram] | None = None,
) -> list[Transition]:
    """Make the changes in one transaction, all or nothing, and return the history rows.

    With ``returning=False`` a large batch (the scan's qualification) is written without
    building model instances (COPY of plain rows) and ``[]`` is returned; the rows written
    are the same.

    ``locked``: the programs of the changes, already locked (``SELECT … FOR UPDATE``) by the
    caller in the transaction it holds (``claim_next``); they are not read again, their
    attributes are updated in place, and no savepoint is taken (an error rolls back the
    caller's transaction). A single change is written in one statement (history row,
    outbox event and the program's fields: :func:`_write_single`).
    """
    if not changes:
        return []
    if correction and (user is None or not all(c.reason.strip() for c in changes)):
        raise LifecycleError("A correction needs an admin and a reason.")
    lean = not returning and len(changes) >= COPY_THRESHOLD
    with transaction.atomic(savepoint=locked is None):
        ids = sorted({c.program_id for c in changes})
        if locked is not None:
            if not transaction.get_connection().in_atomic_block:
                raise LifecycleError("locked programs need the caller's transaction")
            programs = {p.pk: p for p in locked}
        else:
            query = ObservingProgram.objects.select_for_update().filter(pk__in=ids).order_by("pk")
            if lean:  # only what the checks, the side effects and the event need
                query = query.only("id", "instrument_program_execution_id", "state", "priority", "queued_at",
                                   "claimed_by", "claimed_at")
            programs = {p.pk: p for p in query}
        missing = set(ids) - programs.keys()
        if missing:
            raise ObservingProgram.DoesNotExist(f"No Observing Program with id {sorted(missing)}")
        before_error = _states_before_error([p.pk for p in programs.values() if p.state == State.ERROR])
        now = timezone.now()
        steps: list[_Step] = []
        states = frozenset(State.values)  # (the property makes a new list each time)
        for change in changes:
            program = programs[change.program_id]
            current = program.state
            if change.to_state not in states:
                raise LifecycleError(f"Unknown state {change.to_state!r}")
            if change.expected_from is not None and current not in change.expected_from:
                raise StateChanged(program, change.expected_from, current)
            if correction:
                if change.to_state == current:
                    raise IllegalTransition(program, current, change.to_state, "it is already in that state")
            elif change.to_state not in allowed_targets(current, before_error=before_error.get(program.pk)):
                raise IllegalTransition(program, current, change.to_state)
            if change.to_state == State.ERROR:
                before_error[program.pk] = current
            steps.append(_Step(program, current, change.to_state, change.reason, change.details or {}))
            _apply_side_effects(program, current, change, user, now)
        if len(steps) == 1 and len(programs) == 1:
            transitions = [_write_single(steps[0], at=now, actor=actor, user=user, correction=correction)]
        else:
            transitions = _write_history(steps, at=now, actor=actor, user=user, correction=correction,
                                         returning=not lean)
            bulk_update_values(programs.values(), STATE_FIELDS)
        transaction.on_commit(kick_event_relay, robust=True)
    return transitions


@dataclass(frozen=True)
class _Step:
    """One checked transition, before it is written."""

    program: ObservingProgram
    from_state: str
    to_state: str
    reason: str
    details: dict | JSONText


def _write_history(steps: Sequence[_Step], *, at: datetime, actor: str, user, correction: bool,
                   returning: bool) -> list[Transition]:
    """Write the history rows and their outbox events (the caller's transaction).

    Returned as Transition instances (``INSERT``, or ``COPY`` for large batches) when
    ``returning``; otherwise large batches are copied as plain rows, nothing returned.
    """
    if returning or len(steps) < COPY_THRESHOLD:
        transitions = [
            Transition(program=s.program, from_state=s.from_state, to_state=s.to_state, at=at, actor=actor,
                       actor_user=user, reason=s.reason, details=_details(s.details), is_correction=correction)
            for s in steps
        ]
        insert_models(transitions, batch_size=UPDATE_BATCH)
        insert_models([_event_for(t) for t in transitions], batch_size=UPDATE_BATCH)
        return transitions
    ids = reserve_ids(Transition, len(steps))
    user_id = user.pk if user is not None else None
    at_text = at.isoformat()  # the same timestamptz; psycopg dumps a str several times faster
    copy_rows(
        Transition._meta.db_table,
        ["id", "program_id", "from_state", "to_state", "at", "actor", "actor_user_id", "reason", "details", "is_correction"],
        (
            (pk, s.program.pk, s.from_state, s.to_state, at_text, actor, user_id, s.reason,
             s.details if isinstance(s.details, JSONText) else _json(s.details), correction)
            for pk, s in zip(ids, steps)
        ),
    )
    copy_rows(
        OutboxEvent._meta.db_table,
        ["created_at", "routing_key", "payload", "transition_id", "sent_at", "attempts", "last_error"],
        (
            (at_text, _routing_key(s.to_state), _json(_payload(s.program, pk, s.from_state, s.to_state, at, actor,
                                                               s.reason, correction)), pk, None, 0, "")
            for pk, s in zip(ids, steps)
        ),
    )
    return []


def _single_sql() -> str:
    """The statement of :func:`_write_single` (built once from the models' tables and columns)."""
    global _SINGLE_SQL
    if _SINGLE_SQL is None:
        program = ObservingProgram._meta
        columns = ", ".join(f"{program.get_field(name).column} = %s" for name in STATE_FIELDS)
        _SINGLE_SQL = (
            f"WITH t AS (INSERT INTO {Transition._meta.db_table} (program_id, from_state, to_state, at, actor, "
            "actor_user_id, reason, details, is_correction) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s) "
            "RETURNING id), "
            f"e AS (INSERT INTO {OutboxEvent._meta.db_table} (created_at, bus, routing_key, payload, transition_id, "
            "sent_at, attempts, last_error) SELECT %s, %s, %s, jsonb_set(%s::jsonb, '{transition_id}', to_jsonb(t.id)), "
            "t.id, NULL, 0, '' FROM t), "
            f"p AS (UPDATE {program.db_table} SET {columns} WHERE id = %s) "
            "SELECT id FROM t"
        )
    return _SINGLE_SQL


_SINGLE_SQL: str | None = None


def _write_single(step: _Step, *, at: datetime, actor: str, user, correction: bool) -> Transition:
    """One transition in one statement (the caller's transaction): its history row, its outbox
    event (the payload's ``transition_id`` filled in by the database) and the program's state
    fields, as :func:`_write_history` and ``bulk_update_values`` write them for a batch.
    """
    p = step.program
    details = _details(step.details)
    payload = _payload(p, None, step.from_state, step.to_state, at, actor, step.reason, correction)
    user_id = user.pk if user is not None else None
    state_values = [p.state, p.state_changed_at, p.updated_at, p.priority, p.queued_at, p.claimed_by_id, p.claimed_at]
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(_single_sql(), [
            p.pk, step.from_state, step.to_state, at, actor, user_id, step.reason, _json(details), correction,
            at, OutboxEvent.Bus.EVENTS, _routing_key(step.to_state), _json(payload),
            *state_values, p.pk,
        ])
        (pk,) = cursor.fetchone()
    row = Transition(pk=pk, program=p, from_state=step.from_state, to_state=step.to_state, at=at, actor=actor,
                     actor_user=user, reason=step.reason, details=details, is_correction=correction)
    row._state.adding = False
    row._state.db = "default"
    return row


def _json(value: Any) -> str:
    """JSON text for a jsonb column (orjson: several times faster than json.dumps on large batches)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson does not write (integers beyond 64 bits): the standard library
        return json.dumps(value)


def _states_before_error(program_ids: list[int]) -> dict[int, str]:
    if not program_ids:
        return {}
    rows = (
        Transition.objects.filter(program_id__in=program_ids, to_state=State.ERROR)
        .order_by("program_id", "-at", "-id")
        .distinct("program_id")
        .values_list("program_id", "from_state")
    )
    return dict(rows)


def _apply_side_effects(program: ObservingProgram, current: str, change: Change, user, now: datetime) -> None:
    """Keep the claim and queue fields in step with the state: claimed iff Working, queued_at iff Queued."""
    to = change.to_state
    if to == State.WORKING:
        program.claimed_by = change.claimant or user
        program.claimed_at = now
    else:
        program.claimed_by = None
        program.claimed_at = None
    if to == State.QUEUED:
        if current != State.QUEUED:  # a new priority keeps the program's age in the queue
            program.queued_at = now
        if change.priority is not None:
            program.priority = change.priority
    else:
        program.queued_at = None
    program.state = to
    program.state_changed_at = now
    program.updated_at = now


def _routing_key(to_state: str) -> str:
    return f"l2.program.{to_state}"


def _payload(program: ObservingProgram, transition_id: int | None, from_state: str, to_state: str, at: datetime,
             actor: str, reason: str, correction: bool) -> dict:
    return {
        "event_id": None,  # filled by the relay with the outbox row's id
        "program": program.instrument_program_execution_id,
        "program_id": program.pk,
        "from": from_state or None,
        "to": to_state,
        "at": at.isoformat(),
        "actor": actor,
        "reason": reason,
        "correction": correction,
        "transition_id": transition_id,
    }


def _event_for(t: Transition) -> OutboxEvent:
    return OutboxEvent(
        created_at=t.at,
        routing_key=_routing_key(t.to_state),
        transition=t,
        payload=_payload(t.program, t.pk, t.from_state, t.to_state, t.at, t.actor, t.reason, t.is_correction),
    )


#: Called (without arguments) after each commit that wrote outbox events, when
#: ``EVENT_RELAY_ON_COMMIT``: the relay's wake-up. The app registers it (inversions.apps:
#: :func:`inversions.relay.wake`); this module knows no relay and no Celery. A hook runs on the
#: request path, so it must not wait on anything (no broker round trip): it only signals.
_outbox_hooks: list[Callable[[], None]] = []


def on_outbox_commit(hook: Callable[[], None]) -> None:
    """Register ``hook`` to be called after each commit that wrote outbox events (once per hook)."""
    if hook not in _outbox_hooks:
        _outbox_hooks.append(hook)


def kick_event_relay() -> None:
    """Tell the relay there is something in the outbox (the registered hooks; cheap, never blocking).

    A lost kick is harmless: beat relays the outbox periodically, and delivery is at least once.
    """
    if not settings.EVENT_RELAY_ON_COMMIT:
        return
    for hook in _outbox_hooks:
        hook()


# --- Creation ---------------------------------------------------------------------------
def create_programs(programs: Sequence[ObservingProgram], *, actor: str, reason: str = "found in the metadata store"):
    """Insert new programs in state Discovered, each with its first history row and event."""
    if not programs:
        return []
    now = timezone.now()
    with transaction.atomic():
        for program in programs:
            program.state = State.DISCOVERED
            program.state_changed_at = now
            program.created_at = program.updated_at = now
        # Large batches (the scan's) are written with COPY, small ones with INSERT: the same rows.
        insert_models(programs, batch_size=UPDATE_BATCH)
        _write_history(
            [_Step(p, "", State.DISCOVERED, reason, {}) for p in programs],
            at=now, actor=actor, user=None, correction=False, returning=False,
        )
        transaction.on_commit(kick_event_relay, robust=True)
    return list(programs)


# --- The verbs --------------------------------------------------------------------------
def transition(
    program: ObservingProgram | int,
    to_state: str,
    *,
    actor: str,
    user=None,
    reason: str = "",
    details: dict | None = None,
    expected_from: Iterable[str] | None = None,
    priority: int | None = None,
    claimant=None,
) -> Transition:
    pk = program if isinstance(program, int) else program.pk
    change = Change(
        pk,
        to_state,
        reason=reason,
        details=details or {},
        expected_from=tuple(expected_from) if expected_from is not None else None,
        priority=priority,
        claimant=claimant,
    )
    [row] = apply([change], actor=actor, user=user)
    _refresh(program)
    return row


def fail(program, *, step: str, reason: str, actor: str = "worker", details: dict | None = None) -> Transition:
    """Move a program to Error, recording which step failed and why."""
    return transition(
        program, State.ERROR, actor=actor, reason=reason, details={"step": step, **(details or {})}
    )


def retry(program, *, user=None, actor: str | None = None, reason: str = "retry") -> Transition:
    """Error → the state before the failed step.

    Back to Working, the claim goes back to the user who held it when the step failed (the
    newest claim in the history), not to whoever presses Retry.
    """
    pk = program if isinstance(program, int) else program.pk
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=pk)
        if locked.state != State.ERROR:
            raise StateChanged(locked, [State.ERROR], locked.state)
        target = _states_before_error([pk]).get(pk)
        if target is None:
            raise IllegalTransition(locked, State.ERROR, "?", "no failed step recorded")
        claimant = None
        if target == State.WORKING:
            last_claim = (Transition.objects.filter(program_id=pk, to_state=State.WORKING)
                          .exclude(actor_user=None).select_related("actor_user").order_by("-at", "-id").first())
            claimant = last_claim.actor_user if last_claim is not None else None
        row = transition(locked, target, actor=actor or _name(user), user=user, reason=reason, claimant=claimant)
    _refresh(program)
    return row


#: What a correction to each state means for the program (shown by the admin's "Correct state").
CORRECTION_IMPLIES: dict[str, str] = {
    State.DISCOVERED: "qualified again by the next scan; no claim, not in the queue",
    State.INVERTIBLE: "qualified: beat may preprocess it; no claim, not in the queue",
    State.NOT_INVERTIBLE: "not qualified: nothing more happens to it; no claim, not in the queue",
    State.PREPROCESSED: "its data was handed over to the science team (needs a completed preprocessing work order); "
                        "no claim, not in the queue",
    State.QUEUED: "in the queue with the priority given (else its current one), queued now (needs a completed "
                  "preprocessing work order); no claim",
    State.WORKING: "claimed, now, by the user given (else you) (needs a completed preprocessing work order); "
                   "not in the queue",
    State.INVERTED: "its results were accepted (needs an inversion: accepted results); workers may generate and "
                    "publish its L2 files; no claim",
    State.PUBLISHED: "its L2 files are published and recorded in the metadata store (needs a published inversion); "
                     "no claim",
    State.ERROR: "failed: an operator's Retry brings it back to the state it is in now; no claim",
}


class MissingRecords(LifecycleError):
    """A correction to a state whose records the program lacks (``force`` corrects it anyway)."""

    def __init__(self, program: ObservingProgram, to_state: str, missing: list[str]):
        self.program, self.to_state, self.missing = program, to_state, missing
        super().__init__(f"{program}: {label(to_state)} needs what it lacks: {'; '.join(missing)}")


def missing_records(program, to_state: str) -> list[str]:
    """What ``program`` lacks for ``to_state`` to be true (empty: nothing): the records the state implies."""
    from inversions.models import WorkOrder

    pk = program if isinstance(program, int) else program.pk
    missing = []
    if to_state in (State.PREPROCESSED, State.QUEUED, State.WORKING) and not WorkOrder.objects.filter(
            program_id=pk, kind=WorkOrder.Kind.PREPROCESS, status=WorkOrder.Status.COMPLETED).exists():
        missing.append("no completed preprocessing work order")
    # (inversions are publishing's records, reached through their relation: no import of that app)
    this = ObservingProgram.objects.filter(pk=pk)
    if to_state == State.INVERTED and not this.filter(inversions__isnull=False).exists():
        missing.append("no accepted results (no inversion)")
    if to_state == State.PUBLISHED and not this.filter(inversions__store_recorded_at__isnull=False).exists():
        missing.append("no published inversion (none recorded in the metadata store)")
    return missing


def correct(program, to_state: str, *, user, reason: str, force: bool = False, claimant=None,
            priority: int | None = None) -> Transition:
    """An admin's correction: any state, mandatory reason, flagged in the history.

    Refused (:class:`MissingRecords`) when the program lacks the records ``to_state`` implies
    (:func:`missing_records`), unless ``force``: then what was missing is recorded in the
    transition's details. ``claimant`` (Working: who holds the claim, else the admin) and
    ``priority`` (Queued) set the fields that go with the state.
    """
    if not reason or not reason.strip():
        raise LifecycleError("A correction needs a reason.")
    if to_state not in State.values:
        raise LifecycleError(f"Unknown state {to_state!r}")
    pk = program if isinstance(program, int) else program.pk
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=pk)
        missing = missing_records(pk, to_state)
        if missing and not force:
            raise MissingRecords(locked, to_state, missing)
        details: dict[str, Any] = {"forced": True, "missing": missing} if missing else {}
        if to_state == State.WORKING:
            details["claimant"] = _name(claimant or user)
        if to_state == State.QUEUED and priority is not None:
            details["priority"] = priority
        [row] = apply([Change(pk, to_state, reason=reason.strip(), details=details, priority=priority,
                              claimant=claimant if to_state == State.WORKING else None)],
                      actor=_name(user), user=user, correction=True)
    _refresh(program)
    return row


def claim(program, *, user, reason: str = "claimed") -> Transition:
    """A science user takes a Preprocessed or Queued program to work on it."""
    return transition(
        program,
        State.WORKING,
        actor=_name(user),
        user=user,
        reason=reason,
        expected_from=(State.PREPROCESSED, State.QUEUED),
    )


@functools.cache
def _next_candidate_sql() -> tuple[tuple[str, tuple], ...]:
    """The SQL of claim_next's two candidate queries, compiled once (compiling costs more than running)."""
    queries = (
        ObservingProgram.objects.select_for_update(skip_locked=True)
        .filter(state=State.QUEUED).order_by("-priority", "queued_at", "id")[:1],
        ObservingProgram.objects.select_for_update(skip_locked=True)
        .filter(state=State.PREPROCESSED).order_by("state_changed_at", "id")[:1],
    )
    return tuple(q.query.sql_with_params() for q in queries)


def claim_next(*, user) -> ObservingProgram | None:
    """Claim the top available program: the queue (priority, then age), then Preprocessed by age.

    ``FOR UPDATE SKIP LOCKED`` makes concurrent callers take different programs. The row
    locked there is the one :func:`apply` changes (``locked``): a claim is one lock, one
    statement writing the history row, the outbox event and the program, and the commit.
    The program returned is the claimed one, its fields as written.
    """
    with transaction.atomic():
        candidate = None
        for sql, params in _next_candidate_sql():
            candidate = next(iter(ObservingProgram.objects.raw(sql, params)), None)
            if candidate is not None:
                break
        if candidate is None:
            return None
        apply([Change(candidate.pk, State.WORKING, reason="picked next", expected_from=CLAIMED_FROM)],
              actor=_name(user), user=user, locked=[candidate])
    return candidate


#: the states a claim is taken from, and so the ones a released claim returns to
CLAIMED_FROM = (State.PREPROCESSED, State.QUEUED)


def claim_origin(history: Iterable[tuple[str, str]]) -> str:
    """Where a released claim returns: the state the newest claim (a step into Working from
    Preprocessed or Queued) came from; Preprocessed when the history shows none.

    ``history``: (from_state, to_state) pairs, oldest first.
    """
    origin = State.PREPROCESSED
    for from_state, to_state in history:
        if to_state == State.WORKING and from_state in CLAIMED_FROM:
            origin = from_state
    return origin


def reinvert(program, *, user, reason: str = "", details: dict | None = None) -> Transition:
    """A science user starts a new inversion of a Published program: Published → Working ("re-inversion"), claimed."""
    why = (reason or "").strip()
    return transition(program, State.WORKING, actor=_name(user), user=user,
                      reason=f"re-inversion: {why}" if why else "re-inversion", details=details,
                      expected_from=(State.PUBLISHED,))


def republish(program, *, user=None, actor: str | None = None, reason: str, details: dict | None = None) -> Transition:
    """An operator regenerates and republishes the published inversion: Published → Inverted ("republish")."""
    why = (reason or "").strip()
    if not why:
        raise LifecycleError("A republish needs a reason (what was fixed).")
    return transition(program, State.INVERTED, actor=actor or _name(user), user=user, reason=f"republish: {why}",
                      details={"republish": True, **(details or {})}, expected_from=(State.PUBLISHED,))


def release(program, *, user, to_state: str | None = None, reason: str = "claim released") -> Transition:
    """Working → the state the claim came from (Preprocessed or Queued).

    ``to_state`` names the target instead: an operator's Requeue sends a claim to the queue
    whatever it came from (enqueueing is theirs to do); nobody else passes it.
    """
    if to_state is not None and to_state not in CLAIMED_FROM:
        raise LifecycleError("A claim is released to Preprocessed or Queued.")
    pk = program if isinstance(program, int) else program.pk
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=pk)
        if locked.state != State.WORKING:
            raise StateChanged(locked, [State.WORKING], locked.state)
        if to_state is None:
            to_state = claim_origin(Transition.objects.filter(program_id=pk).order_by("at", "id")
                                    .values_list("from_state", "to_state"))
        row = transition(locked, to_state, actor=_name(user), user=user, reason=reason, expected_from=(State.WORKING,))
    _refresh(program)
    return row


def enqueue(program, *, user, priority: int = 0, reason: str = "work on this next") -> Transition:
    return transition(
        program,
        State.QUEUED,
        actor=_name(user),
        user=user,
        reason=reason,
        priority=priority,
        expected_from=(State.PREPROCESSED,),
    )


def reprioritise(program, *, user, priority: int, reason: str = "") -> Transition:
    """A Queued program gets a new priority (Queued → Queued, in the history); it keeps its age.

    ``reason`` (the admin's) follows the old and new priority in the history.
    """
    pk = program if isinstance(program, int) else program.pk
    with transaction.atomic():
        old = ObservingProgram.objects.select_for_update().values_list("priority", flat=True).get(pk=pk)
        row = transition(
            pk,
            State.QUEUED,
            actor=_name(user),
            user=user,
            reason=f"priority {old} → {priority}" + (f": {reason.strip()}" if reason.strip() else ""),
            priority=priority,
            expected_from=(State.QUEUED,),
        )
    _refresh(program)
    return row


def dequeue(program, *, user, reason: str = "removed from the queue") -> Transition:
    return transition(
        program, State.PREPROCESSED, actor=_name(user), user=user, reason=reason, expected_from=(State.QUEUED,)
    )


def datasets_changed(program_ids: Sequence[int], *, actor: str = "scan") -> list[int]:
    """Programs whose datasets changed: back to Discovered before Working, flagged from Working on.

    Returns the ids sent back to Discovered (the caller qualifies them again).
    """
    if not program_ids:
        return []
    with transaction.atomic():
        programs = list(
            ObservingProgram.objects.select_for_update().filter(pk__in=program_ids).order_by("pk")
        )
        before_error = _states_before_error([p.pk for p in programs if p.state == State.ERROR])
        back, flagged = [], []
        for p in programs:
            if p.state in BEFORE_WORKING - {State.DISCOVERED} or (
                p.state == State.ERROR and before_error.get(p.pk) in BEFORE_WORKING
            ):
                back.append(Change(p.pk, State.DISCOVERED, reason="datasets changed"))
            elif p.state != State.DISCOVERED:  # Working or later (or failed there): flag only
                flagged.append(p.pk)
        apply(back, actor=actor, returning=False)
        if flagged:
            ObservingProgram.objects.filter(pk__in=flagged).update(
                datasets_changed_at=timezone.now(), updated_at=timezone.now()
            )
    return [c.program_id for c in back]


def _name(user) -> str:
    return user.get_username() if user is not None else "system"


def _refresh(program) -> None:
    if isinstance(program, ObservingProgram) and program.pk:
        program.refresh_from_db()
