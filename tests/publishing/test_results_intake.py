"""Result intake: BLANCA's files as BLANCA writes them, and validate_results (DESIGN §8, issue 11)."""

import hashlib
import shutil

import numpy as np
import pytest
from astropy.io import fits

from inversions.errors import DoNotRetryError
from publishing.results import (
    MOD_FILE,
    ORI_FILE,
    PRE_FILE,
    demo_wavelength_grid,
    validate_results,
    write_demo_results,
    write_results,
)

from .helpers import LINES, N_DEPTH, N_SLIT, N_STEPS, N_WAVE


@pytest.fixture()
def good(tmp_path):
    folder = tmp_path / "good"
    write_demo_results(folder, n_steps=N_STEPS, n_slit=N_SLIT, n_depth=N_DEPTH, n_wave=N_WAVE, seed=1)
    return folder


def replace_primary(path, data):
    """Rewrite a result file's primary array, keeping its header keys and BLANCA's extensions."""
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        extensions = [hdu.copy() for hdu in hdul[1:]]
    for key in [k for k in header if k.startswith("NAXIS") or k in ("BITPIX", "SIMPLE", "EXTEND")]:
        del header[key]
    fits.HDUList([fits.PrimaryHDU(data, header=header), *extensions]).writeto(path, overwrite=True)


def refused(folder_or_paths, **kwargs) -> DoNotRetryError:
    kwargs.setdefault("expected_steps", N_STEPS)
    with pytest.raises(DoNotRetryError) as info:
        validate_results(folder_or_paths, **kwargs)
    assert info.value.step == "results"
    return info.value


def test_demo_results_are_accepted_with_shapes_sizes_and_checksums(good):
    result = validate_results(good, expected_steps=N_STEPS, expected_slit=N_SLIT, spectral_lines=LINES)
    assert result.mod_shape == (11, N_DEPTH, N_STEPS, N_SLIT)
    assert result.profile_shape == (4, 3 * N_WAVE, N_STEPS, N_SLIT)
    assert (result.n_steps, result.n_slit, result.n_depth, result.n_wave) == (N_STEPS, N_SLIT, N_DEPTH, 3 * N_WAVE)
    # the files hold Ca II, Fe I, Na I (ids 4, 23, 9); the result lists them in wavelength order
    assert result.spectral_lines == LINES
    assert result.line_slices == ((2 * N_WAVE, 3 * N_WAVE), (N_WAVE, 2 * N_WAVE), (0, N_WAVE))
    assert [p.line.key for p in result.lines] == ["NaID", "FeI630", "CaII854"]
    assert (result.fiducial_arm, result.binning) == ("1", 1)
    for role, name in (("mod", MOD_FILE), ("pre", PRE_FILE), ("ori", ORI_FILE)):
        data = (good / name).read_bytes()
        assert result.sizes[role] == len(data)
        assert result.sha256[role] == hashlib.sha256(data).hexdigest()
    assert result.to_dict()["files"][MOD_FILE]["sha256"] == result.sha256["mod"]


def test_demo_values_are_plausible_cgs(good):
    mod = fits.getdata(good / MOD_FILE)
    assert np.all(np.isfinite(mod))
    assert 3000 < mod[1].min() and mod[1].max() < 12000  # K
    assert mod[4].max() > 1000  # G: a magnetic concentration
    assert mod[7].min() < 0  # azimuth has negative values to wrap
    pre, ori = fits.getdata(good / PRE_FILE), fits.getdata(good / ORI_FILE)
    assert pre.shape == ori.shape and not np.array_equal(pre, ori)
    assert 0.3 < ori[0].min() < 0.6 and 0.95 < ori[0].max() < 1.05  # Stokes I: a line dip


def test_paths_mapping_by_role_or_file_name(good):
    by_role = validate_results({"mod": good / MOD_FILE, "pre": good / PRE_FILE, "ori": good / ORI_FILE},
                               expected_steps=N_STEPS)
    by_name = validate_results({MOD_FILE: good / MOD_FILE, PRE_FILE: good / PRE_FILE, ORI_FILE: good / ORI_FILE},
                               expected_steps=N_STEPS)
    assert by_role.sha256 == by_name.sha256


def test_missing_files_are_named(good):
    (good / PRE_FILE).unlink()
    (good / ORI_FILE).unlink()
    err = refused(good)
    assert PRE_FILE in err.message and ORI_FILE in err.message and MOD_FILE not in err.message
    assert "missing" in err.message


def test_unreadable_file_is_named(good):
    (good / ORI_FILE).write_bytes(b"this is not a FITS file at all" * 200)
    err = refused(good)
    assert ORI_FILE in err.message and "not a readable FITS file" in err.message


def test_truncated_file_is_refused(good):
    data = (good / MOD_FILE).read_bytes()
    (good / MOD_FILE).write_bytes(data[: len(data) // 2])
    err = refused(good)
    assert f"{MOD_FILE} is truncated" in err.message


def test_empty_file_is_refused(good):
    (good / MOD_FILE).write_bytes(b"")
    err = refused(good)
    assert "empty" in err.message and MOD_FILE in err.message


def test_wrong_number_of_quantities(good):
    mod = fits.getdata(good / MOD_FILE)
    replace_primary(good / MOD_FILE, mod[:9])
    err = refused(good)
    assert f"{MOD_FILE} has 9 physical quantities" in err.message and "expected 11" in err.message


def test_fit_and_original_shapes_differ(good):
    ori = fits.getdata(good / ORI_FILE)
    replace_primary(good / ORI_FILE, ori[:, :-2])
    err = refused(good)
    assert PRE_FILE in err.message and ORI_FILE in err.message and "differs" in err.message


def test_model_and_profiles_disagree_on_steps(good):
    mod = fits.getdata(good / MOD_FILE)
    replace_primary(good / MOD_FILE, mod[:, :, :-1])
    err = refused(good, expected_steps=N_STEPS)
    assert f"{MOD_FILE} has {N_STEPS - 1} raster steps" in err.message
    assert f"{PRE_FILE} has {N_STEPS}" in err.message


def test_model_and_profiles_disagree_on_slit(good):
    mod = fits.getdata(good / MOD_FILE)
    replace_primary(good / MOD_FILE, mod[..., :-4])
    err = refused(good)
    assert f"{MOD_FILE} has {N_SLIT - 4} slit positions" in err.message


def test_frame_count_of_the_program(good):
    err = refused(good, expected_steps=N_STEPS + 2)
    assert f"has {N_STEPS} raster steps" in err.message
    assert f"the program's L1 datasets have {N_STEPS + 2}" in err.message
    assert err.details["expected_steps"] == N_STEPS + 2
    err = refused(good, expected_steps=N_STEPS - 1)  # more steps than L1: never
    assert f"has {N_STEPS} raster steps" in err.message


def test_one_raster_step_fewer_than_l1_is_accepted(good):
    """BLANCA drops an incomplete last raster step: L1 may have one step more than the inversion."""
    assert validate_results(good, expected_steps=N_STEPS + 1).n_steps == N_STEPS
    assert validate_results(good, expected_steps=N_STEPS).n_steps == N_STEPS


def test_expected_slit(good):
    err = refused(good, expected_slit=N_SLIT * 2)
    assert f"{N_SLIT} slit positions" in err.message and f"expected {N_SLIT * 2}" in err.message


def test_not_four_stokes(good):
    for name in (PRE_FILE, ORI_FILE):
        data = fits.getdata(good / name)
        replace_primary(good / name, data[:1])
    err = refused(good)
    assert "1 Stokes parameters" in err.message


def test_lines_come_from_the_ids_not_from_the_program(good):
    """The program's line names never decide the split: the ids in extension 2 do."""
    result = validate_results(good, expected_steps=N_STEPS, spectral_lines=["Ca II (854.21 nm)"])
    assert result.spectral_lines == LINES


@pytest.mark.parametrize("order", [(23, 4), (4, 23)])
def test_arms_in_either_order_are_accepted(tmp_path, order):
    write_demo_results(tmp_path, n_steps=3, n_slit=10, n_depth=4, n_wave=(12, 20), line_ids=order)
    result = validate_results(tmp_path, expected_steps=3)
    assert [p.line.key for p in result.lines] == ["FeI630", "CaII854"]
    fe, ca = result.lines
    assert fe.stop - fe.start == (12 if order[0] == 23 else 20)
    assert ca.stop - ca.start == (20 if order[0] == 23 else 12)
    offsets = np.asarray(fits.getdata(tmp_path / PRE_FILE, 1), dtype=np.float64)
    assert fe.offsets_ma == tuple(offsets[fe.start:fe.stop])  # mÅ, as BLANCA writes them
    centre = fe.offsets_ma.index(0.0)
    assert fe.wavelengths_nm[centre] == pytest.approx(630.15012)


def test_two_line_fe_arm_is_one_profile(tmp_path):
    """A Fe arm listing "Fe I (630.15 nm)" and "Fe I (630.25 nm)" is one run of id 23: one profile."""
    write_demo_results(tmp_path, n_steps=3, n_slit=10, n_depth=4, n_wave=30, line_ids=(23,))
    result = validate_results(tmp_path, expected_steps=3, spectral_lines=["Fe I (630.15 nm)", "Fe I (630.25 nm)"])
    assert [p.line.key for p in result.lines] == ["FeI630"] and result.line_slices == ((0, 30),)


def test_unknown_line_id_is_refused_naming_it(tmp_path):
    rng = np.random.default_rng(0)
    offsets, ids = demo_wavelength_grid((23, 17), 8)
    pro = rng.random((4, 16, 3, 10))
    write_results(tmp_path, mod=rng.random((11, 4, 3, 10)), pre=pro, ori=pro, wavelength_offsets=offsets, line_ids=ids)
    err = refused(tmp_path, expected_steps=3)
    assert "unknown spectral line id(s) 17" in err.message and PRE_FILE in err.message
    assert "23 = Fe I (630.15 nm)" in err.message  # the known ones are listed


def test_ids_not_one_run_per_arm_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.array([23] * 4 + [4] * 4 + [23] * 4)
    pro = rng.random((4, 12, 3, 10))
    write_results(tmp_path, mod=rng.random((11, 4, 3, 10)), pre=pro, ori=pro,
                  wavelength_offsets=np.tile(np.arange(4.0), 3), line_ids=ids)
    err = refused(tmp_path, expected_steps=3)
    assert "not contiguous per line" in err.message and "id 23 at 0..3, id 4 at 4..7, id 23 at 8..11" in err.message


def test_profile_files_without_blanca_extensions_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    pro = rng.random((4, 21, 3, 10))
    write_results(tmp_path, mod=rng.random((11, 4, 3, 10)), pre=pro, ori=pro)
    err = refused(tmp_path, expected_steps=3)
    assert f"{PRE_FILE} has 0 extension(s)" in err.message and "wavelength offsets (mÅ)" in err.message


@pytest.mark.parametrize("fid, binning, expected", [
    (None, 1, "no DESR-FID key"), (1, None, "no DESR-BIN key"), (1, 0, "DESR-BIN = 0 is not a whole number >= 1"),
    ("left", 1, "DESR-FID = 'left' is not a whole number"),
])
def test_fiducial_arm_and_binning_are_read_as_written(tmp_path, fid, binning, expected):
    rng = np.random.default_rng(0)
    offsets, ids = demo_wavelength_grid((23,), 8)
    pro = rng.random((4, 8, 3, 10))
    write_results(tmp_path, mod=rng.random((11, 4, 3, 10)), pre=pro, ori=pro, wavelength_offsets=offsets,
                  line_ids=ids, fiducial_arm=fid, binning=binning)
    assert expected in refused(tmp_path, expected_steps=3).message


def test_binning_and_fiducial_arm_from_the_header(tmp_path):
    write_demo_results(tmp_path, n_steps=3, n_slit=10, n_depth=4, n_wave=8, line_ids=(23,), fiducial_arm=2, binning=4)
    result = validate_results(tmp_path, expected_steps=3)
    assert (result.fiducial_arm, result.binning, result.n_slit) == ("2", 4, 10)


def test_integer_data_is_refused(good):
    mod = fits.getdata(good / MOD_FILE)
    replace_primary(good / MOD_FILE, mod.astype(np.int16))
    err = refused(good)
    assert "BITPIX=16" in err.message


def test_several_problems_reported_together(good, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(good, other)
    mod = fits.getdata(other / MOD_FILE)
    replace_primary(other / MOD_FILE, mod[:10])
    err = refused(other, expected_steps=N_STEPS + 2)
    assert "10 physical quantities" in err.message and f"L1 datasets have {N_STEPS + 2}" in err.message
