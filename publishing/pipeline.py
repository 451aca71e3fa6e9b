"""Generate and publish an inversion's Level 2 files (DESIGN §9.1–9.3): the worker side.

Each run is a work order (``inversions.work_orders``) of kind ``generate`` or ``publish``;
the Celery tasks in :mod:`publishing.tasks` call :func:`run_generate` / :func:`run_publish`
and act on the :class:`Outcome`. The program's state changes only through
``inversions.lifecycle``: it stays Inverted while generating and publishing, becomes
Published once the metadata store has recorded the inversion, and goes to Error with step
``generate`` or ``publish`` (and the reason) when a step fails for good.

**Generate** (restartable): the three result files (fetched to scratch by the intake) are
checked again against the checksums recorded then; the L1 header of each raster step is read
from the L1 frames (the copy preprocessing staged on scratch, else the L1 collection where it is
visible locally, else a copy staged to scratch now with the transfer interface); :func:`publishing.l2files.generate_all` writes one FITS
per raster step in a process pool, keeping every frame already written and valid, then the
dataset's ASDF file. The files are recorded as :class:`~publishing.models.L2File` rows with
their sizes and sha256. A worker killed half-way leaves valid frames and no half file: the
redelivered task writes only the missing frames.

**Publish**: the recorded files are transferred to the publish collection
(``L2_PUBLISH_PATH``, ``/{bucket}/{proposal}/{inversion}/``), then
``createL2InversionInventory`` tells the metadata store. A store that is down (5xx, timeouts:
``BackoffRetryError``) is tried again later with exponential backoff and jitter, up to
``L2_PUBLISH_MAX_TRIES``; the program stays Inverted meanwhile. A refusal (4xx, GraphQL
errors: ``DoNotRetryError``) puts the program in Error with the store's message.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inversions import events, lifecycle, transfers, work_orders
from inversions.errors import BackoffRetryError, DoNotRetryError, L2Error, RetryError
from inversions.models import Dataset, ObservingProgram, WorkOrder
from inversions.states import State
from publishing import catalog, inversion_status
from publishing.intake import scratch_folder
from publishing.l1headers import l1_arm, l1_files, l1_headers_by_step
from publishing.l2asdf import build_inversion, inventory_record, write_inversion_asdf
from publishing.l2files import dataset_metadata_filename, generate_all, l1_frame_keys
from publishing.models import Inversion, L2File
from publishing.selectors import current_inversion, published_inversion
from publishing.results import RESULT_FILES, validate_results

log = logging.getLogger(__name__)

GENERATE = WorkOrder.Kind.GENERATE
PUBLISH = WorkOrder.Kind.PUBLISH
BACKOFF_CAP_SECONDS = 3600.0


class Refused(Exception):
    """A request that cannot be made now (wrong state, nothing generated …); the message says why."""


class Outcome(str, Enum):
    DONE = "done"
    FAILED = "failed"  # the program is in Error
    WAITING = "waiting"  # a transfer is running: look again after the backend's poll interval
    RETRY = "retry"  # the metadata store is unavailable: try again after a backoff
    NOTHING = "nothing"  # the order had finished already (a duplicate task)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    delay: float = 0.0  # for RETRY / WAITING
    message: str = ""


def software_version() -> str:
    try:
        return metadata.version("l2")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"




def poll_delay(backend) -> float:
    """Seconds before asking a running transfer again (``GLOBUS_POLL_SECONDS``; local copies finish at once)."""
    return getattr(backend, "poll_seconds", 0.0) or settings.GLOBUS_POLL_SECONDS


def l2_folder(inversion: Inversion) -> str:
    """Folder of the generated files in the scratch collection."""
    return inversion.l2_path or scratch_folder(inversion.program, inversion.inversion_id) + "files/"


# ----------------------------------------------------------------------------- generate


def request_generate(program: ObservingProgram, *, actor: str, user=None, force: bool = False,
                     enqueue: bool = True) -> work_orders.Requested:
    """Queue the generation of the program's current inversion (operators, or automation).

    Skipped when the same result files were generated already, unless ``force``.
    """
    if program.state != State.INVERTED:
        raise Refused(f"{program} is {program.get_state_display()}: L2 files are generated for Inverted programs")
    inversion = current_inversion(program)
    if inversion is None:
        raise Refused(f"{program} has no accepted inversion results")
    publishing = work_orders.active(program, PUBLISH)
    if publishing is not None:
        raise Refused(f"{program} is being published (order #{publishing.pk}): its files cannot change now")
    checksums = {f["name"]: f["sha256"] for f in inversion.result_files}
    checksums |= {"inversion": inversion.inversion_id, "l2": software_version()}
    requested = work_orders.request(program, GENERATE, requested_by=actor, user=user, forced=force,
                                    input_checksums=checksums, details={"inversion_id": inversion.inversion_id})
    if requested.created and enqueue:
        from publishing.tasks import generate_l2

        order_id = requested.order.pk
        transaction.on_commit(lambda: generate_l2.delay(order_id))
    return requested


def _l1_source(dataset: Dataset, program: ObservingProgram) -> tuple[str, str]:
    path = settings.L2_L1_PATH.format(bucket=dataset.bucket, proposal=dataset.primary_proposal_id or
                                      program.primary_proposal_id, dataset=dataset.dataset_id)
    return settings.L2_L1_COLLECTION, path if path.endswith("/") else path + "/"


def _inversion_datasets(inversion: Inversion) -> list[Dataset]:
    """The datasets the inversion used, in the order of its ``dataset_ids`` (wavelength order)."""
    datasets = {d.dataset_id: d for d in Dataset.objects.filter(dataset_id__in=inversion.dataset_ids).defer("raw")}
    known = [datasets[d] for d in inversion.dataset_ids if d in datasets]
    if not known:
        raise DoNotRetryError(f"none of the datasets used ({', '.join(inversion.dataset_ids)}) is known any more",
                              step="generate")
    return known


def _staged_by_preprocessing(program: ObservingProgram, dataset_id: str) -> Path | None:
    """The dataset's L1 frames as the program's newest completed preprocessing staged them on scratch."""
    order = work_orders.latest(program, WorkOrder.Kind.PREPROCESS, status=WorkOrder.Status.COMPLETED)
    for ds in (order.details.get("datasets") or []) if order is not None else []:
        if ds.get("dataset_id") == dataset_id and ds.get("staged"):
            try:
                folder = transfers.local_folder(settings.L2_SCRATCH_COLLECTION, ds["staged"])
            except DoNotRetryError:
                return None
            return folder if folder.is_dir() and any(folder.glob("*.fits")) else None
    return None


def _l1_folder(order: WorkOrder, inversion: Inversion, dataset: Dataset, backend) -> Path | None:
    """Where a dataset's L1 frames can be read; None while they are being staged.

    In order: the copy the program's preprocessing staged on scratch (still there after it
    completed); the L1 collection itself when it is visible on this machine
    (``L2_COLLECTIONS``); else a copy staged to scratch now under the L1 path (submitted once
    per dataset; the submission id is kept on the order before submitting, so a redelivered
    task finds the same transfer).
    """
    staged = _staged_by_preprocessing(inversion.program, dataset.dataset_id)
    if staged is not None:
        return staged
    collection, path = _l1_source(dataset, inversion.program)
    if collection in (settings.L2_COLLECTIONS or {}):
        folder = transfers.local_folder(collection, path)
        if folder.is_dir():
            return folder
    stages = dict(order.details.get("l1_stage") or {})
    staged = stages.get(dataset.dataset_id) or {}
    if not staged:
        staged = stages[dataset.dataset_id] = {"submission_id": backend.new_submission_id(), "path": path}
        work_orders.merge_details(order.pk, l1_stage=stages)
    if not staged.get("task_id"):
        task_id = backend.submit(collection, settings.L2_SCRATCH_COLLECTION, [transfers.TransferItem(path, path)],
                                 label=f"L1 headers {dataset.dataset_id}", submission_id=staged["submission_id"])
        staged = stages[dataset.dataset_id] = {**staged, "task_id": task_id}
        work_orders.merge_details(order.pk, l1_stage=stages)
    order.details["l1_stage"] = stages
    status = backend.status(staged["task_id"])
    if not status.done:
        return None
    if not status.ok:
        raise DoNotRetryError(f"staging the L1 frames of {dataset.dataset_id} failed: {status.error}", step="generate")
    return transfers.local_folder(settings.L2_SCRATCH_COLLECTION, path)


def _fiducial_arm(order: WorkOrder, inversion: Inversion, fiducial: str, backend) -> tuple[Dataset, Path] | None:
    """The dataset whose L1 ``VSPARMID`` is the results' ``DESR-FID``, and its L1 folder (None: staging)."""
    arms = {}
    for dataset in _inversion_datasets(inversion):
        folder = _l1_folder(order, inversion, dataset, backend)
        if folder is None:
            return None
        arm = l1_arm(l1_files(folder))
        if arm is not None and str(arm).strip() == str(fiducial).strip():
            return dataset, folder
        arms[dataset.dataset_id] = arm
    found = ", ".join(f"{d}: {'none' if a is None else a}" for d, a in arms.items())
    raise DoNotRetryError(f"no dataset of the inversion is the fiducial arm DESR-FID = {fiducial} of "
                          f"inv_res_pre.fits (VSPARMID of the L1 datasets: {found})", step="generate",
                          details={"fiducial_arm": fiducial, "arms": arms})


def _checked_results(inversion: Inversion):
    folder = transfers.local_folder(settings.L2_SCRATCH_COLLECTION, inversion.scratch_path)
    results = validate_results(folder, expected_steps=inversion.raster_steps,
                               spectral_lines=inversion.spectral_lines or None)
    recorded = {f["name"]: f["sha256"] for f in inversion.result_files}
    changed = [name for role, name in RESULT_FILES.items() if results.sha256.get(role) != recorded.get(name)]
    if changed:
        raise DoNotRetryError(f"result file(s) changed since they were checked: {', '.join(changed)}",
                              step="generate", details={"changed": changed})
    return results


def sha256_of(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class _Progress:
    """``progress_cb`` for generate_all: at most one UPDATE per ``interval`` seconds, and the last."""

    def __init__(self, order_id: int, interval: float = 0.5):
        self.order_id, self.interval, self.last = order_id, interval, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= self.interval:
            self.last = now
            work_orders.set_progress(self.order_id, frames_done=done, frames_total=total)


def run_generate(order_id: int, *, backend=None, poll: bool = False, workers: int | None = None) -> Result:
    """Generate (or complete) the L2 files of a generate order. See the module doc."""
    order = (WorkOrder.objects.filter(pk=order_id, status__in=work_orders.ACTIVE).first() if poll
             else work_orders.start(order_id, "headers"))
    if order is None:
        return Result(Outcome.NOTHING)
    inversion = Inversion.objects.select_related("program").get(inversion_id=order.details["inversion_id"])
    program = inversion.program
    if program.state != State.INVERTED:
        work_orders.fail(order, step=order.step or "headers",
                         error=f"{program} is {program.get_state_display()} now, not Inverted: nothing generated")
        return Result(Outcome.NOTHING)
    _clear_for_regeneration(order, inversion)
    stage = "headers"
    try:
        results = _checked_results(inversion)
        backend = backend or transfers.get_backend()
        found = _fiducial_arm(order, inversion, results.fiducial_arm, backend)
        if found is None:
            return Result(Outcome.WAITING, poll_delay(backend))
        dataset, folder = found
        headers = {step: l1_frame_keys(h)
                   for step, h in l1_headers_by_step(l1_files(folder), dataset.frame_count or 0).items()}
        if len(headers) not in (results.n_steps, results.n_steps + 1):
            raise DoNotRetryError(f"the fiducial arm's L1 dataset {dataset.dataset_id} has {len(headers)} raster "
                                  f"steps, the inversion {results.n_steps} (accepted: the same, or one more)",
                                  step="generate")
        headers = {step: headers[step] for step in range(results.n_steps)}  # the inversion may drop the last
        work_orders.advance(order.pk, "headers", "frames")
        stage = "frames"
        out_path = l2_folder(inversion)
        out_dir = transfers.local_folder(settings.L2_SCRATCH_COLLECTION, out_path)
        ids = {
            "inversion_id": inversion.inversion_id,
            "proposal_id": program.primary_proposal_id,
            "experiment_id": program.primary_experiment_id,
            "program_id": program.instrument_program_execution_id,
            "observing_program_id": program.observing_program_execution_id,
            "dataset_ids": list(inversion.dataset_ids),
        }
        versions = {"l2": software_version(), "inversion": inversion.software_commit}
        work_orders.set_progress(order.pk, frames_done=0, frames_total=results.n_steps)
        started = time.monotonic()
        frames = generate_all(results, headers, ids, out_dir, workers=workers or settings.L2_GENERATE_WORKERS or None,
                              software_versions=versions, progress_cb=_Progress(order.pk))
        seconds = time.monotonic() - started
        work_orders.advance(order.pk, "frames", "metadata")
        stage = "metadata"
        path = publish_path(inversion)
        asdf_name = dataset_metadata_filename(inversion.inversion_id)
        record = {**store_record(inversion, path), "asdfObjectKey": object_key(inversion, path, asdf_name)}
        inventory = inventory_record({
            **record,
            "primaryExperimentId": program.primary_experiment_id,
            "observingProgramExecutionId": program.observing_program_execution_id,
            "softwareCommit": inversion.software_commit,
            "softwareVersions": versions,
            "fiducialArm": results.fiducial_arm,
            "slitBinning": results.binning,
        }, results, canonical_dataset=dataset.dataset_id)
        l2_inversion = build_inversion(frames, results, headers, ids, inventory, software_versions=versions,
                                       basepath=out_dir)
        asdf_path = write_inversion_asdf(l2_inversion, out_dir / asdf_name)
    except (RetryError, BackoffRetryError):
        raise
    except L2Error as exc:
        fail_program(order, program, "generate", stage, f"generating the L2 files failed: {exc.message}", exc.details)
        return Result(Outcome.FAILED, message=exc.message)
    except OSError as exc:
        raise RetryError(f"generating the L2 files: {exc}", step="generate") from exc

    paths = [Path(f.path) for f in frames] + [asdf_path]
    with ThreadPoolExecutor(max_workers=2) as pool:  # hashing releases the GIL
        digests = list(pool.map(sha256_of, paths))
    rows = [L2File(inversion=inversion, kind=L2File.Kind.FRAME, step=f.step, filename=f.filename, size=f.size,
                   sha256=digest, file_id=f.file_id) for f, digest in zip(frames, digests)]
    rows.append(L2File(inversion=inversion, kind=L2File.Kind.METADATA, filename=asdf_path.name,
                       size=asdf_path.stat().st_size, sha256=digests[-1]))
    written = sum(1 for f in frames if f.generated)
    with transaction.atomic():
        locked = WorkOrder.objects.select_for_update().get(pk=order.pk)
        if locked.status not in work_orders.ACTIVE:
            return Result(Outcome.NOTHING)
        L2File.objects.filter(inversion=inversion).delete()
        L2File.objects.bulk_create(rows)
        inversion.generated_at = timezone.now()
        inversion.l2_path = out_path
        inversion.touch("generated_at", "l2_path")
        if inversion.status != Inversion.Status.PUBLISHED:  # regenerated for a republish: still published
            inversion_status.change(inversion, Inversion.Status.GENERATED, actor="worker", reason="L2 files generated",
                                    details={"order": order.pk, "frames": len(frames)})
        work_orders.complete(order, details={"frames": len(frames), "written": written, "kept": len(frames) - written,
                                             "bytes": sum(r.size for r in rows), "seconds": round(seconds, 3),
                                             "l2_path": out_path},
                             progress={"frames_done": len(frames), "frames_total": len(frames)})
    log.info("generated %s: %d frames written, %d kept, %.1f s", inversion, written, len(frames) - written, seconds)
    return Result(Outcome.DONE)


def _clear_for_regeneration(order: WorkOrder, inversion: Inversion) -> None:
    """A republish regenerates every file (generation keeps valid frames): the old ones go first, once."""
    if not order.details.get("fresh") or order.details.get("cleared_at"):
        return
    folder = transfers.local_folder(settings.L2_SCRATCH_COLLECTION, l2_folder(inversion))
    removed = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    now = timezone.now().isoformat()
    work_orders.merge_details(order.pk, cleared_at=now, cleared_files=removed)
    order.details["cleared_at"] = now


def fail_program(order: WorkOrder, program: ObservingProgram, step: str, stage: str, reason: str,
                 details: dict | None = None) -> None:
    """The order fails at ``stage``; the program (if still Inverted) goes to Error with ``step``."""
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=program.pk)
        if work_orders.fail(order, step=stage, error=reason) is None:
            return
        if locked.state == State.INVERTED:
            extra = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (details or {}).items()}
            lifecycle.fail(locked, step=step, reason=reason, actor="worker",
                           details={"order": order.pk, "inversion_id": order.details.get("inversion_id"), **extra})


def after_retry(program: ObservingProgram, *, user=None) -> tuple[str, work_orders.Requested] | None:
    """An operator's retry sent the program back to Inverted: run the failed step again now.

    Returns (what runs again, the request), or None when there is nothing to run (the program
    is not Inverted, the failure was not generation or publication, or it cannot start now).
    """
    from inversions.models import Transition

    program.refresh_from_db(fields=["state"])
    if program.state != State.INVERTED:
        return None
    error = Transition.objects.filter(program=program, to_state=State.ERROR).order_by("-at", "-id").first()
    step = (error.details or {}).get("step") if error is not None else None
    actor = user.get_username() if user is not None else "retry"
    try:
        if step == "generate":
            return "L2 generation", request_generate(program, actor=actor, user=user, force=True)
        if step == "publish":
            return "Publication", request_publish(program, actor=actor, user=user)
    except Refused:
        return None
    return None


# ----------------------------------------------------------------------------- publish


@dataclass
class PublishPlan:
    """What publishing the program will do: shown to the operator before confirming."""

    inversion: Inversion
    files: list[L2File]
    total_bytes: int
    collection: str
    path: str
    record: dict  # the createL2InversionInventory input
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def publish_path(inversion: Inversion) -> str:
    path = settings.L2_PUBLISH_PATH.format(
        bucket=inversion.bucket, proposal=inversion.program.primary_proposal_id, inversion=inversion.inversion_id,
        program=inversion.program.instrument_program_execution_id,
    )
    return path if path.endswith("/") else path + "/"


def object_key(inversion: Inversion, path: str, filename: str) -> str:
    """The key of a published file inside its bucket (the path below ``/{bucket}/``)."""
    prefix = f"/{inversion.bucket}/"
    inside = path[len(prefix):] if inversion.bucket and path.startswith(prefix) else path.lstrip("/")
    return inside + filename


def store_record(inversion: Inversion, path: str | None = None) -> dict:
    """The ``L2InversionInventory`` input of an inversion."""
    path = path or inversion.published_path or publish_path(inversion)
    asdf = next((f for f in inversion.files.all() if f.kind == L2File.Kind.METADATA), None)
    return {
        "inversionId": inversion.inversion_id,
        "primaryProposalId": inversion.program.primary_proposal_id,
        "instrumentProgramExecutionId": inversion.program.instrument_program_execution_id,
        "bucket": inversion.bucket,
        "asdfObjectKey": inversion.asdf_object_key or (object_key(inversion, path, asdf.filename) if asdf else None),
        "datasetIds": list(inversion.dataset_ids),
        "spectralLines": list(inversion.spectral_lines),
    }


def publish_plan(program: ObservingProgram) -> PublishPlan:
    """What would be published now, with the reasons it cannot be (``problems``)."""
    inversion = current_inversion(program)
    if inversion is None:
        raise Refused(f"{program} has no accepted inversion results")
    files = list(inversion.files.all())
    path = publish_path(inversion)
    plan = PublishPlan(inversion, files, sum(f.size for f in files), settings.L2_PUBLISH_COLLECTION, path,
                       store_record(inversion, path))
    if program.state != State.INVERTED:
        plan.problems.append(f"{program} is {program.get_state_display()}: only Inverted programs are published")
    generating = work_orders.active(program, GENERATE)
    if generating is not None:
        plan.problems.append(f"L2 files are being generated (order #{generating.pk})")
    if inversion.generated_at is None or not any(f.kind == L2File.Kind.FRAME for f in files):
        plan.problems.append("no L2 files have been generated yet")
    if not inversion.bucket:
        plan.problems.append("no bucket is known for the datasets used: the metadata store needs one")
    publishing = work_orders.active(program, PUBLISH)
    if publishing is not None:
        plan.problems.append(f"it is being published already (order #{publishing.pk})")
    return plan


def request_publish(program: ObservingProgram, *, actor: str, user=None, enqueue: bool = True) -> work_orders.Requested:
    """Queue the publication of the program's generated files (operators)."""
    plan = publish_plan(program)
    if not plan.ok:
        raise Refused("Cannot publish: " + "; ".join(plan.problems))
    checksums = {f.filename: f.sha256 for f in plan.files}
    requested = work_orders.request(
        program, PUBLISH, requested_by=actor, user=user, forced=True, input_checksums=checksums,
        details={"inversion_id": plan.inversion.inversion_id, "collection": plan.collection, "path": plan.path,
                 "submission_id": transfers.get_backend().new_submission_id(), "record": plan.record},
    )
    if requested.created and enqueue:
        from publishing.tasks import publish_l2

        order_id = requested.order.pk
        transaction.on_commit(lambda: publish_l2.delay(order_id))
    return requested


# ----------------------------------------------------------------------------- republish


def request_republish(program: ObservingProgram, *, actor: str, user=None, reason: str,
                      enqueue: bool = True) -> work_orders.Requested:
    """Regenerate and republish the program's published inversion after a fix (operators).

    Published → Inverted ("republish", with the reason) and a forced generate order starting
    from no files, in one transaction; once generated it is published again (whatever
    ``L2_AUTO_PUBLISH`` says: the operator asked for it). The inversion id and the object
    keys stay the same; the store's record is replaced (:func:`put_in_store`).
    """
    if program.state != State.PUBLISHED:
        raise Refused(f"{program} is {program.get_state_display()}: only a Published program is republished")
    if not (reason or "").strip():
        raise Refused("say what was fixed: a republish needs a reason")
    with transaction.atomic():
        inversion = published_inversion(program)
        if inversion is None:
            raise Refused(f"{program} has no published inversion")
        lifecycle.republish(program, user=user, actor=actor, reason=reason,
                            details={"inversion_id": inversion.inversion_id})
        now = timezone.now()
        inversion.selected_at, inversion.generated_at = now, None
        inversion.touch("selected_at", "generated_at")
        checksums = {f["name"]: f["sha256"] for f in inversion.result_files}
        checksums |= {"inversion": inversion.inversion_id, "l2": software_version(), "republish": now.isoformat()}
        requested = work_orders.request(program, GENERATE, requested_by=actor, user=user, forced=True,
                                        input_checksums=checksums,
                                        details={"inversion_id": inversion.inversion_id, "republish": True,
                                                 "fresh": True, "reason": reason.strip()})
        if requested.created and enqueue:
            from publishing.tasks import generate_l2

            order_id = requested.order.pk
            transaction.on_commit(lambda: generate_l2.delay(order_id))
    return requested


def continue_republish(order_id: int, *, enqueue: bool = True) -> work_orders.Requested | None:
    """After a republish's generation: publish (None when the order was no republish, or it cannot now)."""
    order = WorkOrder.objects.select_related("program").filter(pk=order_id, kind=GENERATE).first()
    if order is None or not order.details.get("republish") or order.status != WorkOrder.Status.COMPLETED:
        return None
    try:
        return request_publish(order.program, actor="worker", enqueue=enqueue)
    except Refused as refused:
        log.info("republish not carried on: %s", refused)
        return None


def put_in_store(client, record: dict, *, republish: bool, replacer=None) -> dict:
    """Record the inversion in the store: created when the store answers the key is new, replaced when it exists.

    The replacement is one request to ``METADATA_STORE_L2_DELETE_URL`` with the new record
    (the store swaps it in: the old record or the new one is there at every moment, never
    none; an endpoint that only removes is followed by a create, which narrows that to a
    moment). A first publication whose record is there already with the same fields (a lost
    answer, a redelivered task) keeps it.
    """
    if not republish:
        return client.create_l2_inversion_inventory(record)
    existing = client.l2_inversions(inversion_id=record["inversionId"])
    if not existing:
        return client.create_l2_inversion_inventory(record, idempotent=False)
    from publishing.reconcile import default_remover

    replacer = replacer or default_remover()
    if replacer is None:
        raise DoNotRetryError(f"the metadata store holds {record['inversionId']} already and "
                              "METADATA_STORE_L2_DELETE_URL is not set: its record cannot be replaced", step="publish")
    stored = replacer.replace(record)
    if stored is None:  # an endpoint that only removes: create it again at once
        log.warning("the store's endpoint removed %s without replacing it: creating it again", record["inversionId"])
        return client.create_l2_inversion_inventory(record)
    return stored


# ----------------------------------------------------------------------------- automation


def advance_inverted(program_ids: list[int] | None = None, *, actor: str = "worker") -> dict[str, list[int]]:
    """Carry Inverted programs on without an operator: generate, then publish (DESIGN §2, §9).

    For each Inverted program with accepted results (all of them, or ``program_ids``) and no
    generate or publish order running: with ``L2_AUTO_GENERATE``, ask for the generation of
    its files (nothing happens when these very results were generated already); once they
    are generated, with ``L2_AUTO_PUBLISH``, ask for their publication. Called by beat
    periodically and right after an intake or a generation finishes. Returns the program
    ids per request made: ``{"generate": […], "publish": […]}``.
    """
    done: dict[str, list[int]] = {"generate": [], "publish": []}
    programs = ObservingProgram.objects.filter(state=State.INVERTED).order_by("pk")
    if not (settings.L2_AUTO_GENERATE or settings.L2_AUTO_PUBLISH):  # republishes only (an operator asked)
        programs = programs.filter(inversions__status=Inversion.Status.PUBLISHED)
    if program_ids is not None:
        programs = programs.filter(pk__in=program_ids)
    busy = set(WorkOrder.objects.filter(program__in=programs, kind__in=[WorkOrder.Kind.INTAKE, GENERATE, PUBLISH],
                                        status__in=work_orders.ACTIVE).values_list("program_id", flat=True))
    for program in programs.exclude(pk__in=busy):
        inversion = current_inversion(program)
        if inversion is None:
            continue
        # a published inversion of an Inverted program is being republished: it goes on by itself
        republish = inversion.status == Inversion.Status.PUBLISHED
        try:
            with transaction.atomic():
                if inversion.generated_at is None:
                    if (settings.L2_AUTO_GENERATE or republish) and request_generate(
                            program, actor=actor, force=republish).created:
                        done["generate"].append(program.pk)
                elif (settings.L2_AUTO_PUBLISH or republish) and publish_plan(program).ok:
                    request_publish(program, actor=actor)
                    done["publish"].append(program.pk)
        except Refused as refused:  # moved meanwhile: the next round sees it as it is
            log.info("not carried on: %s", refused)
    return done


def backoff_delay(failures: int, *, base: float | None = None, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: in [cap/2, cap], cap = min(1 h, base · 2^(failures−1))."""
    base = settings.L2_PUBLISH_BACKOFF_SECONDS if base is None else base
    cap = min(BACKOFF_CAP_SECONDS, base * 2 ** max(failures - 1, 0))
    return cap / 2 + (rng or random).uniform(0, cap / 2)


def store_client(step: str = "publish"):
    from scanning.metadata_store import MetadataStoreClient

    return MetadataStoreClient(
        settings.METADATA_STORE_URL, settings.METADATA_STORE_TOKEN, timeout=(10.0, settings.METADATA_STORE_TIMEOUT),
        max_attempts=settings.METADATA_STORE_MAX_ATTEMPTS, backoff_base=settings.METADATA_STORE_BACKOFF_SECONDS,
        deadline=settings.METADATA_STORE_DEADLINE_SECONDS, step=step,
    )


def _transfer(order: WorkOrder, inversion: Inversion, backend) -> Result | None:
    """Copy the files to the publish collection; None once they are there."""
    if order.details.get("transferred_at"):
        return None
    files = list(inversion.files.all())
    source, destination = l2_folder(inversion), order.details["path"]
    task_id = order.details.get("transfer_task_id")
    if not task_id:
        items = [transfers.TransferItem(source + f.filename, destination + f.filename) for f in files]
        task_id = backend.submit(settings.L2_SCRATCH_COLLECTION, order.details["collection"], items,
                                 label=f"L2 publish {inversion.inversion_id}", submission_id=order.details["submission_id"])
        work_orders.merge_details(order.pk, transfer_task_id=task_id)
        order.details["transfer_task_id"] = task_id
    status = backend.status(task_id)
    work_orders.set_progress(order.pk, files_done=status.files + status.files_skipped, files_total=len(files),
                             bytes=status.bytes)
    if not status.done:
        return Result(Outcome.WAITING, poll_delay(backend))
    if not status.ok:
        raise DoNotRetryError(f"transferring the L2 files to {order.details['collection']}:{destination} failed: "
                              f"{status.error or 'transfer failed'}", step="publish")
    now = timezone.now()
    with transaction.atomic():
        for f in files:
            f.object_key = object_key(inversion, destination, f.filename)
        L2File.objects.bulk_update(files, ["object_key"])
        inversion.published_collection = order.details["collection"]
        inversion.published_path = destination
        inversion.published_at = now
        inversion.touch("published_collection", "published_path", "published_at")
        work_orders.merge_details(order.pk, transferred_at=now.isoformat())
        work_orders.advance(order.pk, "transfer", "notify")
    order.details["transferred_at"] = now.isoformat()
    return None


def run_publish(order_id: int, *, backend=None, client=None, poll: bool = False) -> Result:
    """Transfer, then notify the metadata store, then Published. See the module doc."""
    order = (WorkOrder.objects.filter(pk=order_id, status__in=work_orders.ACTIVE).first() if poll
             else work_orders.start(order_id, "transfer"))
    if order is None:
        return Result(Outcome.NOTHING)
    if order.details.get("transferred_at"):
        work_orders.advance(order.pk, "transfer", "notify")
    inversion = Inversion.objects.select_related("program").get(inversion_id=order.details["inversion_id"])
    program = inversion.program
    if program.state != State.INVERTED:
        work_orders.fail(order, step=order.step or "transfer",
                         error=f"{program} is {program.get_state_display()} now, not Inverted: not published")
        return Result(Outcome.NOTHING)
    stage = "transfer"
    try:
        waiting = _transfer(order, inversion, backend or transfers.get_backend())
        if waiting is not None:
            return waiting
        stage = "notify"
        record = store_record(inversion, order.details["path"])
        own_client = client is None
        client = client or store_client()
        republish = inversion.status == Inversion.Status.PUBLISHED
        try:
            answer = put_in_store(client, record, republish=republish)
        finally:
            if own_client:
                client.close()
    except BackoffRetryError as exc:
        if stage != "notify":
            raise
        return _store_unavailable(order, program, exc)
    except (RetryError,):
        raise
    except L2Error as exc:
        reason = (f"the metadata store refused the inversion: {exc.message}" if stage == "notify"
                  else f"publishing failed: {exc.message}")
        fail_program(order, program, "publish", stage, reason, exc.details)
        return Result(Outcome.FAILED, message=reason)

    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=program.pk)
        if WorkOrder.objects.select_for_update().get(pk=order.pk).status not in work_orders.ACTIVE:
            return Result(Outcome.NOTHING)
        now = timezone.now()
        conversation_id = str(uuid.uuid4())
        previous = published_inversion(locked)
        supersedes = previous.inversion_id if previous is not None and previous.pk != inversion.pk else None
        if supersedes:
            inversion_status.change(previous, Inversion.Status.SUPERSEDED, actor="worker",
                                    reason=f"superseded by {inversion.inversion_id}",
                                    details={"by": inversion.inversion_id, "order": order.pk},
                                    fields={"superseded_by": inversion})
        inversion.refresh_from_db()
        inversion_status.change(
            inversion, Inversion.Status.PUBLISHED, actor="worker", reason="republished" if republish else "published",
            details={"order": order.pk, "conversationId": conversation_id, "supersedes": supersedes},
            fields={"store_recorded_at": now, "store_record": answer,
                    "asdf_object_key": record.get("asdfObjectKey") or "",
                    "publications": inversion.publications + 1,
                    **({"republished_at": now} if republish else {})})
        files = list(inversion.files.all())
        # the frame catalog is told of every file, through the outbox: sent only if this commits
        events.add_isb_messages(catalog.publication_messages(
            bucket=inversion.bucket, inversion_id=inversion.inversion_id, conversation_id=conversation_id,
            frame_keys=[f.object_key for f in sorted(files, key=lambda f: f.step or 0) if f.kind == L2File.Kind.FRAME],
            asdf_key=inversion.asdf_object_key))
        lifecycle.transition(
            locked, State.PUBLISHED, actor="worker", reason="republished" if republish else "published",
            details={"inversion_id": inversion.inversion_id, "collection": inversion.published_collection,
                     "path": inversion.published_path, "files": len(files),
                     "asdfObjectKey": inversion.asdf_object_key, "order": order.pk,
                     "conversationId": conversation_id, "republish": republish, "supersedes": supersedes},
            expected_from=(State.INVERTED,),
        )
        work_orders.complete(order, details={"store_record": answer, "conversationId": conversation_id})
    return Result(Outcome.DONE)


def _store_unavailable(order: WorkOrder, program: ObservingProgram, exc: BackoffRetryError) -> Result:
    failures = int(order.details.get("notify_failures", 0)) + 1
    if failures >= settings.L2_PUBLISH_MAX_TRIES:
        reason = f"the metadata store stayed unavailable ({failures} tries): {exc.message}"
        work_orders.merge_details(order.pk, notify_failures=failures)
        fail_program(order, program, "publish", "notify", reason, exc.details)
        return Result(Outcome.FAILED, message=reason)
    delay = backoff_delay(failures)
    delays = list(order.details.get("notify_backoff", [])) + [round(delay, 3)]
    work_orders.merge_details(order.pk, notify_failures=failures, notify_backoff=delays, last_store_error=exc.message)
    log.warning("publishing %s: metadata store unavailable (try %d of %d), again in %.1f s: %s",
                order.details.get("inversion_id"), failures, settings.L2_PUBLISH_MAX_TRIES, delay, exc.message)
    return Result(Outcome.RETRY, delay, exc.message)
