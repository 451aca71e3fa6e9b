"""My work: "My programs", notes on a program, and the filtered program list as CSV.

- ``/my/``: the programs I hold (Working), those I reported (their inversions), and those in
  Error that I claimed or reported: three fixed queries.
- ``POST /programs/<id>/notes``: an append-only note (author, time), shown in the history.
- ``/programs/export.csv?<the list's filter>``: every program the filter finds (not one page),
  streamed row by row.
"""
from __future__ import annotations

import csv

from django.contrib import messages
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from inversions import selectors
from inversions.forms import filter_programs, parse_filter
from inversions.models import ObservingProgram, ProgramNote
from inversions.states import State
from l2site.pages import problem

MAX_NOTE = 5000
CSV_COLUMNS = ("instrument_program_execution_id", "state", "instrument_name", "primary_proposal_id",
               "primary_experiment_id", "spectral_lines", "observed", "dataset_count", "priority", "claimant",
               "description_head")


class _Echo:
    def write(self, value):
        return value


@require_GET
def program_csv(request):
    values, _notes = parse_filter(request.GET)
    rows = filter_programs(selectors.program_table(), values)
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(CSV_COLUMNS)
        for r in rows.iterator(chunk_size=2000):
            yield writer.writerow([";".join(r[c]) if c == "spectral_lines" else (r[c] if r[c] is not None else "")
                                   for c in CSV_COLUMNS])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="l2-programs.csv"'
    return response


@require_GET
def my_programs(request):
    from publishing.models import Inversion

    user = request.user
    base = ObservingProgram.objects.only(
        "instrument_program_execution_id", "state", "instrument_name", "primary_proposal_id", "spectral_lines",
        "claimed_at", "state_changed_at")
    claimed = list(base.filter(state=State.WORKING, claimed_by=user).order_by("-claimed_at"))
    reported = list(Inversion.objects.filter(reported_by_user=user).select_related("program")
                    .only("inversion_id", "reported_at", "software_commit", "store_recorded_at", "program__state",
                          "program__instrument_program_execution_id", "program__instrument_name")
                    .order_by("-reported_at")[:100])
    errors = list(base.filter(Q(claimed_by=user) | Q(inversions__reported_by_user=user), state=State.ERROR)
                  .distinct().order_by("-state_changed_at")[:100])
    return render(request, "inversions/my_programs.html",
                  {"nav": "mine", "claimed": claimed, "reported": reported, "errors": errors})


@require_POST
def add_note(request, ipeid: str):
    program = get_object_or_404(ObservingProgram.objects.only("id", "instrument_program_execution_id"),
                                instrument_program_execution_id=ipeid)
    text = (request.POST.get("text") or "").replace("\x00", "").strip()
    back = reverse("program-detail", args=[ipeid]) + "#history"
    if not text:
        return problem(request, "The note is empty: write something first.", title="Note not added",
                       back_url=back, back_label="Back to the program")
    if len(text) > MAX_NOTE:
        return problem(request, f"A note is at most {MAX_NOTE} characters; this one has {len(text)}.",
                       title="Note not added", back_url=back, back_label="Back to the program")
    ProgramNote.objects.create(program=program, author=request.user, text=text)
    messages.success(request, "Note added to the history.")
    return redirect(back)
