"""L2 frame generation, restart, and the dataset ASDF file (DESIGN §9.1)."""

import os
import warnings

import asdf
import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import publishing.l2files as l2files
from inversions.errors import DoNotRetryError
from publishing.l2files import (
    QUANTITIES,
    expected_extnames,
    frame_filename,
    frame_is_valid,
    generate_all,
    generate_frame,
    write_dataset_metadata,
)
from publishing.results import demo_l1_header

from .helpers import IDS, KNOWN, LINES, N_DEPTH, N_SLIT, N_STEPS, N_WAVE, VERSIONS, l1_headers, make_results

EXTNAMES = [
    "Log of Optical Depth at 500nm",
    "Temperature",
    "Electron Pressure",
    "Microturbulence",
    "Magnetic Field Strength",
    "Line-of-sight Velocity",
    "Magnetic Field Inclination (w.r.t. line-of-sight)",
    "Magnetic Field Azimuth (w.r.t. line-of-sight)",
    "Geometric Height",
    "Gas Pressure",
    "Density",
]
BUNITS = ["", "K", "N/m^2", "km/s", "T", "km/s", "deg", "deg", "km", "N/m^2", "kg/m^3"]


@pytest.fixture(scope="module")
def frame(results, tmp_path_factory):
    """Step KNOWN[0] generated once; (path, l1 header)."""
    step = KNOWN[0]
    header = l1_headers()[step]
    path = tmp_path_factory.mktemp("frame") / frame_filename(step, header, IDS)
    info = generate_frame(step, results, header, IDS, path, software_versions=VERSIONS)
    assert info.path == str(path) and info.generated and info.size == path.stat().st_size
    return path, header


def spatial(world, celestial_index):
    return np.array([float(world[i]) for i in celestial_index])


def test_frame_opens_verifies_and_checksums(frame):
    path, _ = frame
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksum mismatch is a warning in astropy: make it fail
        with fits.open(path, checksum=True) as hdul:
            hdul.verify("exception")
            for hdu in hdul:
                assert "CHECKSUM" in hdu.header and "DATASUM" in hdu.header
                assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1
    assert frame_is_valid(path)


def test_quantity_hdus(frame, results):
    path, _ = frame
    with fits.open(path) as hdul:
        assert [h.header["EXTNAME"] for h in hdul[1:12]] == EXTNAMES
        assert [h.header["BUNIT"] for h in hdul[1:12]] == BUNITS
        assert hdul[1].header["BTYPE"] == "phys.absorption.opticalDepth"
        assert hdul[2].header["BTYPE"] == "phys.temperature"
        for hdu in hdul[1:12]:
            assert hdu.data.shape == (1, N_DEPTH, N_SLIT) and hdu.data.dtype.kind == "f"
            assert hdu.header["DATAMIN"] == pytest.approx(float(hdu.data.min()))
            assert hdu.header["DATAMAX"] == pytest.approx(float(hdu.data.max()))
        names = [h.header["EXTNAME"] for h in hdul[12:]]
        assert names == ["Fe I 630.15 Original", "Fe I 630.15 Fit", "Fe I 630.25 Original", "Fe I 630.25 Fit"]
        assert names == expected_extnames(results)[11:]


def test_bunits_are_fits_units_of_the_converted_values():
    cgs = [u.one, u.K, u.dyn / u.cm**2, u.cm / u.s, u.G, u.cm / u.s, u.deg, u.deg, u.cm, u.dyn / u.cm**2,
           u.g / u.cm**3]
    for quantity, bunit, unit in zip(QUANTITIES, BUNITS, cgs):
        target = u.Unit(bunit, format="fits") if bunit else u.one
        assert quantity.factor == pytest.approx((1 * unit).to_value(target), rel=1e-12)


def test_values_converted_from_cgs(frame):
    path, _ = frame
    slit = KNOWN[1]
    with fits.open(path) as hdul:
        value = {h.header["EXTNAME"]: h.data[0, :, slit] for h in hdul[1:12]}
    expected = {
        "Electron Pressure": 1.0,  # 10 dyn/cm^2
        "Microturbulence": 2.0,  # 2e5 cm/s
        "Magnetic Field Strength": 0.1,  # 1000 G
        "Line-of-sight Velocity": 1.0,  # 1e5 cm/s
        "Magnetic Field Inclination (w.r.t. line-of-sight)": 40.0,  # 400 deg
        "Magnetic Field Azimuth (w.r.t. line-of-sight)": 330.0,  # -30 deg
        "Geometric Height": 1.0,  # 1e5 cm
        "Gas Pressure": 1.0,  # 10 dyn/cm^2
        "Density": 1.0,  # 1e-3 g/cm^3
    }
    for name, v in expected.items():
        np.testing.assert_allclose(value[name], v, rtol=1e-6, err_msg=name)


def test_unconverted_quantities_and_profiles_are_the_input(frame, results):
    path, _ = frame
    step = KNOWN[0]
    mod = fits.getdata(results.paths["mod"])
    pre, ori = fits.getdata(results.paths["pre"]), fits.getdata(results.paths["ori"])
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["Log of Optical Depth at 500nm"].data[0], mod[0, :, step, :])
        np.testing.assert_array_equal(hdul["Temperature"].data[0], mod[1, :, step, :])
        np.testing.assert_array_equal(hdul["Fe I 630.15 Original"].data[0], ori[:, :N_WAVE, step, :])
        np.testing.assert_array_equal(hdul["Fe I 630.25 Fit"].data[0], pre[:, N_WAVE:, step, :])


def test_angles_wrapped_everywhere(frame):
    path, _ = frame
    with fits.open(path) as hdul:
        for name in EXTNAMES[6:8]:
            data = hdul[name].data
            assert data.min() >= 0 and data.max() < 360
        assert hdul[EXTNAMES[7]].data[0, 0, KNOWN[1] + 1] == 0.0


def test_primary_header_lifted_from_l1_with_l2_keys(frame):
    path, l1 = frame
    header = fits.getheader(path, 0)
    assert header["LEVEL"] == 2 and header["PROCTYPE"] == "L2"
    assert header["DSETID"] == IDS["inversion_id"]
    assert header["PROP_ID"] == IDS["proposal_id"] and header["EXPER_ID"] == IDS["experiment_id"]
    assert header["IP_ID"] == IDS["program_id"] and header["OBSPR_ID"] == IDS["observing_program_id"]
    assert header["L1DSETS"] == "BVJVO,AXYZQ" and header["L1DSETID"] == l1["DSETID"]
    assert len(header["FILE_ID"]) == 32 and header["FILE_ID"] != l1["FILE_ID"]
    assert header["FILENAME"] == path.name
    assert {header["SWNAME1"]: header["SWVERS1"], header["SWNAME2"]: header["SWVERS2"]} == VERSIONS
    assert [header["SPECLN01"], header["SPECLN02"]] == list(LINES) and header["NSPECLNS"] == 2
    for key in ("DATE-BEG", "INSTRUME", "WAVEMIN", "WAVEMAX", "OBJECT", "ATMOS_R0", "DSP_ID", "PROPID01"):
        assert header[key] == l1[key], key
    assert "L1 calibration" in str(header["HISTORY"])
    for key in ("NAXIS1", "DATAMEAN", "DATAP99", "DNAXIS", "DINDEX3", "CTYPE1", "PC2_3", "WCSAXES", "FRAMEVOL",
                "BUNIT"):
        assert key not in header, key
    assert header["NAXIS"] == 0


def test_wcs_pixel_zero_is_the_l1_pixel_zero(frame):
    path, l1 = frame
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's datfix/obsfix notices
        for key in (" ", "A"):
            w1 = WCS(l1, key=key)
            # L1 axes: 1 wave, 2 along slit (HPLT / DEC), 3 raster (HPLN / RA)
            l1_zero = spatial(w1.pixel_to_world_values(0, 0, 0), (1, 2))
            l1_along = spatial(w1.pixel_to_world_values(0, 17, 0), (1, 2))
            quantity = WCS(hdul["Temperature"].header, key=key)
            assert quantity.world_axis_physical_types[0] == w1.world_axis_physical_types[1]
            np.testing.assert_allclose(spatial(quantity.pixel_to_world_values(0, 0, 0), (0, 2)), l1_zero,
                                       rtol=0, atol=1e-10)
            np.testing.assert_allclose(spatial(quantity.pixel_to_world_values(17, 5, 0), (0, 2)), l1_along,
                                       rtol=0, atol=1e-10)
            profile = WCS(hdul["Fe I 630.25 Fit"].header, key=key)
            np.testing.assert_allclose(spatial(profile.pixel_to_world_values(0, 0, 0, 0), (0, 3)), l1_zero,
                                       rtol=0, atol=1e-10)
        # the raster step moves the frame across the sky
        other = WCS(l1_headers()[KNOWN[0] + 1])
        assert not np.allclose(spatial(other.pixel_to_world_values(0, 0, 0), (1, 2)), l1_zero, atol=1e-7)


def test_depth_wavelength_and_stokes_axes(frame, results):
    path, _ = frame
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log_tau = hdul["Log of Optical Depth at 500nm"].data[0, :, 0]
        w = WCS(hdul["Temperature"].header)
        depths = [float(w.pixel_to_world_values(0, k, 0)[1]) for k in range(N_DEPTH)]
        np.testing.assert_allclose(depths, log_tau, atol=1e-5)
        p = WCS(hdul["Fe I 630.25 Original"].header)
        assert p.wcs.ctype[1] == "AWAV" and p.wcs.ctype[2] == "STOKES"
        offsets_nm = np.array(results.wavelength_offsets[N_WAVE:]) * 1e-4
        for k in (0, N_WAVE - 1):
            assert float(p.pixel_to_world_values(0, k, 0, 0)[1]) * 1e9 == pytest.approx(630.25 + offsets_nm[k])
        assert [float(p.pixel_to_world_values(0, 0, s, 0)[2]) for s in range(4)] == [1, 2, 3, 4]  # I Q U V


def test_binned_slit_maps_to_every_other_l1_pixel(results, tmp_path):
    header = demo_l1_header(0, n_steps=N_STEPS, n_slit=2 * N_SLIT, n_wave=64)  # L1 slit twice as long
    path = tmp_path / "binned.fits"
    generate_frame(0, results, header, IDS, path, software_versions=VERSIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w1 = WCS(header)
        w2 = WCS(fits.getheader(path, "Density"))
        for j in (0, 1, 7, N_SLIT - 1):
            np.testing.assert_allclose(spatial(w2.pixel_to_world_values(j, 0, 0), (0, 2)),
                                       spatial(w1.pixel_to_world_values(0, 2 * j, 0), (1, 2)), rtol=0, atol=1e-10)


def test_l1_header_without_helioprojective_axes_is_refused(results, tmp_path):
    header = demo_l1_header(0, n_steps=N_STEPS, n_slit=N_SLIT)
    header["CTYPE3"] = "RA---TAN"
    with pytest.raises(DoNotRetryError, match="no helioprojective HPLN/HPLT axes"):
        generate_frame(0, results, header, IDS, tmp_path / "x.fits", software_versions=VERSIONS)
    assert not list(tmp_path.iterdir())


def test_l1_header_with_unfixable_card_is_refused(results, tmp_path):
    header = demo_l1_header(0, n_steps=N_STEPS, n_slit=N_SLIT)
    header.append(fits.Card.fromstring("ABC&DEF = 1".ljust(80)))
    with pytest.raises(DoNotRetryError, match="L1 header of raster step 0 has cards that are not FITS standard"):
        generate_frame(0, results, header, IDS, tmp_path / "x.fits", software_versions=VERSIONS)
    assert not list(tmp_path.iterdir())


def test_result_files_changed_after_validation(tmp_path):
    results = make_results(tmp_path / "r", n_steps=2)
    mod = fits.getdata(results.paths["mod"])
    fits.writeto(results.paths["mod"], mod[:, :, :, :-1], overwrite=True)
    with pytest.raises(DoNotRetryError, match="result files changed since they were checked"):
        generate_frame(0, results, l1_headers(2)[0], IDS, tmp_path / "x.fits", software_versions=VERSIONS)


# ----------------------------------------------------------------------------- validity and restart


def test_invalid_frames(frame, tmp_path):
    path, _ = frame
    data = path.read_bytes()
    assert not frame_is_valid(tmp_path / "missing.fits")
    (tmp_path / "truncated.fits").write_bytes(data[: len(data) - 5000])
    assert not frame_is_valid(tmp_path / "truncated.fits")
    corrupt = bytearray(data)
    corrupt[-3000] ^= 0xFF  # one byte of the last profile's data
    (tmp_path / "corrupt.fits").write_bytes(bytes(corrupt))
    assert not frame_is_valid(tmp_path / "corrupt.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros(3))]).writeto(tmp_path / "other.fits", checksum=True)
    assert not frame_is_valid(tmp_path / "other.fits")
    assert frame_is_valid(path) and not frame_is_valid(path, EXTNAMES)  # profiles missing from expectation


def test_restart_writes_only_missing_frames(results, tmp_path):
    headers = l1_headers()
    out = tmp_path / "l2"
    out.mkdir()
    for step in range(3):  # a run killed after 3 of 5 frames …
        generate_frame(step, results, headers[step], IDS, out / frame_filename(step, headers[step], IDS),
                       software_versions=VERSIONS)
    (out / f".half-written.fits.1234{l2files.TMP_SUFFIX}").write_bytes(b"SIMPLE  =")  # … mid-write
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".fits"}
    progress = []
    frames = generate_all(results, headers, IDS, out, workers=2, software_versions=VERSIONS,
                          progress_cb=lambda done, total: progress.append((done, total)))
    assert [f.step for f in frames] == list(range(N_STEPS))
    assert [f.generated for f in frames] == [False, False, False, True, True]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(f.filename for f in frames)  # temp file gone
    assert progress == [(i, N_STEPS) for i in range(1, N_STEPS + 1)]
    assert all(frame_is_valid(f.path, expected_extnames(results)) for f in frames)
    assert len({f.file_id for f in frames}) == N_STEPS

    # a corrupt frame is written again, the others are kept
    victim = out / frames[1].filename
    raw = bytearray(victim.read_bytes())
    raw[-100] ^= 0x01
    victim.write_bytes(bytes(raw))
    again = generate_all(results, headers, IDS, out, workers=1, software_versions=VERSIONS)
    assert [f.generated for f in again] == [False, True, False, False, False]
    assert frame_is_valid(victim) and again[1].file_id == frames[1].file_id


def test_threads_when_processes_cannot_start(results, tmp_path, monkeypatch):
    monkeypatch.setattr(l2files, "_can_start_processes", lambda: False)
    frames = generate_all(results, l1_headers(), IDS, tmp_path, workers=2, software_versions=VERSIONS)
    assert [f.generated for f in frames] == [True] * N_STEPS
    assert all(frame_is_valid(f.path) for f in frames)


def test_worker_errors_keep_their_class_and_step(results, tmp_path):
    headers = l1_headers()
    headers[3]["CTYPE2"] = "DEC--TAN"
    with pytest.raises(DoNotRetryError) as info:
        generate_all(results, headers, IDS, tmp_path, workers=2, software_versions=VERSIONS)
    assert info.value.step == "publish.generate" and "raster step 3" in info.value.message


def test_missing_l1_headers_are_refused(results, tmp_path):
    headers = l1_headers()
    del headers[2]
    with pytest.raises(DoNotRetryError, match=r"no L1 header for raster step\(s\) 2 of 5"):
        generate_all(results, headers, IDS, tmp_path, workers=1, software_versions=VERSIONS)


# ----------------------------------------------------------------------------- dataset file


def test_dataset_metadata_asdf(results, tmp_path):
    frames = generate_all(results, l1_headers(), IDS, tmp_path / "l2", workers=1, software_versions=VERSIONS)
    inventory = {
        "inversionId": IDS["inversion_id"],
        "primaryProposalId": IDS["proposal_id"],
        "instrumentProgramExecutionId": IDS["program_id"],
        "datasetIds": IDS["dataset_ids"],
        "spectralLines": list(LINES),
    }
    out = write_dataset_metadata(frames, inventory, tmp_path / "l2" / "INV_L2_METADATA.asdf")
    with asdf.open(out) as af:
        assert af["files"]["filenames"] == [f.filename for f in frames]
        assert af["files"]["steps"] == list(range(N_STEPS))
        assert af["files"]["sizes"] == [os.path.getsize(f.path) for f in frames]
        assert af["inventory"]["frameCount"] == N_STEPS
        assert af["inventory"]["inversionId"] == IDS["inversion_id"]
        assert af["inventory"]["spectralLines"] == list(LINES)
        columns = af["headers"]["columns"]
        assert columns["DSETID"] == [IDS["inversion_id"]] * N_STEPS
        assert columns["DATE-BEG"] == [l1_headers()[s]["DATE-BEG"] for s in range(N_STEPS)]
        assert columns["FILE_ID"] == [f.file_id for f in frames]
        assert [q["bunit"] for q in af["quantities"]] == BUNITS
    with pytest.raises(DoNotRetryError, match="says 7 frames, 5 were generated"):
        write_dataset_metadata(frames, {**inventory, "frameCount": 7}, tmp_path / "bad.asdf")
    assert not (tmp_path / "bad.asdf").exists()


def test_restart_after_results_change_regenerates_nothing_stale(tmp_path):
    """Same step, new inversion id -> a new file name: never mistaken for the old frame."""
    results = make_results(tmp_path / "r", n_steps=2)
    headers = l1_headers(2)
    first = generate_all(results, headers, IDS, tmp_path / "l2", workers=1, software_versions=VERSIONS)
    second = generate_all(results, headers, {**IDS, "inversion_id": "inv.other"}, tmp_path / "l2", workers=1,
                          software_versions=VERSIONS)
    assert {f.filename for f in first}.isdisjoint({f.filename for f in second})
    assert all(f.generated for f in second)
