"""Report inverted: the checks of publishing.intake, the dashboard form and the API endpoint.

A report is checked at once (fields, program, datasets, collection and path); its files are
fetched and checked by the intake worker (run here directly with ``run_intake``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from django.urls import reverse

from inversions.models import Dataset, ObservingProgram, Transition, WorkOrder
from inversions.states import State
from publishing.models import Inversion
from publishing.intake import ReportRejected, expected_raster_steps, run_intake, submit_report
from publishing.models import ApiToken
from publishing.results import write_demo_results

pytestmark = pytest.mark.django_db

COMMIT = "3f2c9e1a"


@pytest.fixture
def root(tmp_path, settings):
    folder = tmp_path / "science-cluster"
    folder.mkdir()
    (tmp_path / "scratch").mkdir()
    settings.L2_COLLECTIONS = {"science-cluster": str(folder), "scratch": str(tmp_path / "scratch")}
    settings.L2_SCRATCH_COLLECTION = "scratch"
    settings.L2_TRANSFER_BACKEND = "local"
    return folder


@pytest.fixture
def working(make_op, scientist):
    return make_op(State.WORKING, claimant=scientist)


def fe_arm(program) -> Dataset:
    return next(d for d in Dataset.objects.filter(program=program) if "Fe I 630.15" in (d.spectral_lines or []))


def results_for(program, folder, *, steps_delta: int = 0):
    fe = fe_arm(program)
    steps = fe.frame_count // len(fe.stokes_parameters) + steps_delta
    return write_demo_results(folder, n_steps=steps, n_slit=5, n_depth=3, n_wave=4, line_ids=(23,), seed=2)  # the Fe arm


def submission(program, **changes) -> dict:
    return {
        "collection": "science-cluster",
        "path": "/inversions/run-1",
        "software_commit": COMMIT,
        "dataset_ids": [fe_arm(program).dataset_id],
        "notes": "SIR, 3 cycles",
    } | changes


def report_inverted(program, *, user, actor, require_claim=True, **fields):
    """Submit the report, then run the intake worker; the program's newest transition."""
    order = submit_report(program, user=user, actor=actor, require_claim=require_claim, enqueue=False, **fields)
    run_intake(order.pk)
    program.refresh_from_db()
    return Transition.objects.filter(program=program).latest("id")


def snapshot(program):
    p = ObservingProgram.objects.get(pk=program.pk)
    return p.state, p.claimed_by_id, Transition.objects.filter(program=program).count()


def test_a_good_report_makes_the_program_inverted(root, working, scientist):
    paths = results_for(working, root / "inversions" / "run-1")
    row = report_inverted(working, user=scientist, actor="han", **submission(working, software_commit="3F2C9E1A"))
    working.refresh_from_db()
    assert working.state == State.INVERTED and working.claimed_by is None
    assert (row.from_state, row.to_state, row.actor, row.reason) == (State.WORKING, State.INVERTED, "han",
                                                                     "reported inverted; result files checked")
    d = row.details
    assert d["collection"] == "science-cluster" and d["path"] == "/inversions/run-1"
    assert d["software_commit"] == "3f2c9e1a" and d["notes"] == "SIR, 3 cycles"
    assert d["dataset_ids"] == [fe_arm(working).dataset_id]
    assert d["raster_steps"] == 224  # 896 frames / 4 Stokes
    files = {f["name"]: f for f in d["files"]}
    for role, path in paths.items():
        f = files[path.name]
        assert f["size"] == path.stat().st_size
        assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert files["inv_res_mod.fits"]["shape"] == [11, 3, 224, 5]
    assert files["per_ori.fits"]["shape"] == files["inv_res_pre.fits"]["shape"] == [4, 4, 224, 5]  # one Fe profile


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"collection": ""}, "collection is required"),
        ({"collection": "blanca"}, "unknown collection 'blanca' (known: science-cluster, scratch)"),
        ({"path": ""}, "path is required"),
        ({"path": "inversions/run-1"}, "path must be absolute"),
        ({"path": "/../outside"}, "contains '..'"),
        ({"path": "/inversions/../../outside"}, "contains '..'"),
        ({"software_commit": "xyz"}, "7 to 40 hexadecimal digits"),
        ({"software_commit": "abc12"}, "7 to 40 hexadecimal digits"),
        ({"software_commit": "a" * 41}, "7 to 40 hexadecimal digits"),
        ({"dataset_ids": []}, "name at least one dataset"),
        ({"dataset_ids": ["NOPE"]}, "not a current dataset"),
        ({"dataset_ids": "BNGDL"}, "must be a list"),
        ({"notes": "x" * 10_001}, "notes are limited"),
    ],
)
def test_a_bad_report_is_refused_and_changes_nothing(root, working, scientist, changes, message):
    results_for(working, root / "inversions" / "run-1")
    (root.parent / "outside").mkdir()
    before = snapshot(working)
    with pytest.raises(ReportRejected) as exc:
        report_inverted(working, user=scientist, actor="han", **submission(working, **changes))
    assert message in str(exc.value)
    assert snapshot(working) == before


def test_the_lines_come_from_the_files_not_from_the_datasets_reported(root, working, scientist):
    """BLANCA's line ids name the profiles: files holding the Fe line only, reported with every dataset."""
    results_for(working, root / "inversions" / "run-1")
    every = list(Dataset.objects.filter(program=working).values_list("dataset_id", flat=True))
    row = report_inverted(working, user=scientist, actor="han", **submission(working, dataset_ids=every))
    assert working.state == State.INVERTED, row.reason
    assert Inversion.objects.get(program=working).spectral_lines == ["Fe I (630.15 nm)"]


def test_files_with_the_wrong_number_of_steps_are_refused(root, working, scientist):
    results_for(working, root / "inversions" / "run-1", steps_delta=-2)  # one fewer is accepted, two are not
    row = report_inverted(working, user=scientist, actor="han", **submission(working))
    assert working.state == State.ERROR and row.details["step"] == "results"
    assert "222 raster steps" in row.reason and "the program's L1 datasets have 224" in row.reason


def test_missing_files_are_refused_by_the_worker(root, working, scientist):
    row = report_inverted(working, user=scientist, actor="han", **submission(working, path="/inversions/run-2"))
    assert working.state == State.ERROR and "inv_res_mod.fits does not exist" in row.reason


def test_a_symbolic_link_out_of_the_collection_is_refused(root, working, scientist, tmp_path):
    results_for(working, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / "sneaky")
    with pytest.raises(ReportRejected, match="leaves the collection"):
        report_inverted(working, user=scientist, actor="han", **submission(working, path="/sneaky"))


def test_a_superseded_dataset_is_not_current(root, working, scientist):
    results_for(working, root / "inversions" / "run-1")
    fe = fe_arm(working)
    Dataset.objects.filter(pk=fe.pk).update(superseded=True)
    with pytest.raises(ReportRejected, match=f"not a current dataset of {working}: {fe.dataset_id}"):
        report_inverted(working, user=scientist, actor="han", **submission(working, dataset_ids=[fe.dataset_id]))


@pytest.mark.parametrize("state", [State.PREPROCESSED, State.INVERTED])
def test_only_a_working_program_can_be_reported(root, make_op, scientist, state):
    program = make_op(state)
    with pytest.raises(ReportRejected, match="not Working"):
        report_inverted(program, user=scientist, actor="han", **submission(program))


def test_the_dashboard_needs_the_claim_the_api_does_not(root, working, make_user):
    results_for(working, root / "inversions" / "run-1")
    robot = make_user("blanca", "science")
    with pytest.raises(ReportRejected, match="claimed by han, not by you"):
        report_inverted(working, user=robot, actor="blanca", **submission(working))
    row = report_inverted(working, user=robot, actor="api:blanca", require_claim=False, **submission(working))
    assert row.to_state == State.INVERTED


def test_expected_raster_steps_from_the_datasets():
    arm = Dataset(dataset_id="A", frame_count=1960, stokes_parameters="IQUV")
    assert expected_raster_steps([arm, Dataset(dataset_id="B", frame_count=1960, stokes_parameters="IQUV")]) == 490
    with pytest.raises(ReportRejected, match="different numbers of raster steps"):
        expected_raster_steps([arm, Dataset(dataset_id="B", frame_count=1000, stokes_parameters="IQUV")])
    with pytest.raises(ReportRejected, match="not a whole number of raster steps"):
        expected_raster_steps([Dataset(dataset_id="C", frame_count=1961, stokes_parameters="IQUV")])
    with pytest.raises(ReportRejected, match="no frame count"):
        expected_raster_steps([Dataset(dataset_id="D", frame_count=None, stokes_parameters="IQUV")])


# --- The dashboard form -----------------------------------------------------------------
def test_form_refuses_a_bad_report_with_the_reason_then_takes_a_good_one(client, root, working, scientist):
    results_for(working, root / "inversions" / "run-1")
    client.force_login(scientist)
    url = reverse("program-report", args=[str(working)])
    bad = client.post(url, submission(working, path="/inversions/../missing"))
    assert bad.status_code == 400
    html = bad.content.decode()
    assert "Not reported. The path of the result files &#x27;/inversions/../missing&#x27; contains &#x27;..&#x27;" in html
    assert 'value="/inversions/../missing"' in html  # the form keeps what was typed
    assert snapshot(working)[0] == State.WORKING
    invalid = client.post(url, submission(working, software_commit="zz"))
    assert invalid.status_code == 400
    assert 'class="field-error" id="id_software_commit-err"' in invalid.content.decode()
    # every problem at once, in words: no field names
    several = client.post(url, submission(working, collection="", software_commit="zz", dataset_ids=[]))
    text = several.content.decode()
    message = text.split('class="message error" role="alert">', 1)[1].split("</p>", 1)[0]
    assert several.status_code == 400
    for words in ("The Globus collection is required", "The inversion software commit must be a git commit",
                  "Name at least one dataset used"):
        assert words in message, message
    assert "software_commit" not in message and "dataset_ids" not in message
    good = client.post(url, submission(working), follow=True)
    assert good.redirect_chain[-1] == (reverse("program-detail", args=[str(working)]), 302)
    html = good.content.decode()
    assert "a worker fetches and checks the files now" in html
    assert 'data-testid="intake-status"' in html and "fetching the files" in html
    assert 'id="report"' not in html  # no second report while this one is checked
    assert snapshot(working)[0] == State.WORKING
    run_intake(WorkOrder.objects.get(program=working).pk)
    assert snapshot(working)[0] == State.INVERTED


def test_form_with_no_dataset_ticked_is_refused(client, root, working, scientist):
    client.force_login(scientist)
    data = submission(working)
    del data["dataset_ids"]
    response = client.post(reverse("program-report", args=[str(working)]), data)
    assert response.status_code == 400 and "Tick at least one dataset." in response.content.decode()


# --- The API ----------------------------------------------------------------------------
@pytest.fixture
def token(make_user):
    """A cluster client's token: it may report for any claimant (the programs here are han's)."""
    robot = make_user("blanca", "science")
    return ApiToken.issue(name="blanca-cluster", user=robot, reports_for_any_claimant=True)[1]


def api_post(client, program, body, token=None, raw: bytes | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(
        reverse("api-report-inverted", args=[str(program)]),
        raw if raw is not None else json.dumps(body),
        content_type="application/json",
        **headers,
    )


def test_api_reports_a_working_program_inverted(client, root, working, token):
    results_for(working, root / "inversions" / "run-1")
    response = api_post(client, working, submission(working), token)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["reportedBy"] == "api:blanca-cluster"
    assert body["inversionId"].startswith("L2") and body["report"]["raster_steps"] == 224
    assert snapshot(working)[0] == State.WORKING
    run_intake(body["intake"])
    detail = client.get(reverse("api-program", args=[str(working)]), HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert detail["intake"]["status"] == "completed" and detail["intake"]["inversionId"] == body["inversionId"]
    row = Transition.objects.filter(program=working).latest("id")
    assert snapshot(working)[0] == State.INVERTED and row.actor == "api:blanca-cluster"
    assert [f["name"] for f in row.details["files"]] == ["inv_res_mod.fits", "inv_res_pre.fits", "per_ori.fits"]


@pytest.mark.parametrize(
    "body, raw, message",
    [
        ({"software_commit": "nope"}, None, "software_commit must be a git commit"),
        ({"path": "relative"}, None, "path must be absolute"),
        ({"dataset_ids": [1, 2]}, None, "dataset_ids must be a list of dataset ids"),
        ({"notes": 5}, None, "notes must be text"),
        ({"collection": ["x"]}, None, "collection is required"),
        (None, b"{not json", "the body must be a JSON object"),
        (None, b"[1, 2]", "the body must be a JSON object"),
    ],
)
def test_api_refuses_a_bad_report_with_400(client, root, working, token, body, raw, message):
    results_for(working, root / "inversions" / "run-1")
    before = snapshot(working)
    response = api_post(client, working, submission(working, **(body or {})), token, raw=raw)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert snapshot(working) == before


def test_api_needs_a_token_of_the_science_team(client, root, working, make_user):
    assert api_post(client, working, submission(working)).status_code == 401
    assert api_post(client, working, submission(working), "l2t_wrong").status_code == 401
    ops = ApiToken.issue(name="ops-robot", user=make_user("opsbot", "operators"))[1]
    response = api_post(client, working, submission(working), ops)
    assert response.status_code == 403 and "science team" in response.json()["error"]
    assert snapshot(working)[0] == State.WORKING


def test_api_unknown_program_is_404_and_get_is_405(client, root, working, token):
    response = client.post(
        reverse("api-report-inverted", args=["id.nope"]), "{}", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 404
    assert client.get(reverse("api-report-inverted", args=[str(working)]), HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 405


def test_api_read_endpoints_still_work(client, working, token):
    response = client.get(reverse("api-program", args=[str(working)]), HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and response.json()["state"] == State.WORKING
    assert response.json()["qualification"]["invertible"] is True


def test_api_token_posts_need_no_csrf_but_sessions_do(root, working, token, scientist):
    from django.test import Client

    results_for(working, root / "inversions" / "run-1")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(scientist)
    url = reverse("api-report-inverted", args=[str(working)])
    body = json.dumps(submission(working))
    assert strict.post(url, body, content_type="application/json").status_code == 403  # session without CSRF token
    assert snapshot(working)[0] == State.WORKING
    robot = Client(enforce_csrf_checks=True)
    response = robot.post(url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 202 and WorkOrder.objects.filter(program=working, kind="intake").count() == 1


def test_the_report_form_proposes_the_science_clusters_results_folder(root, working, scientist, client, settings):
    settings.L2_SCIENCE_COLLECTION, settings.L2_SCIENCE_PATH = "science-cluster", "/l2/{proposal}/{program}/"
    client.force_login(scientist)
    page = client.get(reverse("program-detail", args=[working.instrument_program_execution_id])).content.decode()
    expected = f"/l2/{working.primary_proposal_id}/{working.instrument_program_execution_id}/results/"
    assert re.search(r'name="path"[^>]*value="' + re.escape(expected) + '"', page) or \
        re.search(r'value="' + re.escape(expected) + r'"[^>]*name="path"', page), page[:200]
    assert re.search(r'name="collection" value="science-cluster"', page)


# --- Who may report through the API (issue 13) -----------------------------------------------
def test_api_refuses_a_report_for_a_program_claimed_by_someone_else(client, root, working, make_user):
    """A science-team token that is not the claimant's (and no cluster client's) is refused: nothing changes."""
    results_for(working, root / "inversions" / "run-1")
    mei = ApiToken.issue(name="mei-laptop", user=make_user("mei", "science"))[1]
    before = snapshot(working)
    response = api_post(client, working, submission(working), mei)
    assert response.status_code == 403, response.content
    assert "claimed by han" in response.json()["error"] and "any claimant" in response.json()["error"]
    assert snapshot(working) == before and not WorkOrder.objects.filter(program=working).exists()
    fresh = ObservingProgram.objects.get(pk=working.pk)
    assert (fresh.claimed_by_id, fresh.claimed_at) == (working.claimed_by_id, working.claimed_at)


def test_api_accepts_the_claimants_own_token(client, root, working, scientist):
    results_for(working, root / "inversions" / "run-1")
    own = ApiToken.issue(name="han-laptop", user=scientist)[1]
    response = api_post(client, working, submission(working), own)
    assert response.status_code == 202, response.content
    run_intake(response.json()["intake"])
    row = Transition.objects.filter(program=working).latest("id")
    assert row.to_state == State.INVERTED and (row.details["reported_by"], row.details["claimant"]) == ("api:han-laptop", "han")


def test_a_cluster_clients_report_names_the_client_and_the_claimant(client, root, working, token):
    results_for(working, root / "inversions" / "run-1")
    response = api_post(client, working, submission(working), token)
    assert response.status_code == 202, response.content
    run_intake(response.json()["intake"])
    row = Transition.objects.filter(program=working).latest("id")
    assert row.to_state == State.INVERTED and row.actor == "api:blanca-cluster"
    assert row.reason == "reported inverted by api:blanca-cluster for han; result files checked"
    assert (row.details["reported_by"], row.details["claimant"]) == ("api:blanca-cluster", "han")


def test_the_any_claimant_flag_is_set_by_an_admin(client, admin_user, make_user):
    robot = make_user("blanca", "science")
    api_token, _ = ApiToken.issue(name="blanca-cluster", user=robot)
    client.force_login(admin_user)
    url = reverse("admin:publishing_apitoken_change", args=[api_token.pk])
    assert "reports_for_any_claimant" in client.get(url).content.decode()
    response = client.post(url, {"reports_for_any_claimant": "on"})
    assert response.status_code == 302
    api_token.refresh_from_db()
    assert api_token.reports_for_any_claimant and api_token.name == "blanca-cluster" and api_token.user == robot
