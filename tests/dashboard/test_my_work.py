"""My work: My programs, append-only notes shown in the history, the filtered program list as CSV."""
from __future__ import annotations

import csv
import io

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inversions.models import ProgramNote
from inversions.states import State

pytestmark = pytest.mark.django_db


def test_csv_of_the_filtered_list_holds_every_match_in_fixed_queries(as_user, scientist, make_op, settings):
    settings.L2_PAGE_SIZE = 2
    working = [make_op(State.WORKING, claimant=scientist) for _ in range(3)]
    make_op(State.PREPROCESSED)
    client = as_user(scientist)
    url = reverse("program-csv") + "?state=working"
    with CaptureQueriesContext(connection) as few:
        response = client.get(url)
        body = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert response["Content-Type"].startswith("text/csv") and rows[0][0] == "instrument_program_execution_id"
    assert sorted(r[0] for r in rows[1:]) == sorted(str(p) for p in working)  # all 3, not one page of 2
    assert all(r[1] == "working" and r[9] == "han" for r in rows[1:])
    make_op(State.WORKING, claimant=scientist)
    with CaptureQueriesContext(connection) as more:
        b"".join(client.get(url).streaming_content)
    assert len(more) == len(few)
    page = client.get(reverse("program-list"), {"state": "working"}).content.decode()
    assert 'href="/programs/export.csv?state=working"' in page


def test_my_programs_lists_my_claims_reports_and_errors(as_user, scientist, make_user, make_op):
    other = make_user("luke", "science")
    mine = make_op(State.WORKING, claimant=scientist)
    theirs = make_op(State.WORKING, claimant=other)
    client = as_user(scientist)
    url = reverse("my-programs")
    client.get(url)
    with CaptureQueriesContext(connection) as few:
        html = client.get(url).content.decode()
    claims = html.split('data-testid="my-claims"', 1)[1].split("</section>", 1)[0]
    assert str(mine) in claims and str(theirs) not in claims
    make_op(State.WORKING, claimant=scientist)
    with CaptureQueriesContext(connection) as more:
        client.get(url)
    assert len(more) == len(few)


def test_a_note_is_added_shown_in_the_history_and_cannot_be_changed(as_user, scientist, make_op):
    program = make_op(State.PREPROCESSED)
    client = as_user(scientist)
    url = reverse("program-note", args=[str(program)])
    response = client.post(url, {"text": "Seeing poor after 18:55 — use the first half <b>only</b>"}, follow=True)
    html = response.content.decode()
    history = html.split('id="history"', 1)[1]
    assert "Seeing poor after 18:55" in history and "&lt;b&gt;only&lt;/b&gt;" in history and "by <strong>han</strong>" in history
    note = ProgramNote.objects.get()
    assert (note.program_id, note.author_id) == (program.pk, scientist.pk)
    assert client.post(url, {"text": "   "}).status_code == 400
    assert client.post(url, {"text": "x" * 5001}).status_code == 400
    assert client.get(url).status_code == 405
    assert ProgramNote.objects.count() == 1
    for change in (lambda: ProgramNote.objects.filter(pk=note.pk).update(text="rewritten"),
                   lambda: ProgramNote.objects.filter(pk=note.pk).delete()):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            change()
