"""List pages issue a fixed number of SQL queries whatever the number of rows."""
from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from inversions import lifecycle
from inversions.models import ObservingProgram
from inversions.states import State
from scanning.models import Scan, ScanRecordError

pytestmark = pytest.mark.django_db

MAX_LIST_QUERIES = 10  # DESIGN §13


def queries(client, url, params=None, **headers) -> int:
    client.get(url, params or {}, **headers)  # warm the filter-option cache
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, params or {}, **headers)
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.fixture
def grow(make_program, make_user):
    """Add ``n`` programs in a mix of states, some claimed by different users, some in error."""
    users = [make_user(f"sci{i}", "science") for i in range(3)]
    made = {"n": 0}

    def add(n: int):
        states = [State.QUEUED, State.WORKING, State.PREPROCESSED, State.ERROR, State.INVERTIBLE, State.DISCOVERED]
        for i in range(n):
            k = made["n"] + i
            make_program(states[k % len(states)], user=users[k % len(users)], spectral_lines=["Fe I 630.15", "Ca II 854.21"],
                         experiment_description=f"program number {k}")
        made["n"] += n
        cache.clear()

    return add


def counts_for(client, grow, url, params=None, **headers) -> tuple[int, int]:
    grow(3)
    few = queries(client, url, params, **headers)
    grow(27)
    many = queries(client, url, params, **headers)
    return few, many


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"state": "working", "sort": "-changed"},
        {"q": "number", "line": "Fe I 630.15", "instrument": "VISP", "observed_from": "2000-01-01", "sort": "program"},
        {"page": "2"},
    ],
)
def test_program_list_query_count_does_not_grow(client, scientist, grow, settings, params):
    settings.L2_PAGE_SIZE = 50
    client.force_login(scientist)
    few, many = counts_for(client, grow, reverse("program-list"), params)
    assert few == many <= MAX_LIST_QUERIES


def test_program_list_partial_query_count_does_not_grow(client, scientist, grow):
    client.force_login(scientist)
    few, many = counts_for(client, grow, reverse("program-list"), {"state": "queued"}, HTTP_HX_REQUEST="true")
    assert few == many <= MAX_LIST_QUERIES


@pytest.mark.parametrize("user", ["scientist", "operator"])
def test_queue_query_count_does_not_grow(request, client, grow, user):
    client.force_login(request.getfixturevalue(user))
    few, many = counts_for(client, grow, reverse("queue"))
    assert few == many <= MAX_LIST_QUERIES


def test_overview_query_count_does_not_grow(client, operator, grow, scientist):
    client.force_login(operator)
    # stale claims and errors are listed on the overview
    grow(3)
    ObservingProgram.objects.filter(state=State.WORKING).update(claimed_at="2000-01-01T00:00:00Z")
    few = queries(client, reverse("overview"))
    grow(27)
    ObservingProgram.objects.filter(state=State.WORKING).update(claimed_at="2000-01-01T00:00:00Z")
    many = queries(client, reverse("overview"))
    assert few == many <= 15


def test_scan_pages_query_count_does_not_grow(client, operator):
    client.force_login(operator)

    def add(n):
        for _ in range(n):
            scan = Scan.objects.create(status=Scan.Status.SUCCEEDED, errors=2)
            ScanRecordError.objects.bulk_create(
                [ScanRecordError(scan=scan, dataset_id=f"D{i}", field="frameCount", reason="not a count", raw={"x": i}) for i in range(2)]
            )
        return scan

    last = add(3)
    few = (queries(client, reverse("scan-list")), queries(client, reverse("scan-detail", args=[last.pk])))
    last = add(27)
    ScanRecordError.objects.bulk_create(
        [ScanRecordError(scan=last, dataset_id=f"E{i}", reason="bad", raw=None) for i in range(40)]
    )
    many = (queries(client, reverse("scan-list")), queries(client, reverse("scan-detail", args=[last.pk])))
    assert few == many
    assert max(many) <= MAX_LIST_QUERIES


def test_program_page_query_count_does_not_grow_with_history(client, operator, make_program):
    program = make_program(State.QUEUED)
    client.force_login(operator)
    url = reverse("program-detail", args=[str(program)])
    few = queries(client, url)
    for _ in range(10):  # 20 more history rows
        lifecycle.dequeue(program, user=operator)
        lifecycle.enqueue(program, user=operator, priority=1)
    many = queries(client, url)
    assert few == many <= MAX_LIST_QUERIES


def test_program_list_statements_are_session_user_count_rows(client, scientist, grow):
    """Warm: the session, the user, the count and the page's rows; a cached count (slow counting) saves one."""
    client.force_login(scientist)
    grow(6)
    url = reverse("program-list")
    assert queries(client, url, {"state": "queued"}) == 4
    assert queries(client, url, {"state": "queued", "page": "1"}, HTTP_HX_REQUEST="true") == 4


def test_slow_counts_are_cached_fast_ones_exact(client, scientist, grow, settings, make_program):
    from inversions import selectors

    client.force_login(scientist)
    grow(6)
    url = reverse("program-list")
    settings.L2_COUNT_CACHE_MIN_MS = 10_000  # counting here is fast: never cached, always exact
    assert queries(client, url) == 4
    make_program(State.QUEUED)
    assert client.get(url).context["listing"].count == 7
    settings.L2_COUNT_CACHE_MIN_MS = 0  # every count "slow": kept per filter while no program changes
    cache.clear()
    client.get(url, {"state": "queued"})  # counted: slow, so the filter is marked slow
    client.get(url, {"state": "queued"})  # counted after reading the change marker: kept
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"state": "queued", "page": "1"})  # the same filter, another page: no count
    sql = [q["sql"] for q in ctx.captured_queries]
    assert len(sql) == 4 and not any("COUNT(" in q for q in sql) and "MAX(\"inversions_observingprogram\".\"updated_at\")" in sql[2]
    queued = ObservingProgram.objects.filter(state=State.QUEUED).count()
    assert response.context["listing"].count == queued
    # a program changes (a transition): the next request counts again, exactly
    make_program(State.QUEUED)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"state": "queued", "page": "1"})
    assert any("COUNT(" in q["sql"] for q in ctx.captured_queries)
    assert response.context["listing"].count == queued + 1
    # a program changed by a scan (updated_at) without a transition: counted again as well
    program = ObservingProgram.objects.filter(state=State.QUEUED).first()
    client.get(url, {"state": "queued"})
    ObservingProgram.objects.filter(pk=program.pk).update(state=State.WORKING, updated_at=timezone.now())
    assert client.get(url, {"state": "queued"}).context["listing"].count == queued
    working = ObservingProgram.objects.filter(state=State.WORKING).count()
    assert selectors.counted(ObservingProgram.objects.filter(state=State.WORKING)) == working
    settings.L2_COUNT_CACHE_SECONDS = 0  # off: exact
    make_program(State.WORKING)
    assert selectors.counted(ObservingProgram.objects.filter(state=State.WORKING)) == working + 1


def test_a_kept_count_belongs_to_its_filter_not_its_sort_or_page(client, scientist, grow, settings, make_program):
    """The list names its count by the filter alone: another sort or page reuses it, another filter
    is counted on its own."""
    client.force_login(scientist)
    grow(6)
    make_program(State.WORKING)
    url = reverse("program-list")
    settings.L2_COUNT_CACHE_MIN_MS = 0  # every count "slow": kept
    cache.clear()
    for _ in range(2):
        client.get(url, {"state": "queued"})
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"state": "queued", "sort": "program", "page": "1"})
    assert not any("COUNT(" in q["sql"] for q in ctx.captured_queries)
    assert response.context["listing"].count == ObservingProgram.objects.filter(state=State.QUEUED).count()
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"state": "working"})
    assert any("COUNT(" in q["sql"] for q in ctx.captured_queries)
    assert response.context["listing"].count == ObservingProgram.objects.filter(state=State.WORKING).count()
    assert response.context["listing"].count != ObservingProgram.objects.filter(state=State.QUEUED).count()
    with CaptureQueriesContext(connection) as ctx:
        client.get(url, {"state": "queued", "observed_from": "2020-01-01"})  # a filter of its own
    assert any("COUNT(" in q["sql"] for q in ctx.captured_queries)
