""""Open in Globus" links: one helper (l2site/globus_links.py), on the program page's datasets (L1 folders)."""
from __future__ import annotations

import html as htmllib
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from inversions import pipeline
from inversions.states import State
from l2site import globus_links
from l2site.globus_links import collection_id, file_manager_url

L1_ID = "d8f3e1a2-4b5c-4d6e-8f70-1a2b3c4d5e6f"
PUBLISH_ID = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"


def query(url: str) -> dict:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://app.globus.org/file-manager"
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def test_a_uuid_collection_is_its_own_id_and_a_name_is_looked_up(settings):
    settings.L2_GLOBUS_COLLECTION_IDS = f'{{"publish": "{PUBLISH_ID.upper()}"}}'
    assert collection_id(L1_ID.upper()) == L1_ID
    assert collection_id("publish") == PUBLISH_ID
    assert collection_id("scratch") is None and collection_id("") is None
    assert query(file_manager_url(L1_ID, "/data/pid_1/ABCDE")) == {"origin_id": L1_ID, "origin_path": "/data/pid_1/ABCDE/"}
    assert query(file_manager_url("publish", "/data/pid_1/INV/INV_00001_L2.fits", is_file=True))["origin_path"] == "/data/pid_1/INV/"
    assert query(file_manager_url("publish", "relative/../x/"))["origin_path"] == "/x/"
    assert file_manager_url("scratch", "/l2/") is None  # a name with no id: no link
    assert file_manager_url("publish", None) is None


def test_a_bad_collection_id_map_is_a_configuration_error(settings):
    globus_links._parse_ids.cache_clear()
    for bad in ("not json", '["a"]', '{"publish": "not-a-uuid"}'):
        settings.L2_GLOBUS_COLLECTION_IDS = bad
        with pytest.raises(ImproperlyConfigured, match="L2_GLOBUS_COLLECTION_IDS"):
            collection_id("publish")


def links(html: str) -> list[dict]:
    found = re.findall(r'<a class="globus-link" href="([^"]+)"[^>]*title="([^"]*)"[^>]*>Open in Globus</a>', html)
    return [{**query(htmllib.unescape(href)), "title": htmllib.unescape(title)} for href, title in found]


@pytest.mark.django_db
def test_the_datasets_table_links_each_l1_folder(client, scientist, make_op, settings):
    settings.L2_L1_COLLECTION = L1_ID
    program = make_op(State.INVERTIBLE)
    client.force_login(scientist)
    found = links(client.get(reverse("program-detail", args=[str(program)])).content.decode())
    datasets = list(program.datasets.filter(superseded=False))
    assert len(datasets) >= 2
    assert sorted(f["origin_path"] for f in found) == sorted(pipeline.l1_path(d) for d in datasets)
    assert {f["origin_id"] for f in found} == {L1_ID}
    assert all(f["title"].startswith("L1 folder of ") for f in found)
    # the embedded default names its collections: without an id for them, no broken links
    settings.L2_L1_COLLECTION = "dkist-l1"
    assert links(client.get(reverse("program-detail", args=[str(program)])).content.decode()) == []
