"""Dataset records of the metadata store: parsing, supersession and spectral lines.

Plain Python (no Django). ``parse_record`` turns one raw ``datasetInventories`` record
(a JSON object, DESIGN §5) into a typed, immutable :class:`DatasetRecord`, or raises
:class:`RecordError` naming the field and the bad value; the scan stores that error with
the raw JSON and goes on.

**Keep what can be identified.** A record is refused (:class:`RecordError`) only when it is
not a JSON object, or cannot be identified or placed: no usable ``datasetId`` or
``instrumentProgramExecutionId``, or no usable ``createDate`` (supersession and settling
rest on it). Every other field that is missing or null becomes ``None`` ("no <field>
data": the rules needing it fail with that reason). A field that is present but unusable
(malformed, NaN, out of range, or a value its database column cannot hold: too long, a
NUL character, a lone surrogate, an integer beyond PostgreSQL's ``integer``) becomes
``None`` too, and is listed in ``DatasetRecord.warnings`` as ``(field, reason)``: the scan
lists it as a warning. ``updateDate`` without a usable value takes ``createDate``'s (its
column is not null). Older records lack ``spectralLines``, ``health``, ``gosStatus``,
``aoLocked``; the fixtures lack ``productId``: none of that is a warning.

:data:`MAX_LENGTH` is what each text column holds (``inversions.models``; a test keeps
them equal); :func:`storable_json` makes a raw record fit PostgreSQL's ``jsonb`` (NaN,
NUL and lone surrogates written out as text) so that it is kept, escaped.

Canonical spectral-line names (``lines_of``): ``"<species> <air wavelength in nm, 2
decimals>"``, e.g. ``"Fe I 630.15"``, ``"Fe I 630.25"``, ``"Ca II 854.21"``,
``"Na I D1 589.59"``, ``"Na I D2 589.00"``. A line of :data:`KNOWN_LINES` is named from
the table (so the store's ``"Na I D2 (589.0 nm)"`` and the inferred Na D2 line get the same
name); any other ``"<species> (<λ> nm)"`` string becomes ``"<species> <λ:.2f>"``
(``"Ca II K 393.37"``, ``"H beta 486.13"``); a string of another shape is kept with its
whitespace collapsed. ``DatasetRecord.spectral_lines`` holds the canonical names of the
lines the record lists (each once, in order), or None when it lists none.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

__all__ = [
    "DISTRIBUTION_KEYS",
    "INFERRED_LINES",
    "KNOWN_LINES",
    "MAX_INT",
    "MAX_LENGTH",
    "OPTIONAL_LINES",
    "DatasetRecord",
    "KnownLine",
    "RecordError",
    "covers",
    "has_line_data",
    "lines_of",
    "mark_superseded",
    "normalise_line_name",
    "parse_record",
    "product_key",
    "storable_json",
    "storable_text",
    "text_problem",
]

DISTRIBUTION_KEYS = ("min", "p25", "med", "p75", "max")
_SHOW_MAX = 60

#: The most characters each text value's column holds (inversions.models.Dataset / ObservingProgram).
#: ``spectralLines`` and ``targetTypes``: per item (a line by its canonical name).
MAX_LENGTH: dict[str, int] = {
    "datasetId": 64,
    "productId": 64,
    "instrumentProgramExecutionId": 200,
    "observingProgramExecutionId": 200,
    "primaryProposalId": 100,
    "primaryExperimentId": 100,
    "instrumentName": 50,
    "stokesParameters": 8,
    "spectralLines": 40,
    "bucket": 100,
    "browseMovieUrl": 500,
    "browseMovieObjectKey": 1000,
    "qualityReportObjectKey": 1000,
    "asdfObjectKey": 1000,
    "status": 50,
    "targetTypes": 100,
}
MAX_INT = 2**31 - 1
"""PostgreSQL's ``integer`` (frameCount, aoLocked; counts are held to it too)."""


class RecordError(ValueError):
    """A raw record that cannot be parsed. ``field`` is the record key at fault (or None)."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset of the metadata store, typed. Datetimes are timezone-aware UTC.

    ``None`` means no data (missing, null, or unusable: then ``warnings`` says why).
    """

    dataset_id: str
    product_id: str | None
    primary_proposal_id: str | None
    primary_experiment_id: str | None
    observing_program_execution_id: str | None
    instrument_program_execution_id: str
    instrument_name: str | None
    create_date: datetime
    update_date: datetime
    start_time: datetime | None
    end_time: datetime | None
    wavelength_min: float | None
    wavelength_max: float | None
    stokes_parameters: str | None
    spectral_lines: tuple[str, ...] | None
    bounding_box: tuple[tuple[float, float], tuple[float, float]] | None
    frame_count: int | None
    health: dict[str, int | None] | None = field(hash=False)
    gos_status: dict[str, int | None] | None = field(hash=False)
    ao_locked: int | None
    light_level: dict[str, float | None] | None = field(hash=False)
    fried_parameter: dict[str, float | None] | None = field(hash=False)
    exposure_time: float | None
    bucket: str | None
    browse_movie_url: str | None
    is_embargoed: bool | None
    embargo_end_date: datetime | None
    experiment_description: str | None
    raw: dict[str, Any] = field(hash=False, repr=False)
    polarimetric_accuracy: dict[str, float | None] | None = field(default=None, hash=False)
    quality_average_fried_parameter: float | None = None
    quality_average_polarimetric_accuracy: float | None = None
    quality_report_object_key: str | None = None
    browse_movie_object_key: str | None = None  # browseMovieObjectKey
    dataset_size: float | None = None  # GB
    has_all_stokes: bool | None = None
    target_types: tuple[str, ...] | None = None
    status: str | None = None
    asdf_object_key: str | None = None
    warnings: tuple[tuple[str, str], ...] = ()  # (field, reason) of each unusable value


# --------------------------------------------------------------------------- storable values


def text_problem(value: str) -> str | None:
    """Why PostgreSQL's text cannot hold this string (a NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "holds a NUL character, which the database cannot store"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (not Unicode text), which the database cannot store"
    return None


_ESCAPE_RE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """The string with NULs and lone surrogates written out (``\\u0000``, ``\\ud800``)."""
    if text_problem(value) is None:
        return value
    return _ESCAPE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def storable_json(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``(copy PostgreSQL's jsonb holds, paths changed)``: NaN / ±Infinity become the strings
    ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``; NULs and lone surrogates in strings and keys
    are written out as ``\\u0000`` text. The value itself is returned when nothing changes."""
    changed: list[str] = []
    return _storable(value, path, changed), changed


def _storable(value: Any, path: str, changed: list[str]) -> Any:
    if isinstance(value, str):
        kept = storable_text(value)
        if kept is not value:
            changed.append(path or "$")
        return kept
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        changed.append(path or "$")
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = storable_text(key) if isinstance(key, str) else str(key)
            if name is not key:
                changed.append(f"{path}.{name}" if path else name)
            out[name] = _storable(item, f"{path}.{name}" if path else name, changed)
        return out
    if isinstance(value, (list, tuple)):
        return [_storable(item, f"{path}[{n}]", changed) for n, item in enumerate(value)]
    return value


# --------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(value: str, key: str) -> str:
    if "\x00" in value or not value.isascii():  # the common case (plain ASCII) needs no more
        problem = text_problem(value)
        if problem is not None:
            raise RecordError(f"{key} {problem}, got {_show(value)}.", key)
    limit = MAX_LENGTH.get(key)
    if limit is not None and len(value) > limit:
        raise RecordError(f"{key} is longer than {limit} characters ({len(value)}), got {_show(value)}.", key)
    return value


def _required_str(raw: Mapping[str, Any], key: str) -> str:
    if key not in raw or raw[key] is None:
        raise RecordError(f"{key} is missing.", key)
    value = raw[key]
    if not isinstance(value, str):
        raise RecordError(f"{key} must be a string, got {_type_name(value)} {_show(value)}.", key)
    if not value.strip():
        raise RecordError(f"{key} must not be empty, got {_show(value)}.", key)
    return _check_text(value.strip(), key)


def _optional_str(raw: Mapping[str, Any], key: str, *, strip: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(
            f"{key} must be a string, got {_type_name(value)} {_show(value)}.", key
        )
    if strip:
        value = value.strip()
        if not value:
            return None
    return _check_text(value, key)


def _parse_datetime(value: Any, key: str) -> datetime:
    if isinstance(value, str):
        if text_problem(value) is not None:  # fromisoformat would stop at a NUL and take the rest
            raise RecordError(f"{key} is not an ISO 8601 date-time, got {_show(value)}.", key)
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RecordError(
                f"{key} is not an ISO 8601 date-time, got {_show(value)}.", key
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise RecordError(
            f"{key} must be an ISO 8601 date-time string, got {_type_name(value)} "
            f"{_show(value)}.",
            key,
        )
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise RecordError(f"{key} is out of range, got {_show(value)}.", key) from None


def _required_datetime(raw: Mapping[str, Any], key: str) -> datetime:
    if raw.get(key) is None:
        raise RecordError(f"{key} is missing.", key)
    return _parse_datetime(raw[key], key)


def _optional_datetime(raw: Mapping[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    return None if value is None else _parse_datetime(value, key)


def _as_float(value: Any, key: str, member: str | None = None) -> float:
    """A finite number as float; ``member`` names the member of object ``key`` in errors."""
    if type(value) is float and math.isfinite(value):  # the common case, first
        return value
    if member is not None:
        key = f"{key}.{member}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(
            f"{key} must be a number, got {_type_name(value)} {_show(value)}.", key
        )
    try:
        number = float(value)
    except OverflowError:
        raise RecordError(f"{key} must be a finite number, got {_show(value)}.", key) from None
    if not math.isfinite(number):
        raise RecordError(f"{key} must be a finite number, got {_show(value)}.", key)
    return number


def _optional_float(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else _as_float(value, key)


def _as_count(value: Any, key: str, member: str | None = None) -> int:
    """A non-negative integer up to :data:`MAX_INT`; an integral float (``171.0``) is accepted."""
    if type(value) is int and 0 <= value <= MAX_INT:  # the common case, first
        return value
    if member is not None:
        key = f"{key}.{member}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(
            f"{key} must be a non-negative integer, got {_type_name(value)} {_show(value)}.",
            key,
        )
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RecordError(f"{key} must be a non-negative integer, got {_show(value)}.", key)
    count = int(value)
    if count < 0:
        raise RecordError(f"{key} must be a non-negative integer, got {_show(value)}.", key)
    if count > MAX_INT:
        raise RecordError(f"{key} is beyond what the database holds ({MAX_INT}), got {_show(value)}.", key)
    return count


def _optional_count(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    return None if value is None else _as_count(value, key)


def _optional_bool(raw: Mapping[str, Any], key: str) -> bool | None:
    value = raw.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise RecordError(f"{key} must be true or false, got {_type_name(value)} {_show(value)}.", key)


def _object(raw: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """A JSON object; a string holding a JSON object is accepted (the schema's *String scalars)."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise RecordError(
                f"{key} must be an object, got the unparseable string {_show(raw[key])}.", key
            ) from None
    if not isinstance(value, dict):
        raise RecordError(
            f"{key} must be an object, got {_type_name(value)} {_show(raw[key])}.", key
        )
    return value


def _counts(raw: Mapping[str, Any], key: str) -> dict[str, int | None] | None:
    obj = _object(raw, key)
    if obj is None:
        return None
    counts: dict[str, int | None] = {}
    for name, value in obj.items():
        if name not in _COUNT_KEYS:  # the store's own lower-case keys need no checking
            if not isinstance(name, str):  # pragma: no cover - JSON keys are strings
                raise RecordError(f"{key} has a non-string key {_show(name)}.", key)
            problem = text_problem(name)
            if problem is not None:
                raise RecordError(f"{key} has a key that {problem}, got {_show(name)}.", key)
            name = name.strip().lower()
        counts[name] = None if value is None else (
            value if type(value) is int and 0 <= value <= MAX_INT else _as_count(value, key, name))
    return counts


_COUNT_KEYS = frozenset({"good", "bad", "ill", "unknown", "open", "opening", "closed", "closing", "undefined"})


def _distribution(raw: Mapping[str, Any], key: str) -> dict[str, float | None] | None:
    obj = _object(raw, key)
    if obj is None:
        return None
    lowered = obj if obj.keys() <= _DISTRIBUTION_KEYSET else {str(k).strip().lower(): v for k, v in obj.items()}
    get = lowered.get
    return {
        name: None if (value := get(name)) is None else _as_float(value, key, name)
        for name in DISTRIBUTION_KEYS
    }


_DISTRIBUTION_KEYSET = frozenset(DISTRIBUTION_KEYS)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_POINT = rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)"
_BBOX_RE = re.compile(rf"^\s*\(?\s*{_POINT}\s*,\s*{_POINT}\s*\)?\s*$")


def _bounding_box(raw: Mapping[str, Any]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    key = "boundingBox"
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(
            f"{key} must be a string like '(x1,y1),(x2,y2)', got {_type_name(value)} "
            f"{_show(value)}.",
            key,
        )
    match = _BBOX_RE.match(value)
    if match is None:
        raise RecordError(
            f"{key} must look like '(x1,y1),(x2,y2)' in arcsec, got {_show(value)}.", key
        )
    x1, y1, x2, y2 = (float(g) for g in match.groups())
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise RecordError(f"{key} has a non-finite coordinate, got {_show(value)}.", key)
    return ((x1, y1), (x2, y2))


def _string_list(raw: Mapping[str, Any], key: str, warnings: list[tuple[str, str]],
                 name: Any = None) -> tuple[str, ...] | None:
    """A list of strings, each stripped (and made a canonical name by ``name``), once each.

    Not a list: RecordError. An item that is not a string or cannot be stored is left out
    with a warning; nothing left: None.
    """
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RecordError(
            f"{key} must be a list of strings, got {_type_name(value)} {_show(value)}.", key
        )
    kept: dict[str, None] = {}
    limit = MAX_LENGTH[key]
    for item in value:
        if not isinstance(item, str):
            warnings.append((key, f"{key} must be a list of strings, got an item {_type_name(item)} "
                                  f"{_show(item)} (left out)."))
            continue
        problem = text_problem(item)
        text = item.strip()
        if problem is None and text:
            text = name(text) if name is not None else text
            if len(text) > limit:
                problem = f"is longer than {limit} characters ({len(text)})"
        if problem is not None:
            warnings.append((key, f"{key} has an item that {problem}, got {_show(item)} (left out)."))
        elif text:
            kept.setdefault(text)
    return tuple(kept) or None


# --------------------------------------------------------------------------- parsing


def _nonnegative_float(raw: Mapping[str, Any], key: str) -> float | None:
    value = _optional_float(raw, key)
    if value is not None and value < 0:
        raise RecordError(f"{key} must not be negative, got {_show(raw[key])}.", key)
    return value


def _stripped_str(raw: Mapping[str, Any], key: str) -> str | None:
    return _optional_str(raw, key, strip=True)


def _box_field(raw: Mapping[str, Any], key: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
    return _bounding_box(raw)


def _lines_field(raw: Mapping[str, Any], key: str, warnings: list) -> tuple[str, ...] | None:
    return _string_list(raw, key, warnings, normalise_line_name)


def _types_field(raw: Mapping[str, Any], key: str, warnings: list) -> tuple[str, ...] | None:
    return _string_list(raw, key, warnings)


#: (DatasetRecord attribute, parser, record key, the parser takes the warnings list): every field
#: but the identifying ones and the wavelength range. A parser's RecordError is a warning.
_OPTIONAL: tuple[tuple[str, Any, str, bool], ...] = (
    ("update_date", _optional_datetime, "updateDate", False),
    ("frame_count", _optional_count, "frameCount", False),
    ("stokes_parameters", _stripped_str, "stokesParameters", False),
    ("spectral_lines", _lines_field, "spectralLines", True),
    ("target_types", _types_field, "targetTypes", True),
    ("bounding_box", _box_field, "boundingBox", False),
    ("product_id", _stripped_str, "productId", False),
    ("primary_proposal_id", _stripped_str, "primaryProposalId", False),
    ("primary_experiment_id", _optional_str, "primaryExperimentId", False),
    ("observing_program_execution_id", _optional_str, "observingProgramExecutionId", False),
    ("instrument_name", _stripped_str, "instrumentName", False),
    ("start_time", _optional_datetime, "startTime", False),
    ("end_time", _optional_datetime, "endTime", False),
    ("health", _counts, "health", False),
    ("gos_status", _counts, "gosStatus", False),
    ("ao_locked", _optional_count, "aoLocked", False),
    ("light_level", _distribution, "lightLevel", False),
    ("fried_parameter", _distribution, "friedParameter", False),
    ("exposure_time", _optional_float, "exposureTime", False),
    ("bucket", _optional_str, "bucket", False),
    ("browse_movie_url", _optional_str, "browseMovieUrl", False),
    ("is_embargoed", _optional_bool, "isEmbargoed", False),
    ("embargo_end_date", _optional_datetime, "embargoEndDate", False),
    ("experiment_description", _optional_str, "experimentDescription", False),
    ("polarimetric_accuracy", _distribution, "polarimetricAccuracy", False),
    ("quality_average_fried_parameter", _optional_float, "qualityAverageFriedParameter", False),
    ("quality_average_polarimetric_accuracy", _optional_float, "qualityAveragePolarimetricAccuracy", False),
    ("quality_report_object_key", _optional_str, "qualityReportObjectKey", False),
    ("browse_movie_object_key", _optional_str, "browseMovieObjectKey", False),
    ("dataset_size", _nonnegative_float, "datasetSize", False),
    ("has_all_stokes", _optional_bool, "hasAllStokes", False),
    ("status", _stripped_str, "status", False),
    ("asdf_object_key", _optional_str, "asdfObjectKey", False),
)


def parse_record(raw: Any) -> DatasetRecord:
    """Parse one raw ``datasetInventories`` record; raise :class:`RecordError` if it cannot be
    identified (see the module's doc), else keep it, unusable fields as warnings."""
    if not isinstance(raw, dict):
        raise RecordError(
            f"A dataset record must be a JSON object, got {_type_name(raw)} {_show(raw)}.",
            None,
        )
    dataset_id = _required_str(raw, "datasetId")
    ipe_id = _required_str(raw, "instrumentProgramExecutionId")
    create_date = _required_datetime(raw, "createDate")
    warnings: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for attribute, parse, key, with_warnings in _OPTIONAL:  # a loop, not a call per field: ~40 per record
        try:
            values[attribute] = parse(raw, key, warnings) if with_warnings else parse(raw, key)
        except RecordError as exc:  # a member name comes from the record: stored as text it must be storable
            warnings.append((storable_text(exc.field or key)[:100], storable_text(exc.reason)))
            values[attribute] = None
    if values["update_date"] is None:
        values["update_date"] = create_date

    wl_min = wl_max = None
    for key in ("wavelengthMin", "wavelengthMax"):
        try:
            wl = _optional_float(raw, key)
        except RecordError as exc:
            warnings.append((key, exc.reason))
            continue
        if wl is not None and wl <= 0:
            warnings.append((key, f"{key} must be a positive wavelength in nm, got {_show(raw[key])}."))
        elif key == "wavelengthMin":
            wl_min = wl
        else:
            wl_max = wl
    if wl_min is not None and wl_max is not None and wl_min > wl_max:
        warnings.append((
            "wavelengthMin",
            f"wavelengthMin ({_show(raw['wavelengthMin'])}) is greater than wavelengthMax "
            f"({_show(raw['wavelengthMax'])}).",
        ))
        wl_min = wl_max = None

    return DatasetRecord(
        dataset_id=dataset_id,
        instrument_program_execution_id=ipe_id,
        create_date=create_date,
        wavelength_min=wl_min,
        wavelength_max=wl_max,
        raw=raw,
        warnings=tuple(warnings),
        **values,
    )


# --------------------------------------------------------------------------- supersession


def product_key(rec: DatasetRecord) -> str:
    """The product a dataset belongs to: ``productId``, else its own ``datasetId``."""
    return rec.product_id or rec.dataset_id


def mark_superseded(records: Iterable[DatasetRecord]) -> set[str]:
    """Dataset ids superseded by a newer ``createDate`` of the same product.

    Per product key the newest ``createDate`` is current (ties broken by ``updateDate``,
    then ``datasetId``, so the answer does not depend on the order given).
    """
    newest: dict[str, DatasetRecord] = {}
    all_ids: dict[str, list[str]] = {}
    for rec in records:
        key = product_key(rec)
        all_ids.setdefault(key, []).append(rec.dataset_id)
        best = newest.get(key)
        if best is None or (rec.create_date, rec.update_date, rec.dataset_id) > (
            best.create_date,
            best.update_date,
            best.dataset_id,
        ):
            newest[key] = rec
    return {
        dataset_id
        for key, ids in all_ids.items()
        for dataset_id in ids
        if dataset_id != newest[key].dataset_id
    }


# --------------------------------------------------------------------------- spectral lines


@dataclass(frozen=True)
class KnownLine:
    """A spectral line: species as the store writes it, air wavelength in nm."""

    species: str
    wavelength_nm: float

    @property
    def name(self) -> str:
        return f"{self.species} {self.wavelength_nm:.2f}"


FE_I_6301 = KnownLine("Fe I", 630.15012)
FE_I_6302 = KnownLine("Fe I", 630.24936)
CA_II_8542 = KnownLine("Ca II", 854.2091)
CA_II_8498 = KnownLine("Ca II", 849.8018)
NA_I_D1 = KnownLine("Na I D1", 589.59240)
# DESIGN §6 writes 588.95095: that is the NIST air wavelength 5889.95095 Å with one digit
# lost in the conversion to nm. The line is at 588.995095 nm.
NA_I_D2 = KnownLine("Na I D2", 588.995095)

KNOWN_LINES: tuple[KnownLine, ...] = (FE_I_6301, FE_I_6302, CA_II_8542, CA_II_8498, NA_I_D1, NA_I_D2)
"""Lines whose canonical name comes from this table (matched by species, ± 0.05 nm)."""

INFERRED_LINES: tuple[KnownLine, ...] = (FE_I_6301, CA_II_8542, NA_I_D2)
"""Lines inferred from the wavelength range when ``spectralLines`` is absent (DESIGN §6)."""

OPTIONAL_LINES: tuple[KnownLine, ...] = (CA_II_8542, CA_II_8498, NA_I_D2)
"""Lines the checklist shows as present or missing (DESIGN §6); none is required."""

_MATCH_NM = 0.05
_LINE_RE = re.compile(r"^(?P<species>.*?\S)\s*\(\s*(?P<wl>\d+(?:\.\d*)?)\s*nm\s*\)$", re.I)
_CANONICAL_RE = re.compile(r"^(?P<species>.*?\S)\s+(?P<wl>\d+\.\d+)$")


@lru_cache(maxsize=4096)  # a few distinct strings, met in every record and every qualification
def normalise_line_name(text: str) -> str:
    """Canonical name of a spectral-line string (``"Fe I (630.15 nm)"`` → ``"Fe I 630.15"``)."""
    collapsed = " ".join(text.split())
    match = _LINE_RE.match(collapsed) or _CANONICAL_RE.match(collapsed)
    if match is None:
        return collapsed
    species = match["species"]
    wavelength = float(match["wl"])
    for line in KNOWN_LINES:
        if line.species.lower() == species.lower() and abs(line.wavelength_nm - wavelength) <= _MATCH_NM:
            return line.name
    return f"{species} {wavelength:.2f}"


def has_line_data(rec: DatasetRecord) -> bool:
    """True when the record lists its lines or has a wavelength range to infer them from."""
    return bool(rec.spectral_lines) or (
        rec.wavelength_min is not None and rec.wavelength_max is not None
    )


def covers(rec: DatasetRecord, wavelength_nm: float, tolerance_nm: float = 0.5) -> bool:
    """True when the record's wavelength range, widened by ``tolerance_nm``, holds ``wavelength_nm``."""
    return (
        rec.wavelength_min is not None and rec.wavelength_max is not None
        and rec.wavelength_min - tolerance_nm <= wavelength_nm <= rec.wavelength_max + tolerance_nm
    )


def lines_of(rec: DatasetRecord, tolerance_nm: float = 0.5) -> tuple[str, ...]:
    """Canonical names of the lines a dataset covers, without duplicates, in order.

    The lines ``spectralLines`` lists (``rec.spectral_lines``, canonical already) when it
    lists any; when it is absent, null or empty, inferred from :data:`INFERRED_LINES`: a
    line is covered when it lies within ``[wavelengthMin - tolerance_nm, wavelengthMax +
    tolerance_nm]``. No range: ``()``.
    """
    if rec.spectral_lines:
        return rec.spectral_lines
    return tuple(line.name for line in INFERRED_LINES if covers(rec, line.wavelength_nm, tolerance_nm))
