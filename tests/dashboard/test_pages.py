"""Every page renders for every state a program can be in, for every role."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from inversions.models import ObservingProgram
from inversions.states import State
from scanning.models import Scan, ScanRecordError

pytestmark = pytest.mark.django_db


@pytest.fixture
def every_state(make_op, scientist):
    programs = {state: make_op(state, claimant=scientist) for state in State.values}
    programs["unsettled"] = make_op(State.DISCOVERED, settles_in=timedelta(days=2))
    return programs


@pytest.fixture
def scans():
    done = Scan.objects.create(status=Scan.Status.SUCCEEDED, records=372, new=370, errors=1, pages=1)
    ScanRecordError.objects.create(scan=done, dataset_id="BADID", field="frameCount", reason="frameCount must be a count, not 'lots'", raw={"datasetId": "BADID", "frameCount": "lots"})
    running = Scan.objects.create(status=Scan.Status.RUNNING, pages=2, records=2000, triggered_by="olga")
    return done, running


@pytest.mark.parametrize("role", ["scientist", "operator", "admin_user"])
def test_every_page_renders_for_every_state(request, client, role, every_state, scans):
    user = request.getfixturevalue(role)
    client.force_login(user)
    done, running = scans
    pages = [
        reverse("overview"),
        reverse("program-list"),
        reverse("queue"),
        reverse("scan-list"),
        reverse("scan-detail", args=[done.pk]),
        reverse("scan-detail", args=[running.pk]),
        reverse("scan-progress", args=[running.pk]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
    for key, program in every_state.items():
        ipeid = program.instrument_program_execution_id
        listed = client.get(reverse("program-list"), {"state": program.state})
        assert listed.status_code == 200 and ipeid in listed.content.decode(), key
        for query in ("", "?superseded=1"):
            page = client.get(reverse("program-detail", args=[ipeid]) + query)
            assert page.status_code == 200, (key, query)
            html = page.content.decode()
            assert State(program.state).label in html
            assert all(d.dataset_id in html for d in program.datasets.all())
            assert "History" in html and program.transitions.count() == html.count('data-to="')
        progress = client.get(reverse("program-progress", args=[ipeid]), HTTP_HX_REQUEST="true")
        assert progress.status_code == 200 and progress.content.strip() == b""  # no running work: nothing


def test_checklist_shows_each_rule_with_its_measured_value(client, scientist, make_op):
    program = make_op(State.INVERTIBLE)
    client.force_login(scientist)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "✓ Invertible" in html
    for rule in ("On disk", "Fe I 630", "Stokes", "Health", "GOS", "AO"):
        assert f'data-rule="{rule}"' in html
    report = program.transitions.get(to_state=State.INVERTIBLE).details
    health = next(r for r in report["rules"] if r["name"] == "Health")
    assert health["passed"] is True
    # the Fried parameter of these datasets is low: the warnings are listed
    assert report["warnings"] and report["warnings"][0]["message"] in html


def test_not_invertible_program_shows_the_failed_rules(client, scientist, make_op):
    program = make_op(State.NOT_INVERTIBLE)
    client.force_login(scientist)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "✗ Not invertible" in html
    assert 'data-rule="Stokes" ' not in html  # attribute then class order is fixed:
    assert '<tr class="fail" data-rule="Stokes">' in html
    assert '<tr class="fail" data-rule="Health">' in html


def test_unsettled_program_says_when_it_settles(client, scientist, make_op):
    program = make_op(State.DISCOVERED, settles_in=timedelta(days=2))
    client.force_login(scientist)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "Waiting for datasets: settles " + program.settles_at.strftime("%Y-%m-%d %H:%M") in html


def test_superseded_datasets_are_hidden_unless_asked(client, scientist, make_op):
    program = make_op(State.INVERTIBLE)
    old = program.datasets.first()
    type(old).objects.filter(pk=old.pk).update(superseded=True)
    client.force_login(scientist)
    url = reverse("program-detail", args=[str(program)])
    hidden = client.get(url).content.decode()
    shown = client.get(url + "?superseded=1").content.decode()
    assert old.dataset_id not in hidden.split('id="datasets"')[1].split("</section>")[0]
    assert "Show 1 superseded" in hidden
    assert old.dataset_id in shown.split('id="datasets"')[1].split("</section>")[0]


def test_dataset_table_shows_percentages_box_and_distance(client, scientist, make_op):
    program = make_op(State.INVERTIBLE)
    d = program.datasets.order_by("wavelength_min").first()
    client.force_login(scientist)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    row = html.split(f'<tr data-dataset="{d.dataset_id}">')[1].split("</tr>")[0]
    health = round(100 * d.health["good"] / d.frame_count, 1)
    assert f"{health:g} %" in row
    (x1, y1), (x2, y2) = d.bounding_box
    assert f"({x1:.1f}, {y1:.1f})" in row
    assert "R☉" in row
    assert f'data-dataset="{d.dataset_id}"' in html  # its Fried-parameter box


def test_error_program_names_the_step_and_reason(client, operator, make_op):
    program = make_op(State.ERROR, error_reason="checksum mismatch in frame 12")
    client.force_login(operator)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "Error in preprocess.stage" in html and "checksum mismatch in frame 12" in html
    assert reverse("program-retry", args=[str(program)]) in html


def test_unknown_program_is_a_404_page(client, scientist):
    client.force_login(scientist)
    response = client.get(reverse("program-detail", args=["id.nope"]))
    assert response.status_code == 404 and b"No Observing Program id.nope" in response.content


def test_overview_funnel_and_attention(client, operator, make_op, scientist):
    make_op(State.ERROR, error_reason="frames missing")
    stale = make_op(State.WORKING, claimant=scientist)
    ObservingProgram.objects.filter(pk=stale.pk).update(claimed_at=stale.claimed_at - timedelta(days=10))
    make_op(State.DISCOVERED, settles_in=timedelta(hours=5))
    make_op(State.PUBLISHED)
    client.force_login(operator)
    html = client.get(reverse("overview")).content.decode()
    assert '<svg class="funnel"' in html
    assert "frames missing" in html
    assert "1 stale claim" in html and str(stale) in html
    assert "1 waiting for datasets" in html
    # Published counts at every stage of the main line, Working up to Working; Error is off the line
    assert "Discovered: 1 now, 3 at this stage or later" in html
    assert "Published: 1 now, 1 at this stage or later" in html


def test_work_progress_partial_polls_while_work_runs(client, scientist, make_op, monkeypatch):
    from inversions import selectors

    program = make_op(State.INVERTIBLE)
    url = reverse("program-progress", args=[str(program)])
    client.force_login(scientist)
    work = selectors.RunningWork(label="Preprocessing: staging", done=120, total=480, unit="files")
    monkeypatch.setattr(selectors, "running_work", lambda p: work)
    running = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert f'hx-get="{url}" hx-trigger="every 2s"' in running
    assert "120 of 480 files (25 %)" in running
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert 'id="work-progress"' in page
    work.running, work.done = False, 480
    finished = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in finished and "Finished." in finished


def test_report_form_proposes_every_current_dataset_and_the_last_commit(client, scientist, make_op):
    from publishing.models import Inversion

    program = make_op(State.WORKING, claimant=scientist)
    client.force_login(scientist)
    url = reverse("program-detail", args=[str(program)])
    html = client.get(url).content.decode()
    form = html.split('id="report"', 1)[1]
    ticked = set(re.findall(r'<input type="checkbox" name="dataset_ids" value="([^"]+)"[^>]*checked', form))
    current = {d.dataset_id for d in program.datasets.filter(superseded=False)}
    assert ticked == current and len(current) == 3
    assert form.count('name="dataset_ids"') == program.datasets.count()
    assert re.search(r'name="software_commit"[^>]*value=""|name="software_commit"(?![^>]*value=)', form)

    other = make_op(State.PUBLISHED)
    now = timezone.now()
    common = dict(program=other, dataset_ids=["X"], raster_steps=1, reported_collection="c", reported_path="/p",
                  scratch_path="/s", reported_at=now)
    Inversion.objects.create(inversion_id="L2A", software_commit="aaaaaaa", reported_by="han",
                             reported_by_user=scientist, **common | {"reported_at": now - timedelta(days=1)})
    Inversion.objects.create(inversion_id="L2B", software_commit="bbbbbbb", reported_by="luke", **common)
    form = client.get(url).content.decode().split('id="report"', 1)[1]
    assert 'value="aaaaaaa"' in form  # the last one this user reported (not the newest of someone else)


def test_nothing_is_reachable_without_login(client, make_op):
    program = make_op(State.WORKING)
    scan = Scan.objects.create()
    ipeid = str(program)
    gets = [reverse("queue"), reverse("scan-list"), reverse("scan-detail", args=[scan.pk]),
            reverse("scan-progress", args=[scan.pk]), reverse("program-progress", args=[ipeid])]
    posts = [reverse("pick-next"), reverse("scan-start")] + [
        reverse(name, args=[ipeid]) for name in ("program-claim", "program-release", "program-report", "program-enqueue",
                                                 "program-priority", "program-dequeue", "program-retry", "program-requeue")
    ]
    for url in gets:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    for url in posts:
        response = client.post(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    assert ObservingProgram.objects.get(pk=program.pk).state == State.WORKING and Scan.objects.count() == 1
