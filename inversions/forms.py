"""Forms of the dashboard: the program filter, queue priorities, and the inverted report."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from urllib.parse import urlencode

from django import forms
from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import F, Lookup, Q
from django.http import QueryDict
from django.utils import timezone

from inversions.models import ExperimentDescription
from inversions.states import State
from l2site.inputs import reject_bad_text

#: sort key in the URL -> ORDER BY (a unique tie-breaker is appended: stable pages)
SORTS: dict[str, tuple[str, ...]] = {
    "observed": ("start_time",),
    "-observed": ("-start_time",),
    "program": ("instrument_program_execution_id",),
    "-program": ("-instrument_program_execution_id",),
    "proposal": ("primary_proposal_id", "-start_time"),
    "-proposal": ("-primary_proposal_id", "-start_time"),
    "instrument": ("instrument_name", "-start_time"),
    "-instrument": ("-instrument_name", "-start_time"),
    "state": ("state", "-start_time"),
    "-state": ("-state", "-start_time"),
    "changed": ("state_changed_at",),
    "-changed": ("-state_changed_at",),
    "datasets": ("dataset_count", "-start_time"),
    "-datasets": ("-dataset_count", "-start_time"),
}
DEFAULT_SORT = "-observed"
SORT_LABELS = {
    "-observed": "Newest observed",
    "observed": "Oldest observed",
    "-changed": "Recently changed",
    "changed": "Longest unchanged",
    "program": "Program id A–Z",
    "-program": "Program id Z–A",
    "proposal": "Proposal A–Z",
    "-proposal": "Proposal Z–A",
    "instrument": "Instrument A–Z",
    "-instrument": "Instrument Z–A",
    "state": "State A–Z",
    "-state": "State Z–A",
    "-datasets": "Most datasets",
    "datasets": "Fewest datasets",
}
SORT_CHOICES = [(k, SORT_LABELS[k]) for k in SORT_LABELS]
FILTER_FIELDS = ("q", "state", "instrument", "proposal", "line", "observed_from", "observed_to")


class ProgramFilterForm(forms.Form):
    """The filter of the program list. Bad values are dropped (with a note), never a 500."""

    q = forms.CharField(required=False, max_length=200, label="Search ids and description")
    state = forms.ChoiceField(required=False, choices=[("", "Any state")] + list(State.choices))
    instrument = forms.CharField(required=False, max_length=50)
    proposal = forms.CharField(required=False, max_length=100)
    line = forms.CharField(required=False, max_length=40, label="Spectral line")
    observed_from = forms.DateField(required=False, label="Observed from", widget=forms.DateInput(attrs={"type": "date"}))
    observed_to = forms.DateField(required=False, label="Observed to", widget=forms.DateInput(attrs={"type": "date"}))
    sort = forms.ChoiceField(required=False, choices=SORT_CHOICES)

    def values(self) -> tuple[dict, list[str]]:
        """The valid filter values (empty ones left out) and a note per ignored value."""
        self.is_valid()
        clean = {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        notes = []
        for name, errors in self.errors.items():
            raw = str(self.data.get(name, ""))[:40]
            label = self.fields[name].label or name.replace("_", " ")
            notes.append(f"Ignored {label.lower()} {raw!r}: {' '.join(errors)}")
        if clean.get("observed_from") and clean.get("observed_to") and clean["observed_from"] > clean["observed_to"]:
            clean["observed_from"], clean["observed_to"] = clean["observed_to"], clean["observed_from"]
            notes.append("The observation dates were the wrong way round: swapped them.")
        for key in ("q", "instrument", "proposal", "line"):
            if key in clean:
                clean[key] = clean[key].strip()
                if not clean[key]:
                    del clean[key]
        clean.setdefault("sort", DEFAULT_SORT)
        return clean, notes


def parse_filter(data) -> tuple[dict, list[str]]:
    """``ProgramFilterForm(data).values()``, worked out once per distinct filter (it depends on nothing else).

    A Django form deep-copies its fields and runs every validator on each construction (a tenth
    of the list page's time); the list is asked for the same few filters again and again.
    """
    key = tuple((name, tuple(data.getlist(name))) for name in ProgramFilterForm.base_fields if name in data)
    values, notes = _parse_filter(key)
    return dict(values), list(notes)


@lru_cache(maxsize=1024)
def _parse_filter(key: tuple) -> tuple[dict, tuple[str, ...]]:
    data = QueryDict(mutable=True)
    for name, items in key:
        data.setlist(name, list(items))
    values, notes = ProgramFilterForm(data).values()
    return values, tuple(notes)


def filter_programs(qs, values: dict):
    """Apply the cleaned filter values to a program queryset, and its ordering."""
    from django.db.models import Q

    if values.get("state"):
        qs = qs.filter(state=values["state"])
    if values.get("instrument"):
        qs = qs.filter(instrument_name__iexact=values["instrument"])
    if values.get("proposal"):
        qs = qs.filter(primary_proposal_id__iexact=values["proposal"])
    if values.get("line"):
        qs = qs.filter(spectral_lines__contains=[values["line"]])
    tz = timezone.get_current_timezone()
    if values.get("observed_from"):
        qs = qs.filter(start_time__gte=timezone.make_aware(datetime.combine(values["observed_from"], time.min), tz))
    if values.get("observed_to") and values["observed_to"] < date.max:  # 9999-12-31: no end (and no next day)
        end = datetime.combine(values["observed_to"] + timedelta(days=1), time.min)
        qs = qs.filter(start_time__lt=timezone.make_aware(end, tz))
    if values.get("q"):
        text = values["q"]
        qs = qs.filter(
            Q(instrument_program_execution_id__icontains=text)
            | Q(observing_program_execution_id__icontains=text)
            | Q(primary_proposal_id__icontains=text)
            | Q(primary_experiment_id__icontains=text)
            | description_matches(text)
        )
    order = SORTS.get(values.get("sort") or DEFAULT_SORT, SORTS[DEFAULT_SORT])
    return qs.order_by(*order, "id")


class _EqualsAny(Lookup):
    """``lhs = ANY(rhs)``, rhs an array: unlike ``IN (subquery)`` PostgreSQL can use an index for it inside an OR."""

    lookup_name = "equals_any"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = compiler.compile(self.rhs)
        return f"{lhs} = ANY({rhs})", (*lhs_params, *rhs_params)


def description_matches(text: str) -> Q:
    """Programs whose experiment description contains ``text`` (any case).

    The texts are searched in ExperimentDescription (each text once, trigram-indexed); the
    programs are then found by experiment id (indexed), and their own description checked.
    """
    experiments = ExperimentDescription.objects.filter(description__icontains=text).order_by().values("experiment_id")
    return Q(_EqualsAny(F("primary_experiment_id"), ArraySubquery(experiments)), experiment_description__icontains=text)


def query_string(values: dict, **changes) -> str:
    """``?…`` for the filter ``values`` with ``changes`` (None removes a key); the default sort left out."""
    merged = {**values, **changes}
    params = []
    for key in (*FILTER_FIELDS, "sort", "page"):
        value = merged.get(key)
        if value in (None, "") or (key == "sort" and value == DEFAULT_SORT) or (key == "page" and value == 1):
            continue
        params.append((key, value.isoformat() if hasattr(value, "isoformat") else str(value)))
    return "?" + urlencode(params) if params else "?"


class PriorityForm(forms.Form):
    """Put a program in the queue / change its priority (higher first)."""

    priority = forms.IntegerField(min_value=-1000, max_value=1000, initial=0, label="Priority")


class ReportInvertedForm(forms.Form):
    """The dashboard's "report inverted" form; the checks themselves are in publishing.intake."""

    collection = forms.CharField(max_length=200, label="Globus collection", validators=[reject_bad_text])
    path = forms.CharField(
        max_length=1000,
        label="Path of the result files",
        help_text="The folder holding inv_res_mod.fits, inv_res_pre.fits and per_ori.fits, e.g. /inversions/pid_2_114/run-1",
        validators=[reject_bad_text],
    )
    software_commit = forms.CharField(max_length=40, label="Inversion software commit", help_text="7 to 40 hex digits",
                                      validators=[reject_bad_text])
    dataset_ids = forms.MultipleChoiceField(
        label="Datasets used", widget=forms.CheckboxSelectMultiple, error_messages={"required": "Tick at least one dataset."}
    )
    notes = forms.CharField(required=False, max_length=10_000, widget=forms.Textarea(attrs={"rows": 3}), label="Notes",
                            validators=[reject_bad_text])

    def __init__(self, *args, datasets=(), collections=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset_ids"].choices = [
            (d.dataset_id, f"{d.dataset_id} — {', '.join(d.spectral_lines or []) or 'no lines'} ({d.stokes_parameters or '?'})")
            for d in datasets
        ]
        if collections:
            self.fields["collection"].widget = forms.TextInput(attrs={"list": "known-collections"})
        self.collections = list(collections)
