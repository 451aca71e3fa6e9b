"""The embedded demo end to end, in-process: the files `make_demo_l1 --start --results` writes carry
a program from Invertible to Published (preprocess, claim, report, intake, generate, publish)."""
from __future__ import annotations

import html
import io
import re

import dkist
import pytest
from astropy.io import fits
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from inversions import lifecycle
from inversions.models import WorkOrder
from inversions.states import State
from inversions.transfers import local_folder
from publishing import pipeline as publishing
from publishing.models import Inversion
from publishing.tasks import generate_l2, intake_results, publish_l2
from tests.scanning.conftest import TOKEN, metadata_store  # noqa: F401  (the emulator fixture)

from .test_pipeline import run

pytestmark = pytest.mark.django_db


def test_demo_data_takes_a_program_from_invertible_to_published(l1_program, collections, scientist, operator,
                                                                 settings, metadata_store, monkeypatch,  # noqa: F811
                                                                 django_capture_on_commit_callbacks):
    settings.L2_GENERATE_WORKERS = 1
    settings.METADATA_STORE_URL, settings.METADATA_STORE_TOKEN = metadata_store.url, TOKEN
    settings.METADATA_STORE_MAX_ATTEMPTS = 1
    program = l1_program(arms=(("IQUV", 3), ("IQUV", 3)), write=False)

    out = io.StringIO()
    call_command("make_demo_l1", "--programs", "1", "--start", "--results", stdout=out)
    where = re.search(r"demo results to report from ([^:\s]+):(\S+)", out.getvalue())
    assert where, out.getvalue()
    collection, path = where.groups()
    assert run(WorkOrder.objects.get(program=program, kind="preprocess").pk)[-1] == "handover"
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED

    lifecycle.claim(program, user=scientist)
    # the report form proposes the demo's folder and every current dataset: sent as proposed
    client = Client()
    client.force_login(scientist)
    page = client.get(reverse("program-detail", args=[str(program)])).content.decode()
    form = page.split('id="report"', 1)[1].split("</form>", 1)[0]
    proposed = {name: html.unescape(value) for name, value in
                re.findall(r'<input id="id_(collection|path|software_commit)" name="\w+" value="([^"]*)"', form)}
    ticked = re.findall(r'name="dataset_ids" value="([^"]+)"[^>]*checked', form)
    assert (proposed["collection"], proposed["path"]) == (collection, path)
    assert sorted(ticked) == sorted(program.datasets.values_list("dataset_id", flat=True))
    assert proposed["software_commit"] == ""  # nobody reported before: no commit to propose yet
    queued = []
    monkeypatch.setattr(intake_results, "delay", lambda order_id: queued.append(order_id))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("program-report", args=[str(program)]),
                               {**proposed, "software_commit": "abc1234", "dataset_ids": ticked, "notes": ""})
    assert response.status_code == 302, response.content.decode()[:2000]
    [order_id] = queued
    assert intake_results.apply(args=[order_id]).get() == "done"
    program.refresh_from_db()
    assert program.state == State.INVERTED

    generate = publishing.request_generate(program, actor=operator.get_username(), user=operator, enqueue=False)
    assert generate_l2.apply(args=[generate.order.pk]).get() == "done"
    inversion = Inversion.objects.get(program=program)
    frames = [f for f in inversion.files.all() if f.step is not None]
    # one L2 file per raster step of the inversion: the demo's (as BLANCA may) dropped the last of 3
    assert len(frames) == inversion.raster_steps == 2
    folder = local_folder(settings.L2_SCRATCH_COLLECTION, publishing.l2_folder(inversion))
    l2 = dkist.load_dataset(folder / inversion.files.get(kind="metadata").filename)
    assert sorted(l2.profiles.keys()) == ["FeI630_fit", "FeI630_orig"]
    assert l2["temperature"].shape[:2] == (2, 12)  # 24 slit pixels binned by 2 (DESR-BIN)
    publish = publishing.request_publish(program, actor=operator.get_username(), user=operator, enqueue=False)
    assert publish_l2.apply(args=[publish.order.pk]).get() == "done"
    program.refresh_from_db()
    assert program.state == State.PUBLISHED
    published = collections["publish"] / inversion.bucket / program.primary_proposal_id / inversion.inversion_id
    with fits.open(next(published.glob("*.fits")), checksum=True) as hdus:
        hdus.verify("exception")
        assert hdus[0].header["LEVEL"] == 2
    # what a user downloads from the publish collection opens with the data center's tools
    product = dkist.load_dataset(next(published.glob("*_L2_metadata.asdf")))
    assert float(product["temperature"].data[1, 5, 3]) == float(l2["temperature"].data[1, 5, 3]) > 3000
