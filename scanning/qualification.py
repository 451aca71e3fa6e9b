"""Qualification of an Observing Program: is it invertible? (DESIGN §6)

Plain Python (no Django). :func:`qualify` takes the *current* (non-superseded) datasets of
one program and returns a :class:`QualificationReport`: one entry per rule with pass/fail,
the measured value, the limit and a readable reason, plus warnings that do not disqualify.
``report.to_dict()`` is JSON-safe and goes into the transition's details.

Only ViSP qualifies (instrument names compared case-insensitively with
``Thresholds.supported_instruments``); any other instrument is Not Invertible with the
single reason ``"<instrument> not supported"``. For ViSP every rule must pass:

==========  ==========================================================================
On disk     every corner of every dataset's bounding box lies strictly inside the Sun's
            apparent radius on that dataset's start date (:func:`apparent_solar_radius_arcsec`)
Fe I 630    at least one dataset lists ``Thresholds.required_line`` ("Fe I 630.15") in
            ``spectralLines``, or its wavelength range covers the line's wavelength
            (630.15012 nm) within ``line_tolerance_nm``: so a "Fe I (630.25 nm)" arm whose
            range reaches 630.15 passes. The measured value names the line and the range
Stokes      every dataset has exactly the four Stokes parameters I, Q, U and V
Health      per dataset ``health.good / frameCount >= health_min``
GOS         per dataset ``gosStatus.open == frameCount``
AO          per dataset ``aoLocked / frameCount >= ao_min``
==========  ==========================================================================

Per-dataset rules report the worst dataset (its value and ``dataset_id``). A dataset
without the data a rule needs fails that rule with the reason ``"no <field> data"``
(``dataset_id`` names it); a dataset without ``frameCount`` fails Health, GOS and AO with
"no frameCount data", one without ``instrumentName`` is Not Invertible with "no
instrumentName data". In ``health`` / ``gosStatus`` a null member counts as 0; an object
whose members are all null counts as no data.

The report also shows the optional lines (``Thresholds.optional_lines``: Ca II 854.21,
Ca II 849.80, Na I D2 589.00) as present or missing, present when a dataset lists the line
or its range covers it as for Fe I. Light level and polarimetric accuracy are never rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from scanning.records import KNOWN_LINES, OPTIONAL_LINES, DatasetRecord, KnownLine, covers, has_line_data, lines_of

__all__ = [
    "DEFAULT_LINE_WINDOWS",
    "RULE_AO",
    "RULE_FE_I_630",
    "RULE_GOS",
    "RULE_HEALTH",
    "RULE_INSTRUMENT",
    "RULE_NAMES",
    "RULE_ON_DISK",
    "RULE_STOKES",
    "LineWindow",
    "QualificationReport",
    "QualificationWarning",
    "RuleResult",
    "Thresholds",
    "apparent_solar_radius_arcsec",
    "qualify",
    "solar_radii",
]

RULE_ON_DISK = "On disk"
RULE_FE_I_630 = "Fe I 630"
RULE_STOKES = "Stokes"
RULE_HEALTH = "Health"
RULE_GOS = "GOS"
RULE_AO = "AO"
RULE_NAMES = (RULE_ON_DISK, RULE_FE_I_630, RULE_STOKES, RULE_HEALTH, RULE_GOS, RULE_AO)
RULE_INSTRUMENT = "Instrument"  # only reported when the instrument is not supported

WARN_CA_II_ABSENT = "ca_ii_854_absent"
WARN_RANGE_NARROW = "range_too_narrow"
WARN_FRIED_LOW = "fried_low"
WARN_FRIED_MISSING = "fried_missing"


@dataclass(frozen=True)
class LineWindow:
    """The wavelength window a dataset covering one of ``lines`` should span.

    ``midpoint_nm ± half_width_nm``: a dataset whose lines include one of ``lines`` gets a
    ``range_too_narrow`` warning unless ``wavelengthMin <= midpoint - half_width`` and
    ``wavelengthMax >= midpoint + half_width``.
    """

    name: str
    midpoint_nm: float
    half_width_nm: float
    lines: tuple[str, ...]

    @property
    def low_nm(self) -> float:
        return self.midpoint_nm - self.half_width_nm

    @property
    def high_nm(self) -> float:
        return self.midpoint_nm + self.half_width_nm


DEFAULT_LINE_WINDOWS: tuple[LineWindow, ...] = (
    LineWindow("Fe I 630", 630.3, 0.5, ("Fe I 630.15", "Fe I 630.25")),
    LineWindow("Ca II 854", 854.2, 1.0, ("Ca II 854.21",)),
    LineWindow("Na I D", 589.3, 1.0, ("Na I D1 589.59", "Na I D2 589.00")),
)


@dataclass
class Thresholds:
    """Limits of the rules and warnings (filled from Django settings by the caller)."""

    health_min: float = 0.75
    ao_min: float = 0.75
    fried_amber: float = 0.07  # m; Fried-parameter median below this: amber warning
    fried_red: float = 0.05  # m; below this: red warning
    line_tolerance_nm: float = 0.5  # line inference from the wavelength range
    required_line: str = "Fe I 630.15"
    chromospheric_line: str = "Ca II 854.21"
    supported_instruments: tuple[str, ...] = ("VISP",)
    line_windows: tuple[LineWindow, ...] = DEFAULT_LINE_WINDOWS
    optional_lines: tuple[KnownLine, ...] = OPTIONAL_LINES

    def line(self, name: str) -> KnownLine | None:
        """The known line of this canonical name (its wavelength), if it is one."""
        return next((line for line in (*KNOWN_LINES, *self.optional_lines) if line.name == name), None)


@dataclass
class RuleResult:
    """One checklist entry. ``value`` is the measured value (JSON-safe)."""

    name: str
    passed: bool
    value: Any
    reason: str
    limit: Any = None
    dataset_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "limit": self.limit,
            "reason": self.reason,
            "dataset_id": self.dataset_id,
        }


@dataclass
class QualificationWarning:
    """A finding that does not disqualify. ``level`` is ``'amber'``, ``'red'`` or ``'info'``."""

    code: str
    level: str
    message: str
    dataset_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "level": self.level,
            "message": self.message,
            "dataset_id": self.dataset_id,
        }


@dataclass
class QualificationReport:
    """The outcome of :func:`qualify`."""

    invertible: bool
    instrument: str | None
    rules: list[RuleResult]
    warnings: list[QualificationWarning] = field(default_factory=list)
    dataset_ids: list[str] = field(default_factory=list)
    optional_lines: list[dict[str, Any]] = field(default_factory=list)  # {line, present, dataset_id}

    @property
    def failed_rules(self) -> list[str]:
        return [rule.name for rule in self.rules if not rule.passed]

    @property
    def reason(self) -> str:
        """One line for the transition: the failing rules' reasons, or that all passed."""
        failed = [f"{rule.name}: {rule.reason}" for rule in self.rules if not rule.passed]
        if not failed:
            return "all qualification rules passed"
        if len(failed) == 1 and self.rules[0].name == RULE_INSTRUMENT:
            return self.rules[0].reason
        return "; ".join(failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "invertible": self.invertible,
            "instrument": self.instrument,
            "reason": self.reason,
            "failed_rules": self.failed_rules,
            "rules": [rule.to_dict() for rule in self.rules],
            "warnings": [warning.to_dict() for warning in self.warnings],
            "dataset_ids": list(self.dataset_ids),
            "optional_lines": list(self.optional_lines),
        }


# --------------------------------------------------------------------------- solar radius


def apparent_solar_radius_arcsec(when: datetime | date) -> float:
    """Apparent radius of the Sun seen from the Earth's centre on ``when``'s UTC date, in arcsec.

    ``arcsin(R_sun / d)`` with ``d`` the Earth–Sun distance from astropy's built-in
    ephemeris (ERFA ``epv00``) at 12:00 UTC of that date, ``R_sun`` the IAU nominal solar
    radius. Works offline: no IERS table or ephemeris is downloaded. Cached per date;
    :func:`solar_radii` computes many dates in one call.
    """
    return _radius_on(_utc_day(when))


def solar_radii(dates: Iterable[datetime | date]) -> dict[date, float]:
    """:func:`apparent_solar_radius_arcsec` of many dates, by UTC date: the dates not cached yet
    are computed in one vectorised astropy call (the same values as one by one)."""
    days = {_utc_day(when) for when in dates}
    missing = sorted(days - _RADII.keys())
    if missing:
        if len(_RADII) + len(missing) > _RADII_MAX:
            _RADII.clear()
        _RADII.update(zip(missing, _compute_radii(missing)))
    return {day: _RADII[day] for day in days}


def _utc_day(when: datetime | date) -> date:
    if isinstance(when, datetime):
        return (when.astimezone(UTC) if when.tzinfo is not None else when).date()
    if isinstance(when, date):
        return when
    raise TypeError(f"when must be a datetime or a date, got {type(when).__name__}")


_RADII: dict[date, float] = {}  # the cache: UTC date -> radius (a few thousand dates at most)
_RADII_MAX = 20_000
radii_computed = 0  # dates computed by astropy so far (the cache's misses)


def _radius_on(day: date) -> float:
    radius = _RADII.get(day)
    return radius if radius is not None else solar_radii([day])[day]


def _compute_radii(days: list[date]) -> list[float]:
    global radii_computed
    import astropy.units as u
    from astropy.constants import R_sun
    from astropy.coordinates import get_body_barycentric, solar_system_ephemeris
    from astropy.time import Time
    from astropy.utils import data as astropy_data
    from astropy.utils import iers

    with (
        iers.conf.set_temp("auto_download", False),
        astropy_data.conf.set_temp("allow_internet", False),
        solar_system_ephemeris.set("builtin"),
    ):
        when = Time([f"{day.isoformat()}T12:00:00" for day in days], scale="utc")
        distance = (get_body_barycentric("earth", when) - get_body_barycentric("sun", when)).norm()
    ratios = (R_sun / distance).to_value(u.one)
    radii_computed += len(days)
    return [math.degrees(math.asin(ratio)) * 3600.0 for ratio in ratios]


# --------------------------------------------------------------------------- rules


def _by_id(records: Sequence[DatasetRecord]) -> list[DatasetRecord]:
    return sorted(records, key=lambda r: r.dataset_id)


def _more(count: int) -> str:
    return "" if count <= 1 else f" ({count} datasets fail)"


def _on_disk_rule(records: list[DatasetRecord]) -> RuleResult:
    measured = []  # (fraction of the radius, dataset id, farthest corner, radius, date)
    for rec in records:
        box, start = rec.bounding_box, rec.start_time
        if box is None or start is None:
            missing = "boundingBox" if box is None else "startTime"
            return RuleResult(RULE_ON_DISK, False, None, f"no {missing} data", dataset_id=rec.dataset_id)
        (x1, y1), (x2, y2) = box
        farthest = max(math.hypot(x, y) for x in (x1, x2) for y in (y1, y2))
        radius = apparent_solar_radius_arcsec(start)
        measured.append((farthest / radius, rec.dataset_id, farthest, radius, start.date()))
    _, dataset_id, farthest, radius, day = max(measured, key=lambda m: (m[0], m[1]))
    failing = sum(1 for m in measured if m[2] >= m[3])
    if failing:
        reason = (
            f"{dataset_id}: a bounding-box corner lies {farthest:.1f}″ from disc centre, "
            f"outside the solar radius {radius:.1f}″ on {day.isoformat()}{_more(failing)}"
        )
    else:
        reason = (
            f"every bounding-box corner lies on the disc (farthest {farthest:.1f}″ in "
            f"{dataset_id}; solar radius {radius:.1f}″ on {day.isoformat()})"
        )
    return RuleResult(
        RULE_ON_DISK, failing == 0, round(farthest, 2), reason, round(radius, 2), dataset_id
    )


def _range_text(rec: DatasetRecord) -> str:
    if rec.wavelength_min is None or rec.wavelength_max is None:
        return "no wavelength range"
    return f"{rec.wavelength_min:.2f}–{rec.wavelength_max:.2f} nm"


def _line_found(rec: DatasetRecord, name: str, wavelength: float | None, t: Thresholds) -> str | None:
    """How the dataset has the line: ``"listed"``, ``"in range"``, or None."""
    if rec.spectral_lines and name in rec.spectral_lines:
        return "listed"
    if wavelength is not None and covers(rec, wavelength, t.line_tolerance_nm):
        return "in range"
    if not rec.spectral_lines and name in lines_of(rec, t.line_tolerance_nm):
        return "in range"
    return None


def _fe_rule(records: list[DatasetRecord], t: Thresholds) -> RuleResult:
    line = t.required_line
    known = t.line(line)
    wavelength = known.wavelength_nm if known is not None else None
    found = [(rec, how) for rec in records if (how := _line_found(rec, line, wavelength, t))]
    if found:
        rec, how = next(((r, h) for r, h in found if h == "listed"), found[0])
        value = f"{line} {how}, {_range_text(rec)}"
        where = "" if wavelength is None else f" ({wavelength:g} nm ± {t.line_tolerance_nm:g})"
        others = "" if len(found) == 1 else f" ({len(found)} datasets have it)"
        reason = (f"{rec.dataset_id} lists {line} ({_range_text(rec)})" if how == "listed"
                  else f"{rec.dataset_id} covers {line}{where} with {_range_text(rec)}") + others
        return RuleResult(RULE_FE_I_630, True, value, reason, line, rec.dataset_id)
    lacking = [r.dataset_id for r in records if not has_line_data(r)]
    if lacking:
        return RuleResult(RULE_FE_I_630, False, None, "no spectralLines data", line, lacking[0])
    seen = sorted({name for r in records for name in lines_of(r, t.line_tolerance_nm)})
    ranges = ", ".join(f"{r.dataset_id} {_range_text(r)}" for r in records)
    reason = f"no dataset lists or covers {line} (lines: {', '.join(seen) or 'none'}; ranges: {ranges})"
    return RuleResult(RULE_FE_I_630, False, ", ".join(seen) or None, reason, line)


_STOKES_SEPARATORS = re.compile(r"[\s,;/|\[\]()'\"]+")


def _stokes_letters(text: str) -> str:
    """The Stokes letters of ``stokesParameters``, upper case, separators dropped (``"i,q,u,v"`` → ``"IQUV"``)."""
    return _STOKES_SEPARATORS.sub("", text).upper()


def _stokes_rule(records: list[DatasetRecord]) -> RuleResult:
    lacking = []
    for rec in records:
        if not rec.stokes_parameters:
            return RuleResult(
                RULE_STOKES, False, None, "no stokesParameters data", "IQUV", rec.dataset_id
            )
        if "".join(sorted(_stokes_letters(rec.stokes_parameters))) != "IQUV":  # exactly I, Q, U and V, once each
            lacking.append(rec)
    if lacking:
        first = lacking[0]
        reason = (
            f"{first.dataset_id} has Stokes {first.stokes_parameters}, not exactly IQUV "
            f"({len(lacking)} of {len(records)} datasets lack full Stokes)"
        )
        return RuleResult(
            RULE_STOKES, False, first.stokes_parameters, reason, "IQUV", first.dataset_id
        )
    return RuleResult(
        RULE_STOKES, True, "IQUV", "every dataset has Stokes IQUV", "IQUV", records[0].dataset_id
    )


def _count_member(counts: dict[str, int | None] | None, member: str) -> int | None:
    """``counts[member]`` with null as 0; None when there is no count at all."""
    if counts is None or all(v is None for v in counts.values()):
        return None
    return counts.get(member) or 0


def _frame_rule(
    name: str,
    field_name: str,
    records: list[DatasetRecord],
    count_of: Callable[[DatasetRecord], int | None],
    passes: Callable[[int, int], bool],
    limit: Any,
    passed_text: str,
    failed_text: Callable[[int, int, float], str],
) -> RuleResult:
    """A per-dataset rule on ``count / frameCount``; reports the worst dataset."""
    for rec in records:
        if rec.frame_count is None:
            return RuleResult(name, False, None, "no frameCount data", limit, rec.dataset_id)
    for rec in records:
        if count_of(rec) is None:
            return RuleResult(name, False, None, f"no {field_name} data", limit, rec.dataset_id)
    for rec in records:
        if rec.frame_count == 0:
            return RuleResult(name, False, None, "frameCount is 0", limit, rec.dataset_id)
    measured = []  # (passes, fraction, dataset id, count, frames)
    for rec in records:
        count = count_of(rec)
        assert count is not None
        assert rec.frame_count is not None
        fraction = count / rec.frame_count
        measured.append(
            (passes(count, rec.frame_count), fraction, rec.dataset_id, count, rec.frame_count)
        )
    _, fraction, dataset_id, count, frames = min(measured, key=lambda m: (m[0], m[1], m[2]))
    failing = sum(1 for m in measured if not m[0])
    if failing:
        reason = f"{dataset_id}: {failed_text(count, frames, fraction)}{_more(failing)}"
    else:
        reason = f"{passed_text} (lowest {dataset_id}: {count}/{frames} = {fraction:.3f})"
    return RuleResult(name, failing == 0, round(fraction, 4), reason, limit, dataset_id)


def _health_rule(records: list[DatasetRecord], t: Thresholds) -> RuleResult:
    return _frame_rule(
        RULE_HEALTH, "health", records,
        count_of=lambda r: _count_member(r.health, "good"),
        passes=lambda n, frames: n / frames >= t.health_min,
        limit=t.health_min,
        passed_text=f"good frames ≥ {t.health_min:g} of frameCount in every dataset",
        failed_text=lambda n, frames, f: (
            f"{n} of {frames} frames good = {f:.3f} < {t.health_min:g}"
        ),
    )


def _gos_rule(records: list[DatasetRecord]) -> RuleResult:
    return _frame_rule(
        RULE_GOS, "gosStatus", records,
        count_of=lambda r: _count_member(r.gos_status, "open"),
        passes=lambda n, frames: n == frames,
        limit=1.0,
        passed_text="GOS open in every frame of every dataset",
        failed_text=lambda n, frames, f: f"GOS open in {n} of {frames} frames, not all",
    )


def _ao_rule(records: list[DatasetRecord], t: Thresholds) -> RuleResult:
    return _frame_rule(
        RULE_AO, "aoLocked", records,
        count_of=lambda r: r.ao_locked,
        passes=lambda n, frames: n / frames >= t.ao_min,
        limit=t.ao_min,
        passed_text=f"AO locked ≥ {t.ao_min:g} of frameCount in every dataset",
        failed_text=lambda n, frames, f: (
            f"AO locked in {n} of {frames} frames = {f:.3f} < {t.ao_min:g}"
        ),
    )


# --------------------------------------------------------------------------- warnings


def _warnings(records: list[DatasetRecord], t: Thresholds) -> list[QualificationWarning]:
    found: list[QualificationWarning] = []
    lines = {r.dataset_id: lines_of(r, t.line_tolerance_nm) for r in records}

    chromospheric = t.line(t.chromospheric_line)
    if not any(_line_found(r, t.chromospheric_line, chromospheric.wavelength_nm if chromospheric else None, t)
               for r in records):
        found.append(QualificationWarning(
            WARN_CA_II_ABSENT, "amber", f"no dataset covers {t.chromospheric_line}",
        ))

    eps = 1e-9
    for rec in records:
        if rec.wavelength_min is None or rec.wavelength_max is None:
            continue
        for window in t.line_windows:
            if not any(name in lines[rec.dataset_id] for name in window.lines):
                continue
            if rec.wavelength_min > window.low_nm + eps or rec.wavelength_max < window.high_nm - eps:
                found.append(QualificationWarning(
                    WARN_RANGE_NARROW, "amber",
                    f"{rec.dataset_id}: wavelength range {rec.wavelength_min:.2f}–"
                    f"{rec.wavelength_max:.2f} nm does not span the {window.name} window "
                    f"{window.low_nm:.2f}–{window.high_nm:.2f} nm",
                    rec.dataset_id,
                ))

    medians = [
        (r.fried_parameter["med"], r.dataset_id)
        for r in records
        if r.fried_parameter is not None and r.fried_parameter.get("med") is not None
    ]
    missing = [r.dataset_id for r in records if (r.fried_parameter or {}).get("med") is None]
    if medians:
        median, dataset_id = min(medians)
        level, limit = (
            ("red", t.fried_red) if median < t.fried_red
            else ("amber", t.fried_amber) if median < t.fried_amber
            else (None, None)
        )
        if level is not None:
            below = sum(1 for m, _ in medians if m < limit)  # type: ignore[operator]
            found.append(QualificationWarning(
                WARN_FRIED_LOW, level,
                f"Fried parameter r₀ median {median * 100:.1f} cm in {dataset_id} is below {limit * 100:g} cm"
                + ("" if below <= 1 else f" ({below} datasets below)"),
                dataset_id,
            ))
    if missing:
        found.append(QualificationWarning(
            WARN_FRIED_MISSING, "info",
            f"no friedParameter data for {', '.join(missing)}", missing[0],
        ))
    return found


# --------------------------------------------------------------------------- qualify


def qualify(records: Sequence[DatasetRecord], thresholds: Thresholds) -> QualificationReport:
    """Qualify one program from its current datasets (the caller drops superseded ones)."""
    ordered = _by_id(records)
    ids = [r.dataset_id for r in ordered]
    if not ordered:
        return QualificationReport(
            False, None, [RuleResult("Datasets", False, 0, "no datasets")], [], ids
        )
    unnamed = [r.dataset_id for r in ordered if not r.instrument_name]
    if unnamed:
        rule = RuleResult(RULE_INSTRUMENT, False, None, "no instrumentName data", dataset_id=unnamed[0])
        return QualificationReport(False, None, [rule], [], ids)
    instruments = sorted({r.instrument_name.strip() for r in ordered if r.instrument_name})
    if len({name.upper() for name in instruments}) > 1:
        reason = f"mixed instruments: {', '.join(instruments)}"
        return QualificationReport(
            False, None, [RuleResult(RULE_INSTRUMENT, False, instruments, reason)], [], ids
        )
    instrument = instruments[0]
    supported = {name.strip().upper() for name in thresholds.supported_instruments}
    if instrument.strip().upper() not in supported:
        rule = RuleResult(RULE_INSTRUMENT, False, instrument, f"{instrument} not supported")
        return QualificationReport(False, instrument, [rule], [], ids)

    rules = [
        _on_disk_rule(ordered),
        _fe_rule(ordered, thresholds),
        _stokes_rule(ordered),
        _health_rule(ordered, thresholds),
        _gos_rule(ordered),
        _ao_rule(ordered, thresholds),
    ]
    return QualificationReport(
        all(rule.passed for rule in rules), instrument, rules, _warnings(ordered, thresholds), ids,
        _optional_lines(ordered, thresholds),
    )


def _optional_lines(records: list[DatasetRecord], t: Thresholds) -> list[dict[str, Any]]:
    """Each optional line, present (the first dataset that lists or covers it) or missing."""
    shown = []
    for line in t.optional_lines:
        having = next((r for r in records if _line_found(r, line.name, line.wavelength_nm, t)), None)
        shown.append({"line": line.name, "present": having is not None,
                      "dataset_id": having.dataset_id if having is not None else None})
    return shown
