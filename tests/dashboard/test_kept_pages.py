"""The program list keeps each page it makes while no program changes (``L2_LIST_PAGE_CACHE_SECONDS``).

A kept page costs the session, the user and the change marker; it is the page a fresh request
makes, to the byte; any change to a listed program (a transition, a scan's write) shows on the
next request; what a page number was clamped to is said again each time. The whole page is
kept too, for each user (``l2site.viewhelpers.kept_render``): rendered once, answered with the
request's own CSRF token, never another user's, and not kept while a message waits to be shown.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone as dt_timezone

import pytest
from django.contrib.messages import constants
from django.contrib.messages.storage.base import Message
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.cache import cache
from django.test import Client, RequestFactory
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from inversions import lifecycle
from inversions.models import ObservingProgram
from inversions.states import State

pytestmark = pytest.mark.django_db

MARKER = 'MAX("inversions_transition"."id")'
ROWS = 'AS "description_head"'  # the page's rows (program_table)


@pytest.fixture
def kept(settings):
    """Kept pages on (the test settings make every page again), the cache empty."""
    settings.L2_LIST_PAGE_CACHE_SECONDS = 30
    cache.clear()
    yield
    cache.clear()


def table(page) -> str:
    """The ``#program-table`` (the part that is kept) of a response or of its HTML, as sent."""
    html = page if isinstance(page, str) else page.content.decode()
    found = re.search(r'<div id="program-table".*?</main>', html, re.S)
    assert found, html[:500]
    return found.group(0)


def count(response) -> int:
    """The number of programs the page says match."""
    found = re.search(r'data-testid="result-count">(\d+)<', response.content.decode())
    assert found, response.content.decode()[:500]
    return int(found.group(1))


CSRF = re.compile(r'(name="csrfmiddlewaretoken" value="|"X-CSRFToken": ")([A-Za-z0-9]{64})"')


def tokens(response) -> list[str]:
    """The CSRF tokens the page holds (the HTMX headers' and the log-out form's)."""
    return [m.group(2) for m in CSRF.finditer(response.content.decode())]


def statements(client, *args, **kwargs):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(*args, **kwargs)
    assert response.status_code == 200
    return response, [q["sql"] for q in ctx.captured_queries]


def test_a_kept_page_costs_the_change_marker_only_and_is_the_page_made_fresh(client, scientist, make_program,
                                                                             settings, kept):
    client.force_login(scientist)
    for i in range(7):
        make_program(State.QUEUED if i % 2 else State.INVERTIBLE, spectral_lines=["Fe I 630.15"],
                     experiment_description=f"a program <number> {i}")
    url = reverse("program-list")
    params = {"state": "queued", "sort": "program"}
    client.get(url, params)  # made (and kept)
    response, sql = statements(client, url, params)
    assert len(sql) == 3, sql  # the session, the user, the change marker
    assert MARKER in sql[2] and not any("COUNT(" in q or ROWS in q for q in sql)
    assert count(response) == 3
    settings.L2_LIST_PAGE_CACHE_SECONDS = 0  # made again on every request
    fresh, sql = statements(client, url, params)
    assert any("COUNT(" in q for q in sql) and any(ROWS in q for q in sql)
    assert table(response) == table(fresh)
    assert "a program &lt;number&gt; 1" in table(response)


def test_a_program_that_changes_shows_on_the_next_request(client, scientist, make_program, kept):
    client.force_login(scientist)
    programs = [make_program(State.QUEUED) for _ in range(3)]
    url = reverse("program-list")
    for _ in range(2):
        response = client.get(url, {"state": "queued"})
    assert count(response) == 3
    assert table(response).count("state-queued") == 3
    # a transition (the life-cycle): counted and made again
    lifecycle.claim(programs[0], user=scientist)
    response, sql = statements(client, url, {"state": "queued"})
    assert any("COUNT(" in q for q in sql)
    assert count(response) == 2
    assert programs[0].instrument_program_execution_id not in table(response)
    response = client.get(url)
    assert f"by {scientist.username}" in table(response)
    # a scan's write without a transition (it sets updated_at): made again as well
    client.get(url, {"state": "queued"})
    ObservingProgram.objects.filter(pk=programs[1].pk).update(dataset_count=41, updated_at=timezone.now())
    response = client.get(url, {"state": "queued", "sort": "program"})
    client.get(url, {"state": "queued"})
    response = client.get(url, {"state": "queued"})
    assert '<td class="num">41</td>' in table(response)


def test_each_page_sort_and_filter_is_kept_on_its_own(client, scientist, make_program, kept, settings):
    settings.L2_PAGE_SIZE = 2
    client.force_login(scientist)
    for i in range(5):
        make_program(State.QUEUED, ipeid=f"id.kept.{i}")
    url = reverse("program-list")
    seen = {}
    for params in ({"sort": "program"}, {"sort": "program", "page": "2"}, {"sort": "-program"},
                   {"sort": "program", "state": "working"}):
        client.get(url, params)
        seen[tuple(params.items())] = table(client.get(url, params))
    assert len(set(seen.values())) == 4
    assert "id.kept.0" in seen[(("sort", "program"),)] and "id.kept.2" in seen[(("sort", "program"), ("page", "2"))]
    assert "id.kept.4" in seen[(("sort", "-program"),)]
    assert "No programs" in seen[(("sort", "program"), ("state", "working"))]


def test_a_clamped_page_number_is_said_again_from_a_kept_page(client, scientist, make_program, kept, settings):
    settings.L2_PAGE_SIZE = 2
    client.force_login(scientist)
    for _ in range(3):
        make_program(State.QUEUED)
    url = reverse("program-list")
    for _ in range(2):
        response, sql = statements(client, url, {"page": "999"})
        assert "There is no page 999: showing the last (2)." in response.content.decode()
    assert len(sql) == 3  # the second came from the kept page
    # an HTMX swap from the kept page: its clamped page in the address bar, the note out of band
    response, sql = statements(client, url, {"page": "999"}, HTTP_HX_REQUEST="true")
    assert len(sql) == 3
    assert response["HX-Push-Url"] == url + "?page=2"
    assert 'hx-swap-oob' in response.content.decode() and "There is no page 999" in response.content.decode()
    response = client.get(url, {"page": "x"})
    assert "Ignored page &#x27;x&#x27;: not a page number." in response.content.decode()


def test_a_kept_page_belongs_to_its_time_zone(client, scientist, make_program, kept):
    client.force_login(scientist)
    make_program(State.QUEUED, start_time=datetime(2024, 4, 22, 17, 0, tzinfo=dt_timezone.utc))
    url = reverse("program-list")
    for _ in range(2):
        utc = client.get(url)
    with timezone.override("Asia/Tokyo"):
        for _ in range(2):
            tokyo = client.get(url)
    assert "2024-04-22 17:00" in table(utc) and "2024-04-23 02:00" in table(tokyo)


def test_no_page_is_kept_when_pages_are_off(client, scientist, make_program, settings):
    settings.L2_LIST_PAGE_CACHE_SECONDS = 0
    settings.L2_COUNT_CACHE_MIN_MS = 0  # the count is kept: only the page's rows are read each time
    cache.clear()
    client.force_login(scientist)
    make_program(State.QUEUED)
    url = reverse("program-list")
    for _ in range(3):
        response, sql = statements(client, url)
    assert any(ROWS in q for q in sql) and not any("COUNT(" in q for q in sql)
    cache.clear()


def test_the_whole_page_is_kept_and_answered_with_a_fresh_csrf_token(scientist, make_program, settings, kept):
    client = Client(enforce_csrf_checks=True)
    client.force_login(scientist)
    make_program(State.QUEUED, experiment_description="a kept program")
    url = reverse("program-list")
    made = client.get(url, {"state": "queued"})
    assert made.templates, "the first request renders the page"
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):  # the whole page, and the HTMX swap's table
        first, second = client.get(url, {"state": "queued"}, **headers), client.get(url, {"state": "queued"}, **headers)
        if not headers:
            assert first.templates == [] and second.templates == []  # no template rendered: the kept page
            # one token per request, in both places, as a rendered page has it; masked anew each time
            assert len(tokens(first)) == 2 and len(set(tokens(first))) == 1 and set(tokens(first)) != set(tokens(second))
            assert CSRF.sub("", first.content.decode()) == CSRF.sub("", made.content.decode())
        else:
            assert 'hx-swap-oob="true"' in first.content.decode() and "<header" not in first.content.decode()
        assert CSRF.sub("", first.content.decode()) == CSRF.sub("", second.content.decode())
        assert first["Vary"] == made["Vary"] and first["Content-Type"] == made["Content-Type"]
    settings.L2_LIST_PAGE_CACHE_SECONDS = 0
    fresh = client.get(url, {"state": "queued"})
    assert CSRF.sub("", fresh.content.decode()) == CSRF.sub("", made.content.decode())
    # the kept page's token is this session's: the log-out form posts with it
    settings.L2_LIST_PAGE_CACHE_SECONDS = 30
    token = tokens(client.get(url, {"state": "queued"}))[1]
    assert client.post(reverse("logout"), {"csrfmiddlewaretoken": token}).status_code == 302
    assert client.get(url).status_code == 302  # logged out: to the login page


def test_a_kept_page_is_never_another_users(client, scientist, admin_user, make_user, make_program, kept):
    make_program(State.QUEUED)
    url = reverse("program-list")
    other = make_user("hanna", "science")
    pages = {}
    for user in (scientist, other, admin_user):
        client.force_login(user)
        client.get(url)
        pages[user.username] = client.get(url).content.decode()
    for name, html in pages.items():
        assert f"<span>{name}</span>" in html
        assert (f'href="{reverse("admin:index")}">Admin</a>' in html) is (name == admin_user.username)
    assert table(pages[scientist.username]) == table(pages[other.username]) == table(pages[admin_user.username])


def test_a_message_waiting_is_shown_on_a_kept_page_once(client, scientist, make_program, kept):
    client.force_login(scientist)
    make_program(State.QUEUED)
    url = reverse("program-list")
    client.get(url), client.get(url)  # kept
    storage = CookieStorage(RequestFactory().get(url))
    client.cookies["messages"] = storage._encode([Message(constants.SUCCESS, "Claimed id.waiting.1")])
    shown = client.get(url)
    assert shown.templates and "Claimed id.waiting.1" in shown.content.decode()  # rendered, with the message
    again = client.get(url)
    assert "Claimed id.waiting.1" not in again.content.decode()  # shown once
    assert again.templates == [] and table(again) == table(shown)
