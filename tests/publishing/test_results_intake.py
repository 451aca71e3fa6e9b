"""Result intake: demo files and validate_results (DESIGN §8)."""

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
    validate_results,
    write_demo_results,
    write_results,
)

from .helpers import LINES, N_DEPTH, N_SLIT, N_STEPS, N_WAVE


@pytest.fixture()
def good(tmp_path):
    folder = tmp_path / "good"
    write_demo_results(folder, n_steps=N_STEPS, n_slit=N_SLIT, n_depth=N_DEPTH, n_wave=N_WAVE,
                       spectral_lines=LINES, seed=1)
    return folder


def refused(folder_or_paths, **kwargs) -> DoNotRetryError:
    kwargs.setdefault("expected_steps", N_STEPS)
    with pytest.raises(DoNotRetryError) as info:
        validate_results(folder_or_paths, **kwargs)
    assert info.value.step == "results"
    return info.value


def test_demo_results_are_accepted_with_shapes_sizes_and_checksums(good):
    result = validate_results(good, expected_steps=N_STEPS, expected_slit=N_SLIT, spectral_lines=LINES)
    assert result.mod_shape == (11, N_DEPTH, N_STEPS, N_SLIT)
    assert result.profile_shape == (4, 2 * N_WAVE, N_STEPS, N_SLIT)
    assert (result.n_steps, result.n_slit, result.n_depth, result.n_wave) == (N_STEPS, N_SLIT, N_DEPTH, 2 * N_WAVE)
    assert result.line_slices == ((0, N_WAVE), (N_WAVE, 2 * N_WAVE))
    assert result.spectral_lines == LINES
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
    fits.writeto(good / MOD_FILE, mod[:9], overwrite=True)
    err = refused(good)
    assert f"{MOD_FILE} has 9 physical quantities" in err.message and "expected 11" in err.message


def test_fit_and_original_shapes_differ(good):
    ori = fits.getdata(good / ORI_FILE)
    fits.writeto(good / ORI_FILE, ori[:, :-2], overwrite=True)
    err = refused(good)
    assert PRE_FILE in err.message and ORI_FILE in err.message and "differs" in err.message


def test_model_and_profiles_disagree_on_steps(good):
    mod = fits.getdata(good / MOD_FILE)
    fits.writeto(good / MOD_FILE, mod[:, :, :-1], overwrite=True)
    err = refused(good, expected_steps=N_STEPS)
    assert f"{MOD_FILE} has {N_STEPS - 1} raster steps" in err.message
    assert f"{PRE_FILE} has {N_STEPS}" in err.message


def test_model_and_profiles_disagree_on_slit(good):
    mod = fits.getdata(good / MOD_FILE)
    fits.writeto(good / MOD_FILE, mod[..., :-4], overwrite=True)
    err = refused(good)
    assert f"{MOD_FILE} has {N_SLIT - 4} slit positions" in err.message


def test_frame_count_of_the_program(good):
    err = refused(good, expected_steps=N_STEPS + 2)
    assert f"has {N_STEPS} raster steps" in err.message and f"the program has {N_STEPS + 2} frames" in err.message
    assert err.details["expected_steps"] == N_STEPS + 2


def test_expected_slit(good):
    err = refused(good, expected_slit=N_SLIT * 2)
    assert f"{N_SLIT} slit positions" in err.message and f"expected {N_SLIT * 2}" in err.message


def test_not_four_stokes(good):
    for name in (PRE_FILE, ORI_FILE):
        data = fits.getdata(good / name)
        fits.writeto(good / name, data[:1], overwrite=True)
    err = refused(good)
    assert "1 Stokes parameters" in err.message


def test_number_of_spectral_lines(good):
    err = refused(good, spectral_lines=["Ca II (854.21 nm)"])
    assert "holds 2 spectral line(s), the program has 1" in err.message


def test_split_without_line_ids(tmp_path):
    rng = np.random.default_rng(0)
    mod = rng.random((11, 4, 3, 10))
    pro = rng.random((4, 21, 3, 10))
    write_results(tmp_path, mod=mod, pre=pro, ori=pro)
    err = refused(tmp_path, expected_steps=3, spectral_lines=LINES)
    assert "cannot split them evenly among 2 spectral lines" in err.message
    one = validate_results(tmp_path, expected_steps=3, spectral_lines=["Ca II (854.21 nm)"])
    assert one.line_slices == ((0, 21),) and one.wavelength_offsets is None


def test_integer_data_is_refused(good):
    mod = fits.getdata(good / MOD_FILE)
    fits.writeto(good / MOD_FILE, mod.astype(np.int16), overwrite=True)
    err = refused(good)
    assert "BITPIX=16" in err.message


def test_several_problems_reported_together(good, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(good, other)
    mod = fits.getdata(other / MOD_FILE)
    fits.writeto(other / MOD_FILE, mod[:10], overwrite=True)
    err = refused(other, expected_steps=N_STEPS + 1)
    assert "10 physical quantities" in err.message and f"the program has {N_STEPS + 1} frames" in err.message
