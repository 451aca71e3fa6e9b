"""assemble_cube: every voxel in its place, WCS carried over, normalised, atomic."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from inversions.errors import DoNotRetryError
from inversions.preprocessing.assemble import assemble_cube, remove_partials
from inversions.preprocessing.l1_frames import SOLAR_LINES, TELLURIC_LINES, write_demo_dataset
from inversions.preprocessing.verify import file_checksum, verify_dataset

from .conftest import N_SLIT, N_WAVE, encoded


def _wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(header)


def _expected_cube(n_stokes=4, n_maps=2, n_steps=5) -> np.ndarray:
    return np.stack([
        np.stack([np.stack([encoded(k, m, s) for s in range(n_steps)]) for m in range(n_maps)])
        for k in range(n_stokes)
    ]).astype(np.float32)


def test_every_voxel_in_its_place(encoded_dataset, tmp_path):
    paths, _ = encoded_dataset
    for i, p in enumerate(paths):  # names that sort backwards
        p.rename(p.with_name(f"z{len(paths) - i:03d}.fits"))
    paths = sorted(p.parent.iterdir())
    inventory = verify_dataset(paths, 40)
    info = assemble_cube(inventory, tmp_path / "cube" / "AYDEW.fits", software_version="1.2.3",
                         provenance={"program": "eid_1_118_opAvoqBr_R001.82591.13964206", "work_order": 17})
    assert info.shape == (4, 2, 5, N_WAVE, N_SLIT) and info.frames == 40
    with fits.open(info.path) as hdul:
        cube = hdul[0].data
        header = hdul[0].header
        assert cube.dtype == np.dtype(">f4") and cube.shape == info.shape
        assert [header[f"NAXIS{n}"] for n in range(1, 6)] == [N_SLIT, N_WAVE, 5, 2, 4]
        restored = cube.astype(np.float64) * header["CNORM"]
    expected = _expected_cube()
    np.testing.assert_allclose(restored, expected, rtol=1e-6, atol=0)  # every voxel
    # continuum: the brightest 3-pixel run of Stokes I (pixels 6…8), median of per-frame medians
    assert info.continuum_window == (6, 9)
    assert (header["CNTWPIX1"], header["CNTWPIX2"]) == (7, 9)
    level = np.median([np.median(expected[0, m, s, 6:9]) for m in range(2) for s in range(5)])
    assert header["CNORM"] == pytest.approx(level, rel=1e-12) and info.continuum == header["CNORM"]


def test_wcs_world_coordinates_match_l1_frames(encoded_dataset, tmp_path):
    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40)
    info = assemble_cube(inventory, tmp_path / "c.fits", software_version="1", provenance={})
    cube_wcs = _wcs(fits.getheader(info.path))
    t0 = datetime.fromisoformat(inventory.frame(0, 0, 0).date_beg)
    for frame in inventory.frames:
        l1 = fits.getheader(frame.path, 1)
        frame_wcs = _wcs(l1)
        for x, w in ((0, 0), (7, 11), (N_SLIT - 1, N_WAVE - 1)):
            lat, wave, lon, t, stokes = cube_wcs.pixel_to_world_values(x, w, frame.step, frame.map, frame.stokes)
            assert np.allclose([lat, wave, lon], frame_wcs.pixel_to_world_values(x, w, 0), rtol=0, atol=1e-12)
            assert stokes == frame.stokes + 1  # FITS STOKES: 1 I, 2 Q, 3 U, 4 V
        map_start = datetime.fromisoformat(inventory.frame(0, frame.map, 0).date_beg)
        assert t == pytest.approx((map_start - t0).total_seconds())
    assert list(cube_wcs.wcs.ctype)[3:] == ["TIME", "STOKES"]


def test_header_provenance_and_checksums(encoded_dataset, tmp_path):
    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40, sha256=True)
    info = assemble_cube(inventory, tmp_path / "c.fits", software_version="1.2.3", sha256=True,
                         provenance={"program": "eid_1_118_opAvoqBr_R001.82591.13964206", "work_order": 17})
    with fits.open(info.path, checksum=True) as hdul:
        for hdu in hdul:
            assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1
        h = hdul[0].header
        assert h["L2SWVER"] == "1.2.3" and h["NINFILES"] == 40 and h["DSETID"] == "AYDEW"
        assert h["INFPRINT"] == inventory.fingerprint
        assert h["PROV PROGRAM"] == "eid_1_118_opAvoqBr_R001.82591.13964206" and h["PROV WORK_ORDER"] == 17
        assert h["PROP_ID"] == "pid_1_118" and h["IP_ID"] == "id.85415.162408" and h["INSTRUME"] == "VISP"
        assert h["DATE-BEG"] == inventory.frame(0, 0, 0).date_beg
        table = hdul["FRAMES"].data
        assert list(table["FILENAME"]) == [f.path.name for f in inventory.frames]
        assert list(zip(table["STOKES"], table["MAP"], table["STEP"])) == [
            (f.stokes, f.map, f.step) for f in inventory.frames]
        assert list(table["SHA256"]) == [f.sha256 for f in inventory.frames]
    assert info.sha256 == file_checksum(info.path) and info.size == info.path.stat().st_size
    assert (info.datasum, info.checksum) == (h["DATASUM"], h["CHECKSUM"])


def test_wavelength_along_fits_axis_1_gives_the_same_cube(tmp_path):
    common = dict(n_steps=3, n_maps=1, stokes="IQUV", n_wave=N_WAVE, n_slit=N_SLIT, compress=False,
                  frame_values=encoded)
    a = write_demo_dataset(tmp_path / "a", "X", spectral_fits_axis=2, **common)
    b = write_demo_dataset(tmp_path / "b", "X", spectral_fits_axis=1, **common)
    assert fits.getheader(b[0], 1)["DTYPE1"] == "SPECTRAL" and fits.getdata(b[0], 1).shape == (1, N_SLIT, N_WAVE)
    inv_a, inv_b = verify_dataset(a, 12), verify_dataset(b, 12)
    assert inv_b.spectral_fits_axis == 1
    ca = assemble_cube(inv_a, tmp_path / "a.fits", software_version="1", provenance={})
    cb = assemble_cube(inv_b, tmp_path / "b.fits", software_version="1", provenance={})
    np.testing.assert_array_equal(fits.getdata(ca.path), fits.getdata(cb.path))
    wa, wb = _wcs(fits.getheader(ca.path)), _wcs(fits.getheader(cb.path))
    assert np.allclose(wa.pixel_to_world_values(3, 5, 1, 0, 2), wb.pixel_to_world_values(3, 5, 1, 0, 2))


def test_compressed_frames_equal_their_decompressed_data(tmp_path):
    paths = write_demo_dataset(tmp_path / "l1", "BLGOX", n_steps=4, stokes="IQUV", n_wave=60, n_slit=24)
    inventory = verify_dataset(paths, 16)
    info = assemble_cube(inventory, tmp_path / "c.fits", software_version="1", provenance={})
    cube = fits.getdata(info.path).astype(np.float64) * info.continuum
    for f in inventory.frames:
        np.testing.assert_allclose(cube[f.stokes, f.map, f.step], fits.getdata(f.path, 1)[0], rtol=1e-6, atol=1e-3)


def test_normalised_synthetic_spectra(tmp_path):
    paths = write_demo_dataset(tmp_path / "l1", "AYDEW", n_steps=12, stokes="IQUV", n_wave=240, n_slit=30,
                               compress=False)
    info = assemble_cube(verify_dataset(paths, 48), tmp_path / "c.fits", software_version="1", provenance={})
    cube = fits.getdata(info.path)
    start, stop = info.continuum_window
    assert np.median(cube[0, :, :, start:stop]) == pytest.approx(1.0, abs=0.01)
    assert info.continuum == pytest.approx(2.0e4, rel=0.1)  # the generator's intensity scale
    lo, hi = info.continuum_wavelengths
    for line, _, sigma, *_ in SOLAR_LINES + TELLURIC_LINES:  # the window is clear of every line
        assert not lo - 3 * sigma - 0.003 < line < hi + 3 * sigma + 0.003
    wave = 630.05 + np.arange(240) * 0.3 / 239
    assert cube[0, 0, :, np.argmin(abs(wave - 630.2494))].mean() < 0.6  # line core, in units of Ic


def test_exception_mid_write_leaves_no_file(encoded_dataset, tmp_path):
    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40)
    out = tmp_path / "out" / "AYDEW.fits"
    seen = []

    def progress(done, total, nbytes):
        seen.append((done, total, nbytes))
        if done == 7:
            raise KeyboardInterrupt("worker stopped")

    with pytest.raises(KeyboardInterrupt):
        assemble_cube(inventory, out, software_version="1", provenance={}, progress_cb=progress)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # the temporary file is gone too
    assert seen[-1][0] == 7 and seen[0][1] == 40 and seen[1][2] - seen[0][2] == N_WAVE * N_SLIT * 4


def _assemble_slowly(inventory, out):
    def progress(done, total, nbytes):
        if done == 3:
            Path(str(out) + ".started").touch()
            time.sleep(60)

    assemble_cube(inventory, out, software_version="1", provenance={}, progress_cb=progress)


def test_sigkill_mid_write_leaves_no_final_file(encoded_dataset, tmp_path):
    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40)
    out = tmp_path / "AYDEW.fits"
    child = multiprocessing.get_context("fork").Process(target=_assemble_slowly, args=(inventory, out))
    child.start()
    deadline = time.monotonic() + 30
    while not Path(str(out) + ".started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not out.exists()
    partials = remove_partials(out)
    assert len(partials) == 1 and not any(p.exists() for p in partials)
    # a re-run after the kill completes normally
    assemble_cube(inventory, out, software_version="1", provenance={})
    with fits.open(out, checksum=True) as hdul:
        assert hdul[0].verify_datasum() == 1


def test_single_read_mode_still_checks_every_input(encoded_dataset, tmp_path):
    """verify_dataset(checksums=False) + assemble_cube(verify_inputs=True): a bad frame
    is caught while it is read for the cube, and nothing is left behind."""
    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40, checksums=False)
    victim = inventory.frame(3, 1, 2).path  # one of the last frames written
    with fits.open(victim) as hdul:
        offset = hdul.fileinfo(1)["datLoc"] + 100
    with open(victim, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x7f")
    out = tmp_path / "out" / "c.fits"
    with pytest.raises(DoNotRetryError) as err:
        assemble_cube(inventory, out, software_version="1", provenance={})
    assert victim.name in str(err.value) and "DATASUM" in str(err.value)
    assert not out.exists() and list(out.parent.iterdir()) == []
    # the same files with the check switched off assemble (the caller took that risk)
    assert assemble_cube(inventory, out, software_version="1", provenance={}, verify_inputs=False).frames == 40


def test_the_cube_is_flushed_behind_the_writing(encoded_dataset, tmp_path, monkeypatch):
    """While frames are written, a thread fdatasyncs the cube every WRITEBACK_BYTES; the cube
    is the same; the final fsync still runs."""
    from inversions.preprocessing import assemble

    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40)
    flushes, syncs = [], []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync
    monkeypatch.setattr(assemble, "WRITEBACK_BYTES", 4 * N_WAVE * N_SLIT * 4)  # every 4 frames
    monkeypatch.setattr(assemble.os, "fdatasync", lambda fd: (flushes.append(fd), real_fdatasync(fd)))
    monkeypatch.setattr(assemble.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    info = assemble_cube(inventory, tmp_path / "c.fits", software_version="1", provenance={})
    assert flushes and syncs  # requests that come while a flush runs join the next one
    with fits.open(info.path, checksum=True) as hdul:
        hdul.verify("exception")
        np.testing.assert_allclose(hdul[0].data.astype(np.float64) * hdul[0].header["CNORM"], _expected_cube(), rtol=1e-6)


def test_frames_are_read_ahead_of_the_workers(encoded_dataset, tmp_path, monkeypatch):
    """Every input frame is handed to the kernel's read-ahead (POSIX_FADV_WILLNEED) before a
    worker reads it, in frame order; a file that vanished meanwhile is left to the worker's
    read, which names it."""
    from inversions.preprocessing import assemble

    paths, _ = encoded_dataset
    inventory = verify_dataset(paths, 40)
    asked, read = [], []
    real_fadvise = os.posix_fadvise
    real_job = assemble._FrameJob.__call__

    def fadvise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            asked.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fadvise(fd, offset, length, advice)

    def job(self, index, frame):  # a worker about to read a frame for the cube
        read.append(str(frame.path))
        assert str(frame.path) in asked, "read before it was read ahead"
        return real_job(self, index, frame)

    monkeypatch.setattr(assemble.os, "posix_fadvise", fadvise)
    monkeypatch.setattr(assemble._FrameJob, "__call__", job)
    info = assemble_cube(inventory, tmp_path / "c.fits", software_version="1", provenance={})
    assert info.frames == 40
    assert asked == [str(f.path) for f in inventory.frames]
    assert sorted(read) == sorted(asked)

    inventory.frames[7].path.unlink()
    with pytest.raises(Exception, match=inventory.frames[7].path.name):
        assemble_cube(inventory, tmp_path / "d.fits", software_version="1", provenance={})
    assert not (tmp_path / "d.fits").exists()
