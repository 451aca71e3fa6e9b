"""Dataset records of the metadata store: parsing, supersession and spectral lines.

Plain Python (no Django). ``parse_record`` turns one raw ``datasetInventories`` record
(a JSON object, DESIGN §5) into a typed, immutable :class:`DatasetRecord`, or raises
:class:`RecordError` naming the field and the bad value; the scan stores that error with
the raw JSON and goes on.

Required fields (a record without them is useless or violates the schema's non-null
types): ``datasetId``, ``instrumentProgramExecutionId``, ``instrumentName``,
``primaryProposalId``, ``createDate``, ``updateDate``, ``frameCount``. Every other field may
be absent or null and becomes ``None`` (older records lack ``spectralLines``, ``health``,
``gosStatus``, ``aoLocked``; the fixtures lack ``productId``). A field that is present but
malformed is an error, whether required or not.

Canonical spectral-line names (``lines_of``): ``"<species> <air wavelength in nm, 2
decimals>"``, e.g. ``"Fe I 630.15"``, ``"Fe I 630.25"``, ``"Ca II 854.21"``,
``"Na I D1 589.59"``, ``"Na I D2 589.00"``. A line of :data:`KNOWN_LINES` is named from
the table (so the store's ``"Na I D2 (589.0 nm)"`` and the inferred Na D2 line get the same
name); any other ``"<species> (<λ> nm)"`` string becomes ``"<species> <λ:.2f>"``
(``"Ca II K 393.37"``, ``"H beta 486.13"``); a string of another shape is kept with its
whitespace collapsed.
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
    "DatasetRecord",
    "KnownLine",
    "RecordError",
    "has_line_data",
    "lines_of",
    "mark_superseded",
    "normalise_line_name",
    "parse_record",
    "product_key",
]

DISTRIBUTION_KEYS = ("min", "p25", "med", "p75", "max")
_SHOW_MAX = 60


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
    """One dataset of the metadata store, typed. Datetimes are timezone-aware UTC."""

    dataset_id: str
    product_id: str | None
    primary_proposal_id: str
    primary_experiment_id: str | None
    observing_program_execution_id: str | None
    instrument_program_execution_id: str
    instrument_name: str
    create_date: datetime
    update_date: datetime
    start_time: datetime | None
    end_time: datetime | None
    wavelength_min: float | None
    wavelength_max: float | None
    stokes_parameters: str | None
    spectral_lines: tuple[str, ...] | None
    bounding_box: tuple[tuple[float, float], tuple[float, float]] | None
    frame_count: int
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


# --------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required_str(raw: Mapping[str, Any], key: str) -> str:
    if key not in raw or raw[key] is None:
        raise RecordError(f"{key} is missing.", key)
    value = _optional_str(raw, key)
    if value is None or not value.strip():
        raise RecordError(f"{key} must not be empty, got {_show(raw[key])}.", key)
    return value.strip()


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(
            f"{key} must be a string, got {_type_name(value)} {_show(value)}.", key
        )
    return value


def _parse_datetime(value: Any, key: str) -> datetime:
    if isinstance(value, str):
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
    return parsed.astimezone(UTC)


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
    number = float(value)
    if not math.isfinite(number):
        raise RecordError(f"{key} must be a finite number, got {_show(value)}.", key)
    return number


def _optional_float(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else _as_float(value, key)


def _as_count(value: Any, key: str, member: str | None = None) -> int:
    """A non-negative integer; an integral float (``171.0``) is accepted."""
    if type(value) is int and value >= 0:  # the common case, first
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
        except ValueError:
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
        if not isinstance(name, str):  # pragma: no cover - JSON keys are strings
            raise RecordError(f"{key} has a non-string key {_show(name)}.", key)
        counts[name.strip().lower()] = None if value is None else _as_count(value, key, name)
    return counts


def _distribution(raw: Mapping[str, Any], key: str) -> dict[str, float | None] | None:
    obj = _object(raw, key)
    if obj is None:
        return None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    return {
        name: None if (value := lowered.get(name)) is None else _as_float(value, key, name)
        for name in DISTRIBUTION_KEYS
    }


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


def _spectral_lines(raw: Mapping[str, Any]) -> tuple[str, ...] | None:
    key = "spectralLines"
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RecordError(
            f"{key} must be a list of strings, got {_type_name(value)} {_show(value)}.", key
        )
    for item in value:
        if not isinstance(item, str):
            raise RecordError(
                f"{key} must be a list of strings, got an item {_type_name(item)} "
                f"{_show(item)}.",
                key,
            )
    return tuple(item.strip() for item in value if item.strip())


# --------------------------------------------------------------------------- parsing


def parse_record(raw: Any) -> DatasetRecord:
    """Parse one raw ``datasetInventories`` record; raise :class:`RecordError` if it cannot be."""
    if not isinstance(raw, dict):
        raise RecordError(
            f"A dataset record must be a JSON object, got {_type_name(raw)} {_show(raw)}.",
            None,
        )
    dataset_id = _required_str(raw, "datasetId")
    ipe_id = _required_str(raw, "instrumentProgramExecutionId")
    instrument = _required_str(raw, "instrumentName")
    proposal = _required_str(raw, "primaryProposalId")
    create_date = _required_datetime(raw, "createDate")
    update_date = _required_datetime(raw, "updateDate")
    if raw.get("frameCount") is None:
        raise RecordError("frameCount is missing.", "frameCount")
    frame_count = _as_count(raw["frameCount"], "frameCount")

    wl_min = _optional_float(raw, "wavelengthMin")
    wl_max = _optional_float(raw, "wavelengthMax")
    for key, wl in (("wavelengthMin", wl_min), ("wavelengthMax", wl_max)):
        if wl is not None and wl <= 0:
            raise RecordError(f"{key} must be a positive wavelength in nm, got {_show(raw[key])}.", key)
    if wl_min is not None and wl_max is not None and wl_min > wl_max:
        raise RecordError(
            f"wavelengthMin ({_show(raw['wavelengthMin'])}) is greater than wavelengthMax "
            f"({_show(raw['wavelengthMax'])}).",
            "wavelengthMin",
        )

    stokes = _optional_str(raw, "stokesParameters")
    product_id = _optional_str(raw, "productId")

    return DatasetRecord(
        dataset_id=dataset_id,
        product_id=(product_id.strip() or None) if product_id is not None else None,
        primary_proposal_id=proposal,
        primary_experiment_id=_optional_str(raw, "primaryExperimentId"),
        observing_program_execution_id=_optional_str(raw, "observingProgramExecutionId"),
        instrument_program_execution_id=ipe_id,
        instrument_name=instrument,
        create_date=create_date,
        update_date=update_date,
        start_time=_optional_datetime(raw, "startTime"),
        end_time=_optional_datetime(raw, "endTime"),
        wavelength_min=wl_min,
        wavelength_max=wl_max,
        stokes_parameters=stokes.strip() if stokes is not None else None,
        spectral_lines=_spectral_lines(raw),
        bounding_box=_bounding_box(raw),
        frame_count=frame_count,
        health=_counts(raw, "health"),
        gos_status=_counts(raw, "gosStatus"),
        ao_locked=_optional_count(raw, "aoLocked"),
        light_level=_distribution(raw, "lightLevel"),
        fried_parameter=_distribution(raw, "friedParameter"),
        exposure_time=_optional_float(raw, "exposureTime"),
        bucket=_optional_str(raw, "bucket"),
        browse_movie_url=_optional_str(raw, "browseMovieUrl"),
        is_embargoed=_optional_bool(raw, "isEmbargoed"),
        embargo_end_date=_optional_datetime(raw, "embargoEndDate"),
        experiment_description=_optional_str(raw, "experimentDescription"),
        raw=raw,
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
NA_I_D1 = KnownLine("Na I D1", 589.59240)
# DESIGN §6 writes 588.95095: that is the NIST air wavelength 5889.95095 Å with one digit
# lost in the conversion to nm. The line is at 588.995095 nm.
NA_I_D2 = KnownLine("Na I D2", 588.995095)

KNOWN_LINES: tuple[KnownLine, ...] = (FE_I_6301, FE_I_6302, CA_II_8542, NA_I_D1, NA_I_D2)
"""Lines whose canonical name comes from this table (matched by species, ± 0.05 nm)."""

INFERRED_LINES: tuple[KnownLine, ...] = (FE_I_6301, CA_II_8542, NA_I_D2)
"""Lines inferred from the wavelength range when ``spectralLines`` is absent (DESIGN §6)."""

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


def lines_of(rec: DatasetRecord, tolerance_nm: float = 0.5) -> tuple[str, ...]:
    """Canonical names of the lines a dataset covers, without duplicates, in order.

    From ``spectralLines`` when it lists any; when it is absent, null or empty, inferred from
    :data:`INFERRED_LINES`: a line is covered when it lies within
    ``[wavelengthMin - tolerance_nm, wavelengthMax + tolerance_nm]``. No range: ``()``.
    """
    if rec.spectral_lines:
        return tuple(dict.fromkeys(normalise_line_name(s) for s in rec.spectral_lines))
    if rec.wavelength_min is None or rec.wavelength_max is None:
        return ()
    low = rec.wavelength_min - tolerance_nm
    high = rec.wavelength_max + tolerance_nm
    return tuple(line.name for line in INFERRED_LINES if low <= line.wavelength_nm <= high)
