"""Our published L2 product read by the data center's own user tools (``dkist``), and compared
with the reference product the package ships (issue 11)."""

import gzip
import shutil
import warnings
from importlib import resources

import dkist
import matplotlib
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from publishing.l2asdf import build_inversion, inventory_record, write_inversion_asdf
from publishing.l2files import QUANTITIES, dataset_metadata_filename, generate_all

from .helpers import IDS, N_DEPTH, N_SLIT, N_STEPS, N_WAVE, VERSIONS, l1_headers, make_results

matplotlib.use("Agg")

CUBE_KEYS = ["optical_depth", "temperature", "electron_pressure", "microturbulence", "mag_strength", "velocity",
             "mag_inclination", "mag_azimuth", "geo_height", "gas_pressure", "density"]
PROFILE_KEYS = ["CaII854_fit", "CaII854_orig", "FeI630_fit", "FeI630_orig", "NaID_fit", "NaID_orig"]


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """Frames + ASDF of a demo inversion (3 lines, arms not in wavelength order), loaded with dkist."""
    root = tmp_path_factory.mktemp("dkist")
    results = make_results(root / "results")
    headers = l1_headers()
    out = root / "l2"
    frames = generate_all(results, headers, IDS, out, workers=1, software_versions=VERSIONS)
    record = {"inversionId": IDS["inversion_id"], "primaryProposalId": IDS["proposal_id"],
              "instrumentProgramExecutionId": IDS["program_id"], "bucket": "data",
              "asdfObjectKey": f"pid_2_114/{IDS['inversion_id']}/{dataset_metadata_filename(IDS['inversion_id'])}",
              "datasetIds": IDS["dataset_ids"], "spectralLines": list(results.spectral_lines)}
    inventory = inventory_record(record, results, canonical_dataset="BVJVO")
    inversion = build_inversion(frames, results, headers, IDS, inventory, software_versions=VERSIONS, basepath=out)
    path = write_inversion_asdf(inversion, out / dataset_metadata_filename(IDS["inversion_id"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = dkist.load_dataset(path)
    return loaded, results, headers, frames, path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference L2 product the dkist package ships (made by the data center's generator)."""
    packed = resources.files("dkist") / "data" / "test" / "test_L2_inversion.asdf.gz"
    path = tmp_path_factory.mktemp("reference") / "test_L2_inversion.asdf"
    with gzip.open(packed, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dkist.load_dataset(path)


def test_loads_as_an_inversion_with_every_quantity_and_one_profile_pair_per_line(product):
    inversion, results, _, frames, path = product
    assert isinstance(inversion, dkist.Inversion)
    assert sorted(inversion.keys()) == sorted(CUBE_KEYS)
    assert sorted(inversion.profiles.keys()) == PROFILE_KEYS
    for key in CUBE_KEYS:
        assert isinstance(inversion[key], dkist.Dataset)
        assert inversion[key].shape == (N_STEPS, N_SLIT, N_DEPTH)
        assert list(inversion[key].files.filenames) == [f.filename for f in frames]  # relative names
        assert inversion[key].files.basepath == path.parent
    for line in results.lines:
        for kind in ("orig", "fit"):
            assert inversion.profiles[f"{line.line.key}_{kind}"].shape == (N_STEPS, N_SLIT, N_WAVE, 4)
    assert inversion["temperature"].unit == "K" and inversion["mag_strength"].unit == "T"


def test_data_read_through_the_file_manager_is_what_was_written(product):
    inversion, results, _, _, _ = product
    mod = fits.getdata(results.paths["mod"])
    pre, ori = fits.getdata(results.paths["pre"]), fits.getdata(results.paths["ori"])
    voxels = [(0, 0, 0), (1, 3, 2), (N_STEPS - 1, N_SLIT - 1, N_DEPTH - 1), (2, 17, 5)]
    for index, quantity in enumerate(QUANTITIES):
        cube = inversion[quantity.asdf_key].data
        for step, slit, depth in voxels:
            expected = np.float32(mod[index, depth, step, slit]) * np.float32(quantity.factor)
            if quantity.wrap_degrees:
                expected = np.mod(expected, np.float32(360.0))
                expected = np.float32(0.0) if expected >= 360 else expected
            assert float(cube[step, slit, depth]) == pytest.approx(float(expected), rel=1e-6), quantity.asdf_key
    for line in results.lines:
        for kind, source in (("orig", ori), ("fit", pre)):
            cube = inversion.profiles[f"{line.line.key}_{kind}"].data
            for step, slit, wave, stokes in [(0, 0, 0, 0), (1, 3, 5, 3), (N_STEPS - 1, N_SLIT - 1, N_WAVE - 1, 2)]:
                assert float(cube[step, slit, wave, stokes]) == float(source[stokes, line.start + wave, step, slit])


def test_slicing_and_the_profile_plot_work(product):
    import matplotlib.pyplot as plt

    inversion, _, _, _, _ = product
    first = inversion[0]
    assert first["temperature"].shape == (N_SLIT, N_DEPTH)
    assert first.profiles["FeI630_orig"].shape == (N_SLIT, N_WAVE, 4)
    figure = plt.figure(figsize=(9, 9))
    inversion.profiles.plot(np.s_[0, 0], figure=figure)
    assert len(figure.axes) == 4 * 3  # I Q U V x three lines
    plt.close(figure)


def test_pixel_zero_is_the_l1_fiducial_frame_position(product):
    inversion, _, headers, _, _ = product
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        l1 = WCS(headers[0])
        lat, lon = (v * 3600 for v in l1.pixel_to_world_values(0, 0, 0)[1:])  # L1 axes: wave, slit, raster
        _, sky, time, _ = inversion["temperature"].wcs.pixel_to_world(0, 0, 0)
        assert abs(sky.Tx.to_value("arcsec") - lon) < 0.01 and abs(sky.Ty.to_value("arcsec") - lat) < 0.01
        assert time.isot.startswith(headers[0]["DATE-AVG"][:19])
        _, _, sky_profile, _ = inversion.profiles["NaID_fit"].wcs.pixel_to_world(0, 0, 0, 0)
        assert abs(sky_profile.Tx.to_value("arcsec") - lon) < 0.01
        # along the slit and across raster steps too
        lat5, lon5 = (v * 3600 for v in WCS(headers[3]).pixel_to_world_values(0, 7, 0)[1:])
        _, sky, _, _ = inversion["density"].wcs.pixel_to_world(0, 7, 3)
        assert abs(sky.Tx.to_value("arcsec") - lon5) < 0.01 and abs(sky.Ty.to_value("arcsec") - lat5) < 0.01


def test_wavelength_axis_at_offset_zero_is_the_line_centre(product):
    inversion, results, _, _, _ = product
    for line in results.lines:
        wcs = inversion.profiles[f"{line.line.key}_orig"].wcs
        centre = line.offsets_ma.index(0.0)
        _, wavelength, _, _ = wcs.pixel_to_world(0, centre, 0, 0)
        assert wavelength.to_value("nm") == pytest.approx(line.line.centre_nm, abs=1e-6)  # 0.01 mÅ
        _, last, _, _ = wcs.pixel_to_world(0, N_WAVE - 1, 0, 0)
        assert last.to_value("nm") == pytest.approx(line.wavelengths_nm[-1], abs=1e-6)


def test_optical_depth_axis_is_log_tau(product):
    inversion, results, _, _, _ = product
    log_tau = fits.getdata(results.paths["mod"])[0, :, 0, 0]
    wcs = inversion["temperature"].wcs
    assert [float(wcs.pixel_to_world(k, 0, 0)[0].value) for k in (0, N_DEPTH - 1)] == pytest.approx(
        [log_tau[0], log_tau[-1]], abs=1e-5)


def test_inventory_and_headers(product):
    inversion, results, _, frames, _ = product
    inventory = inversion.meta["inventory"]
    assert inventory["inversionId"] == IDS["inversion_id"] and inventory["canonicalDataset"] == "BVJVO"
    assert inventory["spectralLines"] == ["NaID", "FeI630", "CaII854"]
    assert inventory["wavelengths"] == [line.line.centre_nm for line in results.lines]
    assert inventory["frameCount"] == N_STEPS and inventory["datasetIds"] == IDS["dataset_ids"]
    headers = inversion.meta["headers"]
    assert len(headers) == N_STEPS
    assert list(headers["FILENAME"]) == [f.filename for f in frames]
    assert list(headers["FILE_ID"]) == [f.file_id for f in frames]
    assert set(headers["DSETID"]) == {IDS["inversion_id"]} and set(headers["LEVEL"]) == {2}
    per_hdu = inversion["temperature"].meta["headers"]
    assert len(per_hdu) == N_STEPS and set(per_hdu["EXTNAME"]) == {"Temperature"}


def test_same_shape_as_the_reference_product(product, reference):
    """Keys, pixel axes, world physical types, meta keys and header columns as the data center's own
    product (values differ: another program, another inversion)."""
    ours, _, _, _, _ = product
    assert sorted(ours.keys()) == sorted(reference.keys())
    assert sorted(ours.profiles.keys()) == sorted(reference.profiles.keys())
    for key in reference.keys():
        assert ours[key].wcs.pixel_axis_names == reference[key].wcs.pixel_axis_names, key
        assert ours[key].wcs.world_axis_physical_types == reference[key].wcs.world_axis_physical_types, key
        assert ours[key].data.ndim == reference[key].data.ndim
        assert ours[key].meta.keys() == reference[key].meta.keys()
    for key in reference.profiles.keys():
        ref, our = reference.profiles[key], ours.profiles[key]
        assert our.wcs.pixel_axis_names == ref.wcs.pixel_axis_names, key
        assert our.wcs.world_axis_physical_types == ref.wcs.world_axis_physical_types, key
        assert our.data.shape[-1] == ref.data.shape[-1] == 4
    assert ours.meta.keys() == reference.meta.keys()
    assert ours.meta["axes"] == reference.meta["axes"]
    assert ours.profiles.meta["axes"] == reference.profiles.meta["axes"]
    assert sorted(ours.meta["headers"].colnames) == sorted(reference.meta["headers"].colnames)
    assert set(ours.meta["inventory"]) >= set(reference.meta["inventory"])
    assert ours.aligned_axes == reference.aligned_axes
    assert ours.profiles.aligned_axes == reference.profiles.aligned_axes
