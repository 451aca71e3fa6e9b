"""Preprocessing of an Invertible program on the Celery workers (DESIGN §7).

One work order (``inversions.work_orders``, kind ``preprocess``) per run, worked in
five steps, each a short Celery task (``inversions.tasks``) that runs
:func:`execute` and then dispatches the next step::

    stage ─> verify ─> assemble ─> quicklook ─> handover ─> (program: Invertible → Preprocessed)

- **stage**: the program's current datasets' L1 folders (``L2_L1_PATH`` in
  ``L2_L1_COLLECTION``) are transferred to scratch (``L2_SCRATCH_PATH``/``l1/``) through
  the transfer backend; the submission id is stored on the order before submitting, so a
  redelivered task resubmits the same transfer; the task is polled by Celery retries.
- **verify**: per dataset, one FITS file per frame, every frame of the dataset axes
  present (``frameCount``), headers consistent; the inventory fingerprint (every frame's
  place, name, size, ``DATASUM``, ``CHECKSUM``) is the dataset's input checksum. Same
  inputs as the newest Completed order and its outputs still on scratch: nothing to do
  (``NonFatalDoNotRetryError``), unless the order is forced.
- **assemble**: per dataset a Stokes cube (``assemble_cube``), every input's
  ``CHECKSUM``/``DATASUM`` checked on the bytes read for the cube (each input is read
  once: the benchmark's "single" mode); cubes already written by an earlier attempt of
  the same order are kept.
- **quicklook**: PNGs per cube.
- **hand over**: ``manifest.json`` (inputs, outputs, sizes, checksums, timings) next to
  the cubes, the order's folder transferred to ``L2_SCIENCE_PATH`` in
  ``L2_SCIENCE_COLLECTION``; then, in one transaction, the order is Completed and the
  program moved to Preprocessed (exactly once: a duplicate finds the order finished).

Failures are classified where they happen (``inversions.errors``); :func:`execute`
only acts on the class: ``DoNotRetryError`` fails the order and sends the program to
Error with the step and the reason (naming the dataset and file); ``RetryError`` and
``BackoffRetryError`` run the step again later (bounded: ``L2_PREPROCESS_MAX_RETRIES``;
fixed delay, or exponential backoff with jitter), then fail for good;
``NonFatalDoNotRetryError`` finishes the order without doing the work.

Scratch is shared by default (one file system every worker mounts): any worker takes any
step. A worker with its own scratch folder (``L2_SCRATCH_DIR``, ``L2_SCRATCH_PRIVATE``)
keeps each program it staged: the steps after ``stage`` (and the stage's own polls) go to
that worker's own queue (Celery's ``worker_direct``: ``<hostname>.dq2``), its hostname is
recorded on the order (``details["scratch_worker"]``), beat resends a stalled step of it to
that queue (served again once a worker of that name is back), and a step arriving at another
worker is dropped. Every step records which worker ran it and how often
(``details["workers"]``, ``details["runs"]``), next to its time (``details["timings"]``).

Each step runs under a PostgreSQL advisory lock on its order (released when the worker's
connection ends, also when the worker is killed), so a redelivered duplicate never runs
alongside the original; a message for a step the order has already left does nothing
except re-dispatching the step that follows it (the worker may have died between
advancing the order and sending the next message).
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from inversions import lifecycle, work_orders
from inversions.errors import BackoffRetryError, DoNotRetryError, L2Error, NonFatalDoNotRetryError, RetryError
from inversions.models import Dataset, ObservingProgram, WorkOrder
from inversions.states import State, label
from inversions.transfers import TransferItem, get_backend, local_folder

log = logging.getLogger(__name__)

KIND = WorkOrder.Kind.PREPROCESS
STEPS = ("stage", "verify", "assemble", "quicklook", "handover")
NEXT = {"stage": "verify", "verify": "assemble", "assemble": "quicklook", "quicklook": "handover", "handover": None}
STEP_LABELS = {
    "": "queued",
    "stage": "staging the L1 files",
    "verify": "verifying the L1 files",
    "assemble": "assembling Stokes cubes",
    "quicklook": "drawing quick-looks",
    "handover": "handing over to the science cluster",
    "done": "done",
}
#: States a program may be preprocessed from (Preprocessed: a re-run; it stays Preprocessed).
START_STATES = (State.INVERTIBLE, State.PREPROCESSED)
PROGRESS_EVERY_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 900.0
MANIFEST = "manifest.json"
QUICKLOOK_DIR = "quicklook"
LOCK_CLASS = work_orders.LOCK_CLASS  # the advisory-lock namespace of work orders


def software_version() -> str:
    try:
        return f"l2 {metadata.version('l2')}"
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "l2 (not installed)"


class StartRefused(Exception):
    """Preprocessing cannot start for this program now; the message says why, for people."""


@dataclass(frozen=True)
class Outcome:
    """What the task does after a step: dispatch ``next_step``, run again in ``retry_in``
    seconds, or nothing (``finished``: the order completed, failed, or was not ours)."""

    next_step: str | None = None
    retry_in: float | None = None
    finished: bool = False
    note: str = ""


# --- Paths ------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(part: str) -> str:
    """A path component from an identifier: no separators, no '..'."""
    cleaned = _UNSAFE.sub("_", str(part)).strip(".") or "_"
    return cleaned


def _folder(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def scratch_root(program: ObservingProgram) -> str:
    return _folder(settings.L2_SCRATCH_PATH.format(
        program=_safe(program.instrument_program_execution_id), proposal=_safe(program.primary_proposal_id)
    ))


def order_folder(order: WorkOrder, program: ObservingProgram) -> str:
    """Where the order's cubes, quick-looks and manifest are written on scratch."""
    return f"{scratch_root(program)}orders/{order.pk}/"


def science_path(program: ObservingProgram) -> str:
    return _folder(settings.L2_SCIENCE_PATH.format(
        program=_safe(program.instrument_program_execution_id), proposal=_safe(program.primary_proposal_id)
    ))


def l1_path(dataset: Dataset) -> str:
    return _folder(settings.L2_L1_PATH.format(
        bucket=_safe(dataset.bucket), proposal=_safe(dataset.primary_proposal_id), dataset=_safe(dataset.dataset_id)
    ))


def frame_files(folder: Path) -> list[Path]:
    """The staged frame files of a dataset (not the temporary files of a copy in progress)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".fits" and not p.name.startswith(".") and p.is_file())


# --- Starting ---------------------------------------------------------------------------
def start(program: ObservingProgram, *, user=None, requested_by: str | None = None, forced: bool = False,
          queue: str | None = None) -> work_orders.Requested:
    """Queue a preprocessing order for ``program`` and dispatch its first step after commit.

    Raises :class:`StartRefused` when the program is not Invertible or Preprocessed.
    Returns what :func:`work_orders.request` did (the active order if one is running).
    """
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=program.pk)
        if locked.state not in START_STATES:
            raise StartRefused(
                f"{locked} is {label(locked.state)}: only Invertible programs are preprocessed "
                f"(or Preprocessed ones, again)."
            )
        who = requested_by or (user.get_username() if user is not None else "system")
        result = work_orders.request(locked, KIND, requested_by=who, user=user, forced=forced,
                                     details={"from_state": locked.state})
        if result.created:
            order_id = result.order.pk
            transaction.on_commit(lambda: dispatch(order_id, "stage", queue=queue), robust=True)
    return result


def dispatch(order_id: int, step: str, *, queue: str | None = None, countdown: float | None = None) -> None:
    """Send the task of ``step`` for the order (to ``queue``, or the default one)."""
    from inversions.tasks import PREPROCESS_TASKS

    options = {"queue": queue} if queue else {}
    if countdown:
        options["countdown"] = countdown
    PREPROCESS_TASKS[step].apply_async(args=[order_id], **options)


def pinned_queue(order: WorkOrder | None) -> str | None:
    """The queue of the worker holding the order's files on its private scratch, if any."""
    worker = (order.details or {}).get("scratch_worker") if order is not None else None
    return worker_queue(worker) if worker else None


def worker_queue(hostname: str) -> str:
    """The worker's own queue (Celery's ``worker_direct``), which only it consumes."""
    from celery.utils import worker_direct

    return worker_direct(hostname).name


def after_retry(program: ObservingProgram, *, user=None) -> work_orders.Requested | None:
    """An operator's retry sent the program back to Invertible: preprocess it again now."""
    program.refresh_from_db(fields=["state"])
    if program.state != State.INVERTIBLE:
        return None
    return start(program, user=user)


def pickup_order():
    """Invertible programs in the order beat starts them: priority, then the longest waiting."""
    return ObservingProgram.objects.filter(state=State.INVERTIBLE).order_by("-priority", "state_changed_at", "id")


def schedule(*, queue: str | None = None) -> dict:
    """Beat: re-dispatch stalled orders, then start Invertible programs up to the concurrency bound.

    One scheduler at a time (a transaction-scoped advisory lock); the bound counts every
    active preprocessing order, operators' included.
    """
    started, redispatched, restaged = [], [], []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, 0)", [LOCK_CLASS])
            if not cursor.fetchone()[0]:
                return {"skipped": "another scheduler is running"}
        stale = work_orders.stalled(KIND)  # heartbeat older than L2_HEARTBEAT_STALE_SECONDS, nobody running it
        for order in stale:
            work_orders.touch(order.pk)
            step = order.step if order.step in STEPS else "stage"
            pinned = pinned_queue(order)  # private scratch: only its worker can go on
            where = pinned or queue
            if pinned and _worker_gone(order):
                step, where = "stage", queue
                restaged.append(order.pk)
            transaction.on_commit(lambda pk=order.pk, s=step, q=where: dispatch(pk, s, queue=q), robust=True)
            redispatched.append(order.pk)
        room = int(settings.L2_PREPROCESS_CONCURRENCY) - work_orders.count_active(KIND)
        if room > 0:
            busy = WorkOrder.objects.filter(program=OuterRef("pk"), kind=KIND, status__in=work_orders.ACTIVE)
            candidates = list(pickup_order().filter(~Exists(busy))[:room])
            for program in candidates:
                try:
                    result = start(program, requested_by="beat", queue=queue)
                except StartRefused:
                    continue
                if result.created:
                    started.append(result.order.pk)
    return {"started": started, "redispatched": redispatched, "restaged": restaged}


def _worker_gone(order: WorkOrder) -> bool:
    """A stalled order pinned to a worker's private scratch: note since when beat has been
    waiting for that worker; once it has waited ``L2_SCRATCH_WORKER_GONE_SECONDS``, unpin the
    order and send it back to staging, for any worker (True). The worker's next step clears the wait."""
    worker = order.details.get("scratch_worker")
    waiting = order.details.get("waiting_for_worker") or {}
    now = timezone.now()
    if waiting.get("worker") != worker:
        work_orders.merge_details(order.pk, waiting_for_worker={"worker": worker, "since": now.isoformat()})
        return False
    waited = (now - datetime.fromisoformat(waiting["since"])).total_seconds()
    if waited < float(settings.L2_SCRATCH_WORKER_GONE_SECONDS):
        return False
    note = (f"worker {worker} did not come back in {waited:.0f} s (its private scratch held the staged files): "
            f"staging again on any worker")
    log.warning("preprocessing order %s: %s", order.pk, note)
    work_orders.merge_details(order.pk, scratch_worker=None, stage=None, waiting_for_worker=None,
                              restaged={"from_worker": worker, "at": now.isoformat(), "step": order.step},
                              last_problem=note)
    work_orders.rewind(order.pk, "stage")
    return True


# --- Running a step ---------------------------------------------------------------------
def execute(order_id: int, step: str, *, worker: str = "") -> Outcome:
    """Run ``step`` of the order once and say what comes next (see the module doc).

    ``worker``: the hostname of the Celery worker running it (recorded on the order; with a
    private scratch, the worker the order's later steps stay on).
    """
    with work_orders.running(order_id) as got:
        if not got:  # a duplicate of a step running elsewhere: that worker carries on (or, dead, beat resends)
            return Outcome(finished=True, note="order busy: running elsewhere")
        order = WorkOrder.objects.filter(pk=order_id, kind=KIND).select_related("program").first()
        if order is None or not order.is_active:
            return Outcome(finished=True, note="order not active")
        current = order.step or "stage"
        if current != step:
            if current in STEPS and STEPS.index(current) == STEPS.index(step) + 1:
                # the worker died between advancing the order and sending the next message
                return Outcome(next_step=current, finished=True, note=f"resending {current}")
            return Outcome(finished=True, note=f"stale message: the order is at {current}")
        pinned = order.details.get("scratch_worker")
        if pinned and worker and pinned != worker and step != "stage":
            # its files are on that worker's own scratch: it carries on (or beat resends there)
            return Outcome(finished=True, note=f"its files are on {pinned}'s scratch")
        program = order.program
        from_state = order.details.get("from_state", State.INVERTIBLE)
        if program.state != from_state:
            cancel(order, step, f"cancelled: {program} is {label(program.state)} now, no longer {label(from_state)}")
            return Outcome(finished=True, note="cancelled")
        order = work_orders.start(order_id, step)
        if order is None:
            return Outcome(finished=True, note="order not active")
        order.program = program
        if order.details.get("waiting_for_worker"):  # its worker is back (or another took the order)
            work_orders.merge_details(order.pk, waiting_for_worker=None)
            order.details["waiting_for_worker"] = None
        if step == "stage" and worker and settings.L2_SCRATCH_PRIVATE and pinned != worker:
            # before any file lands here; staged elsewhere before (a redelivered stage): stage again
            restage = {"stage": None} if pinned else {}
            work_orders.merge_details(order.pk, scratch_worker=worker, **restage)
            order.details.update(scratch_worker=worker, **restage)
        run = _StepRun(order.pk, step, time.monotonic(), worker)
        token = _current_run.set(run)
        try:
            with work_orders.heartbeat(order.pk):
                outcome = STEP_FUNCTIONS[step](order, program)
        except DoNotRetryError as exc:
            return fail_for_good(order, program, step, exc)
        except NonFatalDoNotRetryError as exc:
            log.info("preprocessing order %s: %s", order.pk, exc)
            finish(order, program, note=str(exc), same_as=exc.details.get("same_as"))
            return Outcome(finished=True, note=str(exc))
        except BackoffRetryError as exc:
            return _again(order, program, step, exc, backoff=True)
        except RetryError as exc:
            return _again(order, program, step, exc, backoff=False)
        except (OperationalError, InterfaceError) as exc:  # the database went away: may pass next time
            connection.close()
            return _again(order, program, step, RetryError(f"database unavailable: {exc}", step=f"preprocess.{step}"),
                          backoff=True)
        except Exception as exc:  # a bug: classified nowhere; fail loudly rather than loop
            log.exception("preprocessing order %s, step %s: unexpected error", order.pk, step)
            return fail_for_good(order, program, step, DoNotRetryError(
                f"unexpected error in {step}: {type(exc).__name__}: {exc}", step=f"preprocess.{step}"))
        finally:
            _current_run.reset(token)
            _record_run(run)  # unless the order's end recorded it already
        if outcome.next_step and not work_orders.advance(order.pk, step, outcome.next_step):
            return Outcome(finished=True, note="the order moved on meanwhile")
        return outcome


@dataclass
class _StepRun:
    """The step :func:`execute` is running: recorded once, by whichever comes first, the
    transaction that ends the order (so a finished order always lists its last run) or the
    end of the step."""

    order_id: int
    step: str
    began: float
    worker: str
    recorded: bool = False


_current_run: contextvars.ContextVar[_StepRun | None] = contextvars.ContextVar("preprocess_step_run", default=None)


def _record_run(run: _StepRun | None, order_id: int | None = None) -> None:
    """Add ``run`` to its order's timings, once (``order_id``: only if it is that order's)."""
    if run is None or run.recorded or (order_id is not None and run.order_id != order_id):
        return
    _add_timing(run.order_id, run.step, time.monotonic() - run.began, worker=run.worker)
    run.recorded = True


def _add_timing(order_id: int, step: str, seconds: float, *, worker: str = "") -> None:
    """Add a run of ``step`` to the order's ``timings`` (seconds in all), ``runs`` (how many
    times it ran) and ``workers`` (the worker that ran it last)."""
    with transaction.atomic():
        order = WorkOrder.objects.select_for_update().filter(pk=order_id).only("details").first()
        if order is None:
            return
        timings = dict(order.details.get("timings") or {})
        timings[step] = round(float(timings.get(step, 0.0)) + seconds, 3)
        runs = dict(order.details.get("runs") or {})
        runs[step] = int(runs.get(step, 0)) + 1
        extra = {"timings": timings, "runs": runs}
        if worker:
            extra["workers"] = {**(order.details.get("workers") or {}), step: worker}
        WorkOrder.objects.filter(pk=order_id).update(details={**order.details, **extra})


def _again(order: WorkOrder, program: ObservingProgram, step: str, exc: L2Error, *, backoff: bool) -> Outcome:
    """Run the step again later, or fail for good once the retries are used up."""
    retries = dict(WorkOrder.objects.values_list("details", flat=True).get(pk=order.pk).get("retries") or {})
    n = int(retries.get(step, 0)) + 1
    limit = int(settings.L2_PREPROCESS_MAX_RETRIES)
    if n > limit:
        return fail_for_good(order, program, step, DoNotRetryError(
            f"{exc} (gave up after {limit} retries)", step=exc.step or f"preprocess.{step}", details=exc.details))
    retries[step] = n
    work_orders.merge_details(order.pk, retries=retries, last_problem=str(exc))
    base = float(settings.L2_PREPROCESS_RETRY_SECONDS)
    delay = min(BACKOFF_CAP_SECONDS, base * 2 ** (n - 1)) * random.uniform(0.5, 1.0) if backoff else base
    log.warning("preprocessing order %s, step %s: %s; retry %d of %d in %.0f s", order.pk, step, exc, n, limit, delay)
    return Outcome(retry_in=delay, note=str(exc))


def cancel(order: WorkOrder, step: str, reason: str) -> None:
    """The program left the state the order started from: stop, without touching the program."""
    with transaction.atomic():
        _record_run(_current_run.get(), order.pk)
        work_orders.fail(order, step=step, error=reason)
    log.info("preprocessing order %s: %s", order.pk, reason)


def fail_for_good(order: WorkOrder, program: ObservingProgram, step: str, exc: L2Error) -> Outcome:
    """The order fails; a program that was Invertible goes to Error with the step and the reason.

    A re-run of a Preprocessed program only fails its order: the cubes it has stand.
    """
    where = exc.step or f"preprocess.{step}"
    reason = str(exc)
    details = {"order": order.pk, **{k: v for k, v in exc.details.items() if isinstance(v, (str, int, float, bool))}}
    with transaction.atomic():
        _record_run(_current_run.get(), order.pk)
        if work_orders.fail(order, step=step, error=reason, details={"failure": {"step": where, **details}}) is None:
            return Outcome(finished=True, note="already finished")
        if program.state == State.INVERTIBLE and order.details.get("from_state", State.INVERTIBLE) == State.INVERTIBLE:
            try:
                lifecycle.transition(program, State.ERROR, actor="worker", reason=reason,
                                     details={"step": where, **details}, expected_from=(State.INVERTIBLE,))
            except lifecycle.LifecycleError as moved:  # it moved meanwhile: the order's failure is enough
                log.info("preprocessing order %s failed, program not moved to Error: %s", order.pk, moved)
    log.warning("preprocessing order %s failed in %s: %s", order.pk, where, reason)
    return Outcome(finished=True, note=reason)


# --- The steps --------------------------------------------------------------------------
def _plan(order: WorkOrder, program: ObservingProgram) -> list[dict]:
    """The datasets of the run, fixed at its start (a scan that changes them sends the program
    back to Discovered, which cancels the order)."""
    plan = order.details.get("datasets")
    if plan:
        return plan
    root = scratch_root(program)
    plan = []
    datasets = list(program.datasets.filter(superseded=False).order_by("wavelength_min", "dataset_id"))
    if not datasets:
        raise DoNotRetryError(f"{program} has no current datasets to preprocess", step="preprocess.stage")
    for d in datasets:
        if not d.frame_count:
            raise DoNotRetryError(f"dataset {d.dataset_id} has no frame count in its record", step="preprocess.stage",
                                  details={"dataset": d.dataset_id})
        if not d.bucket:
            raise DoNotRetryError(f"dataset {d.dataset_id} has no bucket in its record", step="preprocess.stage",
                                  details={"dataset": d.dataset_id})
        plan.append({
            "dataset_id": d.dataset_id,
            "frames": int(d.frame_count),
            "stokes": d.stokes_parameters,
            "source": l1_path(d),
            # one folder per version of the record: files of an older version never mix in
            "staged": f"{root}l1/{_safe(d.dataset_id)}.{(d.raw_hash or 'none')[:12]}/",
        })
    work_orders.merge_details(order.pk, datasets=plan)
    order.details["datasets"] = plan
    return plan


def _transfer(order: WorkOrder, key: str, source: str, destination: str, items: list[TransferItem],
              label_: str) -> tuple[bool, object]:
    """Submit (once, idempotently) and poll one transfer; returns (done, status)."""
    backend = get_backend()
    state = dict(order.details.get(key) or {})
    if not state.get("submission_id"):
        state["submission_id"] = backend.new_submission_id()
        work_orders.merge_details(order.pk, **{key: state})  # stored before submitting
    what = "staging the L1 files" if key == "stage" else "the hand-over"
    if not state.get("task_id"):
        try:
            state["task_id"] = backend.submit(source, destination, items, label=label_[:128],
                                              submission_id=state["submission_id"])
        except DoNotRetryError as exc:  # the same class, the message saying what was being moved
            raise DoNotRetryError(f"{what}: {exc.message}", step=f"preprocess.{'stage' if key == 'stage' else 'handover'}",
                                  details={"where": exc.step or "transfer", **exc.details}) from exc
        work_orders.merge_details(order.pk, **{key: state})
    order.details[key] = state
    status = backend.status(state["task_id"])
    if status.done and not status.ok:
        raise DoNotRetryError(
            f"{what} failed "
            f"(transfer {state['task_id']}): {status.error or 'no reason given'}",
            step=f"preprocess.{'stage' if key == 'stage' else 'handover'}", details={"transfer": state["task_id"]},
        )
    return status.done, status


def step_stage(order: WorkOrder, program: ObservingProgram) -> Outcome:
    plan = _plan(order, program)
    items = [TransferItem(ds["source"], ds["staged"]) for ds in plan]
    done, status = _transfer(order, "stage", settings.L2_L1_COLLECTION, settings.L2_SCRATCH_COLLECTION, items,
                             f"L2 stage {program.instrument_program_execution_id}")
    expected = sum(ds["frames"] for ds in plan)
    staged = status.files + status.files_skipped
    if done and staged == 0:  # a backend that does not count: what is on scratch now
        staged = sum(len(frame_files(local_folder(settings.L2_SCRATCH_COLLECTION, ds["staged"]))) for ds in plan)
    work_orders.set_progress(order.pk, files_staged=staged, files_expected=expected, bytes_staged=status.bytes,
                             files_unchanged=status.files_skipped)
    if not done:
        return Outcome(retry_in=float(settings.L2_PREPROCESS_POLL_SECONDS), note="transfer running")
    return Outcome(next_step="verify")


def _in_dataset(exc: DoNotRetryError, dataset_id: str) -> DoNotRetryError:
    """The same failure, its message saying which dataset."""
    if exc.message.startswith(f"dataset {dataset_id}"):
        message = exc.message
    else:
        message = f"dataset {dataset_id}: {exc.message}"
    return DoNotRetryError(message, step=exc.step, details={"dataset": dataset_id, **exc.details})


def _inventory(ds: dict):
    from inversions.preprocessing.verify import verify_dataset

    folder = local_folder(settings.L2_SCRATCH_COLLECTION, ds["staged"])
    try:
        return verify_dataset(frame_files(folder), ds["frames"], checksums=False)
    except DoNotRetryError as exc:
        raise _in_dataset(exc, ds["dataset_id"]) from exc


def step_verify(order: WorkOrder, program: ObservingProgram) -> Outcome:
    plan = _plan(order, program)
    checksums, inputs = {}, {}
    for n, ds in enumerate(plan, start=1):
        inventory = _inventory(ds)
        checksums[ds["dataset_id"]] = inventory.fingerprint
        inputs[ds["dataset_id"]] = {
            "frames": len(inventory.frames), "bytes": inventory.total_bytes, "stokes": inventory.stokes,
            "shape": list(inventory.cube_shape), "fingerprint": inventory.fingerprint,
        }
        work_orders.set_progress(order.pk, datasets_verified=n, datasets=len(plan),
                                 files_verified=sum(i["frames"] for i in inputs.values()))
    work_orders.merge_details(order.pk, inputs=inputs)
    order.details["inputs"] = inputs
    previous = work_orders.record_inputs(order, checksums)
    if previous is not None and _outputs_present(previous, program):
        raise NonFatalDoNotRetryError(
            f"inputs unchanged since order #{previous.pk}: its cubes stand, nothing to do",
            step="preprocess.verify", details={"same_as": previous.pk},
        )
    return Outcome(next_step="assemble")


def _outputs_present(order: WorkOrder, program: ObservingProgram) -> bool:
    """The order's cubes are still on scratch, with the sizes it recorded."""
    out, outputs = order.details.get("out"), order.details.get("outputs") or {}
    if not out or not outputs:
        return False
    try:
        folder = local_folder(settings.L2_SCRATCH_COLLECTION, out)
        return all((folder / o["name"]).is_file() and (folder / o["name"]).stat().st_size == o["size"]
                   for o in outputs.values())
    except (DoNotRetryError, OSError, KeyError, TypeError):
        return False


class _Progress:
    """The assembly's progress callback: writes the order's progress at most once a second."""

    def __init__(self, order_id: int, dataset_id: str, frames_before: int, frames_total: int, bytes_before: int):
        self.order_id, self.dataset_id = order_id, dataset_id
        self.frames_before, self.frames_total, self.bytes_before = frames_before, frames_total, bytes_before
        self.last = 0.0
        self.delay = float(getattr(settings, "L2_TEST_FRAME_DELAY", 0) or 0)  # tests: a slow assembly

    def __call__(self, done: int, total: int, written: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            work_orders.set_progress(
                self.order_id, frames_assembled=self.frames_before + done, frames_total=self.frames_total,
                bytes_written=self.bytes_before + written, dataset=self.dataset_id,
            )
        if self.delay:
            time.sleep(self.delay)


def step_assemble(order: WorkOrder, program: ObservingProgram) -> Outcome:
    from inversions.preprocessing.assemble import assemble_cube, remove_partials

    plan = _plan(order, program)
    out = order.details.get("out") or order_folder(order, program)
    work_orders.merge_details(order.pk, out=out)
    folder = local_folder(settings.L2_SCRATCH_COLLECTION, out)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = dict(order.details.get("outputs") or {})
    frames_total = sum(ds["frames"] for ds in plan)
    frames_before = bytes_before = 0
    for ds in plan:
        dataset_id = ds["dataset_id"]
        cube = folder / f"{_safe(dataset_id)}.fits"
        done = outputs.get(dataset_id)
        if done and cube.is_file() and cube.stat().st_size == done["size"]:  # an earlier attempt wrote it
            frames_before += done["frames"]
            bytes_before += done["size"]
            continue
        remove_partials(cube)
        inventory = _inventory(ds)
        if inventory.fingerprint != order.input_checksums.get(dataset_id):
            raise DoNotRetryError(f"dataset {dataset_id}: its L1 files changed on scratch after they were verified",
                                  step="preprocess.assemble", details={"dataset": dataset_id})
        progress = _Progress(order.pk, dataset_id, frames_before, frames_total, bytes_before)
        try:
            info = assemble_cube(
                inventory, cube, software_version=software_version(),
                provenance={"program": program.instrument_program_execution_id, "order": order.pk,
                            "source": f"{settings.L2_L1_COLLECTION}:{ds['source']}"},
                progress_cb=progress, verify_inputs=True, sha256=True,
            )
        except DoNotRetryError as exc:
            raise _in_dataset(exc, dataset_id) from exc
        outputs[dataset_id] = {
            "name": cube.name, "size": info.size, "sha256": info.sha256, "datasum": info.datasum,
            "checksum": info.checksum, "shape": list(info.shape), "frames": info.frames,
            "input_bytes": info.input_bytes, "continuum": info.continuum, "seconds": round(info.seconds, 3),
        }
        work_orders.merge_details(order.pk, outputs=outputs)
        frames_before += info.frames
        bytes_before += info.size
    work_orders.set_progress(order.pk, frames_assembled=frames_before, frames_total=frames_total,
                             bytes_written=bytes_before, cubes=len(outputs))
    order.details["outputs"] = outputs
    return Outcome(next_step="quicklook")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def step_quicklook(order: WorkOrder, program: ObservingProgram) -> Outcome:
    from inversions.preprocessing.quicklook import figure_path, quicklook_pngs

    out = order.details["out"]
    folder = local_folder(settings.L2_SCRATCH_COLLECTION, out)
    from inversions.datasets import browse_movie_url

    movies = {d.dataset_id: browse_movie_url(d) for d in Dataset.objects.filter(
        dataset_id__in=list(order.details.get("outputs") or {}))}
    pictures = []
    for dataset_id, cube in sorted((order.details.get("outputs") or {}).items()):
        try:
            paths = quicklook_pngs(folder / cube["name"], folder / QUICKLOOK_DIR)
        except (ValueError, OSError) as exc:  # a cube we wrote and checked does not read: try again
            raise RetryError(f"quick-look of {cube['name']}: {exc}", step="preprocess.quicklook") from exc
        for path in paths:
            kind = "ncp" if path.stem.endswith("_ncp") else "continuum"
            figure = figure_path(path)
            pictures.append({"dataset": dataset_id, "kind": kind, "name": f"{QUICKLOOK_DIR}/{path.name}",
                             "size": path.stat().st_size, "sha256": _sha256(path),
                             "figure": f"{QUICKLOOK_DIR}/{figure.name}" if figure.is_file() else None,
                             "movie": movies.get(dataset_id) or ""})
    work_orders.merge_details(order.pk, quicklooks=pictures)
    work_orders.set_progress(order.pk, quicklooks=len(pictures))
    order.details["quicklooks"] = pictures
    return Outcome(next_step="handover")


def _frames_listing(cube: Path) -> list[dict]:
    """The input frames recorded in a cube's FRAMES table (provenance for the manifest)."""
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(cube, memmap=False) as hdul:
            table = hdul["FRAMES"].data
            return [
                {"name": str(r["FILENAME"]).strip(), "size": int(r["SIZE"]), "datasum": str(r["DATASUM"]).strip(),
                 "checksum": str(r["CHECKSUM"]).strip(), "stokes": int(r["STOKES"]), "map": int(r["MAP"]),
                 "step": int(r["STEP"])}
                for r in table
            ]


def write_manifest(order: WorkOrder, program: ObservingProgram) -> dict:
    """``manifest.json`` in the order's folder (atomic); returns its summary for the order row."""
    out = order.details["out"]
    folder = local_folder(settings.L2_SCRATCH_COLLECTION, out)
    outputs = order.details.get("outputs") or {}
    inputs = order.details.get("inputs") or {}
    plan = {ds["dataset_id"]: ds for ds in order.details.get("datasets") or []}
    manifest = {
        "program": program.instrument_program_execution_id,
        "proposal": program.primary_proposal_id,
        "order": order.pk,
        "software_version": software_version(),
        "written_at": timezone.now().isoformat(),
        "inputs": [
            {"dataset_id": dataset_id, "collection": settings.L2_L1_COLLECTION, "path": plan.get(dataset_id, {}).get("source"),
             "frames": inputs.get(dataset_id, {}).get("frames"), "bytes": inputs.get(dataset_id, {}).get("bytes"),
             "fingerprint": order.input_checksums.get(dataset_id),
             "files": _frames_listing(folder / cube["name"])}
            for dataset_id, cube in sorted(outputs.items())
        ],
        "outputs": [
            {"name": cube["name"], "kind": "stokes cube", "dataset_id": dataset_id, "size": cube["size"],
             "sha256": cube["sha256"], "datasum": cube["datasum"], "checksum": cube["checksum"], "shape": cube["shape"],
             "axes": ["stokes", "map", "raster step", "wavelength", "slit"]}
            for dataset_id, cube in sorted(outputs.items())
        ] + [
            {"name": q["name"], "kind": f"quick-look ({q['kind']})", "dataset_id": q["dataset"], "size": q["size"],
             "sha256": q["sha256"]}
            for q in order.details.get("quicklooks") or []
        ],
        "timings_seconds": order.details.get("timings") or {},
        "destination": {"collection": settings.L2_SCIENCE_COLLECTION, "path": science_path(program)},
    }
    data = json.dumps(manifest, indent=2, sort_keys=False).encode()
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.{os.getpid()}.partial"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {
        "path": f"{out}{MANIFEST}", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "inputs": {i["dataset_id"]: {"frames": i["frames"], "bytes": i["bytes"], "fingerprint": i["fingerprint"]}
                   for i in manifest["inputs"]},
        "outputs": [{k: o[k] for k in ("name", "kind", "size", "sha256")} for o in manifest["outputs"]],
        "destination": manifest["destination"],
    }


def step_handover(order: WorkOrder, program: ObservingProgram) -> Outcome:
    summary = order.details.get("manifest")
    if not summary:
        summary = write_manifest(order, program)
        work_orders.merge_details(order.pk, manifest=summary)
        order.details["manifest"] = summary
    destination = science_path(program)
    done, status = _transfer(
        order, "handover", settings.L2_SCRATCH_COLLECTION, settings.L2_SCIENCE_COLLECTION,
        [TransferItem(order.details["out"], destination)], f"L2 hand over {program.instrument_program_execution_id}",
    )
    work_orders.set_progress(order.pk, files_handed_over=status.files + status.files_skipped,
                             bytes_handed_over=status.bytes)
    if not done:
        return Outcome(retry_in=float(settings.L2_PREPROCESS_POLL_SECONDS), note="transfer running")
    finish(order, program)
    return Outcome(finished=True, note="preprocessed")


STEP_FUNCTIONS: dict[str, Callable[[WorkOrder, ObservingProgram], Outcome]] = {
    "stage": step_stage,
    "verify": step_verify,
    "assemble": step_assemble,
    "quicklook": step_quicklook,
    "handover": step_handover,
}


# --- Finishing --------------------------------------------------------------------------
def finish(order: WorkOrder, program: ObservingProgram, *, note: str = "", same_as: int | None = None) -> bool:
    """Complete the order and move an Invertible program to Preprocessed, in one transaction.

    ``same_as``: the inputs were those of that Completed order, whose outputs stand (the
    new order records them as its own). Returns False if the order had already finished.
    """
    extra: dict = {"note": note} if note else {}
    if same_as is not None:
        previous = WorkOrder.objects.get(pk=same_as)
        for key in ("out", "outputs", "quicklooks", "manifest"):
            if key in previous.details:
                extra[key] = previous.details[key]
        extra["same_as"] = same_as
    with transaction.atomic():
        _record_run(_current_run.get(), order.pk)  # the completed order lists its last step's run
        done = work_orders.complete(order, details=extra)
        if done is None:
            return False
        program.refresh_from_db(fields=["state"])
        if program.state == State.INVERTIBLE:
            manifest = done.details.get("manifest") or {}
            cubes = [o for o in manifest.get("outputs", []) if o.get("kind") == "stokes cube"]
            where = manifest.get("destination") or {}
            reason = (f"inputs unchanged since order #{same_as}: its cubes stand" if same_as is not None else
                      f"{len(cubes)} Stokes cube{'s' if len(cubes) != 1 else ''} handed over to "
                      f"{where.get('collection', '?')}:{where.get('path', '?')}")
            lifecycle.transition(
                program, State.PREPROCESSED, actor="worker", reason=reason, expected_from=(State.INVERTIBLE,),
                details={"order": done.pk, "manifest": manifest.get("path"), "cubes": len(cubes),
                         **({"same_as": same_as} if same_as is not None else {})},
            )
        transaction.on_commit(lambda: clean_scratch(done.pk), robust=True)
    return True


def clean_scratch(order_id: int) -> list[str]:
    """After an order completed: remove its program's older order folders and staged L1
    folders it did not use (best effort; what an active order uses is kept)."""
    order = WorkOrder.objects.select_related("program").filter(pk=order_id).first()
    if order is None:
        return []
    program = order.program
    keep_out = {order.details.get("out")}
    keep_staged = {ds.get("staged") for ds in order.details.get("datasets") or []}
    for other in WorkOrder.objects.filter(program=program, kind=KIND, status__in=work_orders.ACTIVE):
        keep_out.add(other.details.get("out") or order_folder(other, program))
        keep_staged |= {ds.get("staged") for ds in other.details.get("datasets") or []}
    removed = []
    try:
        root = local_folder(settings.L2_SCRATCH_COLLECTION, scratch_root(program))
    except DoNotRetryError:
        return []
    for sub, keep in (("orders", keep_out), ("l1", keep_staged)):
        base = root / sub
        if not base.is_dir():
            continue
        kept = {local_folder(settings.L2_SCRATCH_COLLECTION, k) for k in keep if k}
        for child in base.iterdir():
            if child.is_dir() and child.resolve() not in kept:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(str(child))
    return removed


# --- Reads for the program page -----------------------------------------------------------
@dataclass
class Picture:
    title: str
    url: str
    description: str = ""
    figure_url: str = ""  # the same values with axes in arcsec and a colour bar
    dataset: str = ""
    movie_url: str = ""  # the dataset's browse movie (when preprocessed)
    movie_embed: str | None = None  # its player URL, for a Vimeo link


@dataclass
class Summary:
    """What the program page shows of its preprocessing (partials/preprocessing.html)."""

    latest: WorkOrder | None
    active: WorkOrder | None
    completed: WorkOrder | None  # the newest Completed order: the cubes that stand
    recent: list[WorkOrder] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    cubes: list[dict] = field(default_factory=list)
    # Where the standing cubes and quick-looks are: {"collection", "path"} (for "Open in Globus").
    cubes_at: dict | None = None
    quicklooks_at: dict | None = None

    @property
    def step_label(self) -> str:
        return STEP_LABELS.get(self.active.step, self.active.step) if self.active else ""


def summary(program: ObservingProgram) -> Summary:
    from django.urls import reverse

    from inversions.datasets import vimeo_embed_url

    recent = list(WorkOrder.objects.filter(program=program, kind=KIND).select_related("requested_by_user")
                  .order_by("-created_at", "-id")[:5])
    active = next((o for o in recent if o.is_active), None)
    completed = next((o for o in recent if o.status == WorkOrder.Status.COMPLETED), None)
    if completed is None:
        completed = (WorkOrder.objects.filter(program=program, kind=KIND, status=WorkOrder.Status.COMPLETED)
                     .order_by("-finished_at", "-id").first())
    pictures, cubes, cubes_at, quicklooks_at = [], [], None, None
    if completed is not None:
        titles = {"continuum": "continuum intensity", "ncp": "net circular polarisation"}
        ipeid = program.instrument_program_execution_id
        for q in completed.details.get("quicklooks") or []:
            figure = q.get("figure")
            pictures.append(Picture(
                title=f"{q['dataset']}: {titles.get(q['kind'], q['kind'])}",
                url=reverse("program-quicklook", args=[ipeid, completed.pk, q["name"].rsplit("/", 1)[-1]]),
                figure_url=reverse("program-quicklook", args=[ipeid, completed.pk, figure.rsplit("/", 1)[-1]])
                if figure else "",
                dataset=q["dataset"],
                movie_url=q.get("movie") or "",
                movie_embed=vimeo_embed_url(q.get("movie") or "") if q.get("movie") else None,
            ))
        for dataset_id, cube in sorted((completed.details.get("outputs") or {}).items()):
            cubes.append({"dataset_id": dataset_id, **cube})
        cubes_at = (completed.details.get("manifest") or {}).get("destination") or (
            {"collection": settings.L2_SCRATCH_COLLECTION, "path": completed.details["out"]}
            if completed.details.get("out") else None)
        if cubes_at:
            quicklooks_at = {"collection": cubes_at["collection"], "path": f"{cubes_at['path'].rstrip('/')}/{QUICKLOOK_DIR}/"}
    return Summary(latest=recent[0] if recent else None, active=active, completed=completed, recent=recent,
                   pictures=pictures, cubes=cubes, cubes_at=cubes_at, quicklooks_at=quicklooks_at)


def quicklook_file(program: ObservingProgram, order_id: int, name: str) -> Path | None:
    """The quick-look ``name`` of a Completed order of the program, if it is one it recorded."""
    order = WorkOrder.objects.filter(pk=order_id, program=program, kind=KIND, status=WorkOrder.Status.COMPLETED).first()
    if order is None:
        return None
    wanted = f"{QUICKLOOK_DIR}/{name}"
    if not any(wanted in (q.get("name"), q.get("figure")) for q in order.details.get("quicklooks") or []):
        return None
    try:
        folder = local_folder(settings.L2_SCRATCH_COLLECTION, order.details["out"])
        path = (folder / wanted).resolve()
    except (DoNotRetryError, KeyError):
        return None
    if folder.resolve() not in path.parents or not path.is_file():
        return None
    return path
