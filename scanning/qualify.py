"""The scan's last stage: qualify every settled Discovered program (DESIGN §5).

A program's report is computed from its current datasets as records
(:func:`current_records`, rebuilt from the columns without parsing the raw JSON again), or
taken from the reports the store stage computed for programs found whole on one page.
Batches of :data:`QUALIFY_BATCH` programs, one transaction each, through
``lifecycle.apply``.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from inversions import lifecycle
from inversions.models import ObservingProgram
from inversions.states import State
from scanning import qualification
from scanning.prepare import prime_solar_radii, program_report, thresholds
from scanning.records import DatasetRecord
from scanning.store import ACTOR, Reports, reading_cursor, select_list

log = logging.getLogger(__name__)

QUALIFY_BATCH = 2000  # programs per transaction when qualifying


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
RECORD_SELECT = select_list(RECORD_COLUMNS)


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


def qualify_settled(*, now: datetime | None = None, reports: dict[int, tuple[str, str, str]] | Reports | None = None) -> int:
    """Qualify every settled Discovered program; return how many moved.

    ``reports`` (a dict, or the scan's :class:`~scanning.store.Reports`) gives ``(state,
    reason, details JSON)`` already computed for some programs from the very records their
    datasets hold; read once per batch.

    Programs are qualified in batches of ``QUALIFY_BATCH``, one transaction each. Outside a
    transaction, ``SCAN_QUALIFY_WORKERS`` batches run at once, each thread in a database
    connection of its own (closed when it is done): one batch is prepared in Python while
    the database writes another. The batches hold disjoint programs, so they neither wait
    for nor deadlock on each other.
    """
    if reports is None:
        reports = {}
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


def _qualify_batch(batch: list[int], reports: dict[int, tuple[str, str, str]] | Reports,
                   t: qualification.Thresholds) -> int:
    """Qualify these programs in one transaction (one by one if one of them moved meanwhile)."""
    known = reports.get_many(batch) if hasattr(reports, "get_many") else {pid: reports[pid] for pid in batch if pid in reports}
    records = current_records([pid for pid in batch if pid not in known])
    prime_solar_radii(records.values())
    changes = []
    for pid in batch:
        if pid in known:
            state, reason, text = known[pid]
            details = lifecycle.JSONText(text)
        else:
            state, reason, details = program_report(records[pid], t)
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


