"""The demo L1 generator writes SPEC-214-shaped ViSP frames."""

from __future__ import annotations

import io
import re
import warnings
from contextlib import redirect_stdout

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from inversions.preprocessing.l1_frames import frames_per_dataset, parse_bbox, write_demo_dataset


def _spec214_keys(header: fits.Header) -> dict[str, tuple[str, dict]]:
    from dkist_fits_specifications import spec214

    with redirect_stdout(io.StringIO()):  # the package prints notes about its 122 tables
        schema = spec214.load_processed_spec214(**dict(header))
    return {key: (section, spec) for section, keys in schema.items() for key, spec in keys.items()}


def test_headers_follow_spec214(tmp_path):
    paths = write_demo_dataset(tmp_path, "BDWQK", n_steps=3, n_maps=2, n_wave=20, n_slit=12)
    assert len(paths) == frames_per_dataset(3, 2, "IQUV") == 24
    with fits.open(paths[0]) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU)  # DKIST L1: RICE-compressed HDU 1
        assert hdul[1].compression_type == "RICE_1"
        header = hdul[1].header
        assert hdul[1].data.shape == (1, 20, 12)  # [raster, wavelength, slit]
    spec = _spec214_keys(header)
    types = {"int": int, "float": (float, int), "str": str, "bool": bool}
    structural = {"XTENSION", "PCOUNT", "GCOUNT"}
    for key in header:
        if key in structural:
            continue
        assert key in spec, f"{key} is not a SPEC-214 key"
        expected = spec[key][1].get("type")
        if expected in types:
            assert isinstance(header[key], types[expected]), (key, expected, header[key])
    for section in ("fits", "dataset", "datacenter", "dkist-id", "visp"):
        missing = [k for k, (s, d) in spec.items() if s == section and d.get("required") and k not in header]
        assert not missing, f"required {section} keys missing: {missing}"

    assert header["INSTRUME"] == "VISP" and header["LEVEL"] == 1 and header["DSETID"] == "BDWQK"
    assert header["DNAXIS"] == 5 and header["DAAXES"] == 2 and header["DEAXES"] == 3
    assert [header[f"DTYPE{d}"] for d in range(1, 6)] == ["SPATIAL", "SPECTRAL", "SPATIAL", "TEMPORAL", "STOKES"]
    assert [header[f"DNAXIS{d}"] for d in range(1, 6)] == [12, 20, 3, 2, 4]
    assert header["CTYPE1"] == "HPLT-TAN" and header["CTYPE2"] == "AWAV" and header["CTYPE3"] == "HPLN-TAN"
    assert header["VSPNSTP"] == 3 and header["VSPNMAPS"] == 2


def test_positions_only_in_headers_and_checksums_valid(tmp_path):
    paths = write_demo_dataset(tmp_path, "AYDEW", n_steps=4, n_maps=1, stokes="IQUV", n_wave=16, n_slit=8,
                               compress=False)
    positions = []
    for p in paths:
        assert re.fullmatch(r"[0-9a-f]{32}\.fits", p.name)
        with fits.open(p, checksum=True) as hdul:
            for hdu in hdul:
                assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1
            h = hdul[1].header
            assert h["DNAXIS"] == 4  # one map: no TEMPORAL axis
            assert h["DINDEX3"] == h["VSPSTP"]
            positions.append((h["DINDEX4"], h["DINDEX3"]))
    assert sorted(positions) == [(k, s) for k in range(1, 5) for s in range(1, 5)]  # 1-based, complete
    assert positions != sorted(positions)  # name order says nothing about the frame order


def test_raster_wcs_moves_with_the_step(tmp_path):
    paths = write_demo_dataset(tmp_path, "AYDEW", n_steps=4, stokes="I", n_wave=16, n_slit=10,
                               bbox="(10.0,-400.0),(-10.0,-380.0)", compress=False)
    by_step = {}
    for p in paths:
        h = fits.getheader(p, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lat, wave, lon = WCS(h).pixel_to_world_values(0, 0, 0)
        lon = (float(lon) + 180.0) % 360.0 - 180.0  # wcslib returns longitudes in [0, 360)
        by_step[h["DINDEX3"]] = (lon * 3600, float(lat) * 3600, float(wave))
        assert "DINDEX4" not in h and h["DNAXIS"] == 3  # intensity only: no Stokes axis
    lons = [by_step[s][0] for s in range(1, 5)]
    assert np.allclose(np.diff(lons), 5.0, atol=0.01)  # 20″ over 4 steps, x increasing
    assert -10.0 < lons[0] < lons[-1] < 10.0
    assert by_step[1][2] == 630.05e-9  # WAVEMIN, in metres


def test_synthetic_spectra_look_like_fe_630(tmp_path):
    paths = write_demo_dataset(tmp_path, "AYDEW", n_steps=21, stokes="IQUV", n_wave=300, n_slit=40,
                               compress=False)
    spectra = {}
    for p in paths:
        with fits.open(p) as hdul:
            h = hdul[1].header
            if h["DINDEX3"] == 8:  # through the pore (x = 0.35 of the raster)
                spectra[h["STOKES"]] = hdul[1].data[0].astype(float) / 2.0e4
    wave = np.linspace(630.05, 630.35, 300)
    mean_i = spectra["I"].mean(axis=1)
    core = lambda lam: mean_i[np.argmin(abs(wave - lam))]  # noqa: E731
    assert 0.85 < np.percentile(mean_i, 90) < 1.1  # continuum ~1 (× intensity_scale)
    assert core(630.1501) < 0.6 and core(630.2494) < 0.6  # the two Fe I lines
    assert core(630.2005) < 0.8  # telluric O2
    v = spectra["V"]
    assert 0.02 < np.abs(v).max() < 0.5  # a magnetic signal, smaller than I
    assert np.abs(spectra["Q"]).max() < np.abs(v).max()
    assert np.abs(v.sum(axis=0)).max() > 0  # net circular polarisation is not zero


def test_parse_bbox_metadata_store_format():
    assert parse_bbox("(6.39,-374.42),(-124.96,-407.5)") == (-124.96, -407.5, 6.39, -374.42)
    assert parse_bbox(((1, 2), (-3, 4))) == (-3, 2, 1, 4)
