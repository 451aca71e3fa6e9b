"""Proposal pages: the programs grouped under their proposal, in fixed queries."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inversions.models import Dataset
from inversions.states import State

pytestmark = pytest.mark.django_db


def queries_for(client, url) -> tuple[int, str]:
    client.get(url)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured), response.content.decode()


def test_the_proposal_list_counts_programs_per_state_in_fixed_queries(as_user, scientist, make_op):
    client = as_user(scientist)
    make_op(State.PREPROCESSED)
    few, _ = queries_for(client, reverse("proposal-list"))
    for state in (State.PUBLISHED, State.WORKING, State.NOT_INVERTIBLE, State.ERROR):
        make_op(state)
    many, html = queries_for(client, reverse("proposal-list"))
    assert many == few
    assert f'href="{reverse("proposal-detail", args=["pid_2_114"])}"' in html
    assert "Published 1" in html and "Preprocessed 1" in html and "Not Invertible 1" in html


def test_a_proposal_shows_the_description_once_and_a_row_per_program(as_user, scientist, make_op):
    client = as_user(scientist)
    a = make_op(State.PREPROCESSED, description="Sunspot penumbra raster, many words")
    url = reverse("proposal-detail", args=["pid_2_114"])
    few, _ = queries_for(client, url)
    b = make_op(State.WORKING, claimant=scientist, description="Sunspot penumbra raster, many words")
    c = make_op(State.NOT_INVERTIBLE, description="Sunspot penumbra raster, many words")
    Dataset.objects.filter(program=b).update(fried_parameter={"med": 0.04})
    many, html = queries_for(client, url)
    assert many == few
    assert html.count("Sunspot penumbra raster, many words") == 1
    for program in (a, b, c):
        assert f'href="{reverse("program-detail", args=[str(program)])}"' in html
    row_b = html.split(str(b), 2)[2].split("</tr>", 1)[0]
    assert "4.0" in row_b and "bad" in row_b and "by han" in row_b  # r₀ in cm, red below 5 cm
    row_c = html.split(str(c), 2)[2].split("</tr>", 1)[0]
    assert 'class="tick fail"' in row_c and 'class="tick pass"' in row_c
    assert client.get(reverse("proposal-detail", args=["pid_nope"])).status_code == 404
