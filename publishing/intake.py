"""Report a program inverted, then fetch and check its result files (DESIGN §8).

Two halves:

1. :func:`submit_report` — the dashboard form, ``POST /api/v1/programs/<id>/inverted`` and the
   event-bus consumer. It checks, at once, everything that can be checked without the files
   (the fields, the program is Working — and, from the dashboard, claimed by the reporter —,
   the datasets are current ones of the program with a whole and equal number of raster steps,
   the collection is one we can fetch from, the path is absolute and stays inside it) and
   refuses a bad report with :class:`ReportRejected` (a message for people, nothing changed).
   A good one becomes an *intake* work order (the report, a new inversion id, the transfer's
   submission id), and a worker task is queued. The program stays Working, claimed.

2. :func:`run_intake` — the worker. It fetches the three files from the reported collection
   and path into scratch with the transfer interface (``inversions.transfers``), checks them
   with :func:`publishing.results.validate_results` (present, readable FITS, shapes agreeing
   with each other and with the program's raster steps), and then:

   * good files: an :class:`~publishing.models.Inversion` is recorded (id, software commit,
     datasets used, the files with sizes and sha256) and the program goes Working → Inverted,
     ready to generate, in one transaction;
   * bad files (or files that cannot be fetched): the program goes Working → Error with step
     ``results`` and the reason (which file, what is wrong). An operator's Retry brings it
     back to Working, so the team can report corrected files.

When the program becomes Inverted. DESIGN §8 says the files are "checked … before the program
becomes Inverted; a bad set is refused with a clear message"; the issue says a bad set sends
the program to Error ("results"). Both hold here: the program is Inverted only once a worker
has checked the files, and a set that fails the check is refused with its reason as an Error
of step ``results`` (the submission itself is answered at once: a bad field is refused before
anything is queued; the files are judged by the worker, whose verdict is on the program page).
"""
from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from inversions import lifecycle, transfers, work_orders
from inversions.errors import BackoffRetryError, DoNotRetryError, L2Error, RetryError
from inversions.models import Dataset, ObservingProgram, WorkOrder
from inversions.states import State
from l2site.inputs import RULE as INPUT_RULE
from l2site.inputs import problem as input_problem
from publishing.results import RESULT_FILES, validate_results

COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
GLOBUS_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_NOTES = 10_000
MAX_FIELD = 1_000
STEP = "results"
INTAKE = WorkOrder.Kind.INTAKE


class ReportRejected(Exception):
    """The submission was refused; ``str(exc)`` says why. Nothing was changed."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


def new_inversion_id() -> str:
    """A public inversion id: ``L2`` + 10 upper-case hex digits (unique in practice; the database checks)."""
    return "L2" + secrets.token_hex(5).upper()


def scratch_folder(program: ObservingProgram, inversion_id: str) -> str:
    """The inversion's folder in the scratch collection (``L2_SCRATCH_L2_PATH``), ending in ``/``."""
    path = settings.L2_SCRATCH_L2_PATH.format(
        proposal=program.primary_proposal_id, program=program.instrument_program_execution_id,
        inversion=inversion_id,
    )
    return path if path.endswith("/") else path + "/"


_CANONICAL_LINE = re.compile(r"^(?P<species>.*?\S)\s+(?P<wl>\d+\.\d+)$")


def store_line_name(name: str) -> str:
    """A line as the metadata store and the L2 files name it: ``"Fe I 630.15"`` → ``"Fe I (630.15 nm)"``.

    Our datasets keep canonical names (``scanning.records``); the store's records and the L2
    headers use the form with the wavelength in nm, from which the L2 wavelength axis is built.
    """
    match = _CANONICAL_LINE.match(name.strip())
    return f"{match['species']} ({match['wl']} nm)" if match else name


def expected_raster_steps(datasets: Sequence[Dataset]) -> int:
    """Raster steps the result files must have, from the datasets used.

    The inversion's step axis has one entry per raster step of one map. The metadata store
    gives ``frameCount`` (all frames: Stokes × maps × steps) and ``stokesParameters`` but not
    the number of maps, so one map is assumed (the ViSP programs in the store are single
    maps): ``steps = frame_count / len(stokes_parameters)``, which must be a whole number and
    the same for every dataset used (the arms of one program share their raster).
    """
    steps: dict[str, int] = {}
    for d in datasets:
        n_stokes = len(d.stokes_parameters or "")
        if not d.frame_count or not n_stokes:
            raise ReportRejected(
                f"dataset {d.dataset_id} has no frame count or Stokes parameters: cannot check the files",
                field="dataset_ids",
            )
        if d.frame_count % n_stokes:
            raise ReportRejected(
                f"dataset {d.dataset_id} has {d.frame_count} frames, not a whole number of raster steps "
                f"for Stokes {d.stokes_parameters}",
                field="dataset_ids",
            )
        steps[d.dataset_id] = d.frame_count // n_stokes
    if len(set(steps.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(steps.items()))
        raise ReportRejected(f"the datasets used have different numbers of raster steps ({listed})",
                             field="dataset_ids")
    return next(iter(steps.values()))


def _check_fields(collection, path, software_commit, dataset_ids, notes) -> tuple[str, str, str, list[str], str]:
    if not isinstance(collection, str) or not collection.strip():
        raise ReportRejected("collection is required", field="collection")
    if not isinstance(path, str) or not path.strip():
        raise ReportRejected("path is required", field="path")
    if not isinstance(software_commit, str) or not software_commit.strip():
        raise ReportRejected("software_commit is required", field="software_commit")
    if not isinstance(notes, str):
        raise ReportRejected("notes must be text", field="notes")
    for name, value in (("collection", collection), ("path", path), ("software_commit", software_commit),
                        ("dataset_ids", dataset_ids), ("notes", notes)):
        if found := input_problem(value):  # the rule of every entry point (the event bus has no middleware)
            raise ReportRejected(f"{name} {INPUT_RULE} (found {found})", field=name)
    collection, path, commit = collection.strip(), path.strip(), software_commit.strip().lower()
    if len(collection) > MAX_FIELD or len(path) > MAX_FIELD:
        raise ReportRejected("collection and path must be shorter than 1000 characters", field="path")
    if not COMMIT_RE.match(commit):
        raise ReportRejected(
            f"software_commit must be a git commit: 7 to 40 hexadecimal digits, not {software_commit[:50]!r}",
            field="software_commit",
        )
    _check_commit(commit, software_commit)
    if len(notes) > MAX_NOTES:
        raise ReportRejected(f"notes are limited to {MAX_NOTES} characters", field="notes")
    if not isinstance(dataset_ids, (list, tuple)) or not all(isinstance(d, str) for d in dataset_ids):
        raise ReportRejected("dataset_ids must be a list of dataset ids", field="dataset_ids")
    ids = list(dict.fromkeys(d.strip() for d in dataset_ids if d.strip()))
    if not ids:
        raise ReportRejected("name at least one dataset used", field="dataset_ids")
    return collection, path, commit, ids, notes.strip()


def _check_commit(commit: str, given: str) -> None:
    """With ``L2_INVERSION_REPO`` set, the commit must exist in that repository (else the format check only)."""
    repo = settings.L2_INVERSION_REPO
    if not repo:
        return
    from publishing.commits import RepoUnavailable, commit_exists

    try:
        found = commit_exists(repo, commit, timeout=settings.L2_INVERSION_REPO_TIMEOUT)
    except RepoUnavailable as exc:
        raise ReportRejected(f"the inversion software repository cannot be asked whether {given[:50]!r} "
                             f"exists ({exc}); nothing was recorded, report again later",
                             field="software_commit") from exc
    if not found:
        raise ReportRejected(f"software_commit {given[:50]!r} is not a commit of the inversion software "
                             f"repository {repo}", field="software_commit")


def _check_location(collection: str, path: str) -> None:
    """The collection is one the transfer backend can fetch from; the path stays inside it."""
    known = getattr(settings, "L2_COLLECTIONS", {}) or {}
    if collection not in known and not (settings.L2_TRANSFER_BACKEND == "globus" and GLOBUS_ID_RE.match(collection)):
        listed = ", ".join(sorted(known)) or "none configured"
        raise ReportRejected(f"unknown collection {collection!r} (known: {listed})", field="collection")
    try:
        transfers.check_path(path)
        if collection in known:
            transfers.local_folder(collection, path)  # refuses a path (or a link) leaving the collection
    except DoNotRetryError as exc:
        raise ReportRejected(exc.message, field="path") from exc


class NotClaimant(ReportRejected):
    """The reporter does not hold the program's claim (and may not report for another claimant)."""


def _check_program(program: ObservingProgram, user, require_claim: bool) -> None:
    if program.state != State.WORKING:
        raise ReportRejected(f"{program} is {program.get_state_display()}, not Working: only a program being "
                             "worked on can be reported inverted")
    if require_claim and program.claimed_by_id != getattr(user, "pk", None):
        who = program.claimed_by.get_username() if program.claimed_by_id else "nobody"
        raise NotClaimant(f"{program} is claimed by {who}, not by you")


@dataclass(frozen=True)
class Report:
    """A report that passed every check that needs no file."""

    collection: str
    path: str
    software_commit: str
    dataset_ids: list[str]
    notes: str
    raster_steps: int
    spectral_lines: list[str] | None

    def to_dict(self) -> dict:
        return {
            "collection": self.collection, "path": self.path, "software_commit": self.software_commit,
            "dataset_ids": self.dataset_ids, "notes": self.notes, "raster_steps": self.raster_steps,
            "spectral_lines": self.spectral_lines,
        }


def check_report(program: ObservingProgram, *, user, collection, path, software_commit, dataset_ids, notes,
                 require_claim: bool = True) -> Report:
    """Every check that needs no file; :class:`ReportRejected` for the first that fails."""
    collection, path, commit, ids, notes = _check_fields(collection, path, software_commit, dataset_ids, notes)
    _check_program(program, user, require_claim)
    current = {d.dataset_id: d for d in Dataset.objects.filter(program=program, superseded=False).defer("raw")}
    unknown = [d for d in ids if d not in current]
    if unknown:
        raise ReportRejected(
            f"not a current dataset of {program}: {', '.join(unknown)} (current: {', '.join(sorted(current)) or 'none'})",
            field="dataset_ids",
        )
    used = sorted((current[d] for d in ids), key=lambda d: (d.wavelength_min or 0.0, d.dataset_id))
    steps = expected_raster_steps(used)
    lines = ([store_line_name(line) for d in used for line in (d.spectral_lines or [])]
             if all(d.spectral_lines for d in used) else None)
    _check_location(collection, path)
    return Report(collection, path, commit, [d.dataset_id for d in used], notes, steps, lines or None)


def submit_report(
    program: ObservingProgram,
    *,
    user,
    actor: str,
    collection,
    path,
    software_commit,
    dataset_ids,
    notes="",
    require_claim: bool = True,
    source: dict | None = None,
    enqueue: bool = True,
) -> WorkOrder:
    """Check a report and queue the fetch-and-check of its files; return the intake order.

    ``require_claim``: the reporter must hold the claim (:class:`NotClaimant` otherwise); only a
    cluster client that may report for any claimant (``ApiToken.reports_for_any_claimant``, or
    a client of ``L2_EVENT_CLIENTS``) passes False. The claimant is kept on the order, and the
    history row of the verdict names both. ``source`` is kept on the order (the API token, the
    bus message id …). Raises :class:`ReportRejected` for a bad report or when results of the
    program are already being checked; nothing changes then.
    """
    report = check_report(program, user=user, collection=collection, path=path, software_commit=software_commit,
                          dataset_ids=dataset_ids, notes=notes, require_claim=require_claim)
    inversion_id = new_inversion_id()
    details = {
        "report": report.to_dict(),
        "inversion_id": inversion_id,
        "reported_at": timezone.now().isoformat(),
        "scratch": scratch_folder(program, inversion_id) + "results/",
        "submission_id": str(uuid.uuid4()),  # the transfer's, stored before it is submitted
        "source": source or {},
    }
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update(of=("self",)).select_related("claimed_by").get(pk=program.pk)
        _check_program(locked, user, require_claim)  # nobody changed it meanwhile
        details["claimant"] = locked.claimed_by.get_username() if locked.claimed_by_id else None
        requested = work_orders.request(locked, INTAKE, requested_by=actor, user=user if getattr(user, "pk", None) else None,
                                        details=details)
        if not requested.created:
            order = requested.order
            reported = order.details.get("reported_at", "")
            raise ReportRejected(
                f"results of {program} reported at {reported[:19].replace('T', ' ')} UTC are being fetched and "
                f"checked (intake #{order.pk}); wait for the verdict on the program page"
            )
        order = requested.order
        if enqueue:
            from publishing.tasks import intake_results

            transaction.on_commit(lambda: intake_results.delay(order.pk))
    return order


# ----------------------------------------------------------------------------- the worker


class Outcome(str, Enum):
    DONE = "done"  # the program is Inverted
    REFUSED = "refused"  # the program is in Error (results)
    WAITING = "waiting"  # the transfer is still running: look again later
    NOTHING = "nothing"  # the order had finished already (a duplicate task)


def _fetch(order: WorkOrder, backend) -> transfers.TransferStatus:
    """Submit (once: the submission id makes a redelivered submit the same transfer) or poll."""
    report = order.details["report"]
    task_id = order.details.get("transfer_task_id")
    if task_id:
        return backend.status(task_id)
    source = report["path"].rstrip("/") + "/"
    items = [transfers.TransferItem(source + name, order.details["scratch"] + name) for name in RESULT_FILES.values()]
    task_id = backend.submit(report["collection"], settings.L2_SCRATCH_COLLECTION, items,
                             label=f"L2 results {order.details['inversion_id']}",
                             submission_id=order.details["submission_id"])
    work_orders.merge_details(order.pk, transfer_task_id=task_id)
    order.details["transfer_task_id"] = task_id
    return backend.status(task_id)


def run_intake(order_id: int, *, backend=None, poll: bool = False) -> Outcome:
    """Fetch and check the files of an intake order; record the inversion or refuse the files.

    ``poll``: this run only looks at a transfer that was already submitted (not a new attempt).
    Raises ``RetryError`` / ``BackoffRetryError`` for failures worth another try (the task
    retries); every other failure refuses the files (program → Error, step ``results``).
    """
    if poll:
        order = WorkOrder.objects.filter(pk=order_id, status__in=work_orders.ACTIVE).first()
    else:
        order = work_orders.start(order_id, "fetch")
    if order is None:
        return Outcome.NOTHING
    report = order.details["report"]
    where = f"{report['collection']}:{report['path']}"
    stage = "fetch"
    try:
        status = _fetch(order, backend or transfers.get_backend())
        if not status.done:
            work_orders.set_progress(order.pk, files=status.files, bytes=status.bytes)
            return Outcome.WAITING
        if not status.ok:
            raise DoNotRetryError(f"fetching the result files from {where} failed: {status.error or 'transfer failed'}",
                                  step=STEP, details={"transfer": status.task_id})
        work_orders.advance(order.pk, "fetch", "check")
        stage = "check"
        folder = transfers.local_folder(settings.L2_SCRATCH_COLLECTION, order.details["scratch"])
        checked = validate_results(folder, expected_steps=report["raster_steps"],
                                   spectral_lines=report.get("spectral_lines") or None)
    except (RetryError, BackoffRetryError):
        raise
    except L2Error as exc:
        refuse(order, f"the result files in {where} were refused: {exc.message}", stage=stage, details=exc.details)
        return Outcome.REFUSED
    return Outcome.DONE if _record(order, checked) else Outcome.NOTHING


def refuse(order: WorkOrder, reason: str, *, stage: str = "check", details: dict | None = None) -> None:
    """The files are refused: the order fails and the program (still Working) goes to Error (results)."""
    with transaction.atomic():
        program = ObservingProgram.objects.select_for_update().get(pk=order.program_id)
        if work_orders.fail(order, step=stage, error=reason) is None:
            return  # finished meanwhile (a duplicate task)
        if program.state == State.WORKING:
            lifecycle.fail(program, step=STEP, reason=reason, actor="worker",
                           details={"intake": order.pk, "inversion_id": order.details.get("inversion_id"),
                                    "report": order.details.get("report"), **_jsonable(details or {})})


def _jsonable(details: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in details.items()}


def _record(order: WorkOrder, checked) -> bool:
    """Record the inversion and make the program Inverted (one transaction). False if nothing was done."""
    from publishing import inversion_status
    from publishing.models import Inversion

    report = order.details["report"]
    shapes = {"mod": list(checked.mod_shape), "pre": list(checked.profile_shape), "ori": list(checked.profile_shape)}
    files = [
        {"name": name, "size": checked.sizes.get(role), "sha256": checked.sha256.get(role), "shape": shapes[role]}
        for role, name in RESULT_FILES.items()
    ]
    with transaction.atomic():
        program = ObservingProgram.objects.select_for_update().get(pk=order.program_id)
        if program.state != State.WORKING:
            work_orders.fail(order, step="record", error=(
                f"{program} is {program.get_state_display()} now, not Working: the checked results were not recorded"))
            return False
        locked = WorkOrder.objects.select_for_update().get(pk=order.pk)
        if locked.status not in work_orders.ACTIVE:
            return False
        now = timezone.now()
        inversion = Inversion.objects.create(
            inversion_id=order.details["inversion_id"],
            program=program,
            software_commit=report["software_commit"],
            dataset_ids=report["dataset_ids"],
            spectral_lines=list(checked.spectral_lines),
            raster_steps=checked.n_steps,
            notes=report.get("notes", ""),
            reported_collection=report["collection"],
            reported_path=report["path"],
            scratch_path=order.details["scratch"],
            result_files=files,
            reported_by=order.requested_by,
            reported_by_user=order.requested_by_user,
            reported_at=parse_datetime(order.details.get("reported_at", "")) or order.created_at,
            created_at=now,
            updated_at=now,
            selected_at=now,
            status_changed_at=now,
            bucket=_bucket(program, report["dataset_ids"]),
        )
        inversion_status.accepted(inversion, actor=order.requested_by, user=order.requested_by_user)
        previous = Inversion.objects.filter(program=program, status=Inversion.Status.PUBLISHED).exclude(
            pk=inversion.pk).values_list("inversion_id", flat=True).first()
        claimant = order.details.get("claimant")
        for_whom = f" by {order.requested_by} for {claimant}" if claimant and claimant != order.requested_by else ""
        lifecycle.transition(
            program, State.INVERTED, actor=order.requested_by, user=order.requested_by_user,
            reason=f"reported inverted{for_whom}; result files checked"
            + (f" (re-inversion of {previous})" if previous else ""),
            details={"inversion_id": inversion.inversion_id, "intake": order.pk, **report,
                     "files": files, "reported_by": order.requested_by, "claimant": claimant},
            expected_from=(State.WORKING,),
        )
        work_orders.complete(order, details={"files": files}, progress={"files": len(files)})
    return True


def _bucket(program: ObservingProgram, dataset_ids: list[str]) -> str:
    buckets = list(Dataset.objects.filter(program=program, dataset_id__in=dataset_ids).exclude(bucket="")
                   .order_by("wavelength_min", "dataset_id").values_list("bucket", flat=True))
    return buckets[0] if buckets else ""


def latest_intake(program: ObservingProgram) -> WorkOrder | None:
    return work_orders.latest(program, INTAKE)
