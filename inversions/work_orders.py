"""Work orders: the generic services for every pipeline kind (preprocess, generate, publish).

A :class:`~inversions.models.WorkOrder` is one run of a worker pipeline for a program
(DESIGN §7). This module writes them; the pipelines (``inversions.pipeline`` for
preprocessing, the publishing pipeline for generate/publish) call it. Nothing here
changes a program's state: that stays with ``inversions.lifecycle`` (a pipeline that
completes or fails calls both, in one transaction where it matters).

The life of an order::

    result = request(program, kind, requested_by="beat")        # Queued (or why not)
    order = start(result.order.pk, "stage")                     # Started, attempts + 1
    set_progress(order.pk, files_staged=12, bytes_staged=...)   # as it goes (cheap UPDATE)
    merge_details(order.pk, stage={"submission_id": ...})       # resume data, before acting
    previous = record_inputs(order, {"ds1": "sha…"})            # same inputs done before?
    advance(order.pk, "stage", "verify")                        # compare-and-set the step
    complete(order, details={...})  /  fail(order, step=..., error=...)

**One active order per program and kind** (Queued or Started): the database enforces
it (a partial unique constraint); :func:`request` returns the active one instead of
creating a second. **Same inputs are skipped unless forced**: an order's inputs are a
mapping ``name -> checksum``; :func:`fingerprint` digests it. :func:`request` with
``input_checksums`` known up front (publish) skips when the newest Completed order of
the kind has the same fingerprint; a pipeline that learns its inputs later
(preprocessing: after staging) calls :func:`record_inputs`, which answers the
Completed order with the same fingerprint, if any (``None`` when forced).

**Liveness.** A worker runs a step holding the order's advisory lock (:func:`running`) and
inside :func:`heartbeat`, whose thread refreshes ``heartbeat_at``; a step that waits for a
Celery retry sets it to the time it is due (:func:`expect`). Beat resends the step of every
active order whose heartbeat is older than ``L2_HEARTBEAT_STALE_SECONDS`` and whose lock
nobody holds (:func:`stalled`): a worker killed with ``kill -9`` is replaced within that
age plus beat's interval, whatever the broker's redelivery does.

Everything takes an order id or an order and is safe to call again after a worker was
killed: ``start`` of a finished order answers ``None``, ``complete``/``fail`` of a
finished order change nothing, ``advance`` only moves a step that is still current.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from inversions.models import ObservingProgram, WorkOrder

Status = WorkOrder.Status
Kind = WorkOrder.Kind
ACTIVE = [Status.QUEUED, Status.STARTED]


def fingerprint(checksums: Mapping[str, str]) -> str:
    """sha256 over the sorted ``name checksum`` lines: independent of the mapping's order."""
    digest = hashlib.sha256()
    for name in sorted(checksums):
        digest.update(f"{name} {checksums[name]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Requested:
    """What :func:`request` did.

    ``created``: a new Queued order was written (``order``). Otherwise ``order`` is the
    order that made it unnecessary: the active one (``skipped`` False), or the Completed
    one with the same inputs (``skipped`` True). ``reason`` says so, for people.
    """

    order: WorkOrder
    created: bool
    skipped: bool = False
    reason: str = ""


def _program_id(program: ObservingProgram | int) -> int:
    return program if isinstance(program, int) else program.pk


def active(program: ObservingProgram | int, kind: str) -> WorkOrder | None:
    """The program's Queued or Started order of ``kind``, if any."""
    return WorkOrder.objects.filter(program_id=_program_id(program), kind=kind, status__in=ACTIVE).first()


def latest(program: ObservingProgram | int, kind: str, *, status: str | None = None) -> WorkOrder | None:
    """The program's newest order of ``kind`` (of ``status`` when given)."""
    qs = WorkOrder.objects.filter(program_id=_program_id(program), kind=kind)
    if status is not None:
        qs = qs.filter(status=status)
    return qs.order_by("-created_at", "-id").first()


def completed_with(program: ObservingProgram | int, kind: str, fingerprint_: str, *,
                   exclude: int | None = None) -> WorkOrder | None:
    """The newest Completed order of ``kind`` whose inputs had ``fingerprint_`` — only if it
    is also the newest Completed order of that kind (older outputs were replaced since)."""
    if not fingerprint_:
        return None
    qs = WorkOrder.objects.filter(program_id=_program_id(program), kind=kind, status=Status.COMPLETED)
    if exclude is not None:
        qs = qs.exclude(pk=exclude)
    newest = qs.order_by("-finished_at", "-id").first()
    return newest if newest is not None and newest.input_fingerprint == fingerprint_ else None


def request(
    program: ObservingProgram | int,
    kind: str,
    *,
    requested_by: str,
    user=None,
    forced: bool = False,
    input_checksums: Mapping[str, str] | None = None,
    details: dict | None = None,
) -> Requested:
    """Create a Queued order, unless one is active or (not forced) the same inputs were done.

    Safe under concurrency: two callers at once get one order (the database's partial
    unique constraint decides; the loser gets the winner's order back).
    """
    pk = _program_id(program)
    current = active(pk, kind)
    if current is not None:
        return Requested(current, created=False, reason=f"order #{current.pk} is already {current.get_status_display().lower()}")
    checksums = dict(input_checksums or {})
    fp = fingerprint(checksums) if checksums else ""
    if fp and not forced:
        done = completed_with(pk, kind, fp)
        if done is not None:
            return Requested(done, created=False, skipped=True,
                             reason=f"the same inputs were done by order #{done.pk}")
    now = timezone.now()
    order = WorkOrder(
        program_id=pk, kind=kind, status=Status.QUEUED, forced=forced, requested_by=requested_by[:150],
        requested_by_user=user, input_checksums=checksums, input_fingerprint=fp, details=dict(details or {}),
        created_at=now, updated_at=now, heartbeat_at=now,
    )
    try:
        with transaction.atomic():
            order.save(force_insert=True)
    except IntegrityError:
        current = active(pk, kind)
        if current is None:
            raise
        return Requested(current, created=False, reason=f"order #{current.pk} is already {current.get_status_display().lower()}")
    return Requested(order, created=True, reason="queued")


def start(order_id: int, step: str) -> WorkOrder | None:
    """A worker begins (or, redelivered, resumes) ``step`` of an active order.

    Locks the row; sets Started (``started_at`` the first time), the step, and counts the
    attempt. Returns the order, or ``None`` when it is no longer active (finished, failed,
    or gone): the caller then has nothing to do.
    """
    with transaction.atomic():
        order = WorkOrder.objects.select_for_update().filter(pk=order_id, status__in=ACTIVE).first()
        if order is None:
            return None
        now = timezone.now()
        order.status = Status.STARTED
        order.step = step
        order.attempts += 1
        order.started_at = order.started_at or now
        order.updated_at = now
        order.save(update_fields=["status", "step", "attempts", "started_at", "updated_at"])
    return order


def advance(order_id: int, from_step: str, to_step: str) -> bool:
    """Move an active order from ``from_step`` to ``to_step``; False if it was not there any more
    (a duplicate or stale task: the caller must not dispatch the next step again)."""
    return bool(
        WorkOrder.objects.filter(pk=order_id, status__in=ACTIVE, step=from_step).update(
            step=to_step, updated_at=timezone.now()
        )
    )


def rewind(order_id: int, to_step: str) -> bool:
    """Send an active order back to ``to_step`` whatever step it is at (its files are gone:
    the worker whose private scratch held them never came back); False once it has finished."""
    return bool(WorkOrder.objects.filter(pk=order_id, status__in=ACTIVE).update(step=to_step, updated_at=timezone.now()))


def _merge(column: str, order_id: int, values: Mapping) -> bool:
    """``column = column || values`` (top-level keys replaced) on an active order, one UPDATE."""
    table = WorkOrder._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {column} = {column} || %s::jsonb, updated_at = %s "
            f"WHERE id = %s AND status IN ('queued', 'started')",
            [json.dumps(dict(values), default=str), timezone.now(), order_id],
        )
        return cursor.rowcount == 1


def set_progress(order_id: int, **values) -> bool:
    """Merge ``values`` into the order's progress (files staged, frames assembled, bytes …).

    A single UPDATE, no lock: call it as often as a page would want to see it (a second or so).
    Ignored (False) once the order has finished.
    """
    return _merge("progress", order_id, values)


def merge_details(order_id: int, **values) -> bool:
    """Merge top-level keys into the order's details (resume data: submission ids, outputs).

    Write resume data *before* acting on it (a transfer's submission id before submitting),
    so that a redelivered task finds it. Ignored (False) once the order has finished.
    """
    return _merge("details", order_id, values)


def record_inputs(order: WorkOrder, checksums: Mapping[str, str]) -> WorkOrder | None:
    """Store the order's input checksums; return the Completed order that had the same inputs
    (the work can be skipped) — ``None`` if there is none or the order is forced."""
    fp = fingerprint(checksums)
    WorkOrder.objects.filter(pk=order.pk).update(
        input_checksums=dict(checksums), input_fingerprint=fp, updated_at=timezone.now()
    )
    order.input_checksums, order.input_fingerprint = dict(checksums), fp
    if order.forced:
        return None
    return completed_with(order.program_id, order.kind, fp, exclude=order.pk)


def _finish(order: WorkOrder | int, status: str, *, step: str | None, error: str, details: dict | None,
            progress: dict | None) -> WorkOrder | None:
    pk = order if isinstance(order, int) else order.pk
    with transaction.atomic():
        locked = WorkOrder.objects.select_for_update().filter(pk=pk).first()
        if locked is None or locked.status not in ACTIVE:
            return None
        now = timezone.now()
        locked.status = status
        if step is not None:
            locked.step = step
        locked.error = error
        locked.finished_at = now
        locked.updated_at = now
        locked.started_at = locked.started_at or now
        if details:
            locked.details = {**locked.details, **details}
        if progress:
            locked.progress = {**locked.progress, **progress}
        locked.save(update_fields=["status", "step", "error", "finished_at", "updated_at", "started_at",
                                   "details", "progress"])
    if isinstance(order, WorkOrder):
        order.refresh_from_db()
    return locked


def complete(order: WorkOrder | int, *, details: dict | None = None, progress: dict | None = None,
             step: str | None = "done") -> WorkOrder | None:
    """Completed (details merged). ``None`` if it had already finished: nothing changed.

    Call it inside the transaction that records what completing means (the program's
    transition), so that both happen or neither.
    """
    return _finish(order, Status.COMPLETED, step=step, error="", details=details, progress=progress)


def fail(order: WorkOrder | int, *, step: str, error: str, details: dict | None = None) -> WorkOrder | None:
    """Failed at ``step`` with a readable ``error``. ``None`` if it had already finished."""
    return _finish(order, Status.FAILED, step=step, error=error, details=details, progress=None)


def stale_after() -> timedelta:
    """How old a heartbeat may be before its order is taken for lost (``L2_HEARTBEAT_STALE_SECONDS``)."""
    return timedelta(seconds=float(settings.L2_HEARTBEAT_STALE_SECONDS))


def stalled(kind: str, *, older_than: timedelta | None = None) -> list[WorkOrder]:
    """Active orders of ``kind`` whose heartbeat is older than ``older_than`` (default
    :func:`stale_after`) and that no worker is running (nobody holds their :func:`running`
    lock): the worker died, or the task message was lost. Beat sends their step again."""
    cutoff = timezone.now() - (stale_after() if older_than is None else older_than)
    return list(
        WorkOrder.objects.filter(kind=kind, status__in=ACTIVE)
        .annotate(beat=Coalesce("heartbeat_at", "updated_at"))
        .filter(beat__lt=cutoff)
        .filter(RawSQL(_NOT_RUNNING, [], output_field=BooleanField()))
        .order_by("beat", "id")
    )


def touch(order_id: int) -> None:
    """Mark an active order as alive (re-dispatched), so it is not taken for stalled again at once."""
    now = timezone.now()
    WorkOrder.objects.filter(pk=order_id, status__in=ACTIVE).update(updated_at=now, heartbeat_at=now)


# --- Liveness: who runs an order now, and since when nobody does ----------------------------
#: The advisory-lock namespace of work orders (pg_advisory_lock(LOCK_CLASS, order id)).
LOCK_CLASS = 0x4C32  # "L2"
_NOT_RUNNING = (
    "NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
    f"AND l.classid = {LOCK_CLASS} AND l.objid = inversions_workorder.id AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


@contextmanager
def running(order_id: int):
    """A session advisory lock on the order while a worker runs it; yields False if another has it.

    PostgreSQL releases it when the worker's connection ends, also when the worker is killed:
    so "nobody holds it" means nobody is running the order.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, order_id])
        got = cursor.fetchone()[0]
    try:
        yield got
    finally:
        if got:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_CLASS, order_id])
            except DatabaseError:  # the connection is gone: so is the lock
                pass


def heartbeat_interval() -> float:
    """Seconds between two heartbeats of a running step: a quarter of the stale age (at least 1 s)."""
    return max(1.0, float(settings.L2_HEARTBEAT_STALE_SECONDS) / 4)


def beat(order_id: int) -> bool:
    """The order is alive now: one UPDATE, skipping a row another transaction holds (never waits),
    never moving back the time a waiting order is due (:func:`expect`)."""
    table, now = WorkOrder._meta.db_table, timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET heartbeat_at = %s WHERE id = (SELECT id FROM {table} WHERE id = %s "
            f"AND status IN ('queued', 'started') AND (heartbeat_at IS NULL OR heartbeat_at < %s) "
            f"FOR UPDATE SKIP LOCKED)",
            [now, order_id, now],
        )
        return cursor.rowcount == 1


def expect(order_id: int, seconds: float) -> None:
    """The order waits ``seconds`` for its next run (a Celery retry with a countdown): its
    heartbeat is set to then, so that beat takes it for lost only once it is that late."""
    WorkOrder.objects.filter(pk=order_id, status__in=ACTIVE).update(
        heartbeat_at=timezone.now() + timedelta(seconds=max(0.0, float(seconds)))
    )


@contextmanager
def heartbeat(order_id: int):
    """While the block runs, a thread refreshes the order's heartbeat every :func:`heartbeat_interval`
    seconds (in a database connection of its own, closed at the end)."""
    WorkOrder.objects.filter(pk=order_id, status__in=ACTIVE).update(heartbeat_at=timezone.now())
    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.wait(heartbeat_interval()):
                try:
                    beat(order_id)
                except DatabaseError:  # a hiccup: the next beat may pass; stale only if they all fail
                    connection.close()
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=f"heartbeat-{order_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def count_active(kind: str) -> int:
    return WorkOrder.objects.filter(kind=kind, status__in=ACTIVE).count()
