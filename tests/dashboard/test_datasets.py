"""The dataset page and the program page's datasets table (real metadata-store records)."""
from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inversions import datasets as ds
from inversions.models import Dataset
from inversions.states import State
from scanning.qualification import DEFAULT_LINE_WINDOWS

pytestmark = pytest.mark.django_db


def test_line_windows_corners_movies_and_raw_fields_without_the_database():
    fe = DEFAULT_LINE_WINDOWS[0]
    d = Dataset(spectral_lines=["Fe I 630.15"], wavelength_min=fe.low_nm - 0.1, wavelength_max=fe.high_nm - 0.01,
                raw={"qualityReportObjectKey": "pid/ABC/quality.pdf", "browseMovieUrl": "https://vimeo.com/42"})
    check = ds.window_check(d)
    assert (check.min_ok, check.max_ok, check.ok) == (True, False, False)
    d.wavelength_max = fe.high_nm
    assert ds.window_check(d).ok
    assert ds.window_check(Dataset(spectral_lines=["He I 1083"], wavelength_min=1, wavelength_max=2)) is None
    assert ds.window_check(Dataset(spectral_lines=["Fe I 630.15"], wavelength_min=None, wavelength_max=2)) is None
    corners = ds.corners(((3.0, 4.0), (-6.0, 8.0)))
    assert [(c["x"], c["y"], c["distance"]) for c in corners] == [(3.0, 4.0, 5.0), (-6.0, 4.0, pytest.approx(7.211, abs=1e-3)),
                                                                  (-6.0, 8.0, 10.0), (3.0, 8.0, pytest.approx(8.544, abs=1e-3))]
    assert ds.corners(None) == []
    assert ds.browse_movie_url(d) == "https://vimeo.com/42"  # from the raw record: no column value
    assert ds.vimeo_embed_url("https://vimeo.com/1013246820") == "https://player.vimeo.com/video/1013246820"
    assert ds.vimeo_embed_url("https://example.org/movie.mp4") is None
    assert ds.quality_report_key(d) == "pid/ABC/quality.pdf"
    assert ds.count_bars({"good": 75, "bad": None}, 100) == [{"name": "good", "count": 75, "percent": 75.0},
                                                            {"name": "bad", "count": None, "percent": None}]
    assert [r["value"] for r in ds.distribution({"min": 0.05, "med": 0.1, "max": float("nan")}, 100)] == [
        5.0, None, 10.0, None, None]


def test_the_datasets_table_shows_windows_corners_embargo_and_links(as_user, scientist, make_op):
    program = make_op(State.PREPROCESSED)
    d = program.datasets.order_by("dataset_id").first()
    Dataset.objects.filter(pk=d.pk).update(is_embargoed=True, embargo_end_date="2030-01-02T00:00:00Z")
    html = as_user(scientist).get(reverse("program-detail", args=[str(program)])).content.decode()
    table = html.split('data-testid="datasets-table"', 1)[1].split("</table>", 1)[0]
    assert "data-sortable" in html.split('data-testid="datasets-table"', 1)[0][-200:]
    for dataset in program.datasets.all():
        assert f'href="{reverse("dataset-detail", args=[dataset.dataset_id])}"' in table
        if dataset.browse_movie_url:
            assert f'href="{dataset.browse_movie_url}"' in table
    assert "until 2030-01-02" in table
    assert table.count("in-window") + table.count("out-window") >= 2
    rows = re.findall(r'<tr[^>]*data-dataset="[^"]+">(.*?)</tr>', table, re.S)
    assert rows and all(row.count('class="corner"') == 4 for row in rows)  # every dataset of the demo has a box


def test_the_dataset_page_shows_every_field_the_movie_and_the_raw_record(as_user, scientist, make_op):
    program = make_op(State.PREPROCESSED)
    d = program.datasets.exclude(browse_movie_url="").first()
    client = as_user(scientist)
    url = reverse("dataset-detail", args=[d.dataset_id])
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200 and len(queries) <= 6
    html = response.content.decode()
    assert d.browse_movie_url in html and 'data-testid="movie-link"' in html
    if "vimeo.com" in d.browse_movie_url:
        assert "player.vimeo.com/video/" in html
    assert f'href="{reverse("program-detail", args=[str(program)])}"' in html
    assert "Fried parameter r₀ (cm)" in html and "Health" in html and 'data-testid="raw"' in html
    assert f"{d.frame_count}" in html and "nm" in html
    assert d.raw["datasetId"] in html
    assert client.get(reverse("dataset-detail", args=["NOPE"])).status_code == 404


def test_the_supersession_chain_lists_every_version_of_the_product(as_user, scientist, make_op):
    program = make_op(State.PREPROCESSED)
    old, new = program.datasets.order_by("dataset_id")[:2]
    Dataset.objects.filter(pk__in=[old.pk, new.pk]).update(product_id="PRODUCT-1")
    Dataset.objects.filter(pk=old.pk).update(superseded=True, create_date="2020-01-01T00:00:00Z")
    html = as_user(scientist).get(reverse("dataset-detail", args=[new.dataset_id])).content.decode()
    chain = html.split('data-testid="chain"', 1)[1].split("</ol>", 1)[0]
    assert chain.index(new.dataset_id) < chain.index(old.dataset_id) and "superseded" in chain
