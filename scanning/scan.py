"""A scan of the metadata store (DESIGN §5): fetch, parse, upsert, settle, qualify.

One scan at a time: a PostgreSQL advisory lock (session level, held for the whole run) makes
a second scan wait for the first, so two scans never insert the same dataset twice. A worker
also holds a lock of the scan's own while it runs (or waits for) it: a Running scan whose
lock nobody holds lost its worker and is marked failed ("worker lost") by
:func:`fail_lost_scans`, which the scans page, starting a scan and beat call. A redelivered
scan starts its counts again, so each record is counted once. Each
page is upserted in one transaction with a bounded number of statements (cost grows with
pages, not with records), so a scan that fails half-way keeps what it stored. A record that
cannot be identified is stored on the scan as a ScanRecordError with its raw JSON and skipped;
a stored dataset's values that could not be used (``DatasetRecord.warnings``: no data for
that field) are listed on the scan as ScanRecordWarnings. Every value is checked against its
column by the parser, and the raw JSON is kept as ``jsonb`` holds it (:func:`canonical_json`):
no value of a record can abort the write of its page.

An unchanged store costs no writes but the scan row's: records are compared by the SHA-1 of
their canonical JSON (an unchanged record is not even parsed), and only programs whose
datasets changed are touched.

Speed (DESIGN §13): the next pages are fetched, and in a first scan parsed and made into
rows, programs and reports, while this one is stored (:func:`read_ahead`);
new datasets, programs, history rows and events are written with ``COPY``
(:mod:`inversions.bulk`, through ``lifecycle.create_programs`` / ``lifecycle.apply``); a
new program is created with its summary, and a program found whole on one page is neither
read back nor summarised again, its qualification report computed from the records just
parsed (:class:`ScanMemory`). Everything else is read back with one query per batch.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import sys
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import DatabaseError, connection, models, transaction
from django.utils import timezone
from psycopg.types.datetime import TimestamptzLoader

from inversions import lifecycle
from inversions.bulk import copy_rows, update_rows
from inversions.errors import L2Error
from inversions.models import Dataset, ObservingProgram
from inversions.states import State
from scanning import qualification, settling
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan, ScanRecordError, ScanRecordWarning
from scanning.records import (
    MAX_LENGTH, DatasetRecord, RecordError, lines_of, parse_record, storable_json, storable_text, text_problem,
)

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x4C32_5343  # "L2SC"
SCAN_LOCK_CLASS = 0x5343  # "SC": pg_advisory_lock(SCAN_LOCK_CLASS, scan id) while a worker has the scan
WORKER_LOST = "worker lost: the process running the scan ended without finishing it"
QUALIFY_BATCH = 2000  # programs per transaction when qualifying or summarising
SWITCH_INTERVAL = 0.0005  # seconds: the GIL time slice while pages are read ahead (see read_ahead)
ACTOR = "scan"


# --- Plain helpers ----------------------------------------------------------------------
def raw_hash(raw: Any) -> str:
    """The SHA-1 of a record's canonical JSON (:func:`canonical_json`); any value, NaN included."""
    try:
        return canonical_json(raw)[1]
    except ValueError:
        return hashlib.sha1(json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def canonical_json(raw: Any, *, finite: bool = False) -> tuple[str, str]:
    """``(canonical JSON text, its SHA-1)``: the text is stored as the raw JSON, the digest is :func:`raw_hash`.

    The canonical form is orjson's with sorted keys (several times faster than the standard
    library's, which takes over for what orjson cannot write, such as integers beyond 64
    bits). PostgreSQL's ``jsonb`` holds no NaN / ±Infinity, no ``\\u0000`` and no lone
    surrogate: a record holding one is written as :func:`scanning.records.storable_json`
    makes it (those values as text), so it is kept, escaped, and compares equal next time.
    ``finite`` says the caller knows it holds no NaN / Infinity (a
    :class:`~scanning.metadata_store.RecordPage` parsed without such literals), otherwise it
    is checked.
    """
    return _canonical(raw, finite)[:2]


def _canonical(raw: Any, finite: bool) -> tuple[str, str, bool]:
    """:func:`canonical_json` and whether the record had to be made storable (escaped)."""
    try:
        data = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: beyond orjson (large integers, lone surrogates)
        data = None
    escaped = data is None or b"\\u0000" in data or not (finite or _is_finite(raw))
    if escaped:
        kept, _ = storable_json(raw)
        try:
            data = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            data = _canonical_text(kept).encode()
    return data.decode(), hashlib.sha1(data).hexdigest(), escaped


def _is_finite(raw: Any) -> bool:
    try:
        _check_finite(raw)
    except ValueError:
        return False
    return True


def _json_encoders() -> tuple[Callable[[Any], str], Callable[[Any], str], Callable[[Any], None]]:
    """The standard library's canonical form and a finiteness check, without building an encoder per call.

    ``json.dumps`` with arguments makes a JSONEncoder and a C encoder for every call. Here
    the C encoders are made once (without the circular-reference check: the values come
    from JSON, and the encoders are shared by threads).
    """
    from json import encoder

    if encoder.c_make_encoder is None:  # pragma: no cover - CPython has it
        canonical_text = functools.partial(
            json.dumps, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
        return canonical_text, lambda value: canonical_text(value) and None
    canonical = encoder.c_make_encoder(None, str, encoder.encode_basestring_ascii, None, ":", ",", True, False, False)
    unsorted = encoder.c_make_encoder(None, str, encoder.encode_basestring_ascii, None, ":", ",", False, False, False)

    def check_finite(value: Any) -> None:
        for _ in unsorted(value, 0):  # ValueError at the first NaN / Infinity
            pass
    return (lambda value: "".join(canonical(value, 0))), check_finite


def _json_text(value: Any) -> str:
    """JSON text of a parsed record's member (finite numbers only: the parser refused the others)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # beyond orjson (integers past 64 bits): the standard library's text
        return json.dumps(value)


_canonical_text, _check_finite = _json_encoders()


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
        deadline=settings.METADATA_STORE_DEADLINE_SECONDS,
        step="scan",
    )


def dataset_fields(rec: DatasetRecord, digest: str) -> dict:
    """The Dataset columns of a parsed record (optional strings the store did not give: "")."""
    box = rec.bounding_box
    return dict(
        dataset_id=rec.dataset_id,
        product_id=rec.product_id,
        primary_proposal_id=rec.primary_proposal_id or "",
        primary_experiment_id=rec.primary_experiment_id or "",
        observing_program_execution_id=rec.observing_program_execution_id or "",
        instrument_program_execution_id=rec.instrument_program_execution_id,
        instrument_name=rec.instrument_name or "",
        create_date=rec.create_date,
        update_date=rec.update_date,
        start_time=rec.start_time,
        end_time=rec.end_time,
        wavelength_min=rec.wavelength_min,
        wavelength_max=rec.wavelength_max,
        stokes_parameters=rec.stokes_parameters or "",
        spectral_lines=list(lines_of(rec)),
        lines_listed=bool(rec.spectral_lines),
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
        polarimetric_accuracy=rec.polarimetric_accuracy,
        quality_average_fried_parameter=rec.quality_average_fried_parameter,
        quality_average_polarimetric_accuracy=rec.quality_average_polarimetric_accuracy,
        quality_report_object_key=rec.quality_report_object_key or "",
        browse_movie_object_key=rec.browse_movie_object_key or "",
        asdf_object_key=rec.asdf_object_key or "",
        dataset_size=rec.dataset_size,
        has_all_stokes=rec.has_all_stokes,
        target_types=list(rec.target_types) if rec.target_types is not None else None,
        status=rec.status or "",
        field_warnings=[list(pair) for pair in rec.warnings] or None,
        raw=rec.raw,
        raw_hash=digest,
    )


DATASET_UPDATE_FIELDS = [
    "product_id", "primary_proposal_id", "primary_experiment_id", "observing_program_execution_id",
    "instrument_program_execution_id", "instrument_name", "create_date", "update_date", "start_time", "end_time",
    "wavelength_min", "wavelength_max", "stokes_parameters", "spectral_lines", "bounding_box", "frame_count",
    "health", "gos_status", "ao_locked", "light_level", "fried_parameter", "exposure_time", "bucket",
    "browse_movie_url", "is_embargoed", "embargo_end_date", "lines_listed", "polarimetric_accuracy",
    "quality_average_fried_parameter", "quality_average_polarimetric_accuracy", "quality_report_object_key",
    "browse_movie_object_key", "asdf_object_key", "dataset_size", "has_all_stokes", "target_types", "status",
    "field_warnings", "raw", "raw_hash", "program", "changed_at",
]


@dataclass
class PageResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: int = 0
    warnings: int = 0
    programs_new: int = 0
    changed_programs: set[int] = field(default_factory=set)  # existing programs whose datasets changed
    touched_programs: set[int] = field(default_factory=set)  # every program with a new/updated dataset
    newest_update: datetime | None = None


class ScanMemory:
    """What one scan knows about the programs it created, so that it need not read them back.

    A program created on a page and not touched by a later page has exactly the datasets of
    that page: its summary (written at creation) is final when it does not depend on the
    order of datasets with the same wavelength, and its qualification report can be
    computed there and then, from the records just parsed. Such programs are ``complete``;
    their reports (small JSON texts, at most :attr:`max_reports`) are used by
    :func:`qualify_settled` instead of reading their datasets back.
    """

    max_reports = 50_000

    def __init__(self) -> None:
        self.complete: set[int] = set()
        self.reports: dict[int, tuple[str, str, str]] = {}  # program id -> (state, reason, details JSON)

    def created(self, program_id: int, *, exact_summary: bool, report: tuple[str, str, str] | None) -> None:
        """``report``: ``(state, reason, details as JSON text)`` (a text is ~5 times smaller than the dict)."""
        if exact_summary:
            self.complete.add(program_id)
        if report is not None and len(self.reports) < self.max_reports:
            self.reports[program_id] = report

    def touched_again(self, program_id: int) -> None:
        self.complete.discard(program_id)
        self.reports.pop(program_id, None)


# --- The scan -----------------------------------------------------------------------------
def start_scan(*, full: bool = False, triggered_by: str = "operator") -> Scan:
    """Record a scan and hand it to a worker; the page polls the row for progress."""
    from scanning.tasks import scan_metadata_store

    scan = Scan.objects.create(full=full, triggered_by=triggered_by)

    def enqueue():
        try:
            scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}, retry=False)
        except Exception as exc:  # the broker is down: the scan did not start, say so on its row
            Scan.objects.filter(pk=scan.pk).update(
                status=Scan.Status.FAILED, finished_at=timezone.now(), error=f"could not be queued: {type(exc).__name__}: {exc}"
            )
            raise

    transaction.on_commit(enqueue)
    return scan


def run_scan(scan: Scan | None = None, *, full: bool = False, triggered_by: str = "beat", store: MetadataStoreClient | None = None, now: datetime | None = None) -> Scan:
    """Run one scan to the end and return its row (status succeeded or failed, never raising for the store).

    A scan no longer Running (finished, or failed as lost meanwhile), or one another worker
    holds, is returned as it is, without running.
    """
    scan = scan or Scan.objects.create(full=full, triggered_by=triggered_by)
    with scan_lock(scan.pk) as ours:
        if not ours or not _take(scan):
            scan.refresh_from_db()
            if store is not None:
                store.close()
            return scan
        _run(scan, store or client(), now)
    return scan


def _take(scan: Scan) -> bool:
    """This worker has the scan: its counts start again (a redelivered scan counts each record
    once) and the bad records of an earlier attempt go (they are met again). The warnings of
    the datasets an earlier attempt stored stay (those records are unchanged now, so they are
    not warned about again). False if it is no longer Running."""
    zero = dict(pages=0, records=0, new=0, updated=0, unchanged=0, errors=0, programs_new=0, programs_qualified=0)
    kept = ScanRecordWarning.objects.filter(scan_id=scan.pk).count()
    taken = Scan.objects.filter(pk=scan.pk, status=Scan.Status.RUNNING).update(
        locked_at=timezone.now(), warnings=kept, **zero)
    if not taken:
        return False
    ScanRecordError.objects.filter(scan_id=scan.pk).delete()
    scan.refresh_from_db()
    return True


def _run(scan: Scan, store: MetadataStoreClient, now: datetime | None) -> None:
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


class scan_lock:
    """Session-level advisory lock on the scan itself, held while a worker runs or waits for it
    (PostgreSQL releases it when the worker's connection ends: killed, too). Yields False when
    another session holds it."""

    def __init__(self, scan_id: int):
        self.scan_id, self.held = scan_id, False

    def __enter__(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [SCAN_LOCK_CLASS, self.scan_id])
            self.held = cursor.fetchone()[0]
        return self.held

    def __exit__(self, *exc):
        if self.held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [SCAN_LOCK_CLASS, self.scan_id])
            except DatabaseError:  # the connection is gone: so is the lock
                pass


def fail_lost_scans(*, exclude: int | None = None) -> int:
    """Mark failed every Running scan a worker took whose lock nobody holds now (its worker
    died), but ``exclude`` (the scan a redelivered message is about to run again); returns
    how many. One UPDATE: cheap enough for every look at the scans."""
    table = Scan._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, finished_at = now(), error = %s "
            f"WHERE status = %s AND locked_at IS NOT NULL AND NOT EXISTS ("
            f"SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
            f"AND l.objid = {table}.id AND l.objsubid = 2 "
            f"AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) AND id <> %s",
            [Scan.Status.FAILED, WORKER_LOST, Scan.Status.RUNNING, SCAN_LOCK_CLASS, exclude or 0],
        )
        lost = cursor.rowcount
    if lost:
        log.warning("%d scan(s) marked failed: %s", lost, WORKER_LOST)
    return lost


class advisory_lock:
    """Session-level advisory lock on the default connection: the second scan waits."""

    def __enter__(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])


def _last_watermark(scan: Scan) -> datetime | None:
    """The newest updateDate any earlier successful scan saw (the incremental scans' watermark)."""
    return (
        Scan.objects.filter(status=Scan.Status.SUCCEEDED, newest_update_date__isnull=False)
        .exclude(pk=scan.pk)
        .order_by("-started_at")
        .values_list("newest_update_date", flat=True)
        .first()
    )


def _since(scan: Scan, last: datetime | None) -> datetime | None:
    if scan.full:
        return None
    return last - timedelta(minutes=settings.SCAN_OVERLAP_MINUTES) if last else None


def _scan(scan: Scan, store: MetadataStoreClient, now: datetime | None) -> None:
    previous = _last_watermark(scan)  # no other scan runs meanwhile (advisory lock)
    scan.update_date_min = _since(scan, previous)
    scan.save(update_fields=["update_date_min"])
    descriptions = _storable_descriptions(store.experiment_descriptions())
    changed: set[int] = set()
    touched: set[int] = set()
    newest = None
    memory = ScanMemory()
    pages = store.iter_dataset_inventory_pages(settings.SCAN_PAGE_SIZE, update_date_min=scan.update_date_min)
    # Records are parsed ahead, in the read-ahead thread, while the pages bring mostly new or
    # changed records (from the start in a first scan); in a rescan, where most records are
    # unchanged, they are not (an unchanged record is not parsed at all).
    parse_ahead = previous is None

    def prepare(page: list) -> PreparedPage:
        return prepare_page(page, descriptions if parse_ahead else None)

    for prepared in read_ahead(pages, prepare=prepare):
        page = prepared.page
        with transaction.atomic():  # the page and the scan's progress: one commit
            result = upsert_page(scan, page, descriptions, memory, prepared)
            _count_page(scan, page, result)
        parse_ahead = 2 * (result.new + result.updated + result.errors) >= len(page)
        changed |= result.changed_programs
        touched |= result.touched_programs
        if result.newest_update and (newest is None or result.newest_update > newest):
            newest = result.newest_update
    scan.newest_update_date = max(filter(None, [newest, previous]), default=None)
    if touched - memory.complete:
        summarise_programs(touched - memory.complete, descriptions)
    if changed:
        lifecycle.datasets_changed(sorted(changed), actor=ACTOR)
    scan.programs_qualified = qualify_settled(now=now, reports=memory.reports)


def _storable_descriptions(descriptions: dict) -> dict[str, str]:
    """The experiment descriptions a program can carry (text the database holds); the others are left out."""
    return {key: value for key, value in descriptions.items()
            if isinstance(value, str) and text_problem(value) is None and text_problem(key) is None}


def _count_page(scan: Scan, page: list, result: PageResult) -> None:
    scan.pages += 1
    scan.records += len(page)
    scan.new += result.new
    scan.updated += result.updated
    scan.unchanged += result.unchanged
    scan.errors += result.errors
    scan.warnings += result.warnings
    scan.programs_new += result.programs_new
    # progress for the scans page: the scan row is the only row an unchanged store writes
    Scan.objects.filter(pk=scan.pk).update(
        pages=scan.pages, records=scan.records, new=scan.new, updated=scan.updated,
        unchanged=scan.unchanged, errors=scan.errors, warnings=scan.warnings, programs_new=scan.programs_new,
    )


def read_ahead(pages: Iterator[list], prepare: Callable[[list], Any] | None = None) -> Iterator[Any]:
    """The same pages in the same order, fetched (in a thread) while the ones before are stored.

    Requests are sent in the same order as without read-ahead, one at a time, at most two
    pages ahead of the one being stored; a failure to fetch page n+1 is raised when page n+1
    is asked for, after page n was stored. With ``prepare``, ``prepare(page)`` is yielded,
    computed in a second thread as soon as the page has come (work that needs no database):
    page n+1 is prepared while page n+2 is on its way and page n is stored.
    """
    # The storing thread waits on the database most of the time; when an answer comes it
    # needs the GIL back at once, not after the preparing thread's 5 ms time slice (with
    # ~10 statements a page that wait was a tenth of a full scan). Restored at the end.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
    fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-read-ahead")
    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-prepare") if prepare else None

    def prepared(fetched: Future) -> Any:
        page = fetched.result()
        return page if page is None else prepare(page)

    def ask() -> Future:
        fetched = fetcher.submit(next, pages, None)
        return preparer.submit(prepared, fetched) if preparer is not None else fetched

    try:
        pending = deque([ask(), ask()])
        while True:
            page = pending.popleft().result()
            if page is None:
                return
            pending.append(ask())
            yield page
    finally:
        for pool in (fetcher, preparer):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        sys.setswitchinterval(switch)


@functools.cache
def _dataset_columns() -> tuple[list[models.Field], frozenset[str]]:
    """Dataset's columns but the id, and the names of its JSON columns."""
    fields = [f for f in Dataset._meta.concrete_fields if not f.primary_key]
    return fields, frozenset(f.attname for f in fields if isinstance(f, models.JSONField))


def _db_values(values: dict, names: Sequence[str], json_names: frozenset[str], raw_text: str) -> list:
    """Database values (JSON columns as JSON text; ``raw`` as the canonical text) in ``names`` order."""
    out = [values[name] for name in names]
    for i in _json_positions(tuple(names), json_names):
        if out[i] is not None:
            out[i] = _json_text(out[i])
    if "raw" in values:
        out[_position(tuple(names), "raw")] = raw_text
    return out


@functools.cache
def _json_positions(names: tuple[str, ...], json_names: frozenset[str]) -> tuple[int, ...]:
    return tuple(i for i, name in enumerate(names) if name in json_names and name != "raw")


@functools.cache
def _position(names: tuple[str, ...], name: str) -> int:
    return names.index(name)




@contextlib.contextmanager
def reading_cursor() -> Iterator[Any]:
    """A cursor of the default connection that loads timestamptz with psycopg's own (C) loader.

    Django registers a Python loader for timestamptz, ten times slower; both give aware
    datetimes (in the connection's time zone, UTC). JSON columns still come as text.
    """
    with connection.cursor() as cursor:
        cursor.cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
        yield cursor


def _by_key(sql: str, keys: list) -> dict[Any, tuple]:
    """Rows of ``sql`` (first column the key, one array parameter) by key."""
    if not keys:
        return {}
    with reading_cursor() as cursor:
        cursor.execute(sql, [keys])
        return {row[0]: row[1:] for row in cursor.fetchall()}


def _clean_id(raw: Any) -> str | None:
    """The record's datasetId when it is a string the parser keeps as is (and the column holds), else None."""
    key = raw.get("datasetId") if isinstance(raw, dict) else None
    if (isinstance(key, str) and key and key == key.strip() and len(key) <= MAX_LENGTH["datasetId"]
            and text_problem(key) is None):
        return key
    return None


def _existing(dataset_ids: list[str]) -> dict[str, tuple]:
    """``{dataset id: (id, raw_hash, program id, update_date)}`` of the stored datasets among these."""
    return _by_key(
        "SELECT dataset_id, id, raw_hash, program_id, update_date FROM inversions_dataset WHERE dataset_id = ANY(%s)",
        dataset_ids,
    )


@dataclass
class PreparedPage:
    """What can be made of a page without the database (in the read-ahead thread).

    With ``ahead`` the records are parsed too, and everything a first scan makes of them
    is made as if they were all new: their Dataset rows, and the programs (with their
    qualification reports) they would form. :func:`upsert_page` uses what fits (a record
    found unchanged is not used; a program that exists already, or whose records on the
    page are not exactly these, is made again).
    """

    page: list
    keys: list[str | None]  # per record its clean datasetId (:func:`_clean_id`), else None
    canonical: list[tuple[str, str] | None]  # per record :func:`canonical_json` (None without an id)
    ahead: _Ahead | None = None
    escaped: set[int] = field(default_factory=set)  # records whose raw JSON had to be made storable


@dataclass
class _Ahead:
    records: list[DatasetRecord | RecordError]  # per record what parse_record made of it
    values: list[dict | None]  # per record its dataset_fields() and experiment_description (None: not parsed)
    rows: list[list | None]  # per record its COPY row as a new dataset, program and first_seen/changed left None
    programs: dict[str, tuple[frozenset[int], _Created, tuple[str, str, str]]]  # ipeid -> (id() of its records, program, report)


def prepare_page(page: list, descriptions: dict[str, str] | None = None) -> PreparedPage:
    """:class:`PreparedPage` of a page; made ahead (records parsed …) when ``descriptions`` is given."""
    keys = [_clean_id(raw) for raw in page]
    finite = getattr(page, "finite", False)  # a RecordPage parsed without NaN / Infinity
    canonical: list[tuple[str, str] | None] = []
    escaped: set[int] = set()
    for i, (raw, key) in enumerate(zip(page, keys)):
        if key is None:
            canonical.append(None)
            continue
        text, digest, made_storable = _canonical(raw, finite)
        canonical.append((text, digest))
        if made_storable:
            escaped.add(i)
    prepared = PreparedPage(page, keys, canonical, escaped=escaped)
    if descriptions is not None:
        prepared.ahead = _make_ahead(page, canonical, descriptions)
    return prepared


def _make_ahead(page: list, canonical: list, descriptions: dict[str, str]) -> _Ahead:
    fields, json_names = _dataset_columns()
    names = [f.attname for f in fields]
    ahead = _Ahead([], [], [], {})
    by_program: dict[str, list[tuple[DatasetRecord, dict]]] = defaultdict(list)
    for raw, known in zip(page, canonical):
        rec = _parse_or_error(raw)
        ahead.records.append(rec)
        if isinstance(rec, RecordError) or known is None:
            ahead.values.append(None)
            ahead.rows.append(None)
            continue
        text, digest = known
        values = _values(rec, digest, descriptions)
        ahead.values.append(values)
        ahead.rows.append(_new_row(values, names, json_names, text))
        by_program[rec.instrument_program_execution_id].append((rec, values))
    limits = thresholds()
    _prime_solar_radii([rec for rec, _ in found] for found in by_program.values())
    now = timezone.now()  # replaced when the program is created
    for ipeid, found in by_program.items():
        members = frozenset(id(rec) for rec, _ in found)
        created = _new_program(ipeid, found, descriptions, now)
        ahead.programs[ipeid] = (members, created, _report_text(created.current, limits))
    return ahead


def _parse_or_error(raw: Any) -> DatasetRecord | RecordError:
    try:
        return parse_record(raw)
    except RecordError as exc:
        return exc


def _values(rec: DatasetRecord, digest: str, descriptions: dict[str, str]) -> dict:
    """:func:`dataset_fields`, and the description the summary of a new program takes (not a column)."""
    values = dataset_fields(rec, digest)
    values["experiment_description"] = rec.experiment_description or descriptions.get(rec.primary_experiment_id or "", "")
    return values


_ROW_LATER = ("program_id", "superseded", "first_seen_at", "changed_at")  # filled in by upsert_page


def _new_row(values: dict, names: list[str], json_names: frozenset[str], raw_text: str) -> list:
    """The COPY row of a new dataset (as :func:`_db_values`), ``_ROW_LATER`` left None.

    Date-times and the lines are given as text (ISO 8601, an array literal): the same values,
    which psycopg writes several times faster than the objects.
    """
    key = tuple(names)
    row = [values.get(name) for name in names]
    for i in _json_positions(key, json_names):
        if row[i] is not None:
            row[i] = _json_text(row[i])
    row[_position(key, "raw")] = raw_text
    for i in _datetime_positions(key):
        value = row[i]
        if value is not None and value.tzinfo is not None:
            row[i] = value.isoformat()
    for i in _array_positions(key):
        if row[i] is not None:
            row[i] = _array_literal(row[i])
    for name in _ROW_LATER:
        row[_position(key, name)] = None
    return row


@functools.cache
def _datetime_positions(names: tuple[str, ...]) -> tuple[int, ...]:
    kinds = {f.attname: f for f in Dataset._meta.concrete_fields}
    return tuple(i for i, name in enumerate(names) if isinstance(kinds.get(name), models.DateTimeField)
                 and name not in _ROW_LATER)


@functools.cache
def _array_positions(names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of the text-array columns (the lines, the target types)."""
    kinds = {f.attname: f for f in Dataset._meta.concrete_fields}
    return tuple(i for i, name in enumerate(names) if isinstance(kinds.get(name), ArrayField))


def _array_literal(items: Sequence[str]) -> str:
    """PostgreSQL's text form of a text array (what psycopg would send for the list, made here)."""
    return "{" + ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "}"


def upsert_page(scan: Scan, page: list, descriptions: dict[str, str], memory: ScanMemory | None = None,
                prepared: PreparedPage | None = None) -> PageResult:
    """Parse and upsert one page in one transaction; a fixed number of statements per page.

    New datasets are written with one COPY, changed ones with one UPDATE from a COPY-filled
    temporary table, new programs through ``lifecycle.create_programs`` (with their summary).
    ``memory`` (the scan's) learns which new programs are complete on this page; ``prepared``
    is :func:`prepare_page` of the page when the caller has it already.
    """
    result = PageResult()
    # An unchanged record (same datasetId, same canonical JSON as stored) is counted without parsing it.
    prepared = prepared or prepare_page(page)
    keys, canonical, ahead = prepared.keys, prepared.canonical, prepared.ahead
    repeated = {key for key, n in Counter(keys).items() if n > 1}
    existing = _existing([key for key in keys if key is not None])
    parsed: dict[str, tuple[DatasetRecord, str, str, int]] = {}  # dataset id -> (record, canonical JSON, digest, index)
    errors: list[ScanRecordError] = []
    escaped = set(prepared.escaped)
    for i, (raw, key, known) in enumerate(zip(page, keys, canonical)):
        if known is not None and key not in repeated and key in existing and existing[key][1] == known[1]:
            result.unchanged += 1
            stored_update = existing[key][3]
            if result.newest_update is None or stored_update > result.newest_update:
                result.newest_update = stored_update
            continue
        try:
            rec = parse_record(raw) if ahead is None else ahead.records[i]
            if isinstance(rec, RecordError):
                raise rec
            if known is not None:
                text, digest = known
            else:
                text, digest, made_storable = _canonical(raw, False)
                if made_storable:
                    escaped.add(i)
        except RecordError as exc:
            errors.append(_record_error(scan, raw, exc.reason, exc.field))
            continue
        if rec.dataset_id in parsed:
            kept = parsed[rec.dataset_id][0]
            errors.append(
                _record_error(scan, raw, "duplicate datasetId in this answer; the record with the newest updateDate is kept", "datasetId")
            )
            if rec.update_date <= kept.update_date:
                continue
        parsed[rec.dataset_id] = (rec, text, digest, i)
        if result.newest_update is None or rec.update_date > result.newest_update:
            result.newest_update = rec.update_date
    result.errors = len(errors)

    with transaction.atomic(savepoint=False):  # the caller's transaction, if it has one (the scan's, per page)
        if errors:
            ScanRecordError.objects.bulk_create(errors)
        asked = set(keys)
        existing.update(_existing([key for key in parsed if key not in asked]))  # ids the parser stripped
        incoming = [entry for key, entry in parsed.items() if key not in existing or existing[key][1] != entry[2]]
        result.unchanged += len(parsed) - len(incoming)
        if not incoming:
            return result
        warnings = _record_warnings(scan, incoming, escaped)
        if warnings:
            ScanRecordWarning.objects.bulk_create(warnings)
            result.warnings = len(warnings)
        now = timezone.now()
        prepared = []
        for rec, text, digest, i in incoming:
            values = ahead.values[i] if ahead is not None and ahead.values[i] is not None else _values(rec, digest, descriptions)
            prepared.append((rec, text, values, i))
        programs, created = _programs_for(prepared, descriptions, result, now, ahead)
        superseded = set().union(*(c.superseded for c in created.values()))
        fields, json_names = _dataset_columns()
        new_names = [f.attname for f in fields]
        update_names = [Dataset._meta.get_field(name).attname for name in DATASET_UPDATE_FIELDS]
        new_datasets, updated_rows = [], []
        later = [_position(tuple(new_names), name) for name in _ROW_LATER]
        now_text = now.isoformat()
        for rec, text, values, i in prepared:
            program_id, is_new = programs[rec.instrument_program_execution_id]
            values.update(program_id=program_id, changed_at=now)
            old = existing.get(rec.dataset_id)
            if old is None:
                row = ahead.rows[i] if ahead is not None and ahead.rows[i] is not None else None
                if row is None:
                    row = _new_row(values, new_names, json_names, text)
                for position, value in zip(later, (program_id, rec.dataset_id in superseded, now_text, now_text)):
                    row[position] = value
                new_datasets.append(row)
            else:
                old_id, _, old_program, _ = old
                updated_rows.append([old_id, *_db_values(values, update_names, json_names, text)])
                if old_program != program_id:
                    result.changed_programs.add(old_program)
                    result.touched_programs.add(old_program)
            if not is_new:
                result.changed_programs.add(program_id)
            result.touched_programs.add(program_id)
        if new_datasets:
            copy_rows(Dataset._meta.db_table, [f.column for f in fields], new_datasets)
        update_rows(Dataset, DATASET_UPDATE_FIELDS, updated_rows)
        result.new, result.updated = len(new_datasets), len(updated_rows)
    if memory is not None:
        created_ids = {program_id: c for program_id, c in ((c.program.pk, c) for c in created.values())}
        for program_id in result.touched_programs - created_ids.keys():
            memory.touched_again(program_id)
        limits = thresholds() if created_ids else None
        made = [c for c in created_ids.values() if c.report is None]
        if made and len(memory.reports) < memory.max_reports:
            _prime_solar_radii(c.current for c in made)
        for program_id, c in created_ids.items():
            report = None
            if len(memory.reports) < memory.max_reports:
                report = c.report or _report_text(c.current, limits)
            memory.created(program_id, exact_summary=c.exact_summary, report=report)
    return result


def _report(records: list[DatasetRecord], t: qualification.Thresholds) -> tuple[str, str, dict]:
    """``(state, reason, details)`` of qualifying a program from its current records."""
    report = qualification.qualify(records, t)
    state = State.INVERTIBLE if report.invertible else State.NOT_INVERTIBLE
    return state, report.reason, report.to_dict()


def _report_text(records: list[DatasetRecord], t: qualification.Thresholds) -> tuple[str, str, str]:
    """:func:`_report` with the details as JSON text."""
    state, reason, details = _report(records, t)
    return state, reason, json.dumps(details)


def _prime_solar_radii(programs: Iterable[list[DatasetRecord]]) -> None:
    """Compute the solar radius of every start date of these programs in one call (the on-disk rule asks per dataset)."""
    qualification.solar_radii(rec.start_time for records in programs for rec in records if rec.start_time is not None)


def _record_error(scan: Scan, raw: Any, reason: str, field_name: str | None) -> ScanRecordError:
    """A bad record as the database holds it: its raw JSON (and id) with what jsonb cannot hold written out."""
    dataset_id = raw.get("datasetId") if isinstance(raw, dict) else None
    return ScanRecordError(
        scan=scan, dataset_id=storable_text(str(dataset_id))[:200] if dataset_id is not None else "",
        field=storable_text(field_name or "")[:100], reason=storable_text(reason), raw=storable_json(raw)[0],
    )


def _record_warnings(scan: Scan, incoming: list, escaped: set[int]) -> list[ScanRecordWarning]:
    """The warnings of the records stored now: their unusable values, and a raw JSON kept escaped."""
    rows = []
    for rec, _, _, i in incoming:
        for name, reason in rec.warnings:
            rows.append(ScanRecordWarning(scan=scan, dataset_id=rec.dataset_id, field=name, reason=reason))
        if i in escaped:
            warned = {name.split(".")[0] for name, _ in rec.warnings}
            paths = [path for path in storable_json(rec.raw)[1] if path.split(".")[0].split("[")[0] not in warned]
            if paths:
                shown = ", ".join(storable_text(path)[:60] for path in paths[:5]) + (" …" if len(paths) > 5 else "")
                rows.append(ScanRecordWarning(
                    scan=scan, dataset_id=rec.dataset_id, field="raw",
                    reason=f"the record holds values PostgreSQL's JSON cannot (NaN, Infinity, NUL, lone surrogates) at "
                           f"{shown}: its raw JSON is kept with them written out as text."))
    return rows


@dataclass
class _Created:
    """A program created from one page: its row, its current records, the datasets it supersedes."""

    program: ObservingProgram
    current: list[DatasetRecord]
    superseded: set[str]
    exact_summary: bool  # the summary does not depend on how the database orders equal wavelengths
    report: tuple[str, str, str] | None = None  # its qualification report (_report_text), when made ahead


def _programs_for(prepared: list, descriptions: dict[str, str], result: PageResult, now: datetime,
                  ahead: _Ahead | None = None) -> tuple[dict[str, tuple[int, bool]], dict[str, _Created]]:
    """``{instrumentProgramExecutionId: (program id, created now)}``, creating the missing programs (Discovered).

    A new program is created with the summary of its datasets on this page (as
    :func:`summarise_programs` computes it), so that a program found whole on one page is
    written once; the second value describes the programs created.
    """
    ipeids = list(dict.fromkeys(rec.instrument_program_execution_id for rec, *_ in prepared))
    programs = {
        key: (row[0], False)
        for key, row in _by_key(
            "SELECT instrument_program_execution_id, id FROM inversions_observingprogram "
            "WHERE instrument_program_execution_id = ANY(%s)", ipeids,
        ).items()
    }
    datasets: dict[str, list[tuple[DatasetRecord, dict]]] = defaultdict(list)
    for rec, _, values, _ in prepared:
        if rec.instrument_program_execution_id not in programs:
            datasets[rec.instrument_program_execution_id].append((rec, values))
    created: dict[str, _Created] = {}
    for ipeid, found in datasets.items():
        made = ahead.programs.get(ipeid) if ahead is not None else None
        if made is not None and made[0] == frozenset(id(rec) for rec, _ in found):  # made from these very records
            created[ipeid] = made[1]
            created[ipeid].report = made[2]
        else:
            created[ipeid] = _new_program(ipeid, found, descriptions, now)
    if created:
        lifecycle.create_programs([c.program for c in created.values()], actor=ACTOR)
        result.programs_new = len(created)
        programs.update({ipeid: (c.program.pk, True) for ipeid, c in created.items()})
    return programs, created


def _new_program(ipeid: str, found: list[tuple[DatasetRecord, dict]], descriptions: dict[str, str],
                 now: datetime) -> _Created:
    """A new program (not saved) with the summary of these records and values (all its datasets so far)."""
    found = sorted(found, key=lambda pair: (pair[1]["wavelength_min"] is None, pair[1]["wavelength_min"] or 0.0,
                                            pair[1]["dataset_id"]))
    old = _superseded([values for _, values in found])
    current = [(rec, values) for rec, values in found if rec.dataset_id not in old]
    summary = _summary(0, [values for _, values in current], descriptions, now)
    program = ObservingProgram(instrument_program_execution_id=ipeid, **dict(zip(SUMMARY_FIELDS, summary[1:])))
    return _Created(program, [rec for rec, _ in current], old, _first_is_certain(current))


def _first_is_certain(current: list[tuple[DatasetRecord, dict]]) -> bool:
    """True when every dataset the database could order first (same lowest wavelength) gives the same summary."""
    if not current:
        return True
    lowest = current[0][1]["wavelength_min"]
    tied = [values for _, values in current if values["wavelength_min"] == lowest]
    keys = ("instrument_name", "observing_program_execution_id", "primary_proposal_id", "primary_experiment_id",
            "experiment_description")
    return len({tuple(values[k] for k in keys) for values in tied}) == 1


# --- Program summaries, supersession, settling --------------------------------------------
SUMMARY_FIELDS = [
    "spectral_lines", "start_time", "end_time", "newest_create_date", "settles_at", "dataset_count",
    "instrument_name", "observing_program_execution_id", "primary_proposal_id", "primary_experiment_id",
    "experiment_description", "wavelength_ranges", "is_embargoed", "embargo_end_date", "updated_at",
]


SUMMARY_COLUMNS = (
    "id", "dataset_id", "product_id", "program_id", "create_date", "update_date", "start_time", "end_time",
    "spectral_lines", "superseded", "instrument_name", "observing_program_execution_id", "primary_proposal_id",
    "primary_experiment_id", "experiment_description", "wavelength_min", "wavelength_max", "is_embargoed",
    "embargo_end_date",
)
#: SQL of the values that are not Dataset columns: the record's own description is in its raw JSON.
_COLUMN_SQL = {"experiment_description": "raw->>'experimentDescription'"}


def _select(names: Sequence[str]) -> str:
    return ", ".join(_COLUMN_SQL.get(name, name) for name in names)



def summarise_programs(program_ids: Iterable[int], descriptions: dict[str, str]) -> None:
    """Recompute supersession and the programs' summaries from their datasets."""
    ids = sorted(program_ids)
    for start in range(0, len(ids), QUALIFY_BATCH):
        batch = ids[start : start + QUALIFY_BATCH]
        with transaction.atomic(), reading_cursor() as cursor:
            # the order of Dataset.Meta.ordering: a program's first current dataset names its ids
            cursor.execute(
                f"SELECT {_select(SUMMARY_COLUMNS)} FROM inversions_dataset WHERE program_id = ANY(%s) "
                "ORDER BY program_id, wavelength_min, dataset_id",
                [batch],
            )
            by_program: dict[int, list[dict]] = defaultdict(list)
            for row in cursor.fetchall():
                d = dict(zip(SUMMARY_COLUMNS, row))
                by_program[d["program_id"]].append(d)
            stored = _by_key(
                f"SELECT id, {', '.join(SUMMARY_FIELDS[:-1])} FROM inversions_observingprogram WHERE id = ANY(%s)", batch
            )
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
                summary = _summary(pid, current, descriptions, now)
                if stored.get(pid) != summary[1:-1]:  # written only when it changed (new programs have it already)
                    programs.append(summary)
            for value, dataset_ids in flips.items():
                if dataset_ids:
                    cursor.execute("UPDATE inversions_dataset SET superseded = %s WHERE id = ANY(%s)", [value, dataset_ids])
            update_rows(ObservingProgram, SUMMARY_FIELDS, programs)


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


def _summary(pid: int, current: list[dict], descriptions: dict[str, str], now: datetime) -> tuple:
    """``(program id, *SUMMARY_FIELDS values)`` of a program from its current datasets.

    Lines, wavelength ranges, dates and embargo come from all of them; the ids, instrument
    and description from the first (by wavelength: they are the same for all arms).
    """
    newest = max((d["create_date"] for d in current), default=None)
    first = current[0] if current else {}
    experiment = first.get("primary_experiment_id") or ""
    ranges = sorted({(d["wavelength_min"], d["wavelength_max"]) for d in current
                     if d["wavelength_min"] is not None and d["wavelength_max"] is not None})
    embargoed = [d["is_embargoed"] for d in current if d["is_embargoed"] is not None]
    return (
        pid,
        sorted({line for d in current for line in (d["spectral_lines"] or [])}),
        min((d["start_time"] for d in current if d["start_time"]), default=None),
        max((d["end_time"] for d in current if d["end_time"]), default=None),
        newest,
        settling.settles_at(newest, settings.L2_SETTLE_DAYS) if newest else None,
        len(current),
        first.get("instrument_name", ""),
        first.get("observing_program_execution_id", ""),
        first.get("primary_proposal_id", ""),
        experiment,
        first.get("experiment_description") or descriptions.get(experiment, ""),
        [list(pair) for pair in ranges],
        any(embargoed) if embargoed else None,
        max((d["embargo_end_date"] for d in current if d["embargo_end_date"]), default=None),
        now,
    )


# --- Qualification --------------------------------------------------------------------------
#: The values a stored record is rebuilt from: Dataset columns, and the record's own description.
RECORD_COLUMNS = (
    "dataset_id", "product_id", "primary_proposal_id", "primary_experiment_id", "observing_program_execution_id",
    "instrument_program_execution_id", "instrument_name", "create_date", "update_date", "start_time", "end_time",
    "wavelength_min", "wavelength_max", "stokes_parameters", "bounding_box", "frame_count", "health", "gos_status",
    "ao_locked", "light_level", "fried_parameter", "exposure_time", "bucket", "browse_movie_url", "is_embargoed",
    "embargo_end_date", "experiment_description", "spectral_lines", "lines_listed", "polarimetric_accuracy",
    "quality_average_fried_parameter", "quality_average_polarimetric_accuracy", "quality_report_object_key",
    "browse_movie_object_key", "dataset_size", "has_all_stokes", "target_types", "status", "asdf_object_key",
    "field_warnings",
)
_STORED_AS_EMPTY = frozenset({  # optional strings dataset_fields() stores as "" for null
    "primary_experiment_id", "observing_program_execution_id", "stokes_parameters", "bucket", "browse_movie_url",
    "primary_proposal_id", "instrument_name", "quality_report_object_key", "browse_movie_object_key", "status",
    "asdf_object_key",
})
#: The SELECT list of RECORD_COLUMNS (the description from the raw JSON).
RECORD_SELECT = _select(RECORD_COLUMNS)
_JSON_COLUMNS = frozenset({"bounding_box", "health", "gos_status", "light_level", "fried_parameter",
                           "polarimetric_accuracy", "field_warnings"})


def stored_record(row: Sequence[Any]) -> DatasetRecord:
    """The DatasetRecord of a stored dataset, from a row of :data:`RECORD_SELECT`.

    The columns hold what :func:`scanning.records.parse_record` made of the raw record, so
    this is that record without parsing the raw JSON again; ``raw`` is left empty. Optional
    strings the store sent as null come back as None (an empty string from the store too);
    the lines the record listed come from ``spectral_lines`` where ``lines_listed`` says so.
    """
    values: dict[str, Any] = {}
    for name, value in zip(RECORD_COLUMNS, row):
        if name in _JSON_COLUMNS and isinstance(value, str):
            value = json.loads(value)  # Django's connection hands jsonb over as text
        elif name in _STORED_AS_EMPTY and value == "":
            value = None
        elif isinstance(value, datetime):
            value = value.astimezone(UTC)
        values[name] = value
    box = values["bounding_box"]
    values["bounding_box"] = ((box[0][0], box[0][1]), (box[1][0], box[1][1])) if box else None
    listed = values.pop("lines_listed")
    values["spectral_lines"] = tuple(values["spectral_lines"]) if listed and values["spectral_lines"] else None
    types = values["target_types"]
    values["target_types"] = tuple(types) if types is not None else None
    values["warnings"] = tuple(tuple(pair) for pair in values.pop("field_warnings") or ())
    return DatasetRecord(raw={}, **values)


def current_records(program_ids: Sequence[int]) -> dict[int, list[DatasetRecord]]:
    """The current (not superseded) datasets of these programs as records, in one query."""
    records: dict[int, list[DatasetRecord]] = defaultdict(list)
    if not program_ids:
        return records
    with reading_cursor() as cursor:
        cursor.execute(
            f"SELECT program_id, {RECORD_SELECT} FROM inversions_dataset "
            "WHERE program_id = ANY(%s) AND NOT superseded",
            [list(program_ids)],
        )
        for row in cursor.fetchall():
            records[row[0]].append(stored_record(row[1:]))
    return records


def qualify_settled(*, now: datetime | None = None, reports: dict[int, tuple[str, str, str]] | None = None) -> int:
    """Qualify every settled Discovered program; return how many moved.

    ``reports`` (from the scan's :class:`ScanMemory`) gives ``(state, reason, details JSON)``
    already computed for some programs from the very records their datasets hold.

    Programs are qualified in batches of ``QUALIFY_BATCH``, one transaction each. Outside a
    transaction, ``SCAN_QUALIFY_WORKERS`` batches run at once, each thread in a database
    connection of its own (closed when it is done): one batch is prepared in Python while
    the database writes another. The batches hold disjoint programs, so they neither wait
    for nor deadlock on each other.
    """
    reports = reports or {}
    now = now or timezone.now()
    ids = list(
        ObservingProgram.objects.filter(state=State.DISCOVERED, settles_at__lte=now, dataset_count__gt=0)
        .order_by("pk").values_list("pk", flat=True)
    )
    t = thresholds()
    batches = [ids[start : start + QUALIFY_BATCH] for start in range(0, len(ids), QUALIFY_BATCH)]
    workers = min(settings.SCAN_QUALIFY_WORKERS, len(batches))
    if workers <= 1 or connection.in_atomic_block:
        return sum(_qualify_batch(batch, reports, t) for batch in batches)
    todo = deque(batches)

    def work() -> int:  # in a thread: take batches until none is left, then close its connection
        from django.db import connections

        moved = 0
        try:
            while True:
                try:
                    batch = todo.popleft()
                except IndexError:
                    return moved
                moved += _qualify_batch(batch, reports, t)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan-qualify") as pool:
        return sum(future.result() for future in [pool.submit(work) for _ in range(workers)])


def _qualify_batch(batch: list[int], reports: dict[int, tuple[str, str, str]], t: qualification.Thresholds) -> int:
    """Qualify these programs in one transaction (one by one if one of them moved meanwhile)."""
    records = current_records([pid for pid in batch if pid not in reports])
    _prime_solar_radii(records.values())
    changes = []
    for pid in batch:
        if pid in reports:
            state, reason, text = reports[pid]
            details = lifecycle.JSONText(text)
        else:
            state, reason, details = _report(records[pid], t)
        changes.append(lifecycle.Change(pid, state, reason=reason, details=details, expected_from=(State.DISCOVERED,)))
    try:
        lifecycle.apply(changes, actor=ACTOR, returning=False)
        return len(changes)
    except lifecycle.StateChanged:
        # someone moved one of them meanwhile: take them one by one
        moved = 0
        for change in changes:
            try:
                lifecycle.apply([change], actor=ACTOR)
                moved += 1
            except lifecycle.LifecycleError as exc:
                log.info("not qualified: %s", exc)
        return moved
