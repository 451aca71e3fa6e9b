"""The read API (DESIGN §9.4): filters, pagination, updated_since, errors, OpenAPI."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from inversions import lifecycle
from inversions.states import State
from publishing.models import ApiToken


@pytest.fixture
def api(client, make_user):
    user = make_user("portal")
    _, raw = ApiToken.issue(name="portal", user=user)

    def get(path, **params):
        return client.get(f"/api/v1/{path}", params, HTTP_AUTHORIZATION=f"Bearer {raw}")

    return get


@pytest.mark.django_db
def test_programs_filter_and_paginate(api, make_program):
    make_program(State.INVERTIBLE, ipeid="id.a", instrument_name="VISP", primary_proposal_id="pid_1")
    make_program(State.NOT_INVERTIBLE, ipeid="id.b", instrument_name="VBI", primary_proposal_id="pid_1")
    make_program(State.INVERTIBLE, ipeid="id.c", instrument_name="VISP", primary_proposal_id="pid_2")
    ids = lambda r: [p["instrumentProgramExecutionId"] for p in r.json()["results"]]  # noqa: E731
    assert ids(api("programs", state="invertible")) == ["id.a", "id.c"]
    assert ids(api("programs", instrument="visp", proposal="pid_1")) == ["id.a"]
    page = api("programs", page_size=2, page=2).json()
    assert (page["count"], page["pages"], len(page["results"])) == (3, 2, 1)


@pytest.mark.django_db
def test_updated_since_returns_only_later_changes(api, make_program, scientist):
    a = make_program(State.PREPROCESSED, ipeid="id.a")
    make_program(State.INVERTIBLE, ipeid="id.b")
    mark = timezone.now()
    lifecycle.claim(a, user=scientist)
    body = api("programs", updated_since=mark.isoformat()).json()
    assert [p["instrumentProgramExecutionId"] for p in body["results"]] == ["id.a"]
    assert body["results"][0]["state"] == "working"
    assert api("programs", updated_since=(mark + timedelta(hours=1)).isoformat()).json()["count"] == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [{"page": "abc"}, {"page": "0"}, {"page_size": "100000"}, {"state": "nonsense"}, {"updated_since": "yesterday"}, {"page": "99"}],
)
def test_bad_parameters_answer_400_with_the_reason(api, make_program, params):
    make_program(State.INVERTIBLE)
    response = api("programs", **params)
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.django_db
def test_program_detail_has_datasets_qualification_and_history(api, make_program):
    program = make_program(State.DISCOVERED, ipeid="id.q")
    lifecycle.transition(program, State.NOT_INVERTIBLE, actor="scan", reason="Stokes: I only", details={"invertible": False, "rules": [{"name": "Stokes", "passed": False}]})
    body = api("programs/id.q").json()
    assert body["state"] == "not_invertible"
    assert body["qualification"]["rules"][0]["name"] == "Stokes"
    assert [h["to"] for h in body["history"]] == ["discovered", "not_invertible"]
    assert body["datasets"] == []
    assert api("programs/id.nope").status_code == 404


@pytest.mark.django_db
def test_openapi_describes_the_endpoints(client):
    spec = client.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert {"/programs", "/programs/{instrumentProgramExecutionId}", "/programs/{instrumentProgramExecutionId}/inverted"} <= spec["paths"].keys()


@pytest.mark.django_db
def test_scans_show_bad_records_and_warnings_apart(api):
    from scanning.models import Scan, ScanRecordError, ScanRecordWarning

    older = Scan.objects.create(status=Scan.Status.SUCCEEDED, records=5, new=5)
    scan = Scan.objects.create(status=Scan.Status.SUCCEEDED, records=10, new=8, errors=1, warnings=2)
    ScanRecordError.objects.create(scan=scan, dataset_id="D" * 65, field="datasetId", reason="too long", raw={"datasetId": "D" * 65})
    for field in ("boundingBox", "frameCount"):
        ScanRecordWarning.objects.create(scan=scan, dataset_id="BKRKL", field=field, reason=f"no {field}")
    body = api("scans").json()
    assert [s["id"] for s in body["results"]] == [scan.pk, older.pk]
    assert (body["results"][0]["errors"], body["results"][0]["warnings"]) == (1, 2)
    one = api(f"scans/{scan.pk}").json()
    assert [w["field"] for w in one["recordWarnings"]] == ["boundingBox", "frameCount"]
    assert one["badRecords"][0]["reason"] == "too long" and one["badRecords"][0]["raw"]["datasetId"] == "D" * 65
    assert api("scans", status="nonsense").status_code == 400 and api("scans/999999").status_code == 404
