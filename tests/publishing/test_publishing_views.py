"""The program page's Level 2 part: roles, Generate, the Publish confirmation step, progress polling."""
from __future__ import annotations

import json

import pytest
from django.utils import timezone
from django.test import Client
from django.urls import reverse

from inversions import work_orders
from inversions.models import WorkOrder

pytestmark = pytest.mark.django_db


@pytest.fixture
def inv(make_inversion):
    return make_inversion("L2VIEW", recorded=False, files=3)


def urls(inv):
    ipeid = inv.program.instrument_program_execution_id
    return {name: reverse(f"program-{name}", args=[ipeid]) for name in ("detail", "generate", "publish", "publishing")}


def test_program_page_shows_the_inversion_and_operator_buttons(client, inv, operator, scientist):
    client.force_login(operator)
    html = client.get(urls(inv)["detail"]).content.decode()
    assert 'data-testid="publishing"' in html and 'data-testid="inversion-id">L2VIEW<' in html
    assert "Generate L2 files" in html and "Publish…" in html and "hx-trigger" not in html.split('id="publishing"')[1][:300]
    client.force_login(scientist)
    html = client.get(urls(inv)["detail"]).content.decode()
    assert "L2VIEW" in html and "Generate L2 files" not in html and "Publish…" not in html


def test_only_operators_generate_and_publish(client, inv, scientist):
    client.force_login(scientist)
    assert client.post(urls(inv)["generate"]).status_code == 403
    assert client.get(urls(inv)["publish"]).status_code == 403
    assert client.post(urls(inv)["publish"], {"inversion": "L2VIEW"}).status_code == 403
    assert not WorkOrder.objects.exists()


def test_generate_queues_an_order_and_the_page_polls_until_it_ends(client, inv, operator):
    client.force_login(operator)
    response = client.post(urls(inv)["generate"], {"force": "1"}, follow=True)
    assert "Generating the L2 files of id.L2VIEW" in response.content.decode()
    order = WorkOrder.objects.get(kind="generate")
    assert order.requested_by == "olga" and order.forced
    work_orders.start(order.pk, "frames")
    work_orders.set_progress(order.pk, frames_done=1, frames_total=3)
    partial = client.get(urls(inv)["publishing"], HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 2s"' in partial and "1 of 3 frames" in partial
    assert "Generate L2 files" not in partial  # not while it runs
    work_orders.complete(order)
    partial = client.get(urls(inv)["publishing"], HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in partial and "3 L2 frames and the dataset file" in partial


def test_publish_shows_what_will_be_published_then_needs_a_confirming_post(client, inv, operator):
    client.force_login(operator)
    page = client.get(urls(inv)["publish"])
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-testid="publish-path">/data/pid_1_118/L2VIEW/<' in html and "L2VIEW_00002_L2.fits" in html
    assert "asdfObjectKey" in html and "pid_1_118/L2VIEW/L2VIEW_L2_METADATA.asdf" in html
    assert "4 (3 frames + the dataset file), 3.4 KB" in html
    assert not WorkOrder.objects.exists()  # looking publishes nothing

    wrong = client.post(urls(inv)["publish"], {"inversion": "L2OTHER"})
    assert wrong.status_code == 400 and "does not name the inversion shown" in wrong.content.decode()
    assert client.post(urls(inv)["publish"]).status_code == 400
    assert not WorkOrder.objects.exists()

    done = client.post(urls(inv)["publish"], {"inversion": "L2VIEW"}, follow=True)
    assert "Publishing L2VIEW" in done.content.decode()
    order = WorkOrder.objects.get(kind="publish")
    assert order.details["path"] == "/data/pid_1_118/L2VIEW/" and order.details["record"]["inversionId"] == "L2VIEW"


def test_publish_of_a_program_without_files_shows_why_not(client, make_inversion, operator):
    inv = make_inversion("L2NOFILES", recorded=False)
    client.force_login(operator)
    html = client.get(urls(inv)["publish"]).content.decode()
    assert "no L2 files have been generated yet" in html and 'name="inversion"' not in html
    response = client.post(urls(inv)["publish"], {"inversion": "L2NOFILES"}, follow=True)
    assert "Cannot publish: no L2 files have been generated yet" in response.content.decode()


def test_posts_need_the_csrf_token(inv, operator):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert strict.post(urls(inv)["generate"]).status_code == 403
    assert strict.post(urls(inv)["publish"], {"inversion": "L2VIEW"}).status_code == 403
    assert not WorkOrder.objects.exists()


@pytest.mark.parametrize("step, kind, message", [("generate", "generate", "L2 generation runs again"),
                                                 ("publish", "publish", "Publication runs again")])
def test_retry_after_a_failed_generation_or_publication_runs_it_again(client, inv, operator, step, kind, message):
    from inversions import lifecycle

    lifecycle.fail(inv.program, step=step, reason="it broke")
    client.force_login(operator)
    response = client.post(reverse("program-retry", args=[str(inv.program)]), follow=True)
    assert message in response.content.decode()
    inv.program.refresh_from_db()
    assert inv.program.state == "inverted" and WorkOrder.objects.get().kind == kind


def test_the_level_2_part_costs_three_queries_whatever_the_files(client, make_inversion, operator):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(operator)
    counts = []
    for name, files in (("L2FEW", 2), ("L2MANY", 40)):
        inv = make_inversion(name, recorded=False, files=files)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(urls(inv)["publishing"]).status_code == 200
        counts.append(len([q for q in ctx.captured_queries if "publishing_" in q["sql"] or "workorder" in q["sql"]]))
    assert counts == [4, 4]


def test_results_l2_files_and_the_published_inversion_open_in_globus(client, make_inversion, scientist, settings):
    from publishing.models import Inversion
    from tests.dashboard.test_globus_links import links

    ids = {"science-cluster": "11111111-2222-4333-8444-555555555555", "scratch": "66666666-7777-4888-9999-000000000000",
           "publish": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}
    settings.L2_GLOBUS_COLLECTION_IDS = json.dumps(ids)
    settings.L2_SCRATCH_COLLECTION = "scratch"
    inv = make_inversion("L2LINK", recorded=False, files=2)
    Inversion.objects.filter(pk=inv.pk).update(l2_path="/l2/pid_1_118/L2LINK/files/")
    client.force_login(scientist)
    page = reverse("program-detail", args=[inv.program.instrument_program_execution_id])
    found = links(client.get(page).content.decode())
    where = {f["title"]: (f["origin_id"], f["origin_path"]) for f in found}
    assert where["results folder: science-cluster:/x"] == (ids["science-cluster"], "/x/")
    assert where["L2 files: scratch:/l2/pid_1_118/L2LINK/files/"] == (ids["scratch"], "/l2/pid_1_118/L2LINK/files/")
    for name in ("L2LINK_00000_L2.fits", "L2LINK_00001_L2.fits", "L2LINK_L2_METADATA.asdf"):  # each L2 file: its folder
        assert where[f"{name}: scratch:/l2/pid_1_118/L2LINK/files/"] == (ids["scratch"], "/l2/pid_1_118/L2LINK/files/")
    # published: the L2 files and the inversion are on the publish collection
    Inversion.objects.filter(pk=inv.pk).update(published_collection="publish", published_path="/data/pid_1_118/L2LINK/",
                                               store_recorded_at=timezone.now())
    from inversions import lifecycle
    from inversions.states import State

    lifecycle.transition(inv.program, State.PUBLISHED, actor="test", reason="published")
    where = {f["title"]: (f["origin_id"], f["origin_path"]) for f in links(client.get(page).content.decode())}
    assert where["published inversion: publish:/data/pid_1_118/L2LINK/"] == (ids["publish"], "/data/pid_1_118/L2LINK/")
    assert where["L2LINK_00000_L2.fits: publish:/data/pid_1_118/L2LINK/"] == (ids["publish"], "/data/pid_1_118/L2LINK/")
