"""Dashboard pages (DESIGN §11). Thin: reads come from selectors, every state change from lifecycle.

HTMX requests get the swapped part only (``Vary: HX-Request``); history restores and plain
requests get the full page. Roles are checked here, on the server, for every action.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.functional import cached_property
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url

from inversions import lifecycle, pipeline, selectors
from inversions.forms import (
    DEFAULT_SORT,
    SORT_CHOICES,
    PriorityForm,
    ReportInvertedForm,
    filter_programs,
    parse_filter,
    query_string,
)
from inversions.models import ObservingProgram, WorkOrder
from inversions.report_problems import in_words, report_problems
from inversions.states import MAIN_LINE, State
from inversions.states import label as state_label
from l2site.auth import is_admin, is_operator, is_science, require_role
from l2site.viewhelpers import page_of, paginate, render_page, safe_next, wants_partial
from l2site.viewhelpers import roles as base_roles
from scanning.selectors import last_scan, next_scan, running_scans


# --- helpers ----------------------------------------------------------------------------
class CountCachedPaginator(Paginator):
    """A paginator whose count is :func:`selectors.counted` (kept where counting is slow), named ``count_key``."""

    def __init__(self, *args, count_key: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.count_key = count_key

    @cached_property
    def count(self) -> int:
        return selectors.counted(self.object_list, self.count_key)


def roles(user) -> dict:
    """:func:`l2site.viewhelpers.roles` and the states in which a program shows "datasets changed"."""
    return {**base_roles(user), "changed_flag_states": selectors.CHANGED_FLAG_STATES}


# --- pictures (server-rendered SVG) -----------------------------------------------------
@dataclass
class FunnelBar:
    state: State
    count: int
    reached: int
    x: float
    y: float
    width: float
    height: float

    @property
    def text_y(self) -> float:
        return self.y + self.height / 2 + 5


FUNNEL_WIDTH, FUNNEL_LEFT, FUNNEL_RIGHT, FUNNEL_BAR, FUNNEL_GAP = 640, 130, 110, 30, 8


def funnel(counts: dict[str, int]) -> dict:
    """Bars for the main line, centred, each as wide as the programs at that stage or beyond."""
    reached, running = [], 0
    for state in reversed(MAIN_LINE):
        running += counts.get(state, 0)
        reached.append(running)
    reached.reverse()
    top = max(reached[0], 1)
    area = FUNNEL_WIDTH - FUNNEL_LEFT - FUNNEL_RIGHT
    bars = []
    for i, (state, r) in enumerate(zip(MAIN_LINE, reached)):
        width = max(area * r / top, 3.0)
        bars.append(
            FunnelBar(
                state=State(state),
                count=counts.get(state, 0),
                reached=r,
                x=round(FUNNEL_LEFT + (area - width) / 2, 1),
                y=i * (FUNNEL_BAR + FUNNEL_GAP),
                width=round(width, 1),
                height=FUNNEL_BAR,
            )
        )
    return {
        "bars": bars,
        "width": FUNNEL_WIDTH,
        "height": len(bars) * (FUNNEL_BAR + FUNNEL_GAP) - FUNNEL_GAP,
        "label_x": FUNNEL_LEFT - 10,
        "count_x": FUNNEL_WIDTH - FUNNEL_RIGHT + 10,
        "branches": [(State(s), counts.get(s, 0)) for s in (State.NOT_INVERTIBLE, State.ERROR)],
        "total": sum(counts.values()),
    }


@dataclass
class FriedRow:
    dataset_id: str
    y: float
    x_min: float
    x_p25: float
    x_med: float
    x_p75: float
    x_max: float
    values: dict
    level: str  # "ok", "amber" or "red" (the median against the thresholds)
    clipped: bool  # the maximum is off the axis (an outlier): the whisker ends in an arrow

    @property
    def box_width(self) -> float:
        return round(max(self.x_p75 - self.x_p25, 1.0), 1)

    @property
    def y_mid(self) -> float:
        return self.y + 11

    @property
    def y_box(self) -> float:
        return self.y + 3

    @property
    def y_text(self) -> float:
        return self.y + 15

    @property
    def arrow(self) -> str:
        x, y = self.x_max, self.y_mid
        return f"{x},{y} {x - 7},{y - 5} {x - 7},{y + 5}"


FRIED_WIDTH, FRIED_LEFT, FRIED_RIGHT, FRIED_ROW, FRIED_AXIS = 640, 80, 100, 30, 34
FRIED_KEYS = ("min", "p25", "med", "p75", "max")


def nice_step(span: float, ticks: int = 6) -> float:
    """A round tick step (1, 2, 2.5 or 5 × 10ⁿ) giving about ``ticks`` ticks over ``span``."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def fried_plot(datasets) -> dict | None:
    """A box plot per dataset of the Fried parameter r0 (min, p25, median, p75, max), in cm.

    The axis ends a little past the largest upper quartile (p75 + 2 IQR) so that one wild
    maximum does not squash every box; a maximum beyond it ends in an arrow with its value.
    """
    amber, red = float(settings.L2_FRIED_AMBER), float(settings.L2_FRIED_RED)
    usable, missing = [], []
    for d in datasets:
        fp = d.fried_parameter if isinstance(d.fried_parameter, dict) else {}
        values = {k: fp.get(k) for k in FRIED_KEYS}
        if all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values.values()):
            usable.append((d.dataset_id, values))
        else:
            missing.append(d.dataset_id)
    if not usable:
        return {"rows": [], "missing": missing} if missing else None
    reach = max(min(v["max"], v["p75"] + 2 * (v["p75"] - v["p25"])) for _, v in usable)
    step = nice_step(max(reach, amber * 1.3))
    top = math.ceil(max(reach, amber * 1.3) / step - 1e-9) * step
    span = FRIED_WIDTH - FRIED_LEFT - FRIED_RIGHT

    def x(v: float) -> float:
        return round(FRIED_LEFT + span * min(v, top) / top, 1)

    rows = []
    for i, (dataset_id, v) in enumerate(usable):
        level = "red" if v["med"] < red else "amber" if v["med"] < amber else "ok"
        rows.append(
            FriedRow(dataset_id, 10 + i * FRIED_ROW, x(v["min"]), x(v["p25"]), x(v["med"]), x(v["p75"]), x(v["max"]),
                     {k: round(val * 100, 2) for k, val in v.items()}, level, v["max"] > top)
        )
    height = 10 + len(rows) * FRIED_ROW
    ticks = [(x(i * step), f"{i * step * 100:g}") for i in range(int(round(top / step)) + 1)]
    return {
        "rows": rows,
        "missing": missing,
        "width": FRIED_WIDTH,
        "height": height + FRIED_AXIS,
        "plot_bottom": height,
        "left": FRIED_LEFT,
        "right": FRIED_WIDTH - FRIED_RIGHT,
        "ticks": ticks,
        "tick_y": height + 5,
        "tick_text_y": height + 18,
        "unit_y": height + 32,
        "label_x": FRIED_LEFT - 8,
        "amber": {"x": x(amber), "cm": round(amber * 100, 1)},
        "red": {"x": x(red), "cm": round(red * 100, 1)},
    }


# --- Overview ---------------------------------------------------------------------------
@require_GET
def overview(request):
    counts = selectors.state_counts()
    context = {
        "nav": "overview",
        "counts": [(State(s), counts[s]) for s in State.values],
        "funnel": funnel(counts),
        "attention": selectors.attention_counts(),
        "errored": selectors.errored(),
        "stale": selectors.stale_claims(),
        "settling": selectors.settling_soon(),
        "changed": selectors.datasets_changed(),
        "stale_hours": settings.L2_STALE_CLAIM_HOURS,
        "last_scan": last_scan(),
        "next_scan": next_scan(),
        "running_scans": running_scans(),
        "working_count": counts[State.WORKING],
        "queued_count": counts[State.QUEUED],
        "ready_count": counts[State.PREPROCESSED],
        **roles(request.user),
    }
    return render(request, "inversions/overview.html", context)


# --- Programs ---------------------------------------------------------------------------
COLUMNS = (
    ("Program", "program"),
    ("Instrument", "instrument"),
    ("Proposal", "proposal"),
    ("Lines", None),
    ("Observed", "observed"),
    ("Datasets", "datasets"),
    ("State", "state"),
)


def _sort_headers(values: dict) -> list[dict]:
    current = values.get("sort") or DEFAULT_SORT
    headers = []
    for label, key in COLUMNS:
        if key is None:
            headers.append({"label": label})
            continue
        active = current.lstrip("-") == key
        descending = current.startswith("-")
        # first click: newest / largest first for dates and counts, A→Z for names
        first = f"-{key}" if key in ("observed", "datasets", "changed") else key
        target = (key if descending else f"-{key}") if active else first
        headers.append(
            {
                "label": label,
                "url": query_string(values, sort=target, page=None),
                "aria": ("descending" if descending else "ascending") if active else None,
            }
        )
    return headers


STATE_CHOICES = State.choices  # the filter's state menu (``State.choices`` builds its list on each access)


@dataclass(frozen=True)
class ProgramListing:
    """One page of the program list's table, made by :func:`program_listing` (kept while no program changes)."""

    html: str  # the summary, the table and the pager (``inversions/partials/program_listing.html``)
    filters: str  # the filter form, as these values fill it (``inversions/partials/program_filters.html``)
    number: int  # the page shown (a bad or out-of-range page number clamped)
    count: int  # programs matching the filter
    notes: tuple[str, ...]  # what was clamped, in words (said again each time the page is shown)
    made: str = field(default_factory=lambda: uuid.uuid4().hex)  # new each time a listing is made: the kept page's name


def program_listing(values: dict, raw_page: str, tz_name: str) -> ProgramListing:
    """The table of the programs ``values`` filter and sort, at page ``raw_page``, times in ``tz_name``."""
    count_key = f"programs{query_string(values, sort=None, page=None)}@{tz_name}"  # the filter alone: any sort or page
    page, notes = page_of(raw_page, filter_programs(selectors.program_table(), values), settings.L2_PAGE_SIZE,
                          paginator_class=functools.partial(CountCachedPaginator, count_key=count_key))
    context = {
        "page": page,
        "rows": list(page),
        "headers": _sort_headers(values),
        "prev_url": query_string(values, page=page.previous_page_number()) if page.has_previous() else None,
        "next_url": query_string(values, page=page.next_page_number()) if page.has_next() else None,
        "first_url": query_string(values, page=None),
        "last_url": query_string(values, page=page.paginator.num_pages),
        "filtered": any(k in values for k in ("q", "state", "instrument", "proposal", "line", "observed_from", "observed_to")),
        "base_url": reverse("program-list"),
    }
    form = {"values": values, "base_url": context["base_url"], "instruments": selectors.instruments(),
            "lines": selectors.spectral_lines(), "states": STATE_CHOICES, "sort_choices": SORT_CHOICES,
            "sort": values.get("sort", DEFAULT_SORT)}
    return ProgramListing(html=render_to_string("inversions/partials/program_listing.html", context),
                          filters=render_to_string("inversions/partials/program_filters.html", form),
                          number=page.number, count=page.paginator.count, notes=tuple(notes))


@require_GET
def program_list(request):
    values, notes = parse_filter(request.GET)
    raw_page = request.GET.get("page", "")
    tz_name = timezone.get_current_timezone_name()
    # kept (selectors.kept_while_unchanged) however fast it was made: until any program changes
    name = hashlib.sha1(f"{query_string(values, page=None)}|{raw_page}@{tz_name}".encode()).hexdigest()
    listing = selectors.kept_while_unchanged(f"listing:{name}", lambda: program_listing(values, raw_page, tz_name),
                                             seconds=settings.L2_LIST_PAGE_CACHE_SECONDS, min_ms=0)
    for note in (*notes, *listing.notes):
        messages.warning(request, note)
    context = {
        "nav": "programs",
        "listing": listing,
        "sort_choices": SORT_CHOICES,  # the sort menu, sent again with an HTMX swap
        "sort": values.get("sort", DEFAULT_SORT),
    }
    # the whole page too, for this user, while its listing is kept (not when it has notes to say)
    response = render_page(request, "inversions/program_list.html", "inversions/partials/program_table.html", context,
                           keep=f"programs:{listing.made}", keep_seconds=settings.L2_LIST_PAGE_CACHE_SECONDS)
    if wants_partial(request):
        push_url(response, reverse("program-list") + query_string(values, page=listing.number).rstrip("?"))
    return response


# --- Program page -----------------------------------------------------------------------
def _program_or_404(ipeid: str) -> ObservingProgram:
    try:
        return selectors.program_detail(ipeid)
    except ObservingProgram.DoesNotExist:
        raise Http404(f"No Observing Program {ipeid}")


def program_context(request, program: ObservingProgram, *, report_form=None, report_error: str = "") -> dict:
    user = request.user
    r = roles(user)
    history = list(program.transitions.all())
    for t in history:
        t.from_label = state_label(t.from_state) if t.from_state else ""
        t.details_text = (
            json.dumps(t.details, indent=2, sort_keys=True, default=str)
            if t.details and t.to_state not in selectors.QUALIFIED
            else ""
        )
    datasets = list(program.datasets.all())
    current = [d for d in datasets if not d.superseded]
    show_superseded = request.GET.get("superseded") == "1"
    shown = datasets if show_superseded else current
    now = timezone.now()
    state = program.state
    mine = program.claimed_by_id == user.pk
    stale = state == State.WORKING and program.claimed_at is not None and program.claimed_at < selectors.stale_before()
    error = next((t for t in reversed(history) if t.to_state == State.ERROR), None) if state == State.ERROR else None
    # not while reported results are being fetched and checked (the publishing part shows that)
    can_report = r["is_science"] and state == State.WORKING and mine and not program.work_orders.filter(
        kind=WorkOrder.Kind.INTAKE, status__in=WorkOrder.ACTIVE).exists()
    if can_report and report_form is None:
        from publishing.selectors import last_software_commit

        report_form = ReportInvertedForm(
            datasets=current, collections=list(settings.L2_COLLECTIONS),
            # where the science team received the program's data: the usual place for its results
            initial={"collection": settings.L2_SCIENCE_COLLECTION, "path": pipeline.science_path(program) + "results/",
                     "dataset_ids": [d.dataset_id for d in current],
                     "software_commit": last_software_commit(user)},
        )
    return {
        "nav": "programs",
        "program": program,
        "history": list(reversed(history)),
        "history_count": len(history),
        "datasets": selectors.dataset_rows(shown),
        "superseded_count": len(datasets) - len(current),
        "show_superseded": show_superseded,
        "qualification": selectors.qualification(history),
        "fried": fried_plot(shown),
        "work": selectors.running_work(program),
        **preprocessing_context(program, r),
        "unsettled": state == State.DISCOVERED and program.settles_at is not None and program.settles_at > now,
        "stale": stale,
        "mine": mine,
        "error": error,
        "error_from": state_label(error.from_state) if error and error.from_state else "",
        "can_claim": r["is_science"] and state in (State.PREPROCESSED, State.QUEUED),
        "can_release": state == State.WORKING and ((r["is_science"] and mine) or r["is_admin"]),
        "release_to": State(lifecycle.claim_origin((t.from_state, t.to_state) for t in history)).label
        if state == State.WORKING else "",
        "can_report": can_report,
        "report_form": report_form,
        "report_error": report_error,
        "can_enqueue": r["is_operator"] and state == State.PREPROCESSED,
        "can_reprioritise": r["is_operator"] and state == State.QUEUED,
        "can_dequeue": r["is_operator"] and state == State.QUEUED,
        "can_retry": r["is_operator"] and state == State.ERROR,
        "can_requeue": r["is_operator"] and state == State.WORKING,
        "collections": list(settings.L2_COLLECTIONS),
        **r,
    }


def preprocessing_context(program: ObservingProgram, r: dict) -> dict:
    """The preprocessing card (partials/preprocessing.html): orders, cubes, quick-looks, actions."""
    summary = pipeline.summary(program)
    can = r["is_operator"] and program.state in pipeline.START_STATES and summary.active is None
    return {"preprocessing": summary, "can_preprocess": can}


@require_GET
def program_detail(request, ipeid: str):
    program = _program_or_404(ipeid)
    return render(request, "inversions/program_detail.html", program_context(request, program))


@require_GET
def program_progress(request, ipeid: str):
    """The live-progress partial of the program page (polled while work runs)."""
    program = get_object_or_404(ObservingProgram.objects.only("id", "instrument_program_execution_id"), instrument_program_execution_id=ipeid)
    work = selectors.running_work(program)
    response = render(request, "inversions/partials/work_progress.html", {"program": program, "work": work})
    if request.htmx and (work is None or not work.running):
        response["HX-Refresh"] = "true"  # it ended: the page shows the new state, outputs and history
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def quicklook(request, ipeid: str, order_id: int, name: str):
    """A quick-look PNG of a completed preprocessing order, streamed from scratch (logged-in users)."""
    program = get_object_or_404(ObservingProgram.objects.only("id", "instrument_program_execution_id"),
                                instrument_program_execution_id=ipeid)
    path = pipeline.quicklook_file(program, order_id, name)
    if path is None:
        raise Http404(f"No quick-look {name!r} for {program}")
    response = FileResponse(open(path, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


# --- Actions ----------------------------------------------------------------------------
def _target(ipeid: str) -> ObservingProgram:
    return get_object_or_404(ObservingProgram.objects.select_related("claimed_by"), instrument_program_execution_id=ipeid)


def _back(request, program: ObservingProgram) -> str:
    """Where an action on ``program`` returns to: a safe ``next``, else the program page (decided before acting)."""
    return safe_next(request, reverse("program-detail", args=[program.instrument_program_execution_id]))


def _done(request, back: str):
    """After an action: the queue partial for HTMX swaps from the queue page, else a redirect to ``back``."""
    if wants_partial(request) and request.POST.get("from") == "queue":
        return queue_response(request, partial=True)
    return HttpResponseRedirect(back)


def _act(request, program, action, success):
    """Run ``action``; ``success`` is the message (or makes it, from the action's history row)."""
    back = _back(request, program)
    try:
        row = action()
    except (lifecycle.LifecycleError, ObservingProgram.DoesNotExist) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, success(row) if callable(success) else success)
    return _done(request, back)


@require_POST
@require_role(is_science, "Only the science team claims programs.")
def claim(request, ipeid: str):
    program = _target(ipeid)
    return _act(request, program, lambda: lifecycle.claim(program, user=request.user), f"You are working on {program}.")


@require_POST
@require_role(is_science, "Only the science team releases claims.")
def release(request, ipeid: str):
    program = _target(ipeid)
    if program.state == State.WORKING and program.claimed_by_id != request.user.pk and not is_admin(request.user):
        who = program.claimed_by.get_username() if program.claimed_by else "nobody"
        raise PermissionDenied(f"{program} is claimed by {who}: only they (or an operator, with Requeue) can release it.")
    # back where the claim came from (Preprocessed or Queued): enqueueing is the operators' to do
    return _act(
        request, program, lambda: lifecycle.release(program, user=request.user),
        lambda row: f"Released {program} (now {State(row.to_state).label}).",
    )


@require_POST
@require_role(is_science, "Only the science team picks programs.")
def pick_next(request):
    try:
        program = lifecycle.claim_next(user=request.user)
    except lifecycle.LifecycleError as exc:
        messages.error(request, str(exc))
        return redirect("queue")
    if program is None:
        messages.info(request, "Nothing is waiting: no program is Queued or Preprocessed.")
        return redirect("queue")
    messages.success(request, f"You are working on {program}.")
    return redirect("program-detail", ipeid=program.instrument_program_execution_id)


PRIORITY_PROBLEM = "Priority must be a whole number between -1000 and 1000."


def _priority(request) -> int | None:
    form = PriorityForm(request.POST)
    if form.is_valid():
        return form.cleaned_data["priority"]
    return None


def _bad_priority(request, program):
    """400: the page (or, for HTMX, the message the base template shows) names the problem."""
    from l2site.pages import problem

    raw = request.POST.get("priority", "")[:20]
    return problem(request, f"{PRIORITY_PROBLEM} “{raw}” is not." if raw else f"{PRIORITY_PROBLEM} None was given.",
                   title="Priority not set", back_url=reverse("program-detail", args=[program.instrument_program_execution_id]),
                   back_label="Back to the program")


@require_POST
@require_role(is_operator, "Only operators put programs in the queue.")
def enqueue(request, ipeid: str):
    program = _target(ipeid)
    priority = _priority(request)
    if priority is None:
        return _bad_priority(request, program)
    return _act(
        request, program,
        lambda: lifecycle.enqueue(program, user=request.user, priority=priority, reason=f"work on this next (priority {priority})"),
        f"{program} is in the queue with priority {priority}.",
    )


@require_POST
@require_role(is_operator, "Only operators set priorities.")
def set_priority(request, ipeid: str):
    program = _target(ipeid)
    priority = _priority(request)
    if priority is None:
        return _bad_priority(request, program)
    if program.state == State.PREPROCESSED:
        return enqueue(request, ipeid)
    return _act(
        request, program, lambda: lifecycle.reprioritise(program, user=request.user, priority=priority),
        f"{program} now has priority {priority}.",
    )


@require_POST
@require_role(is_operator, "Only operators take programs out of the queue.")
def dequeue(request, ipeid: str):
    program = _target(ipeid)
    return _act(request, program, lambda: lifecycle.dequeue(program, user=request.user), f"{program} left the queue.")


@require_POST
@require_role(is_operator, "Only operators retry failed programs.")
def retry(request, ipeid: str):
    program = _target(ipeid)
    back = _back(request, program)
    try:
        row = lifecycle.retry(program, user=request.user, reason="retried by an operator")
    except lifecycle.LifecycleError as exc:
        messages.error(request, str(exc))
    else:
        again = pipeline.after_retry(program, user=request.user)  # Invertible: preprocess again now
        more = f" Preprocessing runs again (order #{again.order.pk})." if again else ""
        if again is None:  # Inverted: generation or publication again
            from publishing.pipeline import after_retry as publishing_after_retry

            redo = publishing_after_retry(program, user=request.user)
            more = f" {redo[0]} runs again (order #{redo[1].order.pk})." if redo and redo[1].created else ""
        messages.success(request, f"{program} is back to {State(row.to_state).label}.{more}")
    return _done(request, back)


@require_POST
@require_role(is_operator, "Only operators start preprocessing.")
def preprocess(request, ipeid: str):
    """Start preprocessing now; ``force`` redoes it even when the inputs did not change."""
    program = _target(ipeid)
    back = _back(request, program)
    forced = request.POST.get("force", "").lower() in ("1", "true", "on", "yes")
    try:
        result = pipeline.start(program, user=request.user, forced=forced)
    except pipeline.StartRefused as exc:
        messages.error(request, str(exc))
    else:
        if result.created:
            how = " (forced: even if its inputs did not change)" if forced else ""
            messages.success(request, f"Preprocessing of {program} started{how}: order #{result.order.pk}.")
        else:
            messages.info(request, f"Preprocessing of {program} is already under way: {result.reason}.")
    return _done(request, back)


@require_POST
@require_role(is_operator, "Only operators requeue claimed programs.")
def requeue(request, ipeid: str):
    program = _target(ipeid)
    holder = program.claimed_by.get_username() if program.claimed_by else "nobody"
    since = timezone.localtime(program.claimed_at).strftime("%Y-%m-%d %H:%M") if program.claimed_at else "?"
    return _act(
        request, program,
        lambda: lifecycle.release(program, user=request.user, to_state=State.QUEUED,
                                  reason=f"requeued by an operator (claimed by {holder} since {since})"),
        f"{program} is back in the queue (it was claimed by {holder}).",
    )


@require_POST
@require_role(is_science, "Only the science team reports programs inverted.")
def report_inverted(request, ipeid: str):
    from publishing.intake import ReportRejected, submit_report

    program = _program_or_404(ipeid)
    current = [d for d in program.datasets.all() if not d.superseded]
    form = ReportInvertedForm(request.POST, datasets=current, collections=list(settings.L2_COLLECTIONS))
    problems = report_problems({k: request.POST.get(k, "") for k in ("collection", "path", "software_commit", "notes")}
                               | {"dataset_ids": request.POST.getlist("dataset_ids")}, [d.dataset_id for d in current])
    if problems:
        form.is_valid()
        for field, problem in problems:
            if field in form.fields and not form.has_error(field):
                form.add_error(field, problem)
        error = "Not reported. " + " ".join(p for _, p in problems)
    elif form.is_valid():
        data = form.cleaned_data
        try:
            submit_report(
                program,
                user=request.user,
                actor=request.user.get_username(),
                collection=data["collection"],
                path=data["path"],
                software_commit=data["software_commit"],
                dataset_ids=list(data["dataset_ids"]),
                notes=data["notes"],
                source={"form": request.user.get_username()},
            )
        except ReportRejected as exc:
            if exc.field and exc.field in form.fields:
                form.add_error(exc.field, in_words(exc.message))
            error = f"Not reported. {in_words(exc.message)}"
        else:
            messages.success(request, f"Results of {program} reported: a worker fetches and checks the files now. "
                                      "It becomes Inverted once they pass; the verdict appears on this page.")
            return redirect("program-detail", ipeid=ipeid)
    else:
        error = "Not reported. " + " ".join(str(e) for errors in form.errors.values() for e in errors)
    messages.error(request, error)
    program = _program_or_404(ipeid)
    context = program_context(request, program, report_form=form, report_error=error)
    return render(request, "inversions/program_detail.html", context, status=400)


# --- Queue ------------------------------------------------------------------------------
def queue_response(request, *, partial: bool):
    counts = selectors.state_counts()
    per_page = settings.L2_PAGE_SIZE
    page = paginate(request, selectors.queued(), per_page)
    r = roles(request.user)
    context = {
        "nav": "queue",
        "page": page,
        "first_position": page.start_index(),
        "ready": list(selectors.ready()[:per_page]),
        "ready_count": counts[State.PREPROCESSED],
        "working": list(selectors.working()[:per_page]),
        "working_count": counts[State.WORKING],
        "queued_count": counts[State.QUEUED],
        "stale_before": selectors.stale_before(),
        "stale_hours": settings.L2_STALE_CLAIM_HOURS,
        "partial": partial,
        **r,
    }
    template = "inversions/partials/queue_body.html" if partial else "inversions/queue.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


@require_GET
def queue(request):
    return queue_response(request, partial=wants_partial(request))
