"""A scan of the metadata store (DESIGN §5): fetch, parse, upsert, settle, qualify.

One scan at a time: a PostgreSQL advisory lock (session level, held for the whole run) makes
a second scan wait for the first, so two scans never insert the same dataset twice. Each
page is upserted in one transaction with a bounded number of statements (cost grows with
pages, not with records), so a scan that fails half-way keeps what it stored. A record that
cannot be parsed is stored on the scan as a ScanRecordError with its raw JSON and skipped.

An unchanged store costs no writes but the scan row's: records are compared by the SHA-1 of
their canonical JSON, and only programs whose datasets changed are touched.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from inversions import lifecycle
from inversions.bulk import bulk_update_values
from inversions.errors import L2Error
from inversions.models import Dataset, ObservingProgram
from inversions.states import State
from scanning import qualification, settling
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan, ScanRecordError
from scanning.records import DatasetRecord, RecordError, lines_of, mark_superseded, parse_record

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x4C32_5343  # "L2SC"
QUALIFY_BATCH = 1000
ACTOR = "scan"


# --- Plain helpers ----------------------------------------------------------------------
def raw_hash(raw: Any) -> str:
    return hashlib.sha1(json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def thresholds() -> qualification.Thresholds:
    return qualification.Thresholds(
        health_min=settings.L2_HEALTH_MIN,
        ao_min=settings.L2_AO_MIN,
        fried_amber=settings.L2_FRIED_AMBER,
        fried_red=settings.L2_FRIED_RED,
        line_tolerance_nm=settings.L2_LINE_TOLERANCE_NM,
    )


def client() -> MetadataStoreClient:
    return MetadataStoreClient(
        settings.METADATA_STORE_URL,
        settings.METADATA_STORE_TOKEN,
        timeout=(10.0, settings.METADATA_STORE_TIMEOUT),
        max_attempts=settings.METADATA_STORE_MAX_ATTEMPTS,
        backoff_base=settings.METADATA_STORE_BACKOFF_SECONDS,
        step="scan",
    )


def dataset_fields(rec: DatasetRecord, digest: str) -> dict:
    """The Dataset columns of a parsed record."""
    box = rec.bounding_box
    return dict(
        dataset_id=rec.dataset_id,
        product_id=rec.product_id,
        primary_proposal_id=rec.primary_proposal_id,
        primary_experiment_id=rec.primary_experiment_id or "",
        observing_program_execution_id=rec.observing_program_execution_id or "",
        instrument_program_execution_id=rec.instrument_program_execution_id,
        instrument_name=rec.instrument_name,
        create_date=rec.create_date,
        update_date=rec.update_date,
        start_time=rec.start_time,
        end_time=rec.end_time,
        wavelength_min=rec.wavelength_min,
        wavelength_max=rec.wavelength_max,
        stokes_parameters=rec.stokes_parameters or "",
        spectral_lines=list(lines_of(rec)),
        bounding_box=[list(box[0]), list(box[1])] if box else None,
        frame_count=rec.frame_count,
        health=rec.health,
        gos_status=rec.gos_status,
        ao_locked=rec.ao_locked,
        light_level=rec.light_level,
        fried_parameter=rec.fried_parameter,
        exposure_time=rec.exposure_time,
        bucket=rec.bucket or "",
        browse_movie_url=rec.browse_movie_url or "",
        is_embargoed=rec.is_embargoed,
        embargo_end_date=rec.embargo_end_date,
        experiment_description=rec.experiment_description or "",
        raw=rec.raw,
        raw_hash=digest,
    )


DATASET_UPDATE_FIELDS = [
    "product_id", "primary_proposal_id", "primary_experiment_id", "observing_program_execution_id",
    "instrument_program_execution_id", "instrument_name", "create_date", "update_date", "start_time", "end_time",
    "wavelength_min", "wavelength_max", "stokes_parameters", "spectral_lines", "bounding_box", "frame_count",
    "health", "gos_status", "ao_locked", "light_level", "fried_parameter", "exposure_time", "bucket",
    "browse_movie_url", "is_embargoed", "embargo_end_date", "experiment_description", "raw", "raw_hash",
    "program", "changed_at",
]


@dataclass
class PageResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: int = 0
    programs_new: int = 0
    changed_programs: set[int] = field(default_factory=set)  # existing programs whose datasets changed
    touched_programs: set[int] = field(default_factory=set)  # every program with a new/updated dataset
    newest_update: datetime | None = None


# --- The scan -----------------------------------------------------------------------------
def start_scan(*, full: bool = False, triggered_by: str = "operator") -> Scan:
    """Record a scan and hand it to a worker; the page polls the row for progress."""
    from scanning.tasks import scan_metadata_store

    scan = Scan.objects.create(full=full, triggered_by=triggered_by)
    transaction.on_commit(lambda: scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}))
    return scan


def run_scan(scan: Scan | None = None, *, full: bool = False, triggered_by: str = "beat", store: MetadataStoreClient | None = None, now: datetime | None = None) -> Scan:
    """Run one scan to the end and return its row (status succeeded or failed, never raising for the store)."""
    scan = scan or Scan.objects.create(full=full, triggered_by=triggered_by)
    store = store or client()
    with advisory_lock():
        try:
            _scan(scan, store, now)
            scan.status = Scan.Status.SUCCEEDED
        except L2Error as exc:
            log.warning("scan #%s failed: %s", scan.pk, exc)
            scan.status = Scan.Status.FAILED
            scan.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # recorded, then raised for the worker's log
            scan.status, scan.error = Scan.Status.FAILED, f"{type(exc).__name__}: {exc}"
            scan.finished_at = timezone.now()
            scan.save()
            raise
        finally:
            store.close()
        scan.finished_at = timezone.now()
        scan.save()
    return scan


class advisory_lock:
    """Session-level advisory lock on the default connection: the second scan waits."""

    def __enter__(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])


def _since(scan: Scan) -> datetime | None:
    if scan.full:
        return None
    last = (
        Scan.objects.filter(status=Scan.Status.SUCCEEDED, newest_update_date__isnull=False)
        .exclude(pk=scan.pk)
        .order_by("-started_at")
        .values_list("newest_update_date", flat=True)
        .first()
    )
    return last - timedelta(minutes=settings.SCAN_OVERLAP_MINUTES) if last else None


def _scan(scan: Scan, store: MetadataStoreClient, now: datetime | None) -> None:
    scan.update_date_min = _since(scan)
    scan.save(update_fields=["update_date_min"])
    descriptions = store.experiment_descriptions()
    changed: set[int] = set()
    touched: set[int] = set()
    newest = None
    for page in store.iter_dataset_inventory_pages(settings.SCAN_PAGE_SIZE, update_date_min=scan.update_date_min):
        result = upsert_page(scan, page, descriptions)
        changed |= result.changed_programs
        touched |= result.touched_programs
        if result.newest_update and (newest is None or result.newest_update > newest):
            newest = result.newest_update
        scan.pages += 1
        scan.records += len(page)
        scan.new += result.new
        scan.updated += result.updated
        scan.unchanged += result.unchanged
        scan.errors += result.errors
        scan.programs_new += result.programs_new
        # progress for the scans page: the scan row is the only row an unchanged store writes
        Scan.objects.filter(pk=scan.pk).update(
            pages=scan.pages, records=scan.records, new=scan.new, updated=scan.updated,
            unchanged=scan.unchanged, errors=scan.errors, programs_new=scan.programs_new,
        )
    previous = _previous_newest(scan)
    scan.newest_update_date = max(filter(None, [newest, previous]), default=None)
    if touched:
        summarise_programs(touched, descriptions)
    if changed:
        lifecycle.datasets_changed(sorted(changed), actor=ACTOR)
    scan.programs_qualified = qualify_settled(now=now)


def _previous_newest(scan: Scan) -> datetime | None:
    return (
        Scan.objects.filter(status=Scan.Status.SUCCEEDED).exclude(pk=scan.pk).order_by("-started_at")
        .values_list("newest_update_date", flat=True).first()
    )


def upsert_page(scan: Scan, page: list, descriptions: dict[str, str]) -> PageResult:
    """Parse and upsert one page in one transaction; a fixed number of statements per page."""
    result = PageResult()
    parsed: dict[str, tuple[DatasetRecord, str]] = {}
    errors: list[ScanRecordError] = []
    for raw in page:
        try:
            rec = parse_record(raw)
        except RecordError as exc:
            errors.append(_record_error(scan, raw, exc.reason, exc.field))
            continue
        if rec.dataset_id in parsed:
            kept, _ = parsed[rec.dataset_id]
            errors.append(
                _record_error(scan, raw, "duplicate datasetId in this answer; the record with the newest updateDate is kept", "datasetId")
            )
            if rec.update_date <= kept.update_date:
                continue
        parsed[rec.dataset_id] = (rec, raw_hash(raw))
        if result.newest_update is None or rec.update_date > result.newest_update:
            result.newest_update = rec.update_date
    result.errors = len(errors)

    with transaction.atomic():
        if errors:
            ScanRecordError.objects.bulk_create(errors)
        existing = {
            row["dataset_id"]: row
            for row in Dataset.objects.filter(dataset_id__in=list(parsed)).values("id", "dataset_id", "raw_hash", "program_id")
        }
        incoming = [(rec, digest) for rec, digest in parsed.values() if existing.get(rec.dataset_id, {}).get("raw_hash") != digest]
        result.unchanged = len(parsed) - len(incoming)
        if not incoming:
            return result
        programs = _programs_for(incoming, descriptions, result)
        now = timezone.now()
        new_rows, updated_rows = [], []
        for rec, digest in incoming:
            program = programs[rec.instrument_program_execution_id]
            fields = dataset_fields(rec, digest)
            if rec.experiment_description is None:
                fields["experiment_description"] = descriptions.get(rec.primary_experiment_id or "", "")
            old = existing.get(rec.dataset_id)
            if old is None:
                new_rows.append(Dataset(program=program, first_seen_at=now, changed_at=now, **fields))
            else:
                updated_rows.append(Dataset(pk=old["id"], program=program, changed_at=now, **fields))
                if old["program_id"] != program.pk:
                    result.changed_programs.add(old["program_id"])
                    result.touched_programs.add(old["program_id"])
            if not program._l2_created:
                result.changed_programs.add(program.pk)
            result.touched_programs.add(program.pk)
        Dataset.objects.bulk_create(new_rows, batch_size=1000)
        bulk_update_values(updated_rows, DATASET_UPDATE_FIELDS, batch_size=500)
        result.new, result.updated = len(new_rows), len(updated_rows)
    return result


def _record_error(scan: Scan, raw: Any, reason: str, field_name: str | None) -> ScanRecordError:
    dataset_id = raw.get("datasetId") if isinstance(raw, dict) else None
    try:
        json.dumps(raw)
        stored = raw
    except (TypeError, ValueError):
        stored = {"unserialisable": repr(raw)[:2000]}
    return ScanRecordError(
        scan=scan, dataset_id=str(dataset_id)[:200] if dataset_id is not None else "", field=(field_name or "")[:100],
        reason=reason, raw=stored,
    )


def _programs_for(incoming, descriptions: dict[str, str], result: PageResult) -> dict[str, ObservingProgram]:
    """The programs of these records by instrumentProgramExecutionId, creating the missing ones (Discovered)."""
    ipeids = {rec.instrument_program_execution_id for rec, _ in incoming}
    programs = {p.instrument_program_execution_id: p for p in ObservingProgram.objects.filter(instrument_program_execution_id__in=ipeids)}
    for p in programs.values():
        p._l2_created = False
    missing = []
    for rec, _ in incoming:
        ipeid = rec.instrument_program_execution_id
        if ipeid in programs:
            continue
        program = ObservingProgram(
            instrument_program_execution_id=ipeid,
            observing_program_execution_id=rec.observing_program_execution_id or "",
            primary_proposal_id=rec.primary_proposal_id,
            primary_experiment_id=rec.primary_experiment_id or "",
            instrument_name=rec.instrument_name,
            experiment_description=rec.experiment_description or descriptions.get(rec.primary_experiment_id or "", ""),
        )
        program._l2_created = True
        programs[ipeid] = program
        missing.append(program)
    if missing:
        lifecycle.create_programs(missing, actor=ACTOR)
        result.programs_new = len(missing)
    return programs


# --- Program summaries, supersession, settling --------------------------------------------
SUMMARY_FIELDS = [
    "spectral_lines", "start_time", "end_time", "newest_create_date", "settles_at", "dataset_count",
    "instrument_name", "observing_program_execution_id", "primary_proposal_id", "primary_experiment_id",
    "experiment_description", "updated_at",
]


def summarise_programs(program_ids: Iterable[int], descriptions: dict[str, str]) -> None:
    """Recompute supersession and the programs' summaries from their datasets."""
    ids = sorted(program_ids)
    for start in range(0, len(ids), QUALIFY_BATCH):
        batch = ids[start : start + QUALIFY_BATCH]
        with transaction.atomic():
            rows = list(
                Dataset.objects.filter(program_id__in=batch).values(
                    "id", "dataset_id", "product_id", "program_id", "create_date", "update_date", "start_time",
                    "end_time", "spectral_lines", "superseded", "instrument_name", "observing_program_execution_id",
                    "primary_proposal_id", "primary_experiment_id", "experiment_description",
                )
            )
            by_program: dict[int, list[dict]] = defaultdict(list)
            for row in rows:
                by_program[row["program_id"]].append(row)
            now = timezone.now()
            flips: dict[bool, list[int]] = {True: [], False: []}
            programs = []
            for pid in batch:
                datasets = by_program.get(pid, [])
                superseded = _superseded(datasets)
                for d in datasets:
                    if (d["dataset_id"] in superseded) != d["superseded"]:
                        flips[d["dataset_id"] in superseded].append(d["id"])
                current = [d for d in datasets if d["dataset_id"] not in superseded]
                programs.append(_summary(pid, current, descriptions, now))
            for value, dataset_ids in flips.items():
                if dataset_ids:
                    Dataset.objects.filter(pk__in=dataset_ids).update(superseded=value)
            bulk_update_values(programs, SUMMARY_FIELDS)


def _superseded(datasets: list[dict]) -> set[str]:
    """Per product (productId, or the datasetId where the store gives none) the newest createDate is current."""
    newest: dict[str, dict] = {}
    for d in datasets:
        key = d["product_id"] or d["dataset_id"]
        best = newest.get(key)
        if best is None or (d["create_date"], d["update_date"], d["dataset_id"]) > (best["create_date"], best["update_date"], best["dataset_id"]):
            newest[key] = d
    keep = {d["dataset_id"] for d in newest.values()}
    return {d["dataset_id"] for d in datasets} - keep


def _summary(pid: int, current: list[dict], descriptions: dict[str, str], now: datetime) -> ObservingProgram:
    newest = max((d["create_date"] for d in current), default=None)
    first = current[0] if current else {}
    experiment = first.get("primary_experiment_id") or ""
    return ObservingProgram(
        pk=pid,
        spectral_lines=sorted({line for d in current for line in (d["spectral_lines"] or [])}),
        start_time=min((d["start_time"] for d in current if d["start_time"]), default=None),
        end_time=max((d["end_time"] for d in current if d["end_time"]), default=None),
        newest_create_date=newest,
        settles_at=settling.settles_at(newest, settings.L2_SETTLE_DAYS) if newest else None,
        dataset_count=len(current),
        instrument_name=first.get("instrument_name", ""),
        observing_program_execution_id=first.get("observing_program_execution_id", ""),
        primary_proposal_id=first.get("primary_proposal_id", ""),
        primary_experiment_id=experiment,
        experiment_description=first.get("experiment_description") or descriptions.get(experiment, ""),
        updated_at=now,
    )


# --- Qualification --------------------------------------------------------------------------
def qualify_settled(*, now: datetime | None = None) -> int:
    """Qualify every settled Discovered program; return how many moved."""
    now = now or timezone.now()
    ids = list(
        ObservingProgram.objects.filter(state=State.DISCOVERED, settles_at__lte=now, dataset_count__gt=0)
        .order_by("pk").values_list("pk", flat=True)
    )
    t = thresholds()
    moved = 0
    for start in range(0, len(ids), QUALIFY_BATCH):
        batch = ids[start : start + QUALIFY_BATCH]
        records: dict[int, list[DatasetRecord]] = defaultdict(list)
        for pid, raw in Dataset.objects.filter(program_id__in=batch, superseded=False).values_list("program_id", "raw"):
            records[pid].append(parse_record(raw))  # stored rows parsed once already
        changes = []
        for pid in batch:
            report = qualification.qualify(records[pid], t)
            data = report.to_dict()
            state = State.INVERTIBLE if report.invertible else State.NOT_INVERTIBLE
            reason = report.reason
            changes.append(lifecycle.Change(pid, state, reason=reason, details=data, expected_from=(State.DISCOVERED,)))
        try:
            lifecycle.apply(changes, actor=ACTOR)
            moved += len(changes)
        except lifecycle.StateChanged:
            # someone moved one of them meanwhile: take them one by one
            for change in changes:
                try:
                    lifecycle.apply([change], actor=ACTOR)
                    moved += 1
                except lifecycle.LifecycleError as exc:
                    log.info("not qualified: %s", exc)
    return moved
