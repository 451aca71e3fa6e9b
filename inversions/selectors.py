"""Reads for the pages and the API (writes live in inversions.lifecycle).

Every list read here issues a fixed number of queries whatever the number of rows
(select_related / prefetch_related, no per-row lookups); the tests count them.
"""
from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.db.models import CharField, Count, DateTimeField, F, Func, OuterRef, Prefetch, Subquery, Value
from django.db.models.functions import Left
from django.utils import timezone

from inversions.models import Dataset, ObservingProgram, Transition, WorkOrder
from inversions.states import State

OPTIONS_CACHE_SECONDS = 300
ATTENTION_ROWS = 8


def state_counts() -> dict[str, int]:
    """Programs per state: a scan of the whole state index (500,000 programs: ~150 ms), so kept
    while no program changes (:func:`kept_while_unchanged`)."""
    def count() -> dict[str, int]:
        counts = dict(ObservingProgram.objects.order_by().values_list("state").annotate(n=Count("id")))
        return {state: counts.get(state, 0) for state in State.values}

    return kept_while_unchanged("state-counts", count)


LIST_FIELDS = (
    "instrument_program_execution_id",
    "primary_proposal_id",
    "primary_experiment_id",
    "instrument_name",
    "state",
    "state_changed_at",
    "start_time",
    "dataset_count",
    "spectral_lines",
    "priority",
    "queued_at",
    "settles_at",
    "datasets_changed_at",
    "claimed_by__username",
    "claimed_at",
)


def program_list():
    """Programs for lists: the columns shown, the claimant, the head of the description."""
    return (
        ObservingProgram.objects.select_related("claimed_by")
        .only(*LIST_FIELDS)
        .annotate(description_head=Left("experiment_description", 160))
    )


# --- The program list page -------------------------------------------------------------
TABLE_FIELDS = (
    "instrument_program_execution_id",
    "primary_proposal_id",
    "primary_experiment_id",
    "instrument_name",
    "state",
    "dataset_count",
    "spectral_lines",
    "priority",
)
DESCRIPTION_CHARS = 110  # shown of the description under the program id (a longer one ends in "…")
MINUTE = "YYYY-MM-DD HH24:MI"  # to_char() for |date:"Y-m-d H:i"


class LocalText(Func):
    """A timestamp as text in the current time zone, formatted by PostgreSQL (``to_char`` pattern ``fmt``).

    For lists: a Python datetime costs ~3 µs to load (psycopg parses it, Django moves its zone),
    more than the rest of its row.
    """

    output_field = CharField()

    def __init__(self, expression, fmt: str):
        super().__init__(expression)
        self.fmt = fmt

    def as_sql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"to_char({sql} AT TIME ZONE %s, %s)", (*params, timezone.get_current_timezone_name(), self.fmt)


class IfState(Func):
    """``expression`` for programs in ``state``, NULL for the others (``CASE WHEN state = … THEN … END``)."""

    def __init__(self, state: str, expression, output_field):
        super().__init__(F("state"), expression, output_field=output_field)
        self.state = str(state)

    def as_sql(self, compiler, connection, **extra):
        (state, state_params), (value, value_params) = (compiler.compile(e) for e in self.source_expressions)
        return f"CASE WHEN {state} = %s THEN {value} END", (*state_params, self.state, *value_params)


class Username(Func):
    """The username of the user whose id is ``expression`` (a scalar subquery: no join in the query)."""

    output_field = CharField()

    def as_sql(self, compiler, connection, **extra):
        user_id, params = compiler.compile(self.source_expressions[0])
        meta, quote = get_user_model()._meta, connection.ops.quote_name
        username = quote(meta.get_field(get_user_model().USERNAME_FIELD).column)
        return f"(SELECT {username} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = {user_id})", params


def program_table():
    """The program list's rows as plain values (``{% program_rows %}`` shows them; no model instances).

    Times come as text (``observed``, ``changed``: "2024-04-22 17:00"); ``settles`` only for
    Discovered programs, ``claimant`` only for Working ones (PostgreSQL computes these columns
    for the rows the OFFSET skips too). The claimant is a subquery, not a join, so that the
    paginator's COUNT(*) stays on the program table's indexes (index-only scans).
    """
    return _table().all()  # a fresh clone: the cached base query is never evaluated itself


@functools.cache
def _table():
    # Simple SQL-writing expressions: Case/When and Subquery cost more to compile than the query runs.
    return ObservingProgram.objects.values(
        *TABLE_FIELDS,
        claimant=IfState(State.WORKING, Username("claimed_by_id"), CharField()),
        description_head=Left("experiment_description", 160),
        observed=LocalText("start_time", MINUTE),
        changed=LocalText("datasets_changed_at", MINUTE),
        settles=IfState(State.DISCOVERED, F("settles_at"), DateTimeField()),
    )


def counted(queryset, key: str | None = None) -> int:
    """``queryset.count()`` of programs, kept while no program changes (the program list's paginator).

    See :func:`kept_while_unchanged`: paging through one slow filter counts once, and after any
    transition or scan that changes a program the next request counts again. ``key`` names
    what is counted (the list passes its canonical filter: building the count's SQL only to
    name it took a third of a millisecond); without it the SQL itself is the name.
    """
    if key is None:
        key = repr(queryset.order_by().query.sql_with_params())
    return kept_while_unchanged("count:" + hashlib.sha1(key.encode()).hexdigest(), queryset.count)


def kept_while_unchanged(name: str, compute, seconds: float | None = None, min_ms: float | None = None):
    """``compute()``, a figure over the programs, kept in the cache while no program changes.

    A figure that took at least ``min_ms`` (default ``L2_COUNT_CACHE_MIN_MS``) to compute (a
    count over tens of thousands of programs: a few ms) is marked slow; from then on it is kept,
    at most ``seconds`` (default ``L2_COUNT_CACHE_SECONDS``), under ``name`` and the programs'
    :func:`change_marker` (read before computing, so what is kept is at least as new as its
    marker). Fast figures (small archives, the tests) are always computed, never kept; ``min_ms``
    0: every figure is kept (the marker is read on every call); ``seconds`` 0: never kept. (A change whose transaction took its timestamp and transition id before
    another's but committed after it can leave the marker as it was: the figure then lags that
    change by ``seconds`` at most.)
    """
    seconds = float(settings.L2_COUNT_CACHE_SECONDS if seconds is None else seconds)
    if seconds <= 0:
        return compute()
    min_ms = float(settings.L2_COUNT_CACHE_MIN_MS if min_ms is None else min_ms)
    slow_key = f"l2:slow:{name}"
    marker = change_marker() if min_ms <= 0 or cache.get(slow_key) else None
    kept_key = f"l2:kept:{name}:" + hashlib.sha1(repr(marker).encode()).hexdigest()
    if marker is not None and (value := cache.get(kept_key)) is not None:
        return value
    started = time.perf_counter()
    value = compute()
    if (time.perf_counter() - started) * 1000 >= min_ms:
        if min_ms > 0:
            cache.set(slow_key, True, max(seconds, 600.0))
        if marker is not None:
            cache.set(kept_key, value, seconds)
    elif marker is not None:
        cache.delete(slow_key)
    return value


def change_marker() -> tuple:
    """What changes whenever a program's listed fields change: the newest transition's id (every
    state change writes one) and the latest ``updated_at`` (the life-cycle and the scans set it on
    every program they write). One statement, two index lookups; read on every list page, so its
    SQL is built once (:func:`_change_marker_sql`)."""
    sql, params = _change_marker_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return tuple(cursor.fetchone())


@functools.cache
def _change_marker_sql() -> tuple[str, tuple]:
    """The change marker's statement, built by the ORM once per process (it depends on nothing:
    building it took more time than PostgreSQL's two index lookups)."""
    sql, params = _scalars_sql(
        latest_transition=Transition.objects.annotate(_v=Func(F("id"), function="MAX")).values("_v"),
        latest_update=ObservingProgram.objects.annotate(_v=Func(F("updated_at"), function="MAX")).values("_v"),
    )
    return sql, tuple(params)


def program_detail(ipeid: str) -> ObservingProgram:
    return (
        ObservingProgram.objects.select_related("claimed_by")
        .prefetch_related(
            Prefetch("transitions", queryset=Transition.objects.select_related("actor_user").order_by("at", "id")),
            Prefetch("datasets", queryset=Dataset.objects.defer("raw").order_by("wavelength_min", "dataset_id")),
        )
        .get(instrument_program_execution_id=ipeid)
    )


class Unnest(Func):
    function = "unnest"
    output_field = CharField()


def instruments() -> list[str]:
    """Instrument names in use (cached for a few minutes: a filter menu, not a report)."""
    key = "l2:options:instruments"
    value = cache.get(key)
    if value is None:
        value = list(
            ObservingProgram.objects.order_by("instrument_name").values_list("instrument_name", flat=True).distinct()
        )
        cache.set(key, value, OPTIONS_CACHE_SECONDS)
    return value


def spectral_lines() -> list[str]:
    """Spectral lines of the programs (cached, as :func:`instruments`)."""
    key = "l2:options:lines"
    value = cache.get(key)
    if value is None:
        value = sorted(
            set(
                ObservingProgram.objects.order_by()
                .annotate(line=Unnest("spectral_lines"))
                .values_list("line", flat=True)
                .distinct()
            ),
            key=_line_sort_key,
        )
        cache.set(key, value, OPTIONS_CACHE_SECONDS)
    return value


def _line_sort_key(name: str):
    tail = name.rsplit(" ", 1)[-1]
    try:
        return (float(tail), name)
    except ValueError:
        return (math.inf, name)


# --- Overview ---------------------------------------------------------------------------
def stale_before():
    return timezone.now() - timedelta(hours=float(settings.L2_STALE_CLAIM_HOURS))


def latest_error_reason():
    """Subquery: the reason and step of a program's newest transition into Error."""
    newest = Transition.objects.filter(program=OuterRef("pk"), to_state=State.ERROR).order_by("-at", "-id")
    return {
        "error_reason": Subquery(newest.values("reason")[:1]),
        "error_step": Subquery(newest.values("details__step")[:1]),
        "error_from": Subquery(newest.values("from_state")[:1]),
    }


def errored(limit: int = ATTENTION_ROWS):
    return list(program_list().filter(state=State.ERROR).annotate(**latest_error_reason()).order_by("-state_changed_at", "id")[:limit])


def stale_claims(limit: int | None = ATTENTION_ROWS):
    qs = program_list().filter(state=State.WORKING, claimed_at__lt=stale_before()).order_by("claimed_at", "id")
    return list(qs[:limit] if limit else qs)


def settling_soon(limit: int = ATTENTION_ROWS):
    return list(
        program_list().filter(state=State.DISCOVERED, settles_at__gt=timezone.now()).order_by("settles_at", "id")[:limit]
    )


#: the states in which a program's changed datasets are flagged (the scan sets ``datasets_changed_at``)
CHANGED_FLAG_STATES = (State.WORKING, State.INVERTED, State.PUBLISHED, State.ERROR)


def datasets_changed(limit: int = ATTENTION_ROWS):
    """Programs from Working on whose datasets changed (flagged by the scan)."""
    return list(
        program_list()
        .filter(datasets_changed_at__isnull=False, state__in=CHANGED_FLAG_STATES)
        .order_by("-datasets_changed_at", "id")[:limit]
    )


def attention_counts() -> dict[str, int]:
    """How many need attention: errors, stale claims, settling, changed datasets.

    One statement of four counts, each on an index of its own (the state index, the partial
    ``program_claims`` and ``program_changed`` indexes, ``settles_at``): a few rows each, not a
    scan of every program.
    """
    now = timezone.now()
    return _counts(
        errors=ObservingProgram.objects.filter(state=State.ERROR),
        stale=ObservingProgram.objects.filter(state=State.WORKING, claimed_at__lt=stale_before()),
        settling=ObservingProgram.objects.filter(state=State.DISCOVERED, settles_at__gt=now),
        changed=ObservingProgram.objects.filter(datasets_changed_at__isnull=False, state__in=CHANGED_FLAG_STATES),
    )


def _counts(**querysets) -> dict[str, int]:
    """``{name: queryset.count()}`` in one statement (one scalar subquery per count)."""
    row = _counts_row(**{name: qs.annotate(_v=Func(Value(1), function="COUNT")).values("_v")
                         for name, qs in querysets.items()})
    return dict(zip(querysets, row))


def _scalars_sql(**scalars) -> tuple[str, list]:
    """``SELECT (…), (…)``: one row of scalar subqueries (each queryset selects one aggregate value)."""
    parts, params = [], []
    for qs in scalars.values():
        sql, p = qs.order_by().query.sql_with_params()
        parts.append(f"({sql})")
        params.extend(p)
    return "SELECT " + ", ".join(parts), params


def _counts_row(**scalars) -> tuple:
    """One row of scalar subqueries (each queryset selects one aggregate value), in one statement."""
    sql, params = _scalars_sql(**scalars)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return tuple(cursor.fetchone())


# --- Queue ------------------------------------------------------------------------------
def queued():
    return program_list().filter(state=State.QUEUED).order_by("-priority", "queued_at", "id")


def ready():
    """Preprocessed programs not in the queue, oldest first (Pick next takes these after the queue)."""
    return program_list().filter(state=State.PREPROCESSED).order_by("state_changed_at", "id")


def working():
    return program_list().filter(state=State.WORKING).order_by("claimed_at", "id")


# --- Program page -----------------------------------------------------------------------
QUALIFIED = (State.INVERTIBLE, State.NOT_INVERTIBLE)


@dataclass
class Qualification:
    """The checklist of the program's newest qualification, for the page."""

    transition: Transition
    report: dict
    rules: list[dict]
    warnings: list[dict]
    failed_rules: list[str]
    invertible: bool
    outdated: bool  # the datasets changed after it (the program went back to Discovered)


def show_value(value) -> str:
    """A measured value or limit of the checklist as short text."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {show_value(v)}" for k, v in value.items())
    return str(value)


def qualification(history: list[Transition]) -> Qualification | None:
    """The newest transition into Invertible / Not Invertible and its report (``details``)."""
    latest = next((t for t in reversed(history) if t.to_state in QUALIFIED), None)
    if latest is None:
        return None
    report = latest.details if isinstance(latest.details, dict) else {}
    rules = [
        {**r, "value_text": show_value(r.get("value")), "limit_text": show_value(r.get("limit"))}
        for r in report.get("rules") or []
        if isinstance(r, dict)
    ]
    failed = report.get("failed_rules")
    if not isinstance(failed, list):
        failed = [r.get("name") for r in rules if not r.get("passed")]
    later_discovery = any(
        t.to_state == State.DISCOVERED and (t.at, t.pk) > (latest.at, latest.pk) for t in history
    )
    return Qualification(
        transition=latest,
        report=report,
        rules=rules,
        warnings=[w for w in report.get("warnings") or [] if isinstance(w, dict)],
        failed_rules=failed,
        invertible=bool(report.get("invertible", latest.to_state == State.INVERTIBLE)),
        outdated=later_discovery,
    )


def _fraction(part, whole) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def _count(counts, member: str):
    if not isinstance(counts, dict):
        return None
    values = [v for v in counts.values() if isinstance(v, (int, float))]
    if not values:
        return None
    value = counts.get(member)
    return value if isinstance(value, (int, float)) else 0


def _box(bbox) -> tuple[tuple[float, float], tuple[float, float]] | None:
    try:
        (x1, y1), (x2, y2) = bbox
        return (float(x1), float(y1)), (float(x2), float(y2))
    except (TypeError, ValueError):
        return None


def solar_radius(when) -> float | None:
    if when is None:
        return None
    try:
        from scanning.qualification import apparent_solar_radius_arcsec

        return apparent_solar_radius_arcsec(when)
    except Exception:  # an ephemeris problem must not break the page
        return None


@dataclass
class DatasetRow:
    dataset: Dataset
    health: float | None
    gos: float | None
    ao: float | None
    box: tuple | None
    distance: float | None  # arcsec, farthest corner from disk centre
    radius: float | None  # apparent solar radius on the start date (arcsec)

    @property
    def distance_in_radii(self) -> float | None:
        return self.distance / self.radius if self.distance is not None and self.radius else None

    def _measure(self, value: float | None, limit: float) -> dict | None:
        if value is None:
            return None
        return {"percent": round(100 * value, 1), "low": value < limit}

    @property
    def health_measure(self):
        return self._measure(self.health, float(getattr(settings, "L2_HEALTH_MIN", 0.75)))

    @property
    def gos_measure(self):
        return self._measure(self.gos, 1.0)

    @property
    def ao_measure(self):
        return self._measure(self.ao, float(getattr(settings, "L2_AO_MIN", 0.75)))

    @property
    def off_disk(self) -> bool:
        return self.distance is not None and self.radius is not None and self.distance >= self.radius

    @property
    def corners(self) -> list[dict]:
        """The four corners of the bounding box with their distance from disc centre (arcsec)."""
        from inversions.datasets import corners

        return corners(self.box)

    @property
    def window(self):
        """Whether the wavelength range spans its line's window (inversions.datasets.WindowCheck or None)."""
        from inversions.datasets import window_check

        return window_check(self.dataset)

    @property
    def movie_url(self) -> str:
        from inversions.datasets import browse_movie_url

        return browse_movie_url(self.dataset)


def dataset_rows(datasets) -> list[DatasetRow]:
    rows = []
    for d in datasets:
        box = _box(d.bounding_box)
        # all four corners of the box (the record gives two opposite ones)
        distance = max(math.hypot(x, y) for x in (box[0][0], box[1][0]) for y in (box[0][1], box[1][1])) if box else None
        rows.append(
            DatasetRow(
                dataset=d,
                health=_fraction(_count(d.health, "good"), d.frame_count),
                gos=_fraction(_count(d.gos_status, "open"), d.frame_count),
                ao=_fraction(d.ao_locked, d.frame_count),
                box=box,
                distance=distance,
                radius=solar_radius(d.start_time) if box else None,
            )
        )
    return rows


@dataclass
class RunningWork:
    """What the program page's progress partial shows (``inversions/partials/work_progress.html``).

    ``done`` / ``total`` in ``unit`` (``total`` None: unknown, an indeterminate bar);
    ``running`` False ends the polling. Fed by the program's preprocessing work order.
    """

    label: str
    done: float = 0
    total: float | None = None
    unit: str = ""
    running: bool = True
    detail: str = ""
    failed_step: str = ""  # of a failed order: the step it stopped in (shown with the reason, no bar)

    @property
    def percent(self) -> float | None:
        return 100.0 * self.done / self.total if self.total else None


#: A finished order still shows (not polling) this long: the last poll sees how it ended.
FINISHED_WORK_SHOWN = timedelta(minutes=10)
_STEP_LABELS = {
    "stage": "staging the L1 files",
    "verify": "verifying the L1 files",
    "assemble": "assembling Stokes cubes",
    "quicklook": "drawing quick-looks",
    "handover": "handing over to the science cluster",
}


def _size(n) -> str:
    from django.template.defaultfilters import filesizeformat

    return filesizeformat(n or 0)


def running_work(program: ObservingProgram) -> RunningWork | None:
    """The program's preprocessing as the progress partial shows it: the active order, or the
    one that ended in the last few minutes (``running`` False: the polling stops); else None."""
    order = (
        WorkOrder.objects.filter(program_id=program.pk, kind=WorkOrder.Kind.PREPROCESS)
        .only("id", "status", "step", "progress", "attempts", "error", "finished_at", "details", "forced")
        .order_by("-created_at", "-id")
        .first()
    )
    if order is None:
        return None
    p = order.progress or {}
    if not order.is_active:
        if order.finished_at is None or order.finished_at < timezone.now() - FINISHED_WORK_SHOWN:
            return None
        if order.status == WorkOrder.Status.COMPLETED:
            if order.details.get("same_as"):
                checked = p.get("files_verified", 0)
                return RunningWork(label="Preprocessing completed", done=checked, total=checked, unit="files checked",
                                   running=False,
                                   detail=f"Inputs unchanged since order #{order.details['same_as']}: nothing to redo.")
            return RunningWork(label="Preprocessing completed", done=p.get("frames_assembled", 0),
                               total=p.get("frames_total"), unit="frames assembled", running=False,
                               detail=f"{p.get('cubes', 0)} cubes, {_size(p.get('bytes_written'))}.")
        return RunningWork(label="Preprocessing failed", running=False,
                           detail=order.error or "no reason was recorded",
                           failed_step=_STEP_LABELS.get(order.step, order.step or "an unknown step"))
    step = order.step if order.status == WorkOrder.Status.STARTED else ""
    label = f"Preprocessing: {_STEP_LABELS.get(step, 'queued')}"
    notes = [f"order #{order.pk}" + (" (forced)" if order.forced else "")]
    if (order.details.get("retries") or {}).get(step):
        notes.append(f"attempt {order.attempts}")
    if (order.details.get("retries") or {}).get(step) and order.details.get("last_problem"):
        notes.append(f"retrying after: {order.details['last_problem']}")
    waiting = order.details.get("waiting_for_worker") or {}
    if waiting.get("worker"):  # private scratch: only that worker holds the staged files
        notes.append(f"waiting for worker {waiting['worker']} (its scratch holds the staged files) "
                     f"since {waiting.get('since', '?')[:19].replace('T', ' ')} UTC")
    elif (order.details.get("restaged") or {}).get("from_worker") and step in ("", "stage"):
        notes.append(f"staging again: worker {order.details['restaged']['from_worker']} did not come back")
    work = RunningWork(label=label, detail=" · ".join(notes))
    if step == "stage":
        work.done, work.total, work.unit = p.get("files_staged", 0), p.get("files_expected"), "files staged"
        notes.append(f"{_size(p.get('bytes_staged'))} copied")
    elif step == "verify":
        work.done, work.total, work.unit = p.get("datasets_verified", 0), p.get("datasets"), "datasets verified"
    elif step == "assemble":
        work.done, work.total, work.unit = p.get("frames_assembled", 0), p.get("frames_total"), "frames assembled"
        if p.get("dataset"):
            notes.append(f"dataset {p['dataset']}")
        notes.append(f"{_size(p.get('bytes_written'))} written")
    elif step == "quicklook":
        work.done, work.unit = p.get("cubes", 0), "cubes to draw"
    elif step == "handover":
        work.done, work.unit = p.get("files_handed_over", 0), "files handed over"
    work.detail = " · ".join(notes)
    return work
