"""The read API for inversions (DESIGN §9.4): list, detail, updated_since, pagination, bad parameters."""
from __future__ import annotations

import random
import string
from datetime import timedelta

import pytest
from django.utils import timezone

from publishing.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, make_user):
    _, raw = ApiToken.issue(name="portal", user=make_user("portal"))

    def get(path, **params):
        return client.get(f"/api/v1/{path}", params, HTTP_AUTHORIZATION=f"Bearer {raw}")

    return get


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [r["inversionId"] for r in response.json()["results"]]


def test_list_filters_and_paginates(api, make_inversion):
    make_inversion("L2A", files=2)
    make_inversion("L2B", recorded=False, proposal="pid_2_114")
    make_inversion("L2C")
    assert ids(api("inversions")) == ["L2A", "L2B", "L2C"]
    assert ids(api("inversions", published="true")) == ["L2A", "L2C"]
    assert ids(api("inversions", published="false")) == ["L2B"]
    assert ids(api("inversions", proposal="pid_2_114")) == ["L2B"]
    assert ids(api("inversions", program="id.L2C")) == ["L2C"]
    assert ids(api("inversions", dataset="DL2A")) == ["L2A"]
    page = api("inversions", page_size=2, page=2).json()
    assert (page["count"], page["pages"], page["page"], ids(api("inversions", page_size=2, page=2))) == (3, 2, 2, ["L2C"])
    first = api("inversions").json()["results"][0]
    assert first["fileCount"] == 3 and first["programState"] == "published" and first["recordedInStoreAt"]
    assert first["asdfObjectKey"] == "pid_1_118/L2A/L2A_L2_METADATA.asdf"


def test_updated_since_returns_only_later_changes(api, make_inversion):
    a = make_inversion("L2A")
    make_inversion("L2B")
    mark = timezone.now()
    a.generated_at = timezone.now()
    a.touch("generated_at")
    assert ids(api("inversions", updated_since=mark.isoformat())) == ["L2A"]
    assert ids(api("inversions", updated_since=(mark + timedelta(hours=1)).isoformat())) == []


def test_detail_has_result_files_and_l2_files(api, make_inversion):
    inv = make_inversion("L2A", files=3)
    inv.result_files = [{"name": "inv_res_mod.fits", "size": 10, "sha256": "ab", "shape": [11, 2, 3, 4]}]
    inv.save()
    body = api("inversions/L2A").json()
    assert body["inversionId"] == "L2A" and body["resultFiles"][0]["shape"] == [11, 2, 3, 4]
    assert [(f["filename"], f["kind"], f["step"], f["size"]) for f in body["files"]] == [
        ("L2A_00000_L2.fits", "frame", 0, 1000), ("L2A_00001_L2.fits", "frame", 1, 1001),
        ("L2A_00002_L2.fits", "frame", 2, 1002), ("L2A_L2_METADATA.asdf", "metadata", None, 500)]
    assert api("inversions/L2NOPE").status_code == 404


BAD_PARAMS = [
    {"page": "abc"}, {"page": "0"}, {"page": "99"}, {"page_size": "100000"}, {"published": "maybe"},
    {"updated_since": "yesterday"}, {"updated_since": "2024-13-45T00:00:00"}, {"program": "a\x00b"},
]


def test_bad_parameters_answer_400_with_the_reason(api, make_inversion):
    make_inversion("L2A")
    for params in BAD_PARAMS:
        response = api("inversions", **params)
        assert response.status_code == 400 and response.json()["error"], params


def test_fuzzed_parameters_never_answer_500(api, make_inversion):
    make_inversion("L2A", files=1)
    rng = random.Random(7)
    alphabet = string.printable + "\x00éß☃\u202e"
    names = ["page", "page_size", "published", "updated_since", "program", "proposal", "dataset", "x"]
    for _ in range(120):
        params = {rng.choice(names): "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
                  for _ in range(rng.randint(1, 4))}
        for path in ("inversions", "programs"):
            assert api(path, **params).status_code in (200, 400), params
    for weird in ("%00", "a" * 300, "..", "%E2%98%83"):
        assert api(f"inversions/{weird}").status_code in (400, 404)


def test_anonymous_is_401(client):
    assert client.get("/api/v1/inversions").status_code == 401


def test_openapi_describes_the_inversion_endpoints(client):
    spec = client.get("/api/v1/openapi.json").json()
    assert {"/inversions", "/inversions/{inversionId}"} <= spec["paths"].keys()
    params = {p["name"] for p in spec["paths"]["/inversions"]["get"]["parameters"]}
    assert {"updated_since", "page", "page_size", "published", "program", "proposal", "dataset"} <= params
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert refs and all(r.split("/")[-1] in spec["components"]["schemas"] for r in refs)
    assert "202" in spec["paths"]["/programs/{instrumentProgramExecutionId}/inverted"]["post"]["responses"]
