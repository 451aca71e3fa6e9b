"""The inversion's results on the program page: maps on the sky at a chosen log tau, one pixel's profiles."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from publishing import plots
from publishing.l2files import QUANTITIES, generate_all
from publishing.results import demo_l1_header, validate_results, write_demo_results
from publishing.results_views import cache_folder, frames_folder

STEPS, SLIT, DEPTH = 7, 24, 9


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    """L2 frames of a 3-line demo inversion (no database)."""
    folder = tmp_path_factory.mktemp("l2")
    write_demo_results(folder / "results", n_steps=STEPS, n_slit=SLIT, n_depth=DEPTH, n_wave=[10, 8, 12])
    results = validate_results(folder / "results", expected_steps=STEPS)
    headers = {s: demo_l1_header(s, n_steps=STEPS, n_slit=SLIT, rotation_deg=25.0) for s in range(STEPS)}
    ids = {"inversion_id": "L2TEST", "proposal_id": "pid_2_114", "experiment_id": "eid_2_114",
           "program_id": "id.136026.452442", "dataset_ids": ["BVJVO"]}
    made = generate_all(results, headers, ids, folder / "files", workers=1, software_versions={"l2": "test"})
    return [Path(f.path) for f in sorted(made, key=lambda f: f.step)]


# ----------------------------------------------------------------------------- reading frames (no Django)


def test_the_header_reader_finds_what_astropy_finds(frames):
    hdus = plots.read_hdus(frames[3], cards_of=(1,))
    with fits.open(frames[3]) as hdul:
        assert [h.extname for h in hdus[1:]] == [h.header["EXTNAME"] for h in hdul[1:]]
        assert [h.shape for h in hdus[1:]] == [h.data.shape for h in hdul[1:]]
        for ours, theirs in zip(hdus[1:], hdul[1:]):
            assert ours.offset == theirs._data_offset
        for key in ("CRPIX3", "CRVAL2", "CDELT2", "PC2_3", "CTYPE3", "CUNIT2"):
            assert hdus[1].cards[key] == hdul[1].header[key]


def test_every_pixel_is_where_astropy_puts_it_on_the_sky(frames):
    index = plots.frame_index(frames)
    assert index.shape == (STEPS, SLIT)
    for step in (0, 4, STEPS - 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(fits.getheader(frames[step], 1)).celestial  # axes: HPLT (slit), HPLN (raster)
        lat, lon = wcs.pixel_to_world_values(np.arange(SLIT), np.zeros(SLIT))
        assert np.allclose(index.lon[step], lon * 3600, atol=1e-6)
        assert np.allclose(index.lat[step], lat * 3600, atol=1e-6)
    # the PC rotation (25°) is applied: the slit is not along solar Y (PC, then the axes' CDELT)
    slit_angle = np.degrees(np.arctan2(index.lon[0, -1] - index.lon[0, 0], index.lat[0, -1] - index.lat[0, 0]))
    rad = np.radians(25.0)
    assert abs(slit_angle) == pytest.approx(np.degrees(np.arctan2(0.0214 * np.sin(rad), 0.0298 * np.cos(rad))), abs=0.05)
    assert abs(slit_angle) > 15
    assert np.allclose(index.log_tau, fits.getdata(frames[0], 1)[0, SLIT // 2], atol=1e-6)


def test_a_map_holds_the_quantity_at_the_nearest_log_tau(frames):
    index = plots.frame_index(frames)
    depth = index.depth_of(-1.0)
    assert abs(index.log_tau[depth] + 1.0) == min(abs(index.log_tau + 1.0))
    field = plots.MAP_BY_KEY["field_strength"]
    values = plots.read_map(index, field, depth)
    expected = np.array([fits.getdata(f, "Magnetic Field Strength")[0, :, depth] for f in frames]) * 1e4  # T → G
    assert np.allclose(values, expected, rtol=1e-6)


def test_maps_are_drawn_once_then_served_from_the_cache(frames, tmp_path):
    velocity = plots.MAP_BY_KEY["velocity"]
    path, drawn = plots.map_png(tmp_path, frames, velocity, -2.0)
    assert drawn and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (round(plots.FIG_W * plots.DPI), round(plots.FIG_H * plots.DPI))
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a picture, not a blank
    stamp = path.stat().st_mtime_ns
    again, drawn = plots.map_png(tmp_path, frames, velocity, -2.0)
    assert (again, drawn, again.stat().st_mtime_ns) == (path, False, stamp)
    assert (tmp_path / "index.npz").is_file()
    assert plots.cached_index(tmp_path, frames).lon.tolist() == plots.frame_index(frames).lon.tolist()
    assert plots.cached_index(tmp_path, frames[:-1]).shape == (STEPS - 1, SLIT)  # other frames: read again


def test_velocity_uses_a_diverging_colour_map_centred_on_zero():
    v = plots.MAP_BY_KEY["velocity"]
    assert v.diverging and v.cmap == "RdBu_r"
    lo, hi = plots.colour_limits(np.array([-1.0, 0.5, 3.0, np.nan]), v)
    assert lo == -hi and hi > 0


def test_a_click_on_the_picture_finds_the_pixel_under_it(frames):
    index = plots.frame_index(frames)
    x0, x1, y0, y1 = plots.map_frame(index.lon, index.lat)
    left, bottom, width, height = plots.AXES_BOX
    for step, slit in ((0, 0), (3, 11), (STEPS - 1, SLIT - 1)):
        fx = left + (index.lon[step, slit] - x0) / (x1 - x0) * width
        fy = 1 - bottom - (index.lat[step, slit] - y0) / (y1 - y0) * height
        assert plots.pixel_at(index.lon, index.lat, fx, fy) == (step, slit)
    assert plots.pixel_at(index.lon, index.lat, 0.02, 0.5) is None  # the axis labels
    assert plots.pixel_at(index.lon, index.lat, left + 0.001, 1 - bottom - 0.001) is None  # a corner, no data


def test_one_pixel_has_the_profiles_of_every_line_and_its_depth_curves(frames):
    lines = plots.pixel_profiles(frames[2], 5)
    assert [line.line for line in lines] == ["Na I", "Fe I", "Ca II"]  # wavelength order
    with fits.open(frames[2]) as hdul:
        assert np.allclose(lines[1].original, hdul["Fe I Profile Original"].data[0, 5])
        assert np.allclose(lines[1].fit, hdul["Fe I Profile Fit"].data[0, 5])
        assert np.allclose(lines[1].wavelength_nm[0], hdul["Fe I Profile Fit"].header["CRVAL2"])
    panels = plots.profile_panels(lines)
    assert [len(p["panels"]) for p in panels] == [4, 4, 4]
    assert all(svg.startswith("<svg") and svg.count("<polyline") == 2 for p in panels for svg in p["panels"])
    index = plots.frame_index(frames)
    log_tau, curves = plots.pixel_depth_curves(index, 2, 5)
    temperature = fits.getdata(frames[2], "Temperature")[0, 5]
    assert np.allclose(curves["temperature"], temperature) and len(log_tau) == DEPTH
    assert len(plots.depth_panels(log_tau, curves)) == 4


def test_frames_that_are_not_l2_frames_are_refused_with_the_reason(frames, tmp_path):
    bad = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2), dtype=np.float32))]).writeto(bad)
    with pytest.raises(plots.PlotError, match="not an L2 frame"):
        plots.frame_index([bad])
    truncated = tmp_path / "cut.fits"
    truncated.write_bytes(frames[0].read_bytes()[:3000])
    with pytest.raises(plots.PlotError, match="truncated"):
        plots.frame_index([truncated])
    with pytest.raises(plots.PlotError, match="no L2 frames"):
        plots.frame_index([])


def test_svg_panels_escape_their_text():
    svg = plots.svg_panel(np.arange(3.0), [(np.array([1.0, np.nan, 2.0]), "fit")], title="<b>&", xlabel="x")
    assert "<b>" not in svg and "&lt;b&gt;&amp;" in svg and svg.count(",") == 2  # the NaN is left out


# ----------------------------------------------------------------------------- the pages


@pytest.mark.django_db
def test_a_published_program_shows_its_maps_and_a_pixel(make_published, as_user, scientist):
    case = make_published()
    program, inversion = case.program, case.inversion
    client = as_user(scientist)
    page = client.get(reverse("program-detail", args=[str(program)]))
    html = page.content.decode()
    assert page.status_code == 200 and 'data-testid="results"' in html
    urls = re.findall(r'src="([^"]+/maps/[^"]+\.png)"', html)
    assert [u.split("/maps/")[1] for u in urls] == [
        "temperature/-1.png", "field_strength/-1.png", "inclination/-1.png", "velocity/-1.png"]

    response = client.get(urls[3])
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content)[:4] == b"\x89PNG"
    folder = frames_folder(inversion)
    cached = cache_folder(inversion, folder) / "map-velocity-tau-1.0.png"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    assert client.get(urls[3]).status_code == 200 and cached.stat().st_mtime_ns == stamp  # from the cache

    card = client.get(reverse("program-results", args=[str(program)]), {"tau": "-2"}, HTTP_HX_REQUEST="true")
    assert card.status_code == 200 and "/maps/temperature/-2.png" in card.content.decode()
    assert 'value="-2" selected' in card.content.decode()

    pixel_url = reverse("program-result-pixel", args=[str(program), inversion.inversion_id])
    pixel = client.get(pixel_url, {"step": 2, "slit": 7}, HTTP_HX_REQUEST="true")
    text = pixel.content.decode()
    assert pixel.status_code == 200 and "Raster step 2, slit position 7" in text
    lines = len(inversion.spectral_lines) and text.count('class="profile-line"')
    assert lines >= 1 and text.count('<svg class="panel"') == 4 * lines + 4  # I Q U V per line + 4 depth curves
    click = client.get(pixel_url, {"fx": "0.45", "fy": "0.5"})
    assert click.status_code == 200 and "Raster step" in click.content.decode()


@pytest.mark.django_db
def test_bad_requests_for_results_answer_400_or_404_never_500(make_published, as_user, scientist):
    case = make_published()
    program, inv = str(case.program), case.inversion.inversion_id
    client = as_user(scientist)
    pixel_url = reverse("program-result-pixel", args=[program, inv])
    for params in ({"fx": "abc", "fy": "1"}, {"fx": "2", "fy": "0.5"}, {"step": "99", "slit": "0"},
                   {"step": "x"}, {}, {"fx": "nan", "fy": "nan"}):
        response = client.get(pixel_url, params)
        assert response.status_code == 400, params
        assert "data-l2-message" in response.content.decode()
    assert "No pixel there" in client.get(pixel_url, {"fx": "0.01", "fy": "0.01"}).content.decode()
    assert client.get(reverse("program-results", args=[program]), {"tau": "7"}).status_code == 400
    assert client.get(reverse("program-result-map", args=[program, inv, "pressure", "-1"])).status_code == 404
    assert client.get(reverse("program-result-map", args=[program, inv, "velocity", "3"])).status_code == 404
    assert client.get(reverse("program-result-map", args=[program, "L2NOPE", "velocity", "-1"])).status_code == 404
    assert client.post(pixel_url, {"fx": 0.5, "fy": 0.5}).status_code == 405


@pytest.mark.django_db
def test_the_program_page_of_a_published_program_costs_at_most_15_queries(make_published, as_user, scientist):
    case = make_published()
    client = as_user(scientist)
    url = reverse("program-detail", args=[str(case.program)])
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    assert len(queries) <= 15, [q["sql"][:120] for q in queries.captured_queries]  # 14 measured


@pytest.mark.parametrize("lo, hi", [(630.1128, 630.1928), (588.95, 589.03), (-0.0171, -0.0152), (3900, 7100), (-4, 1)])
def test_panel_ticks_are_distinct_and_at_least_two(lo, hi):
    ticks = plots._ticks(lo, hi, 3)
    labels = [plots._fmt(t, ticks) for t in ticks]
    assert len(ticks) >= 2 and len(set(labels)) == len(labels) and all(lo <= t <= hi for t in ticks), labels
