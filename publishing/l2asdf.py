"""The dataset-level ASDF file of an inversion, written through the DKIST user tools (DESIGN §9.1).

The file is what ``dkist.load_dataset`` reads as a :class:`dkist.Inversion`, shaped like the
data center's reference product (``dkist/data/test/test_L2_inversion.asdf.gz``):

* ``inversion`` (tag ``asdf://dkist.nso.edu/tags/inversion-0.1.0``): an NDCollection of one
  :class:`dkist.Dataset` per physical quantity (keys :data:`publishing.l2files.QUANTITIES`'
  ``asdf_key``), each over the published FITS files through a file manager (relative names,
  one file per raster step, the quantity's HDU), with pixel axes ``frame_y, slit_x,
  optical_depth`` and a gwcs: (depth, slit, raster step) → optical depth, helioprojective
  longitude / latitude, time (and the Stokes parameter of the L1 frames, I, as the reference has);
* ``profiles``: one original / fit pair of datasets per spectral line (``FeI630_orig`` …),
  pixel axes ``frame_y, slit_x, wavelength, stokes``, gwcs: (stokes, wavelength, slit, raster
  step) → Stokes, wavelength in nm (line centre + BLANCA's offsets), helioprojective, time;
* ``meta``: ``inventory`` (the metadata store's record plus ``canonicalDataset``,
  ``datasetIds``, ``spectralLines``, ``wavelengths``, ``frameCount`` …), ``headers`` (an astropy
  Table: one row per file, the curated primary header), ``axes``, ``gwcs`` and ``l1gwcs`` (the
  spatial transform of the fiducial arm's L1 frames and its helioprojective frame).

The spatial transform is dkist's ``VaryingCelestialTransform`` over the fiducial arm's L1
frames, one table row per raster step (CRPIX, CRVAL, the PC matrix of each frame): L2 pixel
(slit ``j``, step ``i``) is L1 pixel ``j * binning`` along the slit of raster step ``i``.
Plain Python (dkist, gwcs, ndcube, asdf, astropy): no Django.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import asdf
import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.modeling import models
from astropy.table import MaskedColumn, Table
from astropy.time import Time

from inversions.errors import DoNotRetryError
from publishing.l2files import (
    PROFILE_KINDS,
    QUANTITIES,
    STEP,
    STRUCTURAL_KEYS,
    TMP_SUFFIX,
    FrameInfo,
    SpatialAxes,
    hdu_cards,
    hdu_layouts,
    l1_frame_keys,
    open_results,
    primary_cards,
    release_result_pages,
    spatial_axes,
)
from publishing.results import STEP_AXIS, ResultSet

QUANTITY_AXES = ["frame_y", "slit_x", "optical_depth"]  # numpy order
PROFILE_AXES = ["frame_y", "slit_x", "wavelength", "stokes"]
HELIOPROJECTIVE_TYPES = ("custom:pos.helioprojective.lon", "custom:pos.helioprojective.lat")
#: provenance keys of the primary header, not columns of the headers table (the reference's set)
_NOT_IN_TABLE = ("SWNAME", "SWVERS")


# ----------------------------------------------------------------------------- tables


def _column(name: str, values: list):
    present = [v for v in values if v is not None]
    if not present:
        return MaskedColumn(np.zeros(len(values), dtype="U1"), name=name, mask=np.ones(len(values), bool))
    if all(isinstance(v, bool) for v in present):
        dtype = bool
    elif all(isinstance(v, (int, bool)) for v in present):
        dtype = np.int64
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        dtype = np.float64
    else:
        values = [None if v is None else str(v) for v in values]
        present = [v for v in values if v is not None]
        dtype = f"U{max(1, max(len(v) for v in present))}"
    fill = {bool: False, np.int64: 0, np.float64: np.nan}.get(dtype, "")
    data = np.array([fill if v is None else v for v in values], dtype=dtype)
    if len(present) == len(values):
        return data
    return MaskedColumn(data, name=name, mask=[v is None for v in values])


class _Columns:
    """Header tables built row by row (one row per file); the first card of a key in a row counts."""

    def __init__(self):
        self.rows = 0
        self.columns: dict[str, list] = {}
        self.skipped: set[str] = set(STRUCTURAL_KEYS)

    def add(self, cards: Sequence[tuple]) -> None:
        row, columns = self.rows, self.columns
        for key, value, _ in cards:
            column = columns.get(key)
            if column is None:
                if key in self.skipped or key.startswith(_NOT_IN_TABLE):
                    self.skipped.add(key)
                    continue
                column = columns[key] = [None] * row
            elif len(column) > row:
                continue  # a repeated key: the first one counts
            column.append(value)
        self.rows += 1

    def table(self) -> Table:
        keys = sorted(self.columns)  # as the reference product: columns in key order
        for column in self.columns.values():
            column.extend([None] * (self.rows - len(column)))
        return Table([_column(k, self.columns[k]) for k in keys], names=keys)


# ----------------------------------------------------------------------------- WCS


def _arcsec(value: float, unit: str) -> float:
    return float((value * u.Unit(unit or "deg")).to_value(u.arcsec))


def _celestial(l1s: Sequence[Mapping], axes: SpatialAxes):
    """(lon axis, lat axis) of the L1 frames and the tables of the varying celestial transform."""
    first = l1s[0]
    lon_axis = next(i for i in (axes.slit, axes.raster) if str(first.get(f"CTYPE{i}", "")).upper().startswith("HPLN"))
    lat_axis = axes.raster if lon_axis == axes.slit else axes.slit
    pair = (lon_axis, lat_axis)
    n = len(l1s)
    crpix, crval, pc = np.zeros((n, 2)), np.zeros((n, 2)), np.zeros((n, 2, 2))
    cdelt0 = np.array([_arcsec(float(first.get(f"CDELT{a}", 1.0)), first.get(f"CUNIT{a}", "deg")) for a in pair])
    for k, h in enumerate(l1s):
        cdelt = np.array([_arcsec(float(h.get(f"CDELT{a}", 1.0)), h.get(f"CUNIT{a}", "deg")) for a in pair])
        crpix[k] = [float(h.get(f"CRPIX{a}", 1.0)) - 1.0 for a in pair]  # 0-based pixels
        crval[k] = [_arcsec(float(h.get(f"CRVAL{a}", 0.0)), h.get(f"CUNIT{a}", "deg")) for a in pair]
        for r, ai in enumerate(pair):
            for c, aj in enumerate(pair):
                pc[k, r, c] = float(h.get(f"PC{ai}_{aj}", 1.0 if ai == aj else 0.0)) * cdelt[r] / cdelt0[r]
    lon_pole = float(first.get("LONPOLE", 180.0))
    return pair, crpix, crval, pc, cdelt0, lon_pole


def _spatial_model(l1s: Sequence[Mapping], axes: SpatialAxes, binning: int):
    """(slit j, raster step i) -> (helioprojective lon, lat): L1 pixel j * binning of step i's frame."""
    from dkist.wcs.models import VaryingCelestialTransform

    pair, crpix, crval, pc, cdelt, lon_pole = _celestial(l1s, axes)
    vct = VaryingCelestialTransform(
        crpix_table=crpix * u.pix, cdelt=cdelt * u.arcsec / u.pix, pc_table=pc * u.pix,
        crval_table=crval * u.arcsec, lon_pole=lon_pole * u.deg,
    )
    slit = models.Multiply(float(binning), name="slit_binning")
    zero = models.Multiply(0.0, name="across_slit")  # the frame is one pixel wide across the slit
    if pair[0] == axes.raster:  # lon across the slit, lat along it (ViSP)
        pre = models.Mapping((1, 0, 1)) | (zero & slit & models.Identity(1))
    else:
        pre = models.Mapping((0, 1, 1)) | (slit & zero & models.Identity(1))
    model = pre | vct
    model.name = "L1 spatial"
    return model


def _helioprojective_frame(h: Mapping):
    from sunpy.coordinates import frames

    obstime = Time(str(h.get("DATE-AVG") or h.get("DATE-BEG")), scale="utc")
    if all(k in h for k in ("DSUN_OBS", "HGLN_OBS", "HGLT_OBS")):
        observer = SkyCoord(float(h["HGLN_OBS"]) * u.deg, float(h["HGLT_OBS"]) * u.deg,
                            float(h["DSUN_OBS"]) * u.m, frame=frames.HeliographicStonyhurst, obstime=obstime)
        return frames.Helioprojective(obstime=obstime, observer=observer.frame)
    return frames.Helioprojective(obstime=obstime, observer="earth")


def _time_model(l1s: Sequence[Mapping]):
    times = Time([str(h.get("DATE-AVG") or h.get("DATE-BEG")) for h in l1s], scale="utc")
    seconds = (times - times[0]).to_value(u.s)
    model = models.Tabular1D(points=(np.arange(len(l1s)) * u.pix,), lookup_table=seconds * u.s, method="linear",
                             bounds_error=False, fill_value=np.nan, name="Temporal")
    return model, times[0]


def _axis_model(values: np.ndarray, unit: u.UnitBase, name: str):
    """Linear1D over evenly spaced ``values``; else a lookup table (exact at every pixel)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size > 1:
        step = np.diff(values)
        if np.allclose(step, step.mean(), rtol=1e-6, atol=1e-9 * max(1.0, abs(values).max())):
            return models.Linear1D(slope=step.mean() * unit / u.pix, intercept=values[0] * unit, name=name)
        return models.Tabular1D(points=(np.arange(values.size) * u.pix,), lookup_table=values * unit,
                                method="linear", bounds_error=False, fill_value=np.nan, name=name)
    return models.Linear1D(slope=1.0 * unit / u.pix, intercept=float(values[0] if values.size else 0) * unit,
                           name=name)


def _frames(hp_frame, t0: Time):
    import gwcs.coordinate_frames as cf

    def celestial(order: tuple[int, int]):
        return cf.CelestialFrame(axes_order=order, name="helioprojective", reference_frame=hp_frame,
                                 unit=(u.arcsec, u.arcsec), axes_names=("pos.helioprojective.lon",
                                                                        "pos.helioprojective.lat"),
                                 axis_physical_types=HELIOPROJECTIVE_TYPES)

    def temporal(order: int):
        return cf.TemporalFrame(axes_order=(order,), name="temporal", axes_names=("time",), unit=(u.s,),
                                reference_frame=t0)

    return celestial, temporal


def quantity_wcs(log_tau: np.ndarray, spatial, time_model, hp_frame, t0: Time):
    """gwcs of a quantity cube: pixel (depth, slit, raster step) -> (log tau, lon, lat, time, stokes)."""
    import gwcs
    import gwcs.coordinate_frames as cf

    celestial, temporal = _frames(hp_frame, t0)
    depth = _axis_model(log_tau, u.one, "optical depth")
    stokes = models.Const1D(1.0, name="Stokes I")  # the reference carries the L1 frames' Stokes axis
    transform = models.Mapping((0, 1, 2, 2, 2)) | (depth & spatial & time_model & stokes)
    pixel = cf.CoordinateFrame(naxes=3, axes_type=("PIXEL",) * 3, axes_order=(0, 1, 2),
                               axes_names=("optical_depth", "slit_x", "frame_y"), unit=(u.pix,) * 3, name="pixel")
    world = cf.CompositeFrame([
        cf.CoordinateFrame(naxes=1, axes_type=("phys.absorption.opticalDepth",), axes_order=(0,),
                           axes_names=("optical depth",), unit=(u.one,), name="optical_depth",
                           axis_physical_types=("phys.absorption.opticalDepth",)),
        celestial((1, 2)),
        temporal(3),
        cf.StokesFrame(axes_order=(4,), name="polarization state"),
    ], name="CompositeFrame")
    return gwcs.WCS(forward_transform=transform, input_frame=pixel, output_frame=world)


def profile_wcs(wavelengths_nm: np.ndarray, spatial, time_model, hp_frame, t0: Time):
    """gwcs of a profile cube: pixel (stokes, wavelength, slit, raster step) -> (stokes, λ, lon, lat, time)."""
    import gwcs
    import gwcs.coordinate_frames as cf

    celestial, temporal = _frames(hp_frame, t0)
    stokes = models.Tabular1D(points=(np.arange(4) * u.pix,), lookup_table=np.arange(1, 5) * u.one,
                              method="nearest", bounds_error=False, fill_value=np.nan, name="Stokes")
    wave = _axis_model(wavelengths_nm, u.nm, "wavelength")
    transform = models.Mapping((0, 1, 2, 3, 3)) | (stokes & wave & spatial & time_model)
    pixel = cf.CoordinateFrame(naxes=4, axes_type=("PIXEL",) * 4, axes_order=(0, 1, 2, 3),
                               axes_names=("stokes", "wavelength", "slit_x", "frame_y"), unit=(u.pix,) * 4,
                               name="pixel")
    world = cf.CompositeFrame([
        cf.StokesFrame(axes_order=(0,), name="polarization state"),
        cf.SpectralFrame(axes_order=(1,), unit=(u.nm,), axes_names=("wavelength",), name="wavelength",
                         axis_physical_types=("em.wl",)),
        celestial((2, 3)),
        temporal(4),
    ], name="CompositeFrame")
    return gwcs.WCS(forward_transform=transform, input_frame=pixel, output_frame=world)


# ----------------------------------------------------------------------------- the file


def _dataset(filenames: np.ndarray, target: int, shape: tuple[int, ...], wcs, meta: dict, unit, basepath: Path):
    from dkist import Dataset
    from dkist.io.dask.loaders import AstropyFITSLoader
    from dkist.io.dask.striped_array import FileManager

    manager = FileManager.from_parts(filenames, target, "float32", shape, loader=AstropyFITSLoader,
                                     basepath=basepath)
    data = manager._striped_external_array._generate_array()
    dataset = Dataset(data, wcs=wcs, meta=meta, unit=unit)
    dataset._file_manager = manager
    return dataset


def _log_tau_grid(results: ResultSet) -> np.ndarray:
    """Log tau of each depth point (the grid of the first pixel; BLANCA inverts on one grid)."""
    mod, _, _ = open_results(results)
    index = [0, slice(None), 0, 0]
    index[STEP_AXIS] = 0
    return np.asarray(mod[tuple(index)], dtype=np.float64)


def build_inversion(
    frames: Sequence[FrameInfo],
    results: ResultSet,
    l1_headers_by_step: Mapping[int, Mapping],
    ids: Mapping,
    inventory: Mapping,
    *,
    software_versions: Mapping[str, str],
    basepath: str | os.PathLike,
):
    """The :class:`dkist.Inversion` of generated ``frames`` (one per raster step, in step order)."""
    from dkist import Inversion
    from dkist.dataset.inversion import Profiles

    frames = sorted(frames, key=lambda f: f.step)
    if [f.step for f in frames] != list(range(results.n_steps)):
        raise DoNotRetryError(f"{len(frames)} L2 frames for {results.n_steps} raster steps", step=STEP)
    l1s = [l1_frame_keys(l1_headers_by_step[s]) for s in range(results.n_steps)]  # plain dicts: cheap to read
    axes = spatial_axes(l1s[0], 0)
    basepath = Path(basepath)

    primary, items = _Columns(), None
    mod, _, _ = open_results(results)
    for frame, l1 in zip(frames, l1s):
        primary.add(primary_cards(frame.step, l1, ids, filename=frame.filename, framevol=frame.size / 1e6,
                                  software_versions=software_versions))
        index: list = [0, slice(None), 0, slice(None)]
        index[STEP_AXIS] = frame.step
        layouts = hdu_layouts(results, l1, frame.step, np.asarray(mod[tuple(index)], dtype=np.float64))
        release_result_pages()
        if items is None:
            items = [_Columns() for _ in layouts]
        for columns, layout, stats in zip(items, layouts, frame.stats):
            columns.add(hdu_cards(layout, stats, frame.date))
    headers = primary.table()

    filenames = np.array([f.filename for f in frames])
    spatial = _spatial_model(l1s, axes, results.binning)
    time_model, t0 = _time_model(l1s)
    hp_frame = _helioprojective_frame(l1s[0])
    inventory = dict(inventory)

    q_wcs = quantity_wcs(_log_tau_grid(results), spatial, time_model, hp_frame, t0)
    quantities = {}
    for target, q in enumerate(QUANTITIES, start=1):
        quantities[q.asdf_key] = _dataset(filenames, target, (1, results.n_slit, results.n_depth), q_wcs,
                                          {"headers": items[target - 1].table(), "inventory": inventory},
                                          u.Unit(q.bunit, format="fits") if q.bunit else u.one, basepath)
    profiles, profile_wcses = {}, {}
    target = len(QUANTITIES)
    for line in results.lines:
        wcs = profile_wcs(line.wavelengths_nm, spatial, time_model, hp_frame, t0)
        profile_wcses[line.line.key] = wcs
        for suffix, _ in PROFILE_KINDS:
            target += 1
            shape = (1, results.n_slit, line.stop - line.start, results.n_stokes)
            profiles[f"{line.line.key}_{suffix}"] = _dataset(
                filenames, target, shape, wcs, {"headers": items[target - 1].table(), "inventory": inventory},
                u.one, basepath)
    profile_collection = Profiles(profiles, aligned_axes=tuple((0, 1, 3) for _ in profiles),
                                  meta={"axes": PROFILE_AXES, "gwcs": profile_wcses})
    meta = {
        "inventory": inventory,
        "headers": headers,
        "axes": QUANTITY_AXES,
        "gwcs": q_wcs,
        "l1gwcs": {"transform": spatial, "helioFrame": hp_frame},
    }
    return Inversion(quantities, aligned_axes=tuple((0, 1, 2) for _ in quantities), meta=meta,
                     profiles=profile_collection)


def inventory_record(record: Mapping, results: ResultSet, *, canonical_dataset: str, created: Time | None = None) -> dict:
    """``meta.inventory``: the store record plus what the reference product's inventory holds."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in record.items()}
    out.update({
        "created": created or Time.now(),
        "proposalId": record.get("primaryProposalId"),
        "canonicalDataset": canonical_dataset,
        "datasetIds": list(record.get("datasetIds") or []),
        "spectralLines": [p.line.key for p in results.lines],
        "spectralLineNames": [p.line.name for p in results.lines],
        "wavelengths": [p.line.centre_nm for p in results.lines],
        "frameCount": results.n_steps,
    })
    return out


def write_inversion_asdf(inversion, out_path: str | os.PathLike) -> Path:
    """Write the inversion's ASDF file atomically (a temporary name renamed into place)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with asdf.AsdfFile({"inversion": inversion}) as af:
            af.write_to(tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
