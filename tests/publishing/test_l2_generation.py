"""L2 frames in the data center's layout, restart, validity (DESIGN §9.1, issue 11)."""

import warnings

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
)
from publishing.results import demo_l1_header

from .helpers import IDS, KNOWN, N_DEPTH, N_SLIT, N_STEPS, N_WAVE, VERSIONS, l1_headers, make_results

EXTNAMES = [
    "Log of Optical Depth at 500nm",
    "Temperature",
    "Electron Pressure",
    "Microturbulence",
    "Magnetic Field Strength",
    "Line-of-sight Velocity",
    "Magnetic Field Inclination (w.r.t. line-of-sight)",
    "Magnetic Field Azimuth (w.r.t. line-of-sight)",
    "Geometric Height above solar surface (tau ~ 1 at 500nm)",
    "Gas Pressure",
    "Density",
]
BUNITS = ["", "K", "N/m^2", "km/s", "T", "km/s", "deg", "deg", "km", "N/m^2", "kg/m^3"]
#: the profile HDUs: lines in wavelength order (the files hold Ca II, Fe I, Na I)
PROFILES = ["Na I Profile Original", "Na I Profile Fit", "Fe I Profile Original", "Fe I Profile Fit",
            "Ca II Profile Original", "Ca II Profile Fit"]


@pytest.fixture(scope="module")
def frame(results, tmp_path_factory):
    """Step KNOWN[0] generated once; (path, l1 header)."""
    step = KNOWN[0]
    header = l1_headers()[step]
    path = tmp_path_factory.mktemp("frame") / frame_filename(header, IDS)
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
            assert hdu.data.shape == (1, N_SLIT, N_DEPTH) and hdu.data.dtype.kind == "f"  # (1, slit, depth)
            assert hdu.header["DATAMIN"] == pytest.approx(float(hdu.data.min()))
            assert hdu.header["DATAMAX"] == pytest.approx(float(hdu.data.max()))
            assert (hdu.header["BZERO"], hdu.header["BSCALE"], hdu.header["WCSVALID"]) == (0, 1, True)
            assert hdu.header["DATE"].startswith("20")
        names = [h.header["EXTNAME"] for h in hdul[12:]]
        assert names == PROFILES == expected_extnames(results)[11:]
        for hdu in hdul[12:]:
            assert hdu.data.shape == (1, N_SLIT, N_WAVE, 4)  # (1, slit, wavelength, stokes)
            assert hdu.header["BTYPE"] == "spect.line.profile"
            assert hdu.header["SPECPFTP"] in ("Original", "Fit") and hdu.header["SPECPFIN"] in hdu.header["EXTNAME"]


def test_bunits_are_fits_units_of_the_converted_values():
    # the inversion code's units: cgs, except geometric height (km, written unconverted)
    cgs = [u.one, u.K, u.dyn / u.cm**2, u.cm / u.s, u.G, u.cm / u.s, u.deg, u.deg, u.km, u.dyn / u.cm**2,
           u.g / u.cm**3]
    for quantity, bunit, unit in zip(QUANTITIES, BUNITS, cgs):
        target = u.Unit(bunit, format="fits") if bunit else u.one
        assert quantity.factor == pytest.approx((1 * unit).to_value(target), rel=1e-12)


def test_values_converted_from_cgs(frame):
    path, _ = frame
    slit = KNOWN[1]
    with fits.open(path) as hdul:
        value = {h.header["EXTNAME"]: h.data[0, slit, :] for h in hdul[1:12]}
    expected = {
        "Electron Pressure": 1.0,  # 10 dyn/cm^2
        "Microturbulence": 2.0,  # 2e5 cm/s
        "Magnetic Field Strength": 0.1,  # 1000 G
        "Line-of-sight Velocity": 1.0,  # 1e5 cm/s
        "Magnetic Field Inclination (w.r.t. line-of-sight)": 40.0,  # 400 deg
        "Magnetic Field Azimuth (w.r.t. line-of-sight)": 330.0,  # -30 deg
        "Geometric Height above solar surface (tau ~ 1 at 500nm)": 1e5,  # km, unconverted
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
    fe = next(p for p in results.lines if p.line.key == "FeI630")
    ca = next(p for p in results.lines if p.line.key == "CaII854")
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["Log of Optical Depth at 500nm"].data[0], mod[0, :, step, :].T)
        np.testing.assert_array_equal(hdul["Temperature"].data[0], mod[1, :, step, :].T)
        np.testing.assert_array_equal(hdul["Fe I Profile Original"].data[0],
                                      ori[:, fe.start:fe.stop, step, :].transpose(2, 1, 0))
        np.testing.assert_array_equal(hdul["Ca II Profile Fit"].data[0],
                                      pre[:, ca.start:ca.stop, step, :].transpose(2, 1, 0))


def test_angles_wrapped_everywhere(frame):
    path, _ = frame
    with fits.open(path) as hdul:
        for name in EXTNAMES[6:8]:
            data = hdul[name].data
            assert data.min() >= 0 and data.max() < 360
        assert hdul[EXTNAMES[7]].data[0, KNOWN[1] + 1, 0] == 0.0


def test_primary_header_is_the_curated_l2_header(frame):
    path, l1 = frame
    header = fits.getheader(path, 0)
    assert header["LEVEL"] == 2 and header["PROCTYPE"] == "L2"
    assert header["DSETID"] == IDS["inversion_id"]
    assert header["PROP_ID"] == IDS["proposal_id"] and header["EXPER_ID"] == IDS["experiment_id"]
    assert header["IP_ID"] == IDS["program_id"] and header["OBSPR_ID"] == IDS["observing_program_id"]
    assert len(header["FILE_ID"]) == 36 and header["FILE_ID"] != l1["FILE_ID"]
    assert header["FILENAME"] == path.name
    assert header["FRAMEVOL"] == pytest.approx(path.stat().st_size / 1e6)
    assert header["HEADVERS"] == l2files.HEADVERS and header["HEADVERS"] != l1["HEADVERS"]
    assert header["HEAD_URL"] != l1["HEAD_URL"]
    assert {header["SWNAME1"]: header["SWVERS1"], header["SWNAME2"]: header["SWVERS2"]} == VERSIONS
    for key in ("DATE-BEG", "DATE-END", "DATE-AVG", "INSTRUME", "OBJECT", "ATMOS_R0", "DSP_ID", "PROPID01",
                "EXPRID01", "SOLARNET", "TIMESYS", "FIDO_CFG", "TTBLTRCK", "DKISTVER"):
        assert header[key] == l1[key], key
    # not a copy of the L1 header: no L1 array, dataset axes, WCS or arm keys
    for key in ("NAXIS1", "DATAMEAN", "DATAP99", "DNAXIS", "DINDEX3", "CTYPE1", "PC2_3", "WCSAXES", "BUNIT",
                "WAVEMIN", "VSPARMID", "HISTORY", "LINEWAV"):
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
            quantity = WCS(hdul["Temperature"].header, key=key)  # axes: depth, slit, raster
            assert quantity.world_axis_physical_types[1] == w1.world_axis_physical_types[1]
            np.testing.assert_allclose(spatial(quantity.pixel_to_world_values(0, 0, 0), (1, 2)), l1_zero,
                                       rtol=0, atol=0.01 / 3600)  # 0.01 arcsec
            np.testing.assert_allclose(spatial(quantity.pixel_to_world_values(5, 17, 0), (1, 2)), l1_along,
                                       rtol=0, atol=0.01 / 3600)
            for name in PROFILES:  # axes: stokes, wavelength, slit, raster
                profile = WCS(hdul[name].header, key=key)
                np.testing.assert_allclose(spatial(profile.pixel_to_world_values(0, 0, 0, 0), (2, 3)), l1_zero,
                                           rtol=0, atol=0.01 / 3600)
        # the raster step moves the frame across the sky
        other = WCS(l1_headers()[KNOWN[0] + 1])
        assert not np.allclose(spatial(other.pixel_to_world_values(0, 0, 0), (1, 2)), l1_zero, atol=1e-7)


def test_depth_wavelength_and_stokes_axes(frame, results):
    path, _ = frame
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log_tau = hdul["Log of Optical Depth at 500nm"].data[0, 0, :]
        w = WCS(hdul["Temperature"].header)
        assert w.wcs.ctype[0] == "LOGTAU"
        depths = [float(w.pixel_to_world_values(k, 0, 0)[0]) for k in range(N_DEPTH)]
        np.testing.assert_allclose(depths, log_tau, atol=1e-5)
        p = WCS(hdul["Fe I Profile Original"].header)
        assert p.wcs.ctype[0] == "STOKES" and p.wcs.ctype[1] == "AWAV"
        fe = next(line for line in results.lines if line.line.key == "FeI630")
        for k in (0, fe.offsets_ma.index(0.0), N_WAVE - 1):
            assert float(p.pixel_to_world_values(0, k, 0, 0)[1]) * 1e9 == pytest.approx(fe.wavelengths_nm[k])
        assert float(p.pixel_to_world_values(0, fe.offsets_ma.index(0.0), 0, 0)[1]) * 1e9 == pytest.approx(630.15012)
        assert [float(p.pixel_to_world_values(s, 0, 0, 0)[0]) for s in range(4)] == [1, 2, 3, 4]  # I Q U V


def test_binned_slit_maps_to_every_other_l1_pixel(tmp_path):
    binned = make_results(tmp_path / "r", binning=2)
    header = demo_l1_header(0, n_steps=N_STEPS, n_slit=2 * N_SLIT + 1, n_wave=64)  # a partial last bin
    path = tmp_path / "binned.fits"
    generate_frame(0, binned, header, IDS, path, software_versions=VERSIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w1 = WCS(header)
        w2 = WCS(fits.getheader(path, "Density"))
        for j in (0, 1, 7, N_SLIT - 1):
            np.testing.assert_allclose(spatial(w2.pixel_to_world_values(0, j, 0), (1, 2)),
                                       spatial(w1.pixel_to_world_values(0, 2 * j, 0), (1, 2)), rtol=0, atol=1e-10)


def test_slit_that_does_not_fit_the_binning_is_refused(results, tmp_path):
    header = demo_l1_header(0, n_steps=N_STEPS, n_slit=2 * N_SLIT, n_wave=64)  # DESR-BIN = 1: 40 pixels expected
    with pytest.raises(DoNotRetryError, match=f"{N_SLIT} slit positions binned by 1 .* {2 * N_SLIT} slit pixels"):
        generate_frame(0, results, header, IDS, tmp_path / "x.fits", software_versions=VERSIONS)
    assert not list(tmp_path.iterdir())


def test_l1_header_without_helioprojective_axes_is_refused(results, tmp_path):
    header = demo_l1_header(0, n_steps=N_STEPS, n_slit=N_SLIT)
    header["CTYPE3"] = "RA---TAN"
    with pytest.raises(DoNotRetryError, match="no helioprojective HPLN/HPLT axes"):
        generate_frame(0, results, header, IDS, tmp_path / "x.fits", software_versions=VERSIONS)
    assert not list(tmp_path.iterdir())


def test_result_files_changed_after_validation(tmp_path):
    results = make_results(tmp_path / "r", n_steps=2)
    mod = fits.getdata(results.paths["mod"])
    fits.writeto(results.paths["mod"], np.ascontiguousarray(mod[:, :, :, :-1]), overwrite=True)
    with pytest.raises(DoNotRetryError, match="result files changed since they were checked"):
        generate_frame(0, results, l1_headers(2)[0], IDS, tmp_path / "x.fits", software_versions=VERSIONS)


# ----------------------------------------------------------------------------- validity and restart


def test_invalid_frames(frame, results, tmp_path):
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
    assert frame_is_valid(path)
    # a frame of another layout (here: the profile HDUs of other lines) counts as invalid
    other = make_results(tmp_path / "other", line_ids=(23,))
    assert frame_is_valid(path, results) and not frame_is_valid(path, other)


def test_restart_writes_only_missing_frames(results, tmp_path):
    headers = l1_headers()
    out = tmp_path / "l2"
    out.mkdir()
    for step in range(3):  # a run killed after 3 of 5 frames …
        generate_frame(step, results, headers[step], IDS, out / frame_filename(headers[step], IDS),
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
    assert progress[-1] == (N_STEPS, N_STEPS) and [d for d, _ in progress] == sorted({d for d, _ in progress})
    assert all(frame_is_valid(f.path, results) for f in frames)
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


def test_steps_with_the_same_date_beg_are_refused(results, tmp_path):
    headers = l1_headers()
    headers[2]["DATE-BEG"] = headers[1]["DATE-BEG"]
    with pytest.raises(DoNotRetryError, match="raster steps 1 and 2 have the same DATE-BEG"):
        generate_all(results, headers, IDS, tmp_path, workers=1, software_versions=VERSIONS)


def test_file_names_as_the_reference_product(frame):
    path, l1 = frame
    assert path.name == "INV_" + IDS["inversion_id"].replace(".", "_").upper() + "_" + \
        l1["DATE-BEG"].replace("-", "_").replace(":", "_").replace(".", "_") + "_L2.fits"


def test_restart_after_results_change_regenerates_nothing_stale(tmp_path):
    """Same step, new inversion id -> a new file name: never mistaken for the old frame."""
    results = make_results(tmp_path / "r", n_steps=2)
    headers = l1_headers(2)
    first = generate_all(results, headers, IDS, tmp_path / "l2", workers=1, software_versions=VERSIONS)
    second = generate_all(results, headers, {**IDS, "inversion_id": "inv.other"}, tmp_path / "l2", workers=1,
                          software_versions=VERSIONS)
    assert {f.filename for f in first}.isdisjoint({f.filename for f in second})
    assert all(f.generated for f in second)


def _hdus(path):
    with fits.open(path) as hdul:
        return [(h.header.get("EXTNAME"), h.header.get("DATASUM"), h.header.get("DATAMIN"), h.header.get("DATAMAX"),
                 None if h.data is None else h.data.copy()) for h in hdul]


def test_read_ahead_write_behind_frames_equal_one_by_one_frames(results, tmp_path, monkeypatch):
    """Batches of 2 steps in two slots, frames in two slots: every frame as generate_frame makes it alone."""
    monkeypatch.setattr(l2files, "batch_size", lambda results: 2)  # 5 steps: batches 2+2+1, slots reused
    headers = l1_headers()
    alone = tmp_path / "alone"
    alone.mkdir()
    for step in range(N_STEPS):
        generate_frame(step, results, headers[step], IDS, alone / frame_filename(headers[step], IDS),
                       software_versions=VERSIONS)
    buffers = l2files.FrameBuffers()
    infos = l2files._steps_task(list(range(N_STEPS)), results, [headers[s] for s in range(N_STEPS)], IDS,
                                [str(tmp_path / frame_filename(headers[s], IDS)) for s in range(N_STEPS)],
                                VERSIONS, 2, buffers=buffers)
    assert [i.step for i in infos] == list(range(N_STEPS)) and all(i.generated for i in infos)
    assert {name.split("/")[-1] for name in buffers._arrays} == {"0", "1"}  # two slots, reused
    for info in infos:
        ours, theirs = _hdus(info.path), _hdus(alone / info.filename)
        assert [h[:4] for h in ours] == [h[:4] for h in theirs]
        for a, b in zip(ours[1:], theirs[1:]):
            np.testing.assert_array_equal(a[4], b[4])


def test_a_failed_write_in_the_writer_thread_is_raised_and_leaves_no_file(results, tmp_path, monkeypatch):
    headers = l1_headers()
    victim = frame_filename(headers[2], IDS)
    real_replace = l2files.os.replace

    def replace(src, dst):
        if str(dst).endswith(victim):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(l2files.os, "replace", replace)
    with pytest.raises(l2files.RetryError, match=f"could not write L2 frame {victim}: .*No space left"):
        generate_all(results, headers, IDS, tmp_path, workers=1, software_versions=VERSIONS)
    assert not (tmp_path / victim).exists()
    assert not list(tmp_path.glob(f".*{l2files.TMP_SUFFIX}"))  # no temporary file left either
    assert all(frame_is_valid(p, results) for p in tmp_path.glob("*.fits"))


def test_frame_buffers_are_reused_and_read_steps_checks_its_out_array(results):
    buffers = l2files.FrameBuffers()
    a = buffers.array("x/0", (2, 3), ">f4")
    assert buffers.array("x/0", (2, 3), ">f4") is a and buffers.array("x/0", (3, 3), ">f4") is not a
    room = buffers.steps("b/0", (2, 3, 4, 5), ">f4")
    fewer = buffers.steps("b/0", (2, 3, 2, 5), ">f4")
    assert fewer.shape == (2, 3, 2, 5) and np.shares_memory(room, fewer)
    block = l2files.StepBlock.read(results, 1, 2, buffers=buffers, slot=1)
    views = buffers.steps_views("batch:pre/1", block.pre)
    again = l2files.StepBlock.read(results, 1, 2, buffers=buffers, slot=1)
    assert again.pre is not block.pre and np.shares_memory(again.pre, block.pre)
    assert buffers.steps_views("batch:pre/1", again.pre) is views  # made once per buffer and count
    plain = l2files.StepBlock.read(results, 1, 2)
    np.testing.assert_array_equal(block.pre, plain.pre)
    np.testing.assert_array_equal(block.mod, plain.mod)
    with pytest.raises(ValueError, match="out is"):
        l2files.read_steps(results.paths["mod"], 0, 2, np.empty((1, 1, 2, N_SLIT), ">f4"))
