"""Preprocessing on the dashboard: operators start or force it, progress, cubes and quick-looks, retry."""
from __future__ import annotations

import pytest
from django.urls import reverse

from inversions import lifecycle, pipeline, selectors
from inversions.models import Transition, WorkOrder
from inversions.states import State

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "dispatch", lambda order_id, step, **kw: calls.append((order_id, step)))
    return calls


def drive(order_id: int) -> None:
    step = "stage"
    for _ in range(20):
        outcome = pipeline.execute(order_id, step)
        if outcome.retry_in is None:
            if not outcome.next_step:
                return
            step = outcome.next_step
    raise AssertionError("did not finish")


def test_operator_starts_and_forces_preprocessing(client, operator, l1_program, sent,
                                                  django_capture_on_commit_callbacks):
    program = l1_program(write=False)
    url = reverse("program-preprocess", args=[str(program)])
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, follow=True)
    order = WorkOrder.objects.get(program=program)
    assert response.status_code == 200 and f"Preprocessing of {program} started: order #{order.pk}." in response.content.decode()
    assert sent == [(order.pk, "stage")] and order.requested_by == "olga" and order.requested_by_user == operator
    assert not order.forced
    # again while it runs: the running order, nothing new
    response = client.post(url, {"force": "1"}, follow=True)
    assert "is already under way: order #" in response.content.decode()
    assert WorkOrder.objects.filter(program=program).count() == 1
    # once it ended, force starts a forced one
    WorkOrder.objects.filter(pk=order.pk).update(status="failed")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"force": "1"}, follow=True)
    forced = WorkOrder.objects.filter(program=program).order_by("-id").first()
    assert forced.forced and "(forced: even if its inputs did not change)" in response.content.decode()


def test_only_operators_start_it_with_post(client, scientist, operator, l1_program):
    program = l1_program(write=False)
    url = reverse("program-preprocess", args=[str(program)])
    assert client.post(url).status_code == 302  # anonymous: to the login page
    client.force_login(scientist)
    assert client.post(url).status_code == 403
    client.force_login(operator)
    assert client.get(url).status_code == 405
    assert not WorkOrder.objects.exists()


def test_bad_requests_get_clear_answers(client, operator, make_program, l1_program):
    client.force_login(operator)
    assert client.post(reverse("program-preprocess", args=["id.no.such"])).status_code == 404
    queued = make_program(State.QUEUED)
    response = client.post(reverse("program-preprocess", args=[str(queued)]), {"force": "<script>"}, follow=True)
    html = response.content.decode()
    assert response.status_code == 200 and "is Queued: only Invertible programs are preprocessed" in html
    assert not WorkOrder.objects.exists()


def test_program_page_shows_cubes_quicklooks_and_actions(client, operator, scientist, l1_program, sent):
    program = l1_program()
    order = pipeline.start(program, requested_by="beat").order
    drive(order.pk)
    page = reverse("program-detail", args=[str(program)])
    client.force_login(operator)
    html = client.get(page).content.decode()
    assert 'id="preprocessing"' in html and f"Stokes cubes of order #{order.pk}" in html
    urls = [reverse("program-quicklook", args=[str(program), order.pk, f"{d.dataset_id}_{kind}_figure.png"])
            for d in program.datasets.all() for kind in ("continuum", "ncp")]
    for url in urls:  # the figures (axes in arcsec, colour bar) are shown, the plain pictures linked
        assert f'src="{url}"' in html and f'href="{url.replace("_figure", "")}"' in html
    assert "Preprocess again" in html and "Force (redo everything)" in html
    assert "4 × 1 × 3 × 24 × 16" in html  # the cube's shape
    # the science team sees the outputs, not the actions
    client.force_login(scientist)
    html = client.get(page).content.decode()
    assert f'src="{urls[0]}"' in html and "Force (redo everything)" not in html
    # the quick-looks themselves: the figure and the plain picture
    for url in (urls[0], urls[0].replace("_figure", "")):
        response = client.get(url)
        body = b"".join(response.streaming_content)
        assert response.status_code == 200 and response["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")


def test_the_quicklook_card_shows_each_datasets_browse_movie(client, scientist, l1_program, sent):
    from inversions.models import Dataset

    program = l1_program()
    first, second = program.datasets.order_by("dataset_id")
    Dataset.objects.filter(pk=first.pk).update(raw={**first.raw, "browseMovieUrl": "https://vimeo.com/123456"})
    Dataset.objects.filter(pk=second.pk).update(raw={**second.raw, "browseMovieUrl": "https://movies.example/b.mp4"})
    drive(pipeline.start(program, requested_by="beat").order.pk)
    client.force_login(scientist)
    html = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    card = html[html.index('id="preprocessing"'):]
    assert 'src="https://player.vimeo.com/video/123456"' in card  # a Vimeo link: embedded
    assert 'href="https://movies.example/b.mp4"' in card and "player.vimeo.com/video/b" not in card  # else linked


def test_quicklooks_are_path_checked_and_need_a_login(client, scientist, l1_program, sent):
    program = l1_program()
    order = pipeline.start(program, requested_by="beat").order
    drive(order.pk)
    name = f"{program.datasets.first().dataset_id}_continuum.png"
    good = reverse("program-quicklook", args=[str(program), order.pk, name])
    assert client.get(good).status_code == 302  # anonymous: login first
    client.force_login(scientist)
    assert client.get(good).status_code == 200
    bad = [
        reverse("program-quicklook", args=[str(program), order.pk, "manifest.json"]),
        reverse("program-quicklook", args=[str(program), order.pk, "..%2F..%2Fmanifest.json"]),
        reverse("program-quicklook", args=[str(program), order.pk + 99, name]),
        reverse("program-quicklook", args=["id.no.such", order.pk, name]),
        f"/programs/{program}/quicklook/{order.pk}/../manifest.json",
    ]
    other = l1_program()
    bad.append(reverse("program-quicklook", args=[str(other), order.pk, name]))  # another program's order
    for url in bad:
        assert client.get(url).status_code == 404, url


def test_progress_partial_follows_the_order(client, scientist, l1_program, sent):
    program = l1_program()
    order = pipeline.start(program, requested_by="beat").order
    url = reverse("program-progress", args=[str(program)])
    client.force_login(scientist)
    queued = client.get(url, HTTP_HX_REQUEST="true")
    assert "Preprocessing: queued" in queued.content.decode() and 'hx-trigger="every 2s"' in queued.content.decode()
    pipeline.execute(order.pk, "stage")
    pipeline.execute(order.pk, "verify")
    WorkOrder.objects.filter(pk=order.pk).update(step="assemble")
    from inversions import work_orders

    work_orders.set_progress(order.pk, frames_assembled=7, frames_total=20, bytes_written=4096, dataset="D1X0")
    html = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "Preprocessing: assembling Stokes cubes" in html and "7 of 20 frames assembled (35 %)" in html
    assert "dataset D1X0" in html and "4.0\xa0KB written" in html
    response = client.get(url, HTTP_HX_REQUEST="true")
    assert "HX-Refresh" not in response
    drive_from(order.pk, "assemble")
    done = client.get(url, HTTP_HX_REQUEST="true")
    assert "Preprocessing completed" in done.content.decode() and "hx-trigger" not in done.content.decode()
    assert "20 of 20 frames assembled (100 %)" in done.content.decode()
    assert done["HX-Refresh"] == "true"  # the page reloads once: new state, cubes, quick-looks
    # the reloaded page shows it ended, without polling
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "Preprocessing completed" in page and 'hx-get="' + url not in page


def drive_from(order_id: int, step: str) -> None:
    while step:
        outcome = pipeline.execute(order_id, step)
        step = outcome.next_step if outcome.retry_in is None else step


def test_running_work_reports_each_step(l1_program, sent):
    from inversions import work_orders

    program = l1_program(write=False)
    order = pipeline.start(program, requested_by="beat").order
    work_orders.start(order.pk, "stage")
    work_orders.set_progress(order.pk, files_staged=5, files_expected=20, bytes_staged=2048)
    work = selectors.running_work(program)
    assert (work.label, work.done, work.total, work.unit, work.running) == (
        "Preprocessing: staging the L1 files", 5, 20, "files staged", True)
    work_orders.merge_details(order.pk, retries={"stage": 2}, last_problem="Globus busy")
    assert "retrying after: Globus busy" in selectors.running_work(program).detail
    work_orders.fail(order, step="stage", error="staging the L1 files: gone")
    failed = selectors.running_work(program)
    assert failed.label == "Preprocessing failed" and not failed.running and "gone" in failed.detail
    assert failed.failed_step == "staging the L1 files"
    from django.template.loader import render_to_string

    card = render_to_string("inversions/partials/work_progress.html", {"program": program, "work": failed})
    assert "Stopped in <strong>staging the L1 files</strong>: staging the L1 files: gone" in card
    assert "<progress" not in card and "Finished." not in card  # no bare count and no bar


def test_retry_after_a_preprocessing_error_preprocesses_again(client, operator, l1_program, sent,
                                                              django_capture_on_commit_callbacks):
    program = l1_program(write=False)  # no L1 files: staging fails
    order = pipeline.start(program, requested_by="beat").order
    drive(order.pk)
    program.refresh_from_db()
    assert program.state == State.ERROR
    # the files arrive; the operator retries from the program page
    for k, dataset in enumerate(program.datasets.order_by("dataset_id")):
        from inversions.preprocessing.demo_l1 import write_small_dataset

        write_small_dataset(pipeline_l1(dataset), dataset.dataset_id, n_steps=dataset.frame_count // 4, n_wave=24,
                            n_slit=16, seed=k)
    client.force_login(operator)
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    assert "Error in preprocess.stage" in page and f"Order #{order.pk} failed in stage" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("program-retry", args=[str(program)]), follow=True)
    again = WorkOrder.objects.filter(program=program).order_by("-id").first()
    assert again.pk != order.pk and again.status == "queued" and again.requested_by == "olga"
    assert f"is back to Invertible. Preprocessing runs again (order #{again.pk})." in response.content.decode()
    assert sent[-1] == (again.pk, "stage")
    drive(again.pk)
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED
    assert list(Transition.objects.filter(program=program).values_list("to_state", flat=True).order_by("id"))[-3:] == [
        State.ERROR, State.INVERTIBLE, State.PREPROCESSED]


def pipeline_l1(dataset):
    from inversions.transfers import local_folder

    return local_folder("dkist-l1", pipeline.l1_path(dataset))


def test_retry_of_other_failures_starts_nothing(client, operator, make_program, l1_program):
    program = make_program(State.WORKING)
    lifecycle.fail(program, step="publish", reason="metadata store said 400")
    client.force_login(operator)
    response = client.post(reverse("program-retry", args=[str(program)]), follow=True)
    assert "is back to Working." in response.content.decode() and not WorkOrder.objects.exists()


def test_admin_lists_work_orders_read_only(client, admin_user, l1_program, sent):
    program = l1_program(write=False)
    order = pipeline.start(program, requested_by="beat").order
    drive(order.pk)  # fails at staging: no L1 files
    client.force_login(admin_user)
    listing = client.get(reverse("admin:inversions_workorder_changelist"), {"status__exact": "failed", "kind__exact": "preprocess"})
    html = listing.content.decode()
    assert listing.status_code == 200 and str(program) in html and "staging the L1 files" in html
    detail = client.get(reverse("admin:inversions_workorder_change", args=[order.pk]))
    assert detail.status_code == 200 and "submission_id" in detail.content.decode()
    assert client.post(reverse("admin:inversions_workorder_delete", args=[order.pk]), {"post": "yes"}).status_code == 403
    assert WorkOrder.objects.filter(pk=order.pk).exists()


def test_cubes_and_quicklooks_open_in_globus(client, scientist, l1_program, sent, settings):
    from tests.dashboard.test_globus_links import links

    science_id = "5e1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    settings.L2_GLOBUS_COLLECTION_IDS = f'{{"{settings.L2_SCIENCE_COLLECTION}": "{science_id}"}}'
    program = l1_program()
    order = pipeline.start(program, requested_by="beat").order
    drive(order.pk)
    client.force_login(scientist)
    found = links(client.get(reverse("program-detail", args=[str(program)])).content.decode())
    handed_over = pipeline.science_path(program)
    cubes = [f for f in found if f["title"].split(":")[0].endswith(".fits")]
    assert len(cubes) == program.datasets.count()  # one per cube, on the science collection where it was handed over
    assert {(f["origin_id"], f["origin_path"]) for f in cubes} == {(science_id, handed_over)}
    assert {"origin_id": science_id, "origin_path": handed_over + "quicklook/",
            "title": f"quick-look folder: {settings.L2_SCIENCE_COLLECTION}:{handed_over}quicklook/"} in found
