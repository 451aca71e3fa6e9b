"""The scan's third stage: a prepared page into PostgreSQL, and the programs' summaries.

Each page is upserted in one transaction with a bounded number of statements (cost grows
with pages, not with records), so a scan that fails half-way keeps what it stored. New
datasets, programs, history rows and events are written with ``COPY``
(:mod:`inversions.bulk`, through ``lifecycle.create_programs``); changed datasets with one
UPDATE from a COPY-filled temporary table. A record that cannot be identified is stored on
the scan as a ScanRecordError with its raw JSON and skipped; a stored dataset's values that
could not be used are listed as ScanRecordWarnings. An unchanged record (same ``datasetId``,
same SHA-1 of its canonical JSON) costs no write and is not parsed.

A new program is created with its summary; one found whole on one page is neither read
back nor summarised again, its qualification report computed from the records just parsed
(:class:`ScanMemory`); the others are summarised at the end (:func:`summarise_programs`),
one query per batch. :class:`Stored` gathers what the pages stored for the stages after.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from psycopg.types.datetime import TimestamptzLoader

from inversions import lifecycle
from inversions.bulk import copy_rows, update_rows
from inversions.models import Dataset, ObservingProgram
from scanning.models import Scan, ScanRecordError, ScanRecordWarning
from scanning.prepare import (
    ROW_LATER, SUMMARY_FIELDS, Ahead, Created, PreparedPage, canonical_escaped, dataset_columns, db_values,
    new_program, new_row, position, prepare_page, prime_solar_radii, program_report_text, program_summary,
    record_values, superseded_ids, thresholds,
)
from scanning.records import DatasetRecord, RecordError, parse_record, storable_json, storable_text

ACTOR = "scan"
log = logging.getLogger(__name__)
SUMMARY_BATCH = 2000  # programs per transaction when summarising


@dataclass
class Stored:
    """What the pages of one scan stored, for the stages after the last page (a context: closes its memory)."""

    memory: ScanMemory = field(default_factory=lambda: ScanMemory())
    changed: set[int] = field(default_factory=set)  # existing programs whose datasets changed
    newest: datetime | None = None  # the newest updateDate seen

    def add(self, result: PageResult) -> None:
        self.changed |= result.changed_programs
        if result.newest_update and (self.newest is None or result.newest_update > self.newest):
            self.newest = result.newest_update

    def __enter__(self) -> Stored:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.memory.close()

    def finish(self, descriptions: dict[str, str]) -> None:
        """Summarise the programs the pages could not summarise, and tell the changed ones (one event each)."""
        if self.memory.to_summarise:
            summarise_programs(self.memory.to_summarise, descriptions)
        if self.changed:
            lifecycle.datasets_changed(sorted(self.changed), actor=ACTOR)


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


class Reports:
    """Qualification reports ``(state, reason, details as JSON text)`` by program id, kept on disk.

    A scan of 400,000 new programs makes as many reports (~1.2 kB each): held in memory they
    would be the scan's largest object. They are kept in a private temporary SQLite
    database instead (deleted when closed; a few MB of page cache), written once per page
    and read once per qualification batch; usable from the qualification's threads.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)  # "": a temporary file
        self._db.execute("CREATE TABLE report (program INTEGER PRIMARY KEY, state TEXT, reason TEXT, details TEXT)")
        self._lock = threading.Lock()
        self._count = 0

    def put_many(self, rows: list[tuple[int, str, str, str]]) -> None:
        if rows:
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO report VALUES (?, ?, ?, ?)", rows)
                self._count += len(rows)

    def discard_many(self, program_ids: Iterable[int]) -> None:
        ids = [(pid,) for pid in program_ids]
        if ids:
            with self._lock:
                self._db.executemany("DELETE FROM report WHERE program = ?", ids)

    def get_many(self, program_ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
        """The reports of those of these programs that have one."""
        out: dict[int, tuple[str, str, str]] = {}
        ids = list(program_ids)
        with self._lock:
            for start in range(0, len(ids), 10_000):  # well under SQLite's limit of parameters
                chunk = ids[start : start + 10_000]
                marks = ",".join("?" * len(chunk))
                for pid, *report in self._db.execute(f"SELECT * FROM report WHERE program IN ({marks})", chunk):
                    out[pid] = tuple(report)
        return out

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM report").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ScanMemory:
    """What one scan knows about the programs it created, so that it need not read them back.

    A program created on a page and not touched by a later page has exactly the datasets of
    that page: its summary (written at creation) is final when it does not depend on the
    order of datasets with the same wavelength, and its qualification report can be
    computed there and then, from the records just parsed. Such programs are complete; the
    others with a new or changed dataset are ``to_summarise`` at the end (a set that, in a
    first scan, holds only the programs cut by pages, not all of them); the reports (:class:`Reports`, on disk: memory does not grow with them) are used by
    :func:`scanning.qualify.qualify_settled` instead of reading their datasets back.
    Close it when the scan is done.
    """

    def __init__(self) -> None:
        self.to_summarise: set[int] = set()
        self.reports = Reports()

    def created_many(self, programs: list[tuple[int, bool, tuple[str, str, str]]]) -> None:
        """``(program id, exact summary, (state, reason, details as JSON text))`` of the programs a page created."""
        self.to_summarise.update(pid for pid, exact, _ in programs if not exact)
        self.reports.put_many([(pid, *report) for pid, _, report in programs])

    def touched_again(self, program_ids: Iterable[int]) -> None:
        """Programs with a new or changed dataset that this page did not create: summarised at the end."""
        ids = list(program_ids)
        self.to_summarise.update(ids)
        self.reports.discard_many(ids)

    def close(self) -> None:
        self.reports.close()


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


def _existing(dataset_ids: list[str]) -> dict[str, tuple]:
    """``{dataset id: (id, raw_hash, program id, update_date)}`` of the stored datasets among these."""
    return _by_key(
        "SELECT dataset_id, id, raw_hash, program_id, update_date FROM inversions_dataset WHERE dataset_id = ANY(%s)",
        dataset_ids,
    )


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
                text, digest, made_storable = canonical_escaped(raw, False)
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
            values = ahead.values[i] if ahead is not None and ahead.values[i] is not None else record_values(rec, digest, descriptions)
            prepared.append((rec, text, values, i))
        programs, created = _programs_for(prepared, descriptions, result, now, ahead)
        superseded = set().union(*(c.superseded for c in created.values()))
        fields, json_names = dataset_columns()
        new_names = [f.attname for f in fields]
        update_names = [Dataset._meta.get_field(name).attname for name in DATASET_UPDATE_FIELDS]
        new_datasets, updated_rows = [], []
        later = [position(tuple(new_names), name) for name in ROW_LATER]
        now_text = now.isoformat()
        for rec, text, values, i in prepared:
            program_id, is_new = programs[rec.instrument_program_execution_id]
            values.update(program_id=program_id, changed_at=now)
            old = existing.get(rec.dataset_id)
            if old is None:
                row = ahead.rows[i] if ahead is not None and ahead.rows[i] is not None else None
                if row is None:
                    row = new_row(values, new_names, json_names, text)
                for at, value in zip(later, (program_id, rec.dataset_id in superseded, now_text, now_text)):
                    row[at] = value
                new_datasets.append(row)
            else:
                old_id, _, old_program, _ = old
                updated_rows.append([old_id, *db_values(values, update_names, json_names, text)])
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
        memory.touched_again(result.touched_programs - created_ids.keys())
        limits = thresholds() if created_ids else None
        made = [c for c in created_ids.values() if c.report is None]
        if made:
            prime_solar_radii(c.current for c in made)
        memory.created_many([(program_id, c.exact_summary, c.report or program_report_text(c.current, limits))
                             for program_id, c in created_ids.items()])
    return result


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


def _programs_for(prepared: list, descriptions: dict[str, str], result: PageResult, now: datetime,
                  ahead: Ahead | None = None) -> tuple[dict[str, tuple[int, bool]], dict[str, Created]]:
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
    created: dict[str, Created] = {}
    for ipeid, found in datasets.items():
        made = ahead.programs.get(ipeid) if ahead is not None else None
        if made is not None and made[0] == frozenset(id(rec) for rec, _ in found):  # made from these very records
            created[ipeid] = made[1]
            created[ipeid].report = made[2]
        else:
            created[ipeid] = new_program(ipeid, found, descriptions, now)
    if created:
        lifecycle.create_programs([c.program for c in created.values()], actor=ACTOR)
        result.programs_new = len(created)
        programs.update({ipeid: (c.program.pk, True) for ipeid, c in created.items()})
    return programs, created


SUMMARY_COLUMNS = (
    "id", "dataset_id", "product_id", "program_id", "create_date", "update_date", "start_time", "end_time",
    "spectral_lines", "superseded", "instrument_name", "observing_program_execution_id", "primary_proposal_id",
    "primary_experiment_id", "experiment_description", "wavelength_min", "wavelength_max", "is_embargoed",
    "embargo_end_date",
)


#: SQL of the values that are not Dataset columns: the record's own description is in its raw JSON.
_COLUMN_SQL = {"experiment_description": "raw->>'experimentDescription'"}


def select_list(names: Sequence[str]) -> str:
    return ", ".join(_COLUMN_SQL.get(name, name) for name in names)


def summarise_programs(program_ids: Iterable[int], descriptions: dict[str, str]) -> None:
    """Recompute supersession and the programs' summaries from their datasets."""
    ids = sorted(program_ids)
    for start in range(0, len(ids), SUMMARY_BATCH):
        batch = ids[start : start + SUMMARY_BATCH]
        with transaction.atomic(), reading_cursor() as cursor:
            # the order of Dataset.Meta.ordering: a program's first current dataset names its ids
            cursor.execute(
                f"SELECT {select_list(SUMMARY_COLUMNS)} FROM inversions_dataset WHERE program_id = ANY(%s) "
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
                superseded = superseded_ids(datasets)
                for d in datasets:
                    if (d["dataset_id"] in superseded) != d["superseded"]:
                        flips[d["dataset_id"] in superseded].append(d["id"])
                current = [d for d in datasets if d["dataset_id"] not in superseded]
                summary = program_summary(pid, current, descriptions, now)
                if stored.get(pid) != summary[1:-1]:  # written only when it changed (new programs have it already)
                    programs.append(summary)
            for value, dataset_ids in flips.items():
                if dataset_ids:
                    cursor.execute("UPDATE inversions_dataset SET superseded = %s WHERE id = ANY(%s)", [value, dataset_ids])
            update_rows(ObservingProgram, SUMMARY_FIELDS, programs)


VACUUM_AFTER_ROWS = 10_000  # rows a scan wrote above which its tables are vacuumed at its end
#: The dataset columns that queries look up, join, filter or sort on: the only ones whose
#: statistics the scan's ANALYZE gathers. Statistics of the raw records and of the other text
#: and JSON columns are never used by a plan; at 1.5 million datasets gathering them all took
#: 1.33 s, these 0.26 s.
DATASET_PLANNER_COLUMNS = ("id", "dataset_id", "product_id", "program_id", "superseded", "update_date",
                           "wavelength_min")


def vacuum_if_rewritten(rows_written: int) -> bool:
    """``VACUUM (ANALYZE)`` the program table and ``ANALYZE`` the dataset table after a scan that wrote many rows.

    A first scan creates every program and then qualifies it: each program row is written
    twice, leaving a dead version per program. Until a vacuum clears them, the next scan's
    query for settled Discovered programs visits them all (1.0 s at 400,000 programs, 2.5 ms
    after a vacuum, issue 16). PostgreSQL's autovacuum would do it some time later, when it
    is on (it is off on some servers); the scan does it at once. Datasets are mostly inserted
    (``COPY``), so their table is only analysed: vacuuming it would rewrite every page of the
    raw records for the visibility map; only the columns plans use are analysed
    (:data:`DATASET_PLANNER_COLUMNS`). The planner's statistics are fresh for the dashboard
    too. Inside a transaction (tests), where VACUUM cannot run, nothing is done. An app role
    that does not own the tables (the two-role setup) gets PostgreSQL's "skipping" warning
    and leaves them to autovacuum. A failure is logged, never the scan's failure: the scan's
    work is already committed. Returns whether it ran.
    """
    if rows_written < VACUUM_AFTER_ROWS or connection.in_atomic_block:
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'VACUUM (ANALYZE) "{ObservingProgram._meta.db_table}"')
            columns = ", ".join(f'"{Dataset._meta.get_field(name).column}"' for name in DATASET_PLANNER_COLUMNS)
            cursor.execute(f'ANALYZE "{Dataset._meta.db_table}" ({columns})')
    except DatabaseError as exc:
        log.warning("vacuum after the scan failed (left to autovacuum): %s", exc)
        return False
    return True
