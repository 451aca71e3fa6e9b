"""The program list: filters, sorting, pagination, HTMX partials and history restores."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from django.urls import reverse

from inversions.models import ObservingProgram
from inversions.states import State

pytestmark = pytest.mark.django_db

URL = "/programs/"


def listed(response) -> list[str]:
    """Program ids in the table, in order."""
    html = response.content.decode()
    table = html.split('<table class="programs">', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<td class="ident"><a href="/programs/([^/]+)/">', table)


@pytest.fixture
def catalogue(make_op, scientist):
    """Five programs of two proposals, two instruments, three dates, various states."""
    a = make_op(State.QUEUED, ipeid="id.1001.aa", description="Sunspot penumbra raster, Fe I and Ca II",
                start_time=datetime(2023, 10, 16, 18, 0, tzinfo=timezone.utc))
    b = make_op(State.WORKING, ipeid="id.1002.bb", claimant=scientist, description="Quiet Sun network",
                start_time=datetime(2024, 4, 22, 17, 0, tzinfo=timezone.utc))
    c = make_op(State.NOT_INVERTIBLE, ipeid="id.1003.cc", description="Flare watch, Stokes I only",
                start_time=datetime(2023, 10, 17, 9, 0, tzinfo=timezone.utc))
    d = make_op(State.INVERTIBLE, source="id.85415.255722", ipeid="id.2001.dd", description="Pore magnetic field",
                start_time=datetime(2022, 6, 3, 19, 0, tzinfo=timezone.utc))
    e = make_op(State.DISCOVERED, source="id.136843.87520", ipeid="id.3001.ee", description="VBI context",
                start_time=datetime(2024, 4, 23, 17, 0, tzinfo=timezone.utc))
    return {p.instrument_program_execution_id: p for p in (a, b, c, d, e)}


@pytest.fixture
def logged_in(client, scientist):
    client.force_login(scientist)
    return client


def test_default_order_is_newest_observed_first(logged_in, catalogue):
    assert listed(logged_in.get(URL)) == ["id.3001.ee", "id.1002.bb", "id.1003.cc", "id.1001.aa", "id.2001.dd"]


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"state": "working"}, ["id.1002.bb"]),
        ({"instrument": "vbi"}, ["id.3001.ee"]),
        ({"proposal": "pid_1_118"}, ["id.2001.dd"]),
        ({"line": "Ca II 854.21"}, ["id.1002.bb", "id.1003.cc", "id.1001.aa", "id.2001.dd"]),
        ({"line": "Na I D1 589.59"}, ["id.1002.bb", "id.1003.cc", "id.1001.aa"]),  # pid_1_118 has no Na arm
        ({"observed_from": "2023-10-16", "observed_to": "2023-10-16"}, ["id.1001.aa"]),
        ({"observed_from": "2024-01-01"}, ["id.3001.ee", "id.1002.bb"]),
        ({"observed_to": "2023-10-17"}, ["id.1003.cc", "id.1001.aa", "id.2001.dd"]),
        ({"q": "quiet sun"}, ["id.1002.bb"]),  # experiment description, any case
        ({"q": "1003"}, ["id.1003.cc"]),  # program id
        ({"q": "eid_1_118"}, ["id.2001.dd"]),  # experiment id
        ({"q": "opTKdpvo"}, ["id.3001.ee", "id.1003.cc"]),  # observing program execution (VBI and ViSP share it)
        ({"q": "penumbra", "state": "queued"}, ["id.1001.aa"]),
        ({"q": "penumbra", "state": "working"}, []),
    ],
)
def test_filters(logged_in, catalogue, params, expected):
    response = logged_in.get(URL, params)
    assert response.status_code == 200
    assert listed(response) == expected


@pytest.mark.parametrize(
    "sort, expected",
    [
        ("observed", ["id.2001.dd", "id.1001.aa", "id.1003.cc", "id.1002.bb", "id.3001.ee"]),
        ("program", ["id.1001.aa", "id.1002.bb", "id.1003.cc", "id.2001.dd", "id.3001.ee"]),
        ("-program", ["id.3001.ee", "id.2001.dd", "id.1003.cc", "id.1002.bb", "id.1001.aa"]),
        ("state", ["id.3001.ee", "id.2001.dd", "id.1003.cc", "id.1001.aa", "id.1002.bb"]),
        ("-datasets", ["id.3001.ee", "id.1002.bb", "id.1003.cc", "id.1001.aa", "id.2001.dd"]),
    ],
)
def test_sorting(logged_in, catalogue, sort, expected):
    assert listed(logged_in.get(URL, {"sort": sort})) == expected


def test_column_headers_toggle_the_sort_and_keep_the_filter(logged_in, catalogue):
    html = logged_in.get(URL, {"state": "queued", "sort": "program"}).content.decode()
    assert 'aria-sort="ascending"' in html
    assert 'href="/programs/?state=queued&amp;sort=-program"' in html  # same column again: reversed
    assert 'href="/programs/?state=queued&amp;sort=-observed"' not in html  # the default sort is left out
    assert 'href="/programs/?state=queued"' in html  # "Observed" goes back to the default


def test_pagination_keeps_the_filter(logged_in, make_op, settings):
    settings.L2_PAGE_SIZE = 2
    for i in range(5):
        make_op(State.PREPROCESSED, ipeid=f"id.page.{i}", start_time=datetime(2023, 1, 1 + i, tzinfo=timezone.utc))
    make_op(State.QUEUED, ipeid="id.page.other")
    first = logged_in.get(URL, {"state": "preprocessed"})
    assert listed(first) == ["id.page.4", "id.page.3"]
    assert "Page 1 of 3" in first.content.decode()
    assert 'href="/programs/?state=preprocessed&amp;page=2"' in first.content.decode()
    assert listed(logged_in.get(URL, {"state": "preprocessed", "page": "3"})) == ["id.page.0"]


@pytest.mark.parametrize(
    "params, note",
    [
        ({"page": "abc"}, "Ignored page &#x27;abc&#x27;"),
        ({"page": "99"}, "There is no page 99"),
        ({"page": "-4"}, "There is no page -4"),
        ({"sort": "nonsense"}, "Ignored sort"),
        ({"observed_from": "garbage"}, "Ignored observed from &#x27;garbage&#x27;"),
        ({"state": "melted"}, "Ignored state &#x27;melted&#x27;"),
        ({"observed_from": "2024-05-01", "observed_to": "2023-01-01"}, "swapped them"),
    ],
)
def test_bad_parameters_are_ignored_with_a_note(logged_in, catalogue, params, note):
    response = logged_in.get(URL, params)
    assert response.status_code == 200
    assert note in response.content.decode()
    assert listed(response)  # the page still lists programs


def test_htmx_request_gets_the_table_only_with_the_canonical_url(logged_in, catalogue):
    response = logged_in.get(URL, {"q": "", "state": "working", "instrument": "", "sort": "-observed"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert "<html" not in html and '<table class="programs">' in html
    assert listed(response) == ["id.1002.bb"]
    assert response["HX-Push-Url"] == "/programs/?state=working"  # empty and default values left out
    assert "HX-Request" in response["Vary"]
    assert 'id="messages" aria-live="polite" hx-swap-oob="true"' in html  # messages travel with the swap
    assert '<select id="id_sort" name="sort" hx-swap-oob="true">' in html


def test_htmx_partial_carries_notes_about_bad_values(logged_in, catalogue):
    html = logged_in.get(URL, {"observed_to": "31/31/2024"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Ignored observed to" in html.split('hx-swap-oob="true"', 1)[1]


def test_history_restore_gets_the_full_page(logged_in, catalogue):
    response = logged_in.get(URL, {"state": "working"}, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    html = response.content.decode()
    assert html.startswith("<!doctype html>") and '<form id="filters"' in html
    assert '<option value="working" selected>' in html
    assert listed(response) == ["id.1002.bb"]
    assert "HX-Push-Url" not in response


def test_full_page_shows_the_filter_it_was_asked_for(logged_in, catalogue):
    html = logged_in.get(URL, {"q": "penumbra", "observed_from": "2023-10-01", "line": "Ca II 854.21"}).content.decode()
    assert 'name="q" value="penumbra"' in html
    assert 'name="observed_from" value="2023-10-01"' in html
    assert '<option value="Ca II 854.21" selected>' in html


def test_state_badges_show_claim_and_settling(logged_in, catalogue):
    html = logged_in.get(URL).content.decode()
    row = html.split("id.1002.bb</a>", 1)[1].split("</tr>", 1)[0]
    assert "Working" in row and "by han" in row


def test_fuzzed_parameters_never_fail(logged_in, catalogue):
    nasty = ["", "'", "\"", "%", "%%", "\\", "<script>", "0", "-1", "1e9", "9" * 40, "2024-02-30", "NaN", "null",
             "é", "a" * 500, "[]", "{}", "--", "/*", "1;DROP TABLE x", "9999-12-31", "0001-01-01"]
    fields = ["q", "state", "instrument", "proposal", "line", "observed_from", "observed_to", "sort", "page", "superseded"]
    for value in nasty:
        for field in fields:
            response = logged_in.get(URL, {field: value})
            assert response.status_code == 200, (field, value)
            partial = logged_in.get(URL, {field: value}, HTTP_HX_REQUEST="true")
            assert partial.status_code == 200, (field, value)
    program = next(iter(catalogue.values()))
    for value in nasty:
        for url in (reverse("program-detail", args=[str(program)]), reverse("queue"), reverse("scan-list"), reverse("overview")):
            assert logged_in.get(url, {"page": value, "superseded": value}).status_code == 200, (url, value)
    for field in fields:  # NUL: refused with the reason, by the rule of every entry point (l2site/inputs.py)
        response = logged_in.get(URL, {field: "a\x00b"})
        assert response.status_code == 400 and "NUL" in response.content.decode(), field
    assert ObservingProgram.objects.count() == 5
