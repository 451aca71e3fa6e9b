"""Hostile input gets a clear 4xx, never a 500 (issue 13): dates at the ends of the calendar,
zone offsets PostgreSQL refuses, NUL characters and lone surrogates at every entry point."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from inversions.forms import ReportInvertedForm
from inversions.models import Transition, WorkOrder
from inversions.states import State
from l2site.inputs import problem
from publishing.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, make_user):
    _, raw = ApiToken.issue(name="portal", user=make_user("portal"))

    def get(path, **params):
        return client.get(f"/api/v1/{path}", params, HTTP_AUTHORIZATION=f"Bearer {raw}")

    return get


# --- updated_since ---------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["programs", "inversions"])
def test_an_offset_postgresql_refuses_is_converted_to_utc_first(api, make_program, endpoint):
    make_program(State.INVERTIBLE)
    response = api(endpoint, updated_since="0050-06-12T10:02:22+20:39")
    assert response.status_code == 200, response.content
    assert response.json()["count"] == (1 if endpoint == "programs" else 0)


@pytest.mark.parametrize("endpoint", ["programs", "inversions"])
@pytest.mark.parametrize("value, message", [
    ("", "not empty"),
    ("   ", "not empty"),
    ("0001-01-01T00:00:00+01:00", "out of range"),
    ("9999-12-31T23:59:59-01:00", "out of range"),
    ("2024-13-01T00:00:00Z", "ISO 8601"),
])
def test_an_empty_or_impossible_updated_since_is_refused(api, endpoint, value, message):
    response = api(endpoint, updated_since=value)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json" and message in response.json()["error"]


# --- the program list's dates -------------------------------------------------------------------
@pytest.mark.parametrize("params", [{"observed_to": "9999-12-31"}, {"observed_from": "0001-01-01"},
                                    {"observed_from": "0001-01-01", "observed_to": "9999-12-31"}])
def test_the_last_and_first_days_of_the_calendar_filter_without_error(client, scientist, make_program, params):
    program = make_program(State.INVERTIBLE)
    from django.utils import timezone

    type(program).objects.filter(pk=program.pk).update(start_time=timezone.now())
    client.force_login(scientist)
    response = client.get(reverse("program-list"), params)
    assert response.status_code == 200 and str(program) in response.content.decode()


# --- NUL and lone surrogates: one rule, every entry point ----------------------------------------
@pytest.mark.parametrize("path", [
    "/programs/a%00b/", "/programs/a%00b/progress", "/programs/a%00b/publishing", "/programs/a%00b/claim",
    "/programs/x/quicklook/1/a%00b.png", "/scans/%00/", "/%00",
])
def test_nul_in_a_path_is_a_400_page(client, scientist, path):
    client.force_login(scientist)
    response = client.get(path)
    assert response.status_code == 400
    assert "NUL" in response.content.decode() and "<html" in response.content.decode().lower()


def test_nul_in_a_path_is_400_for_anonymous_requests_too(client):
    assert client.get("/programs/a%00b/").status_code == 400


@pytest.mark.parametrize("path", ["/api/v1/programs/a%00b", "/api/v1/inversions/L2%00", "/api/v1/programs?state=%00",
                                  "/api/v1/programs?x%00=1", "/api/v1/inversions?program=a%00"])
def test_nul_under_api_is_a_json_400(api, path):
    response = api(path.removeprefix("/api/v1/"))
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json" and "NUL" in response.json()["error"]


def test_nul_in_a_query_of_a_page_is_400(client, scientist):
    client.force_login(scientist)
    assert client.get(reverse("program-list"), {"q": "a\x00b"}).status_code == 400


@pytest.mark.parametrize("notes, found", [("a\x00b", "NUL"), ("a\ud800b", "lone surrogate (U+D800)"),
                                          ("\udfff", "lone surrogate (U+DFFF)")])
def test_nul_or_a_lone_surrogate_in_the_api_report_is_refused(client, make_program, scientist, notes, found):
    program = make_program(State.WORKING, user=scientist)
    _, raw = ApiToken.issue(name="han-laptop", user=scientist)
    before = Transition.objects.filter(program=program).count()
    body = json.dumps({"collection": "science-cluster", "path": "/x", "software_commit": "abcdef1",
                       "dataset_ids": ["A"], "notes": notes})  # json.dumps escapes them: \u0000, \ud800
    response = client.post(reverse("api-report-inverted", args=[str(program)]), body,
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 400, response.content
    assert found in response.json()["error"] and "JSON body" in response.json()["error"]
    assert Transition.objects.filter(program=program).count() == before and not WorkOrder.objects.exists()


def test_nul_in_a_json_key_is_refused(client, make_program, scientist):
    program = make_program(State.WORKING, user=scientist)
    client.force_login(scientist)
    response = client.post(reverse("api-report-inverted", args=[str(program)]), '{"no\\u0000te": 1}',
                           content_type="application/json")
    assert response.status_code == 400 and "NUL" in response.json()["error"]


def test_nul_in_the_report_form_is_refused(client, make_program, scientist):
    program = make_program(State.WORKING, user=scientist)
    client.force_login(scientist)
    response = client.post(reverse("program-report", args=[str(program)]),
                           {"collection": "science-cluster", "path": "/x", "software_commit": "abcdef1",
                            "notes": "before\x00after"})
    assert response.status_code == 400 and "NUL" in response.content.decode()
    assert not WorkOrder.objects.exists()


def test_a_form_body_under_api_is_refused_as_not_json(client, make_program, scientist):
    program = make_program(State.WORKING, user=scientist)
    client.force_login(scientist)
    response = client.post(reverse("api-report-inverted", args=[str(program)]), {"notes": "x"})  # multipart
    assert response.status_code == 400 and "JSON object" in response.json()["error"]


def test_the_report_form_fields_refuse_lone_surrogates():
    """A urlencoded body cannot carry one (it decodes to U+FFFD); the form refuses it all the same."""
    form = ReportInvertedForm({"collection": "c", "path": "/x", "software_commit": "abcdef1", "notes": "a\ud83db",
                               "dataset_ids": ["A"]}, datasets=[])
    assert not form.is_valid() and "lone surrogate" in " ".join(form.errors["notes"])


def test_the_rule_itself():
    assert problem("Fe I 630.15 — ok ✓ 🌞") is None
    assert problem({"a": ["b", {"c": "d\x00"}]}) == "a NUL character"
    assert problem({"\ud800": 1}) == "a lone surrogate (U+D800)"
    assert problem([1, 2.5, None, True]) is None


def test_an_empty_to_field_in_the_admin_is_400_not_500(client, admin_user, make_program):
    """Found by tests/test_fuzz.py: Django's admin refuses a field it may not reference, but not an empty one."""
    program = make_program(State.INVERTIBLE)
    client.force_login(admin_user)
    url = reverse("admin:inversions_observingprogram_change", args=[program.pk])
    response = client.get(url, {"_to_field": ""})
    assert response.status_code == 400 and "_to_field must name a field" in response.content.decode()
    assert client.get(url).status_code == 200
