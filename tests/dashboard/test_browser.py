"""The dashboard in a real browser: headless Chromium driven by Playwright against a live server."""
from __future__ import annotations

import os
import re

import pytest
from django.urls import reverse

from inversions.models import Dataset, ObservingProgram
from inversions.states import State
from publishing.results import write_demo_results

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "pw-for-tests-0"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # plain synchronous code, so Django's async guard is relaxed for this module only.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def open_as(browser, live_server):
    """A logged-in page for a user, logged in through the login form."""
    contexts = []

    def login(user, *, width: int = 1366, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=live_server.url)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto("/")
        assert "/accounts/login/" in page.url  # nothing is reachable without login
        page.get_by_label("User name").fill(user.get_username())
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/$"))
        assert page.locator("h1").inner_text() == "Overview"
        return page

    yield login
    for context in contexts:
        context.close()


def state_of(program) -> str:
    return ObservingProgram.objects.values_list("state", flat=True).get(pk=program.pk)


def test_log_in_filter_programs_and_go_back(open_as, scientist, make_op):
    working = make_op(State.WORKING, claimant=scientist, description="Sunspot penumbra raster")
    make_op(State.PREPROCESSED, description="Quiet Sun network")
    make_op(State.NOT_INVERTIBLE)
    page = open_as(scientist)
    page.get_by_role("link", name="Programs", exact=True).click()
    page.wait_for_url(re.compile(r"/programs/$"))
    assert page.get_by_test_id("result-count").inner_text() == "3"

    page.get_by_label("State").select_option("working")  # HTMX swaps the table only
    page.wait_for_url(re.compile(r"state=working"))
    assert page.get_by_test_id("result-count").inner_text() == "1"
    assert page.locator("#program-table").get_by_role("link", name=str(working)).is_visible()

    page.get_by_label("Search ids and description").fill("quiet sun")
    page.get_by_label("State").select_option("")
    page.wait_for_url(re.compile(r"q=quiet\+sun$"))
    assert page.get_by_test_id("result-count").inner_text() == "1"
    assert "Quiet Sun network" in page.locator("#program-table").inner_text()

    page.go_back()  # the previous filter comes back: full page from the server
    page.wait_for_url(re.compile(r"\?state=working$"))
    page.wait_for_function("document.querySelector('[data-testid=result-count]').textContent === '1'")
    assert page.get_by_label("State").input_value() == "working"
    assert str(working) in page.locator("#program-table").inner_text()
    page.reload()
    assert page.get_by_test_id("result-count").inner_text() == "1"
    assert page.get_by_label("State").input_value() == "working"
    page.go_forward()
    page.wait_for_url(re.compile(r"q=quiet\+sun$"))
    page.wait_for_function("document.querySelector('#program-table').textContent.includes('Quiet Sun network')")
    page.screenshot(path="/tmp/l2-programs.png", full_page=True)


def test_open_a_program_and_read_its_checklist(open_as, scientist, make_op):
    program = make_op(State.INVERTIBLE)
    health = next(r for r in program.transitions.get(to_state=State.INVERTIBLE).details["rules"] if r["name"] == "Health")
    page = open_as(scientist)
    page.goto(reverse("program-list"))
    page.get_by_role("link", name=str(program)).click()
    page.wait_for_url(re.compile(re.escape(reverse("program-detail", args=[str(program)]))))
    checklist = page.locator("#qualification")
    assert "✓ Invertible" in checklist.inner_text()
    row = checklist.locator('tr[data-rule="Health"]')
    assert "passed" in row.inner_text()
    assert f"{health['value']:.3g}" in row.inner_text()
    assert checklist.locator("tbody tr").count() == 6
    assert page.locator("svg.boxplot g.box").count() == program.datasets.count()
    page.screenshot(path="/tmp/l2-program.png", full_page=True)
    page.set_viewport_size({"width": 820, "height": 1100})  # a tablet
    page.screenshot(path="/tmp/l2-program-tablet.png", full_page=False)


def test_pick_next_as_two_users_at_once_gets_two_programs(open_as, make_user, make_op):
    first, second = make_user("han", "science"), make_user("mei", "science")
    queued = [make_op(State.QUEUED), make_op(State.QUEUED)]
    pages = [open_as(first), open_as(second)]
    for page in pages:
        page.goto(reverse("queue"))
    for page in pages:  # both requests leave before either answer comes back
        page.evaluate("document.querySelector('[data-testid=pick-next]').form.requestSubmit()")
    picked = []
    for page in pages:
        page.wait_for_url(re.compile(r"/programs/[^/]+/$"))
        picked.append(page.url.rstrip("/").rsplit("/", 1)[1])
        assert "You are working on" in page.locator("#messages").inner_text()
    assert sorted(picked) == sorted(str(p) for p in queued)
    claims = dict(ObservingProgram.objects.filter(pk__in=[p.pk for p in queued]).values_list("instrument_program_execution_id", "claimed_by__username"))
    assert sorted(claims.values()) == ["han", "mei"]


def test_report_inverted_bad_then_good(open_as, scientist, make_op, tmp_path, settings, monkeypatch):
    from inversions.models import WorkOrder
    from publishing.intake import run_intake
    from publishing.tasks import intake_results

    (tmp_path / "science").mkdir()
    (tmp_path / "scratch").mkdir()
    settings.L2_COLLECTIONS = {"science-cluster": str(tmp_path / "science"), "scratch": str(tmp_path / "scratch")}
    settings.L2_SCRATCH_COLLECTION, settings.L2_TRANSFER_BACKEND = "scratch", "local"
    queued = []
    monkeypatch.setattr(intake_results, "delay", lambda order_id: queued.append(order_id))  # the worker: below
    program = make_op(State.WORKING, claimant=scientist)
    datasets = list(Dataset.objects.filter(program=program).order_by("wavelength_min"))
    fe = next(d for d in datasets if "Fe I 630.15" in (d.spectral_lines or []))
    steps = fe.frame_count // len(fe.stokes_parameters)
    write_demo_results(tmp_path / "science" / "inversions" / "run-1", n_steps=steps, n_slit=6, n_depth=3, n_wave=6,
                       line_ids=(23,), seed=1)  # the Fe arm
    page = open_as(scientist)
    page.goto(reverse("program-detail", args=[str(program)]))
    form = page.locator("#report")
    form.get_by_label("Globus collection").fill("science-cluster")
    form.get_by_label("Path of the result files").fill("/inversions/run-1")
    form.get_by_label("Inversion software commit").fill("not-a-commit")
    form.get_by_role("button", name="Report inverted").click()
    page.wait_for_load_state()
    assert "Not reported" in page.locator("#messages").inner_text()
    assert "7 to 40 hexadecimal digits" in form.inner_text()
    assert state_of(program) == State.WORKING

    # a path leaving the collection is refused at once, with the reason, and the form keeps its values
    form.get_by_label("Inversion software commit").fill("3f2c9e1")
    form.get_by_label("Path of the result files").fill("/inversions/../../etc")
    form.get_by_role("button", name="Report inverted").click()
    page.wait_for_load_state()
    assert "contains '..'" in page.locator("#messages").inner_text()
    assert state_of(program) == State.WORKING and not queued

    form.get_by_label("Path of the result files").fill("/inversions/run-1")
    form.get_by_role("button", name="Report inverted").click()
    page.wait_for_url(re.compile(re.escape(reverse("program-detail", args=[str(program)])) + "(#.*)?$"))
    assert "a worker fetches and checks the files now" in page.locator("#messages").inner_text()
    assert "fetching the files" in page.get_by_test_id("intake-status").inner_text()
    assert state_of(program) == State.WORKING

    # the worker checks the files; the polling part of the page shows the accepted inversion
    [order_id] = queued
    run_intake(order_id)
    inversion_id = WorkOrder.objects.get(pk=order_id).details["inversion_id"]
    page.get_by_test_id("inversion-id").wait_for(timeout=TIMEOUT_MS)
    assert page.get_by_test_id("inversion-id").inner_text() == inversion_id
    assert state_of(program) == State.INVERTED
    page.reload()
    assert page.get_by_test_id("program-state").inner_text() == "Inverted"
    files = program.transitions.latest("at", "id").details["files"]
    assert [f["name"] for f in files] == ["inv_res_mod.fits", "inv_res_pre.fits", "per_ori.fits"]
    assert "inv_res_mod.fits" in page.locator("#history").inner_text()


def test_operator_retries_an_errored_program(open_as, operator, make_op):
    program = make_op(State.ERROR, error_reason="Globus transfer failed: endpoint busy")
    page = open_as(operator)
    page.goto(reverse("program-detail", args=[str(program)]))
    assert "Globus transfer failed" in page.locator(".banner.bad").inner_text()
    page.get_by_role("button", name="Retry").click()
    page.wait_for_load_state()
    assert "back to Invertible" in page.locator("#messages").inner_text()
    assert page.get_by_test_id("program-state").inner_text() == "Invertible"
    assert state_of(program) == State.INVERTIBLE
    latest = program.transitions.latest("at", "id")
    assert (latest.from_state, latest.to_state, latest.actor) == (State.ERROR, State.INVERTIBLE, "olga")


def test_science_user_cannot_do_operators_actions(open_as, scientist, make_op):
    errored = make_op(State.ERROR)
    queued = make_op(State.QUEUED)
    page = open_as(scientist)
    page.goto(reverse("program-detail", args=[str(errored)]))
    assert page.get_by_role("button", name="Retry").count() == 0  # not offered …
    page.goto(reverse("queue"))
    assert page.get_by_role("button", name="Set").count() == 0
    assert page.get_by_role("button", name=re.compile("^Remove")).count() == 0
    # … and refused by the server when sent anyway, with the reason shown as a message
    status = page.evaluate(
        """async (url) => {
            const token = document.body.getAttribute('hx-headers').match(/"X-CSRFToken": "([^"]+)"/)[1];
            const r = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token}});
            return r.status;
        }""",
        reverse("program-retry", args=[str(errored)]),
    )
    assert status == 403
    page.evaluate(
        """(url) => {
            const b = document.createElement('button');
            b.id = 'forged'; b.textContent = 'forged';
            b.setAttribute('hx-post', url); b.setAttribute('hx-target', '#queue-body');
            document.querySelector('main').appendChild(b);
            htmx.process(b);
        }""",
        reverse("program-dequeue", args=[str(queued)]),
    )
    page.locator("#forged").click()
    page.wait_for_function("document.querySelector('#messages').textContent.includes('Only operators')")
    assert page.locator("#queue-body").get_by_role("link", name=str(queued)).is_visible()  # no blank swap
    assert state_of(errored) == State.ERROR and state_of(queued) == State.QUEUED


def test_scan_progress_is_polled_until_the_scan_ends(open_as, operator, monkeypatch):
    from scanning import views as scan_views
    from scanning.models import Scan

    monkeypatch.setattr(scan_views, "start_scan", lambda *, full, triggered_by: Scan.objects.create(full=full, triggered_by=triggered_by))
    page = open_as(operator)
    page.goto(reverse("scan-list"))
    page.get_by_role("button", name="Start scan").click()
    box = page.locator("#scan-running .progress-box")
    box.wait_for()
    assert box.get_attribute("data-status") == "running"
    scan = Scan.objects.get()
    Scan.objects.filter(pk=scan.pk).update(status=Scan.Status.SUCCEEDED, pages=3, records=1234, new=1200)
    page.wait_for_function("document.querySelector('#scan-running .progress-box').dataset.status === 'succeeded'", timeout=8000)
    assert "1234 records" in box.inner_text()
    assert box.get_attribute("hx-trigger") is None  # polling stopped
    row = page.get_by_test_id("scan-table").locator("tbody tr", has_text=f"#{scan.pk}")
    row.wait_for(timeout=8000)  # the table gained the finished scan, without a reload
    assert "1234" in row.inner_text()


SCREENSHOTS = os.path.join(os.path.dirname(__file__), "screenshots")


def screenshot(page, name: str) -> None:
    """A full-page picture in tests/dashboard/screenshots/ (gitignored), for anyone to look at."""
    os.makedirs(SCREENSHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)


def _maps_loaded(page) -> list[str]:
    page.wait_for_function(
        "[...document.querySelectorAll('#results img[data-map]')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000)
    return page.eval_on_selector_all("#results img[data-map]", "imgs => imgs.map(i => i.currentSrc)")


def test_a_published_program_shows_maps_at_a_log_tau_and_the_profiles_of_a_pixel(open_as, scientist, make_published):
    case = make_published(line_ids=(23, 4, 9))  # Fe I 630, Ca II 854, Na I D2
    page = open_as(scientist)
    page.goto(reverse("program-detail", args=[str(case.program)]))
    assert page.get_by_test_id("program-state").inner_text() == "Published"
    first = _maps_loaded(page)
    assert len(first) == 4
    before = page.get_by_test_id("map-temperature").screenshot()
    page.get_by_test_id("log-tau").select_option("0")
    page.wait_for_function("document.querySelector('#results img[data-map]').currentSrc.includes('/0.png')")
    second = _maps_loaded(page)
    assert all(a != b for a, b in zip(first, second))
    assert page.get_by_test_id("map-temperature").screenshot() != before  # another picture, not another name
    screenshot(page, "program-published")

    box = page.get_by_test_id("map-velocity").bounding_box()
    page.get_by_test_id("map-velocity").click(position={"x": box["width"] * 0.48, "y": box["height"] * 0.5})
    profiles = page.get_by_test_id("profiles")
    profiles.wait_for()
    lines = profiles.locator(".profile-line").count()
    assert lines == 3 and [h.inner_text() for h in profiles.locator(".profile-line h4").all()] == ["Na I", "Fe I", "Ca II"]
    assert profiles.locator("svg.panel").count() == 4 * lines
    assert page.get_by_test_id("depth-curves").locator("svg.panel").count() == 4
    assert "Raster step" in page.get_by_test_id("pixel").inner_text()
    screenshot(page, "program-published-pixel")


def test_report_with_the_proposed_defaults_then_the_page_follows_working_inverted_published(
        open_as, scientist, make_published, collections, monkeypatch):
    import shutil

    from inversions import pipeline as preprocessing
    from publishing import intake, pipeline
    from publishing.tasks import intake_results, publish_l2
    from tests.publishing.conftest import COMMIT, make_case

    make_published()  # an earlier inversion: its commit is the one proposed
    case = make_case(collections, scientist)
    proposed = preprocessing.science_path(case.program) + "results/"
    shutil.copytree(case.results_folder, collections / "science-cluster" / proposed.strip("/"))
    queued = []
    monkeypatch.setattr(intake_results, "delay", lambda order_id: queued.append(order_id))  # the worker: below

    page = open_as(scientist)
    page.goto(reverse("program-detail", args=[str(case.program)]))
    form = page.locator("#report")
    assert form.get_by_label("Path of the result files").input_value() == proposed
    assert form.get_by_label("Inversion software commit").input_value() == COMMIT
    form.get_by_role("button", name="Report inverted").click()
    page.wait_for_load_state()
    assert "a worker fetches and checks the files now" in page.locator("#messages").inner_text()
    page.evaluate("window.__same_page = true")  # gone if the page were loaded again

    [order_id] = queued
    assert intake.run_intake(order_id) == intake.Outcome.DONE  # accepted: Inverted
    state = page.get_by_test_id("program-state")
    page.wait_for_function("document.querySelector('[data-testid=program-state]').innerText === 'Inverted'")
    assert page.evaluate("window.__same_page") is True
    assert "Inverted" in page.get_by_test_id("stepper").locator("[aria-current]").inner_text()
    assert "inv_res_mod.fits" in page.locator("#history").inner_text()

    case.program.refresh_from_db()
    generate = pipeline.request_generate(case.program, actor="olga", enqueue=False).order
    assert pipeline.run_generate(generate.pk).outcome == pipeline.Outcome.DONE
    publish = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
    assert publish_l2.apply(args=[publish.pk]).get() == "done"
    page.wait_for_function("document.querySelector('[data-testid=program-state]').innerText === 'Published'")
    assert state.inner_text() == "Published" and page.evaluate("window.__same_page") is True
    page.get_by_test_id("level2-state").wait_for()
    assert page.get_by_test_id("level2-state").inner_text() == "Published"
    assert page.get_by_test_id("live").get_attribute("hx-trigger") is None  # terminal: no more polling
    assert page.get_by_test_id("results").is_visible()


def test_sort_the_datasets_open_a_dataset_page_and_a_proposal(open_as, scientist, make_op):
    program = make_op(State.PREPROCESSED, description="Sunspot penumbra raster")
    for n in range(16):
        make_op(State.PREPROCESSED if n % 3 else State.PUBLISHED, description=f"Quiet Sun network, run {n} " + "long " * 60)
    page = open_as(scientist)
    screenshot(page, "overview")
    page.goto(reverse("program-list"))
    screenshot(page, "program-list")
    rows = page.locator("table tbody tr")
    visible = [i for i in range(rows.count()) if (rows.nth(i).bounding_box() or {"y": 1e9})["y"] + 10 < 900]
    assert len(visible) >= 15, len(visible)  # at least 15 programs on a 900-px-high screen

    page.goto(reverse("program-detail", args=[str(program)]))
    table = page.get_by_test_id("datasets-table")
    ids = lambda: table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.dataset)")  # noqa: E731
    waves = lambda: table.locator("tbody tr td:nth-child(2)").evaluate_all(  # noqa: E731
        "cells => cells.map(c => parseFloat(c.dataset.sort))")
    table.get_by_role("button", name="λ min (nm)").click()
    assert waves() == sorted(waves())
    table.get_by_role("button", name="λ min (nm)").click()
    assert waves() == sorted(waves(), reverse=True)
    table.get_by_role("button", name="Dataset").click()
    assert ids() == sorted(ids())
    assert table.locator("th[aria-sort=ascending]").text_content().startswith("Dataset")

    with_movie = Dataset.objects.filter(program=program).exclude(browse_movie_url="").order_by("dataset_id").first()
    table.locator(f"tr[data-dataset='{with_movie.dataset_id}'] a", has_text=with_movie.dataset_id).click()
    page.wait_for_url(re.compile(re.escape(reverse("dataset-detail", args=[with_movie.dataset_id])) + "$"))
    movie = page.locator(".head-actions").get_by_test_id("movie-link")
    assert movie.get_attribute("href") == with_movie.browse_movie_url
    assert page.get_by_test_id("program-link").inner_text() == str(program)
    screenshot(page, "dataset")

    page.get_by_role("link", name="Proposals").click()
    page.get_by_role("link", name=program.primary_proposal_id).click()
    page.wait_for_url(re.compile(re.escape(reverse("proposal-detail", args=[program.primary_proposal_id]))))
    assert page.get_by_test_id("proposal-programs").first.locator("tbody tr").count() >= 1
    assert str(program) in page.locator("main").inner_text()
    screenshot(page, "proposal")
