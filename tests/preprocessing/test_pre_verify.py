"""verify_dataset: completeness, checksums, consistency; order from DINDEX only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from inversions.errors import DoNotRetryError
from inversions.preprocessing import fits_checksum
from inversions.preprocessing.l1_frames import write_demo_dataset
from inversions.preprocessing.verify import file_checksum, scan_hdus, verify_dataset

from .conftest import N_SLIT, N_WAVE


def _position(path: Path) -> tuple[int, int, int]:
    h = fits.getheader(path, 1)
    return h["DINDEX5"] - 1, h["DINDEX4"] - 1, h["DINDEX3"] - 1


def _rewrite(path: Path, **changes) -> None:
    """Change header keys of a frame and rewrite it with fresh, valid checksums."""
    with fits.open(path) as hdul:
        hdus = fits.HDUList([fits.PrimaryHDU(header=hdul[0].header), fits.ImageHDU(hdul[1].data.copy(), hdul[1].header)])
    for key, value in changes.items():
        hdus[1].header[key] = value
    hdus.writeto(path, overwrite=True, checksum=True)


def test_inventory_sorted_from_headers_not_names(encoded_dataset, tmp_path):
    paths, params = encoded_dataset
    # adversarial names: sorting by name gives the reverse of the true order
    renamed = []
    for p in paths:
        k, m, s = _position(p)
        new = p.with_name(f"{999 - (k * 100 + m * 10 + s):03d}.fits")
        p.rename(new)
        renamed.append(new)
    inventory = verify_dataset(renamed, 40, sha256=True)
    assert inventory.cube_shape == (4, 2, 5, N_WAVE, N_SLIT)
    assert inventory.stokes == "IQUV" and inventory.dataset_id == "AYDEW" and inventory.spectral_fits_axis == 2
    expected = [(k, m, s) for k in range(4) for m in range(2) for s in range(5)]
    assert [(f.stokes, f.map, f.step) for f in inventory.frames] == expected
    for f in inventory.frames:
        assert _position(f.path) == (f.stokes, f.map, f.step)
        assert f.sha256 == file_checksum(f.path)
        assert f.size == f.path.stat().st_size and not f.compressed
    assert inventory.frame(2, 1, 3).path.name == f"{999 - 213}.fits"
    assert inventory.total_bytes == sum(p.stat().st_size for p in renamed)


def test_fingerprint_is_independent_of_folder(encoded_dataset, tmp_path):
    paths, _ = encoded_dataset
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in paths:
        shutil.copy2(p, copy / p.name)
    a = verify_dataset(paths, 40)
    b = verify_dataset(sorted(copy.iterdir(), reverse=True), 40)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    _rewrite(copy / paths[0].name, OBJECT="other")  # same frame, different bytes
    assert verify_dataset(sorted(copy.iterdir()), 40).fingerprint != a.fingerprint


def test_compressed_frames_verify(tmp_path):
    paths = write_demo_dataset(tmp_path, "BLGOX", n_steps=3, stokes="IQUV", n_wave=30, n_slit=20)
    inventory = verify_dataset(paths, 12)
    assert all(f.compressed and f.hdu_index == 1 for f in inventory.frames)
    assert inventory.n_maps == 1 and inventory.n_steps == 3


def test_missing_frame_names_count_and_positions(encoded_dataset):
    paths, _ = encoded_dataset
    gone = [p for p in paths if _position(p) in {(2, 0, 3), (3, 1, 4)}]
    with pytest.raises(DoNotRetryError) as err:
        verify_dataset([p for p in paths if p not in gone], 40)
    message = str(err.value)
    assert "2 of 40 frames missing" in message
    assert "(stokes 2, map 0, step 3)" in message and "(stokes 3, map 1, step 4)" in message
    assert err.value.step == "preprocess.verify"
    assert err.value.details["count"] == 2


def test_expected_count_disagreeing_with_axes(encoded_dataset):
    paths, _ = encoded_dataset
    with pytest.raises(DoNotRetryError, match="describe 40 frames .* but 41 were expected"):
        verify_dataset(paths, 41)


def test_bad_datasum_names_the_file(encoded_dataset):
    paths, _ = encoded_dataset
    victim = paths[7]
    with fits.open(victim) as hdul:
        offset = hdul.fileinfo(1)["datLoc"] + 1000
    with open(victim, "r+b") as fh:  # flip one bit of the data, same size
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(DoNotRetryError) as err:
        verify_dataset(paths, 40)
    assert victim.name in str(err.value) and "DATASUM" in str(err.value)
    assert err.value.details["file"] == str(victim)


def test_bad_header_checksum_names_the_file(encoded_dataset):
    paths, _ = encoded_dataset
    victim = paths[3]
    raw = victim.read_bytes()
    at = raw.index(b"OBJECT  = 'quietsun'")
    victim.write_bytes(raw[:at] + b"OBJECT  = 'quietsum'" + raw[at + 20 :])  # header edited, CHECKSUM not
    with pytest.raises(DoNotRetryError, match=f"{victim.name}: CHECKSUM of HDU 1 does not verify"):
        verify_dataset(paths, 40)


def test_missing_checksum_cards(encoded_dataset):
    paths, _ = encoded_dataset
    with fits.open(paths[0]) as hdul:
        header, data = hdul[1].header.copy(), hdul[1].data.copy()
    del header["CHECKSUM"], header["DATASUM"]
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header)]).writeto(paths[0], overwrite=True)
    assert b"CHECKSUM" not in paths[0].read_bytes()
    with pytest.raises(DoNotRetryError, match="no CHECKSUM/DATASUM"):
        verify_dataset(paths, 40)


@pytest.mark.parametrize("keep", [0.5, 0.002, 0.0])
def test_truncated_file_names_the_file(encoded_dataset, keep):
    paths, _ = encoded_dataset
    victim = paths[11]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(DoNotRetryError) as err:
        verify_dataset(paths, 40)
    assert victim.name in str(err.value)
    assert any(word in str(err.value) for word in ("truncated", "not a readable FITS file"))


def test_not_fits(encoded_dataset):
    paths, _ = encoded_dataset
    paths[5].write_bytes(b"<html>proxy error</html>" * 200)
    with pytest.raises(DoNotRetryError, match=f"{paths[5].name}: not a readable FITS file"):
        verify_dataset(paths, 40)


@pytest.mark.parametrize(
    ("key", "value"),
    [("DSETID", "OTHER"), ("CDELT2", 0.0013), ("DNAXIS3", 6), ("NAXIS1", 15), ("DTYPE4", "SPECTRAL")],
)
def test_inconsistent_header_names_key_and_file(encoded_dataset, key, value):
    paths, _ = encoded_dataset
    victim = paths[9]
    if key == "NAXIS1":  # a frame of a different shape
        with fits.open(victim) as hdul:
            header, data = hdul[1].header, hdul[1].data[:, :, :15].copy()
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header)]).writeto(victim, overwrite=True, checksum=True)
    else:
        _rewrite(victim, **{key: value})
    with pytest.raises(DoNotRetryError) as err:
        verify_dataset(paths, 40)
    assert err.value.details["key"] == key
    assert victim.name in str(err.value) and key in str(err.value)


def test_duplicate_frame_names_both_files(encoded_dataset):
    paths, _ = encoded_dataset
    a, b = paths[0], paths[1]
    k, m, s = _position(a)
    _rewrite(b, DINDEX5=k + 1, DINDEX4=m + 1, DINDEX3=s + 1)
    with pytest.raises(DoNotRetryError) as err:
        verify_dataset(paths, 40)
    assert a.name in str(err.value) and b.name in str(err.value) and "same frame" in str(err.value)


def test_zero_based_dindex_accepted(tmp_path):
    paths = write_demo_dataset(tmp_path, "X", n_steps=3, stokes="I", n_wave=10, n_slit=6, compress=False)
    for p in paths:
        _rewrite(p, DINDEX3=fits.getheader(p, 1)["DINDEX3"] - 1)
    inventory = verify_dataset(paths, 3)
    assert [fits.getheader(f.path, 1)["VSPSTP"] for f in inventory.frames] == [1, 2, 3]


def test_fits_checksum_matches_astropy(tmp_path):
    data = np.random.default_rng(1).normal(size=(37, 53)).astype(">f4")
    path = tmp_path / "a.fits"
    fits.PrimaryHDU(data).writeto(path, checksum=True)
    raw = path.read_bytes()
    with fits.open(path) as hdul:
        start = hdul.fileinfo(0)["datLoc"]
        expected_checksum, expected_datasum = hdul[0].header["CHECKSUM"], hdul[0].header["DATASUM"]
    datasum = fits_checksum.sum32(raw[start:])
    chunked = 0
    for i in range(start, len(raw), 2880 * 3):
        chunked = fits_checksum.sum32(raw[i : i + 2880 * 3], chunked)
    assert str(datasum) == expected_datasum == str(chunked)
    header = raw[:start].replace(expected_checksum.encode(), b"0" * 16)
    assert fits_checksum.checksum_value(fits_checksum.sum32(header), datasum) == expected_checksum
    assert fits_checksum.add(fits_checksum.sum32(raw[:start]), datasum) == fits_checksum.ALL_ONES


def test_file_checksum_streams_sha256(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    import hashlib

    assert file_checksum(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("compress", [False, True])
def test_hdu_scan_agrees_with_astropy(tmp_path, compress):
    path = write_demo_dataset(tmp_path, "X", n_steps=1, stokes="I", n_wave=50, n_slit=30, compress=compress)[0]
    scanned = scan_hdus(path, path.stat().st_size)
    with fits.open(path) as hdul:
        expected = [(hdul.fileinfo(i)["hdrLoc"], hdul.fileinfo(i)["datLoc"],
                     hdul.fileinfo(i)["datLoc"] + hdul.fileinfo(i)["datSpan"]) for i in range(len(hdul))]
    assert [(a, b, c) for a, b, c, _, _ in scanned] == expected
    assert scanned[-1][2] == path.stat().st_size
    inventory = verify_dataset([path], 1)
    assert inventory.frames[0].shape == (1, 50, 30) and inventory.frames[0].compressed == compress
    assert inventory.bitpix == -32


def test_parallel_read_back_check_finds_a_flipped_byte(tmp_path):
    from inversions.preprocessing.verify import verify_checksums_parallel

    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.random.default_rng(2).normal(size=(7, 300, 500)).astype(">f4")).writeto(path, checksum=True)
    regions = [(a, b, c) for a, b, c, _, _ in scan_hdus(path, path.stat().st_size)]
    verify_checksums_parallel(path, regions, threads=3)  # intact: no error
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size - 5000)  # in the last slice
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DoNotRetryError, match="DATASUM of HDU 0"):
        verify_checksums_parallel(path, regions, threads=3)
