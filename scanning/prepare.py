"""The scan's second stage: what a page of records makes without the database.

Per record its clean ``datasetId`` and canonical JSON with its SHA-1 (:func:`canonical_json`,
the digest an unchanged record is recognised by without parsing it); in a first scan
(:class:`Preparer` decides) also the parsed record, its Dataset row as ``COPY`` takes it,
and the programs the page's records would form with their summary and qualification report
(:func:`prepare_page`, :class:`PreparedPage`). Plain functions of the records: runs in the
read-ahead thread (:mod:`scanning.fetch`); :mod:`scanning.store` uses what fits.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from inversions.models import Dataset, ObservingProgram
from inversions.states import State
from scanning import qualification, settling
from scanning.records import (
    MAX_LENGTH, DatasetRecord, RecordError, lines_of, parse_record, storable_json, text_problem,
)


class Preparer:
    """``prepare(page)`` for the read-ahead: :func:`prepare_page`, parsing ahead while it pays.

    Records are parsed ahead (in the read-ahead thread) while the pages bring mostly new or
    changed records (from the start in a first scan); in a rescan, where most records are
    unchanged, they are not (an unchanged record is not parsed at all). :meth:`stored` is told
    what each page turned out to hold.
    """

    def __init__(self, descriptions: dict[str, str], *, parse_ahead: bool):
        self.descriptions, self.parse_ahead = descriptions, parse_ahead

    def __call__(self, page: list) -> PreparedPage:
        return prepare_page(page, self.descriptions if self.parse_ahead else None)

    def stored(self, page: list, new_or_changed: int) -> None:
        self.parse_ahead = 2 * new_or_changed >= len(page)


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
    return canonical_escaped(raw, finite)[:2]


def canonical_escaped(raw: Any, finite: bool) -> tuple[str, str, bool]:
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


def record_values(rec: DatasetRecord, digest: str, descriptions: dict[str, str]) -> dict:
    """:func:`dataset_fields`, and the description the summary of a new program takes (not a column)."""
    values = dataset_fields(rec, digest)
    values["experiment_description"] = rec.experiment_description or descriptions.get(rec.primary_experiment_id or "", "")
    return values


@functools.cache
def dataset_columns() -> tuple[list[models.Field], frozenset[str]]:
    """Dataset's columns but the id, and the names of its JSON columns."""
    fields = [f for f in Dataset._meta.concrete_fields if not f.primary_key]
    return fields, frozenset(f.attname for f in fields if isinstance(f, models.JSONField))


def db_values(values: dict, names: Sequence[str], json_names: frozenset[str], raw_text: str) -> list:
    """Database values (JSON columns as JSON text; ``raw`` as the canonical text) in ``names`` order."""
    out = [values[name] for name in names]
    for i in json_positions(tuple(names), json_names):
        if out[i] is not None:
            out[i] = _json_text(out[i])
    if "raw" in values:
        out[position(tuple(names), "raw")] = raw_text
    return out


@functools.cache
def json_positions(names: tuple[str, ...], json_names: frozenset[str]) -> tuple[int, ...]:
    return tuple(i for i, name in enumerate(names) if name in json_names and name != "raw")


@functools.cache
def position(names: tuple[str, ...], name: str) -> int:
    return names.index(name)


def _clean_id(raw: Any) -> str | None:
    """The record's datasetId when it is a string the parser keeps as is (and the column holds), else None."""
    key = raw.get("datasetId") if isinstance(raw, dict) else None
    if (isinstance(key, str) and key and key == key.strip() and len(key) <= MAX_LENGTH["datasetId"]
            and text_problem(key) is None):
        return key
    return None


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
    ahead: Ahead | None = None
    escaped: set[int] = field(default_factory=set)  # records whose raw JSON had to be made storable


@dataclass
class Ahead:
    records: list[DatasetRecord | RecordError]  # per record what parse_record made of it
    values: list[dict | None]  # per record its dataset_fields() and experiment_description (None: not parsed)
    rows: list[list | None]  # per record its COPY row as a new dataset, program and first_seen/changed left None
    programs: dict[str, tuple[frozenset[int], Created, tuple[str, str, str]]]  # ipeid -> (id() of its records, program, report)


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
        text, digest, made_storable = canonical_escaped(raw, finite)
        canonical.append((text, digest))
        if made_storable:
            escaped.add(i)
    prepared = PreparedPage(page, keys, canonical, escaped=escaped)
    if descriptions is not None:
        prepared.ahead = _make_ahead(page, canonical, descriptions)
    return prepared


def _make_ahead(page: list, canonical: list, descriptions: dict[str, str]) -> Ahead:
    fields, json_names = dataset_columns()
    names = [f.attname for f in fields]
    ahead = Ahead([], [], [], {})
    by_program: dict[str, list[tuple[DatasetRecord, dict]]] = defaultdict(list)
    for raw, known in zip(page, canonical):
        rec = _parse_or_error(raw)
        ahead.records.append(rec)
        if isinstance(rec, RecordError) or known is None:
            ahead.values.append(None)
            ahead.rows.append(None)
            continue
        text, digest = known
        values = record_values(rec, digest, descriptions)
        ahead.values.append(values)
        ahead.rows.append(new_row(values, names, json_names, text))
        by_program[rec.instrument_program_execution_id].append((rec, values))
    limits = thresholds()
    prime_solar_radii([rec for rec, _ in found] for found in by_program.values())
    now = timezone.now()  # replaced when the program is created
    for ipeid, found in by_program.items():
        members = frozenset(id(rec) for rec, _ in found)
        created = new_program(ipeid, found, descriptions, now)
        ahead.programs[ipeid] = (members, created, program_report_text(created.current, limits))
    return ahead


def _parse_or_error(raw: Any) -> DatasetRecord | RecordError:
    try:
        return parse_record(raw)
    except RecordError as exc:
        return exc


ROW_LATER = ("program_id", "superseded", "first_seen_at", "changed_at")  # filled in by upsert_page


def new_row(values: dict, names: list[str], json_names: frozenset[str], raw_text: str) -> list:
    """The COPY row of a new dataset (as :func:`db_values`), ``ROW_LATER`` left None.

    Date-times and the lines are given as text (ISO 8601, an array literal): the same values,
    which psycopg writes several times faster than the objects.
    """
    key = tuple(names)
    row = [values.get(name) for name in names]
    for i in json_positions(key, json_names):
        if row[i] is not None:
            row[i] = _json_text(row[i])
    row[position(key, "raw")] = raw_text
    for i in _datetime_positions(key):
        value = row[i]
        if value is not None and value.tzinfo is not None:
            row[i] = value.isoformat()
    for i in _array_positions(key):
        if row[i] is not None:
            row[i] = _array_literal(row[i])
    for name in ROW_LATER:
        row[position(key, name)] = None
    return row


@functools.cache
def _datetime_positions(names: tuple[str, ...]) -> tuple[int, ...]:
    kinds = {f.attname: f for f in Dataset._meta.concrete_fields}
    return tuple(i for i, name in enumerate(names) if isinstance(kinds.get(name), models.DateTimeField)
                 and name not in ROW_LATER)


@functools.cache
def _array_positions(names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of the text-array columns (the lines, the target types)."""
    kinds = {f.attname: f for f in Dataset._meta.concrete_fields}
    return tuple(i for i, name in enumerate(names) if isinstance(kinds.get(name), ArrayField))


def _array_literal(items: Sequence[str]) -> str:
    """PostgreSQL's text form of a text array (what psycopg would send for the list, made here)."""
    return "{" + ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "}"


@dataclass
class Created:
    """A program created from one page: its row, its current records, the datasets it supersedes."""

    program: ObservingProgram
    current: list[DatasetRecord]
    superseded: set[str]
    exact_summary: bool  # the summary does not depend on how the database orders equal wavelengths
    report: tuple[str, str, str] | None = None  # its qualification report (report_text), when made ahead


def new_program(ipeid: str, found: list[tuple[DatasetRecord, dict]], descriptions: dict[str, str],
                 now: datetime) -> Created:
    """A new program (not saved) with the summary of these records and values (all its datasets so far)."""
    found = sorted(found, key=lambda pair: (pair[1]["wavelength_min"] is None, pair[1]["wavelength_min"] or 0.0,
                                            pair[1]["dataset_id"]))
    old = superseded_ids([values for _, values in found])
    current = [(rec, values) for rec, values in found if rec.dataset_id not in old]
    summary = program_summary(0, [values for _, values in current], descriptions, now)
    program = ObservingProgram(instrument_program_execution_id=ipeid, **dict(zip(SUMMARY_FIELDS, summary[1:])))
    return Created(program, [rec for rec, _ in current], old, _first_is_certain(current))


def _first_is_certain(current: list[tuple[DatasetRecord, dict]]) -> bool:
    """True when every dataset the database could order first (same lowest wavelength) gives the same summary."""
    if not current:
        return True
    lowest = current[0][1]["wavelength_min"]
    tied = [values for _, values in current if values["wavelength_min"] == lowest]
    keys = ("instrument_name", "observing_program_execution_id", "primary_proposal_id", "primary_experiment_id",
            "experiment_description")
    return len({tuple(values[k] for k in keys) for values in tied}) == 1


SUMMARY_FIELDS = [
    "spectral_lines", "start_time", "end_time", "newest_create_date", "settles_at", "dataset_count",
    "instrument_name", "observing_program_execution_id", "primary_proposal_id", "primary_experiment_id",
    "experiment_description", "wavelength_ranges", "is_embargoed", "embargo_end_date", "updated_at",
]


def superseded_ids(datasets: list[dict]) -> set[str]:
    """Per product (productId, or the datasetId where the store gives none) the newest createDate is current."""
    newest: dict[str, dict] = {}
    for d in datasets:
        key = d["product_id"] or d["dataset_id"]
        best = newest.get(key)
        if best is None or (d["create_date"], d["update_date"], d["dataset_id"]) > (best["create_date"], best["update_date"], best["dataset_id"]):
            newest[key] = d
    keep = {d["dataset_id"] for d in newest.values()}
    return {d["dataset_id"] for d in datasets} - keep


def program_summary(pid: int, current: list[dict], descriptions: dict[str, str], now: datetime) -> tuple:
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


def program_report(records: list[DatasetRecord], t: qualification.Thresholds) -> tuple[str, str, dict]:
    """``(state, reason, details)`` of qualifying a program from its current records."""
    report = qualification.qualify(records, t)
    state = State.INVERTIBLE if report.invertible else State.NOT_INVERTIBLE
    return state, report.reason, report.to_dict()


def program_report_text(records: list[DatasetRecord], t: qualification.Thresholds) -> tuple[str, str, str]:
    """:func:`program_report` with the details as JSON text."""
    state, reason, details = program_report(records, t)
    return state, reason, json.dumps(details)


def prime_solar_radii(programs: Iterable[list[DatasetRecord]]) -> None:
    """Compute the solar radius of every start date of these programs in one call (the on-disk rule asks per dataset)."""
    qualification.solar_radii(rec.start_time for records in programs for rec in records if rec.start_time is not None)


def storable_descriptions(descriptions: dict) -> dict[str, str]:
    """The experiment descriptions a program can carry (text the database holds); the others are left out."""
    return {key: value for key, value in descriptions.items()
            if isinstance(value, str) and text_problem(value) is None and text_problem(key) is None}


