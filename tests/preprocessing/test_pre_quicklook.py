"""quicklook_pngs: continuum and net circular polarisation pictures."""

from __future__ import annotations

import numpy as np
from PIL import Image

from inversions.preprocessing.assemble import assemble_cube
from inversions.preprocessing.l1_frames import write_demo_dataset
from inversions.preprocessing.quicklook import image_size, quicklook_pngs
from inversions.preprocessing.verify import verify_dataset


def _cube(tmp_path, stokes="IQUV", n_steps=20, n_slit=30, bbox="(-10.0,-400.0),(0.0,-385.0)"):
    paths = write_demo_dataset(tmp_path / "l1", "AYDEW", n_steps=n_steps, stokes=stokes, n_wave=120,
                               n_slit=n_slit, bbox=bbox, compress=False)
    inventory = verify_dataset(paths, n_steps * len(stokes))
    return assemble_cube(inventory, tmp_path / "cube" / "AYDEW.fits", software_version="1", provenance={})


def test_iquv_quicklooks(tmp_path):
    info = _cube(tmp_path)  # 20 steps of 0.5″ × 30 slit pixels of 0.5″
    paths = quicklook_pngs(info.path, tmp_path / "ql")
    assert [p.name for p in paths] == ["AYDEW_continuum.png", "AYDEW_ncp.png"]
    for p in paths:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "L"
            assert im.size == (256, 384)  # short side up to 256, square arcseconds kept
            assert "AYDEW" in im.text["Title"]
    # the generator's pore sits at (x, y) = (0.35, 0.55) of the field: dark in the continuum,
    # positive field (white in NCP); the plage at (0.72, 0.30) has negative field (dark in NCP)
    continuum = np.asarray(Image.open(paths[0]), dtype=float)
    ncp = np.asarray(Image.open(paths[1]), dtype=float)
    at = lambda img, x, y: img[round((1 - y) * (img.shape[0] - 1)), round(x * (img.shape[1] - 1))]  # noqa: E731
    assert at(continuum, 0.35, 0.55) < np.percentile(continuum, 5)
    assert at(ncp, 0.35, 0.55) > 200 and at(ncp, 0.72, 0.30) < 90
    assert abs(np.median(ncp) - 128) < 20  # quiet Sun: no net polarisation


def test_intensity_only_cube_has_continuum_only(tmp_path):
    info = _cube(tmp_path, stokes="I", n_steps=30, n_slit=10, bbox="(-30.0,-400.0),(0.0,-390.0)")
    paths = quicklook_pngs(info.path, tmp_path / "ql")
    assert [p.name for p in paths] == ["AYDEW_continuum.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (768, 256)  # 30″ × 10″ at 1″ pixels, short side up to 256


def test_image_size_rules():
    header = {"CDELT1": 0.03, "CDELT3": 0.06}
    assert image_size(header, 490, 2554) == (786, 2048)  # a real ViSP raster, 2:1 step:slit scale
    assert image_size(header, 10, 100) == (256, 1280)
    assert image_size({"CDELT1": 1.0, "CDELT3": 1.0}, 300, 300) == (300, 300)


def test_each_quicklook_has_a_figure_with_axes_in_arcsec_and_a_colour_bar(tmp_path):
    from inversions.preprocessing.quicklook import _axis, figure_path

    info = _cube(tmp_path)  # 20 steps of 0.5″ × 30 slit pixels of 0.5″
    for path in quicklook_pngs(info.path, tmp_path / "ql"):
        figure = figure_path(path)
        assert figure.name == path.stem + "_figure.png"
        with Image.open(figure) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "RGBA" and im.size[0] > 300
            colours = np.asarray(im.convert("RGB")).reshape(-1, 3)
            assert len(np.unique(colours, axis=0)) > 50  # not a bare picture: text, ticks, a colour bar
    from astropy.io import fits

    header = fits.getheader(info.path)
    x0, x1 = _axis(header, 3, 20)
    y0, y1 = _axis(header, 1, 30)
    assert abs(abs(x1 - x0) - 10.0) < 0.01 and abs(abs(y1 - y0) - 15.0) < 0.01  # the field in arcsec
