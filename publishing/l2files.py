"""Level 2 frames (DESIGN §9.1): one FITS file per raster step, in the data center's L2 layout.

The layout is the one the data center's user tools read (``dkist.load_dataset`` →
``dkist.Inversion``; the package's reference product ``test_L2_inversion.asdf.gz``)::

    0      PrimaryHDU  no data; the curated L2 header (:data:`PRIMARY_KEYS`): values lifted
                       from the L1 frame of the same raster step of the fiducial arm, plus the
                       L2 identity (LEVEL, PROCTYPE, DSETID = inversion id, FILE_ID, FILENAME,
                       FRAMEVOL, HEADVERS of L2) and the provenance (SWNAMEn / SWVERSn)
    1..11  ImageHDU    one physical quantity (:data:`QUANTITIES`), numpy shape
                       (1, slit, depth): FITS axes 1 = LOGTAU, 2/3 = the L1 frame's spatial axes
                       (along the slit, across it: length 1)
    12..   ImageHDU    per spectral line (wavelength order) "<line> Profile Original", then
                       "<line> Profile Fit", numpy shape (1, slit, wavelength, stokes): FITS
                       axes 1 = STOKES (1..4 = I, Q, U, V), 2 = AWAV (nm), 3/4 = spatial

Every image HDU has EXTNAME, BTYPE, BUNIT, BZERO/BSCALE (0/1: the float32 values are the
physical ones), DATAMIN/DATAMAX, DATE, WCSVALID and its WCS: the spatial axes are those of
the step's L1 frame (with its rotated PC block), so that pixel (0, …, 0) of every HDU maps to
the sky position of the L1 frame's first slit pixel. With slit binning ``b`` (``DESR-BIN``),
L2 slit position ``j`` is L1 slit pixel ``j * b`` (0-based): the PC column of the slit axis is
scaled by ``b`` and its CRPIX moved. Cross terms between L1 spectral and spatial axes are
ignored (zero in DKIST L1).

Where the reference product is not right we keep ours: BTYPEs are valid IVOA UCD1+ words
(the reference writes e.g. ``phys.veloc.microturb`` and ``phys.electron;phys.pressure``), the
WCS applies the L1 PC rotation, and image HDUs carry the observer keys (DSUN_OBS, HGLN_OBS …)
so that each HDU's helioprojective WCS stands alone. Data are float32 (the reference: float64).

Frames are written by :func:`generate_frame` directly (cards formatted by astropy, the data
as big-endian bytes, CHECKSUM/DATASUM computed on the way), to a temporary name renamed into
place, so a killed writer never leaves a file that :func:`frame_is_valid` accepts. No
``fsync``: a file lost in a power cut fails the check and is generated again. Plain Python
(astropy, numpy): no Django.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits

from inversions.errors import DoNotRetryError, RetryError
from inversions.preprocessing import fits_checksum
from publishing.results import INVERSION_QUANTITIES, ProfileLine, ResultSet

STEP = "publish.generate"
TMP_SUFFIX = ".l2tmp"
HEADVERS = "L2.0.3.1"  # version of the L2 header the reference product documents
HEAD_URL = f"https://docs.dkist.nso.edu/projects/data-products/en/{HEADVERS}"
PROFILE_BTYPE = "spect.line.profile"
PROFILE_KINDS = (("orig", "Original"), ("fit", "Fit"))
BLOCK = 2880
CARD = 80


@dataclass(frozen=True)
class Quantity:
    """One physical-quantity HDU of an L2 frame and its conversion from the inversion code."""

    key: str  # key in results.INVERSION_QUANTITIES
    asdf_key: str  # key of the dkist.Inversion
    extname: str
    btype: str  # IVOA UCD1+
    bunit: str  # FITS unit string
    in_unit: u.UnitBase  # unit of the inversion code
    factor: float  # L2 value = input value * factor
    wrap_degrees: bool = False  # wrap to [0, 360)


def _quantity(key: str, asdf_key: str, extname: str, btype: str, bunit: str, *, wrap: bool = False) -> Quantity:
    in_unit = {q.key: q.unit for q in INVERSION_QUANTITIES}[key]
    out_unit = u.Unit(bunit, format="fits") if bunit else u.dimensionless_unscaled
    factor = float(f"{in_unit.to(out_unit):.15g}")  # 999.9999999999999 -> 1000.0
    return Quantity(key, asdf_key, extname, btype, bunit, in_unit, factor, wrap)


#: The 11 quantity HDUs, in file order (= order of ``inv_res_mod.fits``); EXTNAMEs and keys as
#: in the data center's reference product.
QUANTITIES: tuple[Quantity, ...] = (
    _quantity("log_tau", "optical_depth", "Log of Optical Depth at 500nm", "phys.absorption.opticalDepth", ""),
    _quantity("temperature", "temperature", "Temperature", "phys.temperature", "K"),
    _quantity("electron_pressure", "electron_pressure", "Electron Pressure", "phys.pressure;phys.electron", "N/m^2"),
    _quantity("microturbulence", "microturbulence", "Microturbulence", "phys.veloc.microTurb", "km/s"),
    _quantity("field_strength", "mag_strength", "Magnetic Field Strength", "phys.magField", "T"),
    _quantity("los_velocity", "velocity", "Line-of-sight Velocity", "spect.dopplerVeloc", "km/s"),
    _quantity("inclination", "mag_inclination", "Magnetic Field Inclination (w.r.t. line-of-sight)",
              "pos.spherical.colat;phys.magField", "deg", wrap=True),
    _quantity("azimuth", "mag_azimuth", "Magnetic Field Azimuth (w.r.t. line-of-sight)",
              "pos.spherical.azi;phys.magField", "deg", wrap=True),
    _quantity("geometric_height", "geo_height", "Geometric Height above solar surface (tau ~ 1 at 500nm)",
              "pos.bodyrc.alt", "km"),
    _quantity("gas_pressure", "gas_pressure", "Gas Pressure", "phys.pressure", "N/m^2"),
    _quantity("density", "density", "Density", "phys.density", "kg/m^3"),
)
assert [q.key for q in QUANTITIES] == [q.key for q in INVERSION_QUANTITIES]

#: Keys of the L2 primary header lifted from the L1 frame (the reference product's curated set;
#: ``PROPIDnn`` / ``EXPRIDnn`` too). The L2 identity keys are set by :func:`primary_cards`.
LIFTED_KEYS = (
    "ORIGIN", "TELESCOP", "OBSRVTRY", "NETWORK", "INSTRUME", "OBJECT", "SOLARNET", "TIMESYS",
    "DATE-BEG", "DATE-END", "DATE-AVG", "DATEREF", "TELAPSE", "OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z", "OBS_VR",
    "ELEV_ANG", "TAZIMUTH", "TELTRACK", "TTBLANGL", "TTBLTRCK", "OCS_CTRL", "FIDO_CFG", "DSHEALTH", "LIGHTLVL",
    "AO_LOCK", "ATMOS_R0", "DKISTVER", "HLSVERS", "INFO_URL", "DSP_ID", "NPROPOS", "NEXPERS",
    "PROP_ID", "EXPER_ID", "OBSPR_ID", "IP_ID",
)
_LIST_KEY = re.compile(r"^(?:PROPID|EXPRID)\d\d$")
#: keys copied into each image HDU so that its WCS stands alone (time and observer)
_WCS_CONTEXT_KEYS = ("DATE-AVG", "RSUN_REF", "DSUN_OBS", "HGLN_OBS", "HGLT_OBS", "SPECSYS")
#: structural and checksum keys: in every file, not in the ASDF's headers tables
STRUCTURAL_KEYS = frozenset({"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "NAXIS4",
                             "EXTEND", "PCOUNT", "GCOUNT", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", ""})
_L1_NEEDED = re.compile(
    r"^(?:(?:CTYPE|CUNIT|CRPIX|CRVAL|CDELT)\d[A-Z]?|PC\d_\d[A-Z]?|(?:WCSAXES|WCSNAME|LONPOLE|LATPOLE)[A-Z]?"
    r"|Z?NAXIS\d?|ZIMAGE|DINDEX\d|DSETID|FILE_ID|VSPARMID|LINEWAV|PROPID\d\d|EXPRID\d\d)$"
)


def l1_frame_keys(header: fits.Header | Mapping) -> dict:
    """The values of an L1 frame header that L2 generation needs (scalars only; small to keep)."""
    wanted = set(LIFTED_KEYS) | set(_WCS_CONTEXT_KEYS)
    items = ((c.keyword, c.value) for c in header.cards) if isinstance(header, fits.Header) else header.items()
    out = {}
    for key, value in items:
        if key in out or not (key in wanted or _L1_NEEDED.match(key or "")):
            continue
        if isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


@dataclass(frozen=True)
class LinearAxis:
    ctype: str
    cunit: str
    crpix: float
    crval: float
    cdelt: float


STOKES_AXIS = LinearAxis("STOKES", "", 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class FrameInfo:
    """One L2 frame on disk."""

    step: int
    path: str
    filename: str
    size: int
    file_id: str
    date: str  # DATE of its image HDUs (when it was written)
    stats: tuple[tuple[float | None, float | None], ...]  # (DATAMIN, DATAMAX) per image HDU
    depth: LinearAxis  # its optical-depth axis (FITS axis 1 of the quantity HDUs)
    generated: bool  # False when an existing valid file was kept


# ----------------------------------------------------------------------------- names


def frame_filename(l1_header: Mapping, ids: Mapping) -> str:
    """``INV_<inversion id>_<DATE-BEG, [-:.] as _>_L2.fits``, as the reference product names them."""
    date = str(l1_header.get("DATE-BEG", "") or "")
    if not date:
        raise DoNotRetryError("an L1 frame has no DATE-BEG: the L2 file cannot be named", step=STEP)
    stem = f"INV_{ids['inversion_id']}_{date}_L2"
    return re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_").upper() + ".fits"


def frame_file_id(inversion_id: str, step: int) -> str:
    """Stable FILE_ID (a UUID): the same frame gets the same id when it is generated again."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dkist-l2:{inversion_id}:{step}"))


def dataset_metadata_filename(inversion_id: str) -> str:
    """``INV_<inversion id>_L2_metadata.asdf``: the dataset-level ASDF file of an inversion."""
    return "INV_" + re.sub(r"[^A-Za-z0-9]+", "_", str(inversion_id)).upper() + "_L2_metadata.asdf"


def profile_extname(line: ProfileLine, kind: str) -> str:
    return f"{line.line.label} Profile {kind}"


def expected_extnames(results: ResultSet) -> list[str]:
    """EXTNAMEs of the image HDUs of every frame of ``results``, in order."""
    return [q.extname for q in QUANTITIES] + [
        profile_extname(p, kind) for p in results.lines for _, kind in PROFILE_KINDS
    ]


def expected_shapes(results: ResultSet) -> list[tuple[int, ...]]:
    """numpy shapes of the image HDUs of every frame of ``results``, in order."""
    shapes = [(1, results.n_slit, results.n_depth)] * len(QUANTITIES)
    for p in results.lines:
        shapes += [(1, results.n_slit, p.stop - p.start, results.n_stokes)] * len(PROFILE_KINDS)
    return shapes


# ----------------------------------------------------------------------------- cards


@functools.lru_cache(maxsize=16384)
def _card_image(key: str, value, comment: str = "") -> str:
    """An 80-character card image formatted by astropy once; most cards repeat frame after frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        card = fits.Card(key, value, comment)
        card.verify("silentfix")
        image = card.image
    if len(image) != CARD:  # a long string continued over several cards: keep it one card
        card = fits.Card(key, str(value)[:60] if isinstance(value, str) else value, comment)
        image = card.image[:CARD]
    return image


def primary_cards(step: int, l1: Mapping, ids: Mapping, *, filename: str, framevol: float,
                  software_versions: Mapping[str, str]) -> list[tuple]:
    """Cards (key, value, comment) of the primary header of the L2 frame of ``step``."""
    inversion_id = str(ids["inversion_id"])
    cards: list[tuple] = [(key, l1[key], "") for key in LIFTED_KEYS if key in l1 and l1[key] is not None]
    cards += [(key, l1[key], "") for key in sorted(l1) if _LIST_KEY.match(key)]
    overrides = {"PROP_ID": ids.get("proposal_id"), "EXPER_ID": ids.get("experiment_id"),
                 "OBSPR_ID": ids.get("observing_program_id"), "IP_ID": ids.get("program_id")}
    cards = [(k, overrides[k], c) if overrides.get(k) else (k, v, c) for k, v, c in cards]
    present = {k for k, _, _ in cards}
    cards += [(k, v, "") for k, v in overrides.items() if v and k not in present]
    cards += [
        ("LEVEL", 2, "Processing level"),
        ("PROCTYPE", "L2", "Degree of processing of the frame"),
        ("DSETID", inversion_id, "Inversion id (L2 dataset)"),
        ("FILE_ID", frame_file_id(inversion_id, step), "Unique id of this file"),
        ("FILENAME", filename, ""),
        ("FRAMEVOL", round(framevol, 6), "[MB] Size of this file"),
        ("HEADVERS", HEADVERS, "Version of the L2 header"),
        ("HEAD_URL", HEAD_URL, ""),
    ]
    for i, (name, version) in enumerate(software_versions.items(), 1):
        cards += [(f"SWNAME{i}", str(name), "Software"), (f"SWVERS{i}", str(version), f"Version of {name}")]
    return cards


def _axis_length(h: Mapping, i: int) -> int | None:
    for key in (f"ZNAXIS{i}", f"NAXIS{i}") if h.get("ZIMAGE") else (f"NAXIS{i}",):
        if key in h:
            return int(h[key])
    return None


@dataclass(frozen=True)
class SpatialAxes:
    """The spatial FITS axes (1-based) of an L1 frame."""

    slit: int  # along the slit
    raster: int  # across the slit (length 1)
    slit_length: int | None


def spatial_axes(h: Mapping, step: int) -> SpatialAxes:
    """Which L1 axis runs along the slit and which across it (length 1, or the one with ``DINDEX``)."""
    n = int(h.get("WCSAXES", h.get("NAXIS", 0)) or 0)
    lon = lat = None
    for i in range(1, max(n, 3) + 1):
        ctype = str(h.get(f"CTYPE{i}", "")).upper()
        if ctype.startswith("HPLN"):
            lon = i
        elif ctype.startswith("HPLT"):
            lat = i
    if lon is None or lat is None:
        raise DoNotRetryError(f"L1 header of raster step {step} has no helioprojective HPLN/HPLT axes",
                              step=STEP, details={"raster_step": step})
    lengths = {i: _axis_length(h, i) for i in (lon, lat)}
    long_axes = [i for i in (lon, lat) if (lengths[i] or 0) > 1]
    one_axes = [i for i in (lon, lat) if lengths[i] == 1]
    if len(long_axes) == 1 and len(one_axes) == 1:
        return SpatialAxes(long_axes[0], one_axes[0], lengths[long_axes[0]])
    if f"DINDEX{lon}" in h and f"DINDEX{lat}" not in h:
        return SpatialAxes(lat, lon, lengths[lat])
    if f"DINDEX{lat}" in h and f"DINDEX{lon}" not in h:
        return SpatialAxes(lon, lat, lengths[lon])
    raise DoNotRetryError(
        f"L1 header of raster step {step}: cannot tell the slit axis from the raster axis "
        f"(HPLN axis {lon} length {lengths[lon]}, HPLT axis {lat} length {lengths[lat]})",
        step=STEP, details={"raster_step": step})


def check_binning(h: Mapping, axes: SpatialAxes, n_slit: int, binning: int, step: int) -> None:
    """The L1 slit must hold ``n_slit`` bins of ``binning`` pixels (a partial last bin is dropped)."""
    if axes.slit_length is None:
        return
    if not n_slit * binning <= axes.slit_length < (n_slit + 1) * binning:
        raise DoNotRetryError(
            f"the inversion has {n_slit} slit positions binned by {binning} (DESR-BIN), but the fiducial arm's L1 "
            f"frames have {axes.slit_length} slit pixels (expected {n_slit * binning}"
            + (f" to {(n_slit + 1) * binning - 1}" if binning > 1 else "") + ")",
            step=STEP, details={"raster_step": step, "l1_slit": axes.slit_length, "n_slit": n_slit,
                                "binning": binning})


def _alternates(h: Mapping, axes: SpatialAxes) -> list[str]:
    return [alt for alt in ("", "A") if f"CTYPE{axes.slit}{alt}" in h and f"CTYPE{axes.raster}{alt}" in h]


def wcs_cards(h: Mapping, axes: SpatialAxes, binning: int, others: Sequence[LinearAxis]) -> list[tuple]:
    """WCS cards of an image whose FITS axes are (*others, slit, raster)."""
    n_axes = len(others) + 2
    new_slit, new_raster = len(others) + 1, len(others) + 2
    spatial = ((new_slit, axes.slit), (new_raster, axes.raster))
    cards: list[tuple] = []
    for alt in _alternates(h, axes):
        cards.append((f"WCSAXES{alt}", n_axes, "Number of WCS axes"))
        if f"WCSNAME{alt}" in h:
            cards.append((f"WCSNAME{alt}", h[f"WCSNAME{alt}"], ""))
        for k, axis in enumerate(others, start=1):
            cards += [(f"CTYPE{k}{alt}", axis.ctype, ""), (f"CUNIT{k}{alt}", axis.cunit, ""),
                      (f"CRPIX{k}{alt}", axis.crpix, ""), (f"CRVAL{k}{alt}", axis.crval, ""),
                      (f"CDELT{k}{alt}", axis.cdelt, "")]
        for new, old in spatial:
            crpix = float(h.get(f"CRPIX{old}{alt}", 1.0))
            if old == axes.slit:
                crpix = (crpix - 1.0) / binning + 1.0
            cards += [(f"CTYPE{new}{alt}", h[f"CTYPE{old}{alt}"], ""),
                      (f"CUNIT{new}{alt}", h.get(f"CUNIT{old}{alt}", "deg"), ""),
                      (f"CRPIX{new}{alt}", crpix, ""),
                      (f"CRVAL{new}{alt}", float(h.get(f"CRVAL{old}{alt}", 0.0)), ""),
                      (f"CDELT{new}{alt}", float(h.get(f"CDELT{old}{alt}", 1.0)), "")]
        old_of = dict(spatial)
        for i in range(1, n_axes + 1):
            for j in range(1, n_axes + 1):
                if i in old_of and j in old_of:
                    pc = float(h.get(f"PC{old_of[i]}_{old_of[j]}{alt}", 1.0 if i == j else 0.0))
                    if old_of[j] == axes.slit:
                        pc *= binning
                else:
                    pc = 1.0 if i == j else 0.0
                cards.append((f"PC{i}_{j}{alt}", pc, ""))
        for key in (f"LONPOLE{alt}", f"LATPOLE{alt}"):
            if key in h:
                cards.append((key, h[key], ""))
    cards += [(key, h[key], "") for key in _WCS_CONTEXT_KEYS if key in h]
    return cards


def depth_axis(log_tau: np.ndarray) -> LinearAxis:
    """Log tau axis when the grid (``[depth, slit]``) is the same along the slit and evenly spaced."""
    grid = np.asarray(log_tau[:, 0], dtype=np.float64)
    if grid.size > 1 and np.all(np.isfinite(grid)):
        step = np.diff(grid)
        if (np.allclose(log_tau, grid[:, None], rtol=0, atol=1e-4)
                and np.allclose(step, step.mean(), rtol=1e-3, atol=1e-6) and step.mean() != 0):
            return LinearAxis("LOGTAU", "", 1.0, float(grid[0]), float(step.mean()))
    return LinearAxis("DEPTH", "", 1.0, 0.0, 1.0)  # depth index


def wavelength_axis(line: ProfileLine) -> LinearAxis:
    """AWAV in nm from BLANCA's offsets (the mean spacing when they are not evenly spaced)."""
    nm = line.wavelengths_nm
    delta = float(np.mean(np.diff(nm))) if nm.size > 1 else 1.0
    return LinearAxis("AWAV", "nm", 1.0, float(nm[0]), delta)


@dataclass(frozen=True)
class HduLayout:
    """One image HDU of a frame: what goes in it and its cards (without the data-dependent ones)."""

    extname: str
    shape: tuple[int, ...]  # numpy
    cards: tuple[tuple, ...]  # BTYPE … WCS


def hdu_layouts(results: ResultSet, l1: Mapping, step: int, depth: LinearAxis) -> list[HduLayout]:
    """The image HDUs of the frame of ``step``; ``depth`` its optical-depth axis (:func:`depth_axis`)."""
    axes = spatial_axes(l1, step)
    quantity_wcs = wcs_cards(l1, axes, results.binning, [depth])
    out = []
    for q in QUANTITIES:
        cards = (("BTYPE", q.btype, "IVOA UCD1+"), ("BUNIT", q.bunit, "Unit of the data values"), *quantity_wcs)
        out.append(HduLayout(q.extname, (1, results.n_slit, results.n_depth), cards))
    for line in results.lines:
        wcs = wcs_cards(l1, axes, results.binning, [STOKES_AXIS, wavelength_axis(line)])
        for _, kind in PROFILE_KINDS:
            cards = (("BTYPE", PROFILE_BTYPE, "IVOA UCD1+"), ("BUNIT", "", "Normalised intensity"),
                     ("SPECPFIN", line.line.label, "Spectral line of the profile"),
                     ("SPECPFTP", kind, "Original (observed) or Fit"), *wcs)
            out.append(HduLayout(profile_extname(line, kind), (1, results.n_slit, line.stop - line.start,
                                                               results.n_stokes), cards))
    return out


def hdu_cards(layout: HduLayout, stats: tuple[float | None, float | None], date: str) -> list[tuple]:
    """Every non-structural card of an image HDU, in file order."""
    cards = [("EXTNAME", layout.extname, "Name of the HDU"), *layout.cards[:2],
             ("BZERO", 0, "Data are physical values"), ("BSCALE", 1, "")]
    lo, hi = stats
    if lo is not None:
        cards.append(("DATAMIN", lo, "Minimum data value"))
    if hi is not None:
        cards.append(("DATAMAX", hi, "Maximum data value"))
    cards += [("DATE", date, "File creation time (UTC)"), ("WCSVALID", True, "WCS keys are valid"),
              *layout.cards[2:]]
    return cards


def _header_block(structural: Sequence[tuple], cards: Iterable[tuple], datasum: str) -> bytearray:
    """Header bytes with CHECKSUM = zeros (to be replaced) and DATASUM, padded to whole blocks."""
    images = [_card_image(*c) for c in structural]
    images += [_card_image(k, v, c) for k, v, c in cards]
    images.append(_card_image("CHECKSUM", "0" * 16, "HDU checksum"))
    images.append(_card_image("DATASUM", datasum, "data unit checksum"))
    images.append("END".ljust(CARD))
    text = "".join(images)
    text += " " * (-len(text) % BLOCK)
    return bytearray(text.encode("ascii"))


def _set_checksum(header: bytearray, datasum: int) -> None:
    """Replace the zero CHECKSUM card by the HDU's checksum."""
    where = header.find(b"CHECKSUM= ")
    value = fits_checksum.checksum_value(fits_checksum.sum32(header), datasum)
    header[where:where + CARD] = _card_image("CHECKSUM", value, "HDU checksum").encode("ascii")


def _header_blocks(n_cards: int) -> int:
    return -(-((n_cards + 3) * CARD) // BLOCK) * BLOCK  # + CHECKSUM, DATASUM, END


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Layout:
    """Where a result file's primary array is: byte offset, numpy shape, dtype (big-endian)."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype


_cache_lock = threading.Lock()
_layouts: dict[tuple, _Layout] = {}


def _layout_of(path: str) -> _Layout:
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
    with _cache_lock:
        hit = _layouts.get(key)
    if hit is None:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            header = hdul[0].header
            offset = hdul.fileinfo(0)["datLoc"]
            shape = tuple(int(header[f"NAXIS{i}"]) for i in range(int(header["NAXIS"]), 0, -1))
            dtype = np.dtype({-32: ">f4", -64: ">f8"}[int(header["BITPIX"])])
        hit = _Layout(offset, shape, dtype)
        with _cache_lock:
            _layouts[key] = hit
    return hit


def check_results(results: ResultSet) -> None:
    """The result files still have the shapes they were checked with."""
    shapes = [_layout_of(results.paths[role]).shape for role in ("mod", "pre", "ori")]
    if shapes != [results.mod_shape, results.profile_shape, results.profile_shape]:
        raise DoNotRetryError("result files changed since they were checked: shapes "
                              f"{', '.join(map(str, shapes))} instead of {results.mod_shape}, "
                              f"{results.profile_shape}", step=STEP)


def read_steps(path: str, first: int, count: int, out: np.ndarray | None = None,
               views: Sequence[memoryview] | None = None) -> np.ndarray:
    """Raster steps ``first .. first+count-1`` of a result file: ``[a, b, count, slit]`` (file dtype).

    BLANCA's arrays are ``[a, b, raster step, slit]``: one step is a short row of every (a, b)
    plane, the rows far apart in the file. Consecutive steps are contiguous within a plane, so
    a batch of steps is read with one ``preadv`` per plane straight into the array: nothing is
    memory-mapped, and memory holds only the batch. ``out``: an array of that shape and the
    file's dtype to read into (each ``out[i, j]`` contiguous), e.g. from :class:`FrameBuffers`;
    ``views``: :func:`plane_views` of ``out``, when kept with it.
    """
    layout = _layout_of(path)
    planes_a, planes_b, n_steps, n_slit = layout.shape
    if not (0 <= first and first + count <= n_steps):
        raise DoNotRetryError(f"raster steps {first}..{first + count - 1} are outside 0..{n_steps - 1}", step=STEP)
    if out is None:
        out = np.empty((planes_a, planes_b, count, n_slit), dtype=layout.dtype)
    elif out.shape != (planes_a, planes_b, count, n_slit) or out.dtype != layout.dtype:
        raise ValueError(f"read_steps: out is {out.shape} {out.dtype}, the steps are "
                         f"{(planes_a, planes_b, count, n_slit)} {layout.dtype}")
    item = layout.dtype.itemsize
    row = n_slit * item
    plane = n_steps * row
    want = count * row
    if views is None:
        views = plane_views(out)
    fd = os.open(path, os.O_RDONLY)
    try:
        preadv = os.preadv
        for n, view in enumerate(views):
            got = preadv(fd, [view], layout.offset + n * plane + first * row)
            if got != want:
                i, j = divmod(n, planes_b)
                raise DoNotRetryError(f"{Path(path).name} is shorter than its header says (read {got} of "
                                      f"{want} bytes of plane {i}, {j})", step=STEP)
    finally:
        os.close(fd)
    return out


def plane_views(out: np.ndarray) -> list[memoryview]:
    """Byte views of every ``out[i, j]`` of a ``[a, b, count, slit]`` array, in file order.

    Making a view costs about as much as reading a 16 KB row from the page cache, so the views
    of a reused buffer are kept with it (:meth:`FrameBuffers.steps_views`).
    """
    return [memoryview(out[i, j]).cast("B") for i in range(out.shape[0]) for j in range(out.shape[1])]


class FrameBuffers:
    """The large arrays one generating thread reuses from batch to batch and frame to frame.

    A fresh numpy array of a few MB or more is mapped anew by the allocator and unmapped at
    its release, so every frame would pay its page faults again (about a fifth of a frame's
    time on our machine); these arrays are allocated once. Arrays are found by name and
    "slot": with two slots, one batch is read (or one frame written) while the other is used.
    Not thread-safe: one instance per generating thread (:func:`thread_buffers`).
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._views: dict[tuple[str, int], tuple[np.ndarray, list[memoryview]]] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of ``shape``, the same one each time for ``name``."""
        dtype = np.dtype(dtype)
        found = self._arrays.get(name)
        if found is None or found.shape != tuple(shape) or found.dtype != dtype:
            found = self._arrays[name] = np.empty(shape, dtype=dtype)
        return found

    def steps(self, name: str, shape: tuple[int, int, int, int], dtype) -> np.ndarray:
        """``[a, b, count, slit]``: a view of a buffer with room for at least ``count`` steps."""
        dtype = np.dtype(dtype)
        a, b, count, slit = shape
        found = self._arrays.get(name)
        if found is None or found.dtype != dtype or found.shape[:2] != (a, b) or found.shape[3] != slit \
                or found.shape[2] < count:
            found = self._arrays[name] = np.empty(shape, dtype=dtype)
            self._views = {key: kept for key, kept in self._views.items() if key[0] != name}
        return found[:, :, :count]

    def steps_views(self, name: str, out: np.ndarray) -> list[memoryview]:
        """:func:`plane_views` of ``out`` (a :meth:`steps` array of ``name``), made once per buffer and count."""
        key = (name, out.shape[2])
        base = self._arrays[name]
        kept = self._views.get(key)
        if kept is None or kept[0] is not base:
            kept = self._views[key] = (base, plane_views(out))
        return kept[1]


_local = threading.local()


def thread_buffers() -> FrameBuffers:
    """This thread's :class:`FrameBuffers` (a pool worker's: freed when the pool's thread or process ends)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = FrameBuffers()
    return buffers


@dataclass
class StepBlock:
    """Consecutive raster steps of the three result files, read together."""

    first: int
    mod: np.ndarray  # [quantity, depth, steps, slit]
    pre: np.ndarray  # [stokes, wavelength, steps, slit]
    ori: np.ndarray

    @classmethod
    def read(cls, results: ResultSet, first: int, count: int, *, buffers: FrameBuffers | None = None,
             slot: int = 0) -> StepBlock:
        """Steps ``first .. first+count-1``; into ``buffers`` (slot ``slot``) when given."""
        check_results(results)
        arrays = []
        for role in ("mod", "pre", "ori"):
            path = results.paths[role]
            out = views = None
            if buffers is not None:
                layout = _layout_of(path)
                name = f"batch:{role}/{slot}"
                out = buffers.steps(name, (*layout.shape[:2], count, layout.shape[3]), layout.dtype)
                views = buffers.steps_views(name, out)
            arrays.append(read_steps(path, first, count, out, views))
        return cls(first, *arrays)


def batch_size(results: ResultSet, budget_bytes: int = 128 * 2**20) -> int:
    """How many raster steps to read at once: about ``budget_bytes`` of result data, 1 to 32 steps.

    Each batch costs one read per (quantity, depth) and (stokes, wavelength) plane whatever its
    length, so larger batches read faster; memory holds two batches per generating thread
    (one read ahead).
    """
    per_step = (math.prod(results.mod_shape) + 2 * math.prod(results.profile_shape)) // max(results.n_steps, 1) * 4
    return max(1, min(32, budget_bytes // max(per_step, 1)))


_FILE_DTYPE = np.dtype(">f4")  # the L2 files' data: big-endian float32 (BITPIX -32)


def _convert(plane: np.ndarray, quantity: Quantity, out: np.ndarray | None = None) -> np.ndarray:
    """``[depth, slit]`` in the inversion code's unit -> ``(1, slit, depth)`` big-endian float32 in L2 units."""
    if out is None:
        out = np.empty((1, plane.shape[1], plane.shape[0]), dtype=_FILE_DTYPE)
    if quantity.factor == 1.0:
        out[0] = plane.T
    else:
        np.multiply(plane.T, quantity.factor, out=out[0], casting="unsafe")
    if quantity.wrap_degrees:
        np.mod(out, np.float32(360.0), out=out)
        out[out >= 360.0] = 0.0  # -1e-9 % 360 rounds to 360 in float32
    return out


@dataclass
class _Stats:
    """DATAMIN, DATAMAX (finite values only) and the data's 32-bit word sum, gathered piece by piece."""

    lo: float = math.inf
    hi: float = -math.inf
    words: int = 0  # sum of the big-endian 32-bit words (not yet folded)

    def add(self, piece: np.ndarray) -> None:
        self.lo = min(self.lo, float(np.fmin.reduce(piece, axis=None)))
        self.hi = max(self.hi, float(np.fmax.reduce(piece, axis=None)))
        self.words += int(piece.view(">u4").sum(dtype=np.uint64))

    @property
    def min_max(self) -> tuple[float | None, float | None]:
        return (self.lo if math.isfinite(self.lo) else None), (self.hi if math.isfinite(self.hi) else None)

    @property
    def datasum(self) -> int:
        return fits_checksum.fold(self.words)


def _frame_data(results: ResultSet, block: StepBlock, step: int, buffers: FrameBuffers | None,
                slot: int) -> list[tuple[np.ndarray, _Stats]]:
    """The image arrays of a frame (see :func:`frame_arrays`), each with its statistics and data sum.

    Profiles are transposed ``_WAVE_CHUNK`` wavelengths at a time, and each piece's statistics
    taken while it is still in the processor's cache: one pass over memory instead of four.
    """
    k = step - block.first

    def array(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if buffers is None:
            return np.empty(shape, dtype=_FILE_DTYPE)
        return buffers.array(f"frame:{name}/{slot}", shape, _FILE_DTYPE)

    out: list[tuple[np.ndarray, _Stats]] = []
    for i, q in enumerate(QUANTITIES):
        data = _convert(block.mod[i, :, k, :], q, array(f"q{i}", (1, results.n_slit, results.n_depth)))
        stats = _Stats()
        stats.add(data)
        out.append((data, stats))
    for n, line in enumerate(results.lines):
        for kind, cube in (("ori", block.ori), ("pre", block.pre)):  # Original, then Fit
            data = array(f"{kind}{n}", (1, results.n_slit, line.stop - line.start, results.n_stokes))
            stats = _Stats()
            for w in range(line.start, line.stop, _WAVE_CHUNK):  # [stokes, wave, slit] -> [slit, wave, stokes]
                piece = data[0, :, w - line.start:min(w + _WAVE_CHUNK, line.stop) - line.start]
                piece[...] = cube[:, w:w + piece.shape[1], k, :].transpose(2, 1, 0)
                stats.add(piece)
            out.append((data, stats))
    return out


def frame_arrays(results: ResultSet, block: StepBlock, step: int, *, buffers: FrameBuffers | None = None,
                 slot: int = 0) -> list[np.ndarray]:
    """The image arrays of the frame of ``step`` (in ``block``), in HDU order: C-ordered big-endian float32.

    With ``buffers``, the arrays are that slot's (overwritten by the next frame of the slot).
    """
    return [data for data, _ in _frame_data(results, block, step, buffers, slot)]


_WAVE_CHUNK = 128  # wavelengths per transposed piece: keeps each piece's source rows in cache


@dataclass
class PreparedFrame:
    """An L2 frame ready to be written: its header blocks and data arrays, in file order."""

    path: Path
    parts: list[bytes | bytearray | np.ndarray]
    info: FrameInfo

    def write(self) -> FrameInfo:
        """Write to a temporary name and rename into place (a killed writer leaves no valid frame)."""
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
        try:
            with open(tmp, "wb", buffering=0) as fh:
                for part in self.parts:
                    view = memoryview(part).cast("B") if isinstance(part, np.ndarray) else memoryview(part)
                    while view:  # a raw file may write less than asked
                        view = view[fh.write(view):]
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RetryError(f"could not write L2 frame {self.path.name}: {exc}", step=STEP,
                             details={"raster_step": self.info.step, "path": str(self.path)}) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.info


def prepare_frame(
    step_index: int,
    results: ResultSet,
    l1_header: Mapping,
    ids: Mapping,
    out_path: str | os.PathLike,
    *,
    software_versions: Mapping[str, str],
    block: StepBlock | None = None,
    buffers: FrameBuffers | None = None,
    slot: int = 0,
) -> PreparedFrame:
    """Everything of the frame of one raster step but the writing: arrays, statistics, headers, checksums.

    Arguments as :func:`generate_frame`; ``buffers``/``slot``: where the arrays are made
    (:func:`frame_arrays`), so the frame must be written before that slot is used again.
    """
    if not 0 <= step_index < results.n_steps:
        raise DoNotRetryError(f"raster step {step_index} is outside 0..{results.n_steps - 1}", step=STEP)
    out_path = Path(out_path)
    l1 = l1_frame_keys(l1_header)
    check_binning(l1, spatial_axes(l1, step_index), results.n_slit, results.binning, step_index)
    if block is None:
        block = StepBlock.read(results, step_index, 1)
    made = _frame_data(results, block, step_index, buffers, slot)
    arrays = [data for data, _ in made]
    depth = depth_axis(np.asarray(arrays[0][0].T, dtype=np.float64))
    layouts = hdu_layouts(results, l1, step_index, depth)
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23]

    parts: list[bytes | bytearray | np.ndarray] = []
    stats = []
    size = 0
    for layout, (data, data_stats) in zip(layouts, made):
        st = data_stats.min_max
        stats.append(st)
        nbytes = data.nbytes
        pad = -nbytes % BLOCK
        datasum = data_stats.datasum  # padding zeros add nothing
        structural = [("XTENSION", "IMAGE", "Image extension"), ("BITPIX", -32, ""), ("NAXIS", data.ndim, "")]
        structural += [(f"NAXIS{i}", n, "") for i, n in enumerate(reversed(data.shape), 1)]
        structural += [("PCOUNT", 0, ""), ("GCOUNT", 1, "")]
        header = _header_block(structural, hdu_cards(layout, st, date), str(datasum))
        _set_checksum(header, datasum)
        parts += [header, data] + ([bytes(pad)] if pad else [])
        size += len(header) + nbytes + pad

    inversion_id = str(ids["inversion_id"])
    structural = [("SIMPLE", True, "conforms to FITS standard"), ("BITPIX", 8, ""), ("NAXIS", 0, ""),
                  ("EXTEND", True, "")]
    n_primary = len(structural) + len(primary_cards(step_index, l1, ids, filename=out_path.name, framevol=0.0,
                                                    software_versions=software_versions))
    total = size + _header_blocks(n_primary)
    cards = primary_cards(step_index, l1, ids, filename=out_path.name, framevol=total / 1e6,
                          software_versions=software_versions)
    primary = _header_block(structural, cards, "0")
    _set_checksum(primary, 0)
    if len(primary) + size != total:  # a card formatted over two: the size is off, so is FRAMEVOL
        raise DoNotRetryError(f"L1 header of raster step {step_index} has cards that do not fit one FITS card",
                              step=STEP, details={"raster_step": step_index})
    info = FrameInfo(step_index, str(out_path), out_path.name, total, frame_file_id(inversion_id, step_index),
                     date, tuple(stats), depth, True)
    return PreparedFrame(out_path, [primary, *parts], info)


def generate_frame(
    step_index: int,
    results: ResultSet,
    l1_header: Mapping,
    ids: Mapping,
    out_path: str | os.PathLike,
    *,
    software_versions: Mapping[str, str],
    block: StepBlock | None = None,
) -> FrameInfo:
    """Write the L2 frame of one raster step (atomically) and describe it.

    ``block``: the result data of a batch of steps holding this one (read here when None).

    ``l1_header``: the L1 frame of the step in the fiducial arm (a header, or the dict of
    :func:`l1_frame_keys`). ``ids``: ``inversion_id`` (required; ``DSETID``), and when known
    ``proposal_id`` (``PROP_ID``), ``experiment_id`` (``EXPER_ID``), ``program_id`` =
    instrumentProgramExecutionId (``IP_ID``), ``observing_program_id`` (``OBSPR_ID``).
    ``software_versions``: name -> version, written as ``SWNAMEn`` / ``SWVERSn``. Bad L1
    headers raise ``DoNotRetryError``, I/O errors ``RetryError``.
    """
    return prepare_frame(step_index, results, l1_header, ids, out_path, software_versions=software_versions,
                         block=block).write()


# ----------------------------------------------------------------------------- checks


def inspect_frame(path: str | os.PathLike, results: ResultSet | None = None, *, step: int = -1) -> FrameInfo | None:
    """The description of a complete, checksum-valid L2 frame (of ``results``' layout) of ``step``; None otherwise."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=True) as hdul:
                primary = hdul[0].header
                if primary.get("LEVEL") != 2 or primary.get("PROCTYPE") != "L2" or primary.get("HEADVERS") != HEADVERS:
                    return None
                names = [hdu.header.get("EXTNAME") for hdu in hdul[1:]]
                if results is not None:
                    if names != expected_extnames(results):
                        return None
                    if [tuple(hdu.shape) for hdu in hdul[1:]] != expected_shapes(results):
                        return None
                elif names[: len(QUANTITIES)] != [q.extname for q in QUANTITIES]:
                    return None
                for hdu in hdul:
                    if hdu.verify_checksum() != 1:
                        return None
                    if hdu is not hdul[0] and (hdu.data is None or hdu.data.size == 0):
                        return None
                stats = tuple((h.header.get("DATAMIN"), h.header.get("DATAMAX")) for h in hdul[1:])
                q = hdul[1].header
                depth = LinearAxis(str(q.get("CTYPE1", "DEPTH")), str(q.get("CUNIT1", "")), float(q.get("CRPIX1", 1.0)),
                                   float(q.get("CRVAL1", 0.0)), float(q.get("CDELT1", 1.0)))
                date = str(hdul[1].header.get("DATE", ""))
                file_id = str(primary.get("FILE_ID", ""))
        if any(issubclass(w.category, (fits.verify.VerifyWarning, UserWarning)) for w in caught):
            return None
        path = Path(path)
        return FrameInfo(step, str(path), path.name, path.stat().st_size, file_id, date, stats, depth, False)
    except Exception:
        return None


def frame_is_valid(path: str | os.PathLike, results: ResultSet | None = None) -> bool:
    """True when ``path`` is a complete L2 frame: opens, every HDU checksum verifies, layout as expected."""
    return inspect_frame(path, results) is not None


# ----------------------------------------------------------------------------- all frames


def _runs(steps: Sequence[int], size: int) -> list[list[int]]:
    """``steps`` (ascending) cut into runs of consecutive steps, each at most ``size`` long."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and step == runs[-1][-1] + 1 and len(runs[-1]) < size:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def _steps_task(steps: Sequence[int], results: ResultSet, l1s: Sequence[dict], ids: Mapping, paths: Sequence[str],
                software_versions: Mapping[str, str], batch: int,
                buffers: FrameBuffers | None = None) -> list[FrameInfo]:
    """Keep the valid existing frames of ascending ``steps``, generate the others (runs in a pool worker).

    The steps to generate are read in batches of at most ``batch`` consecutive steps. Three
    things overlap, as numpy's copies, ``preadv`` and ``write`` release the GIL: a reader
    thread reads the next batch, this thread makes each frame (transposes, statistics,
    headers, checksums), a writer thread writes the frame before. Two slots of
    ``buffers`` (default: this thread's) hold the batches and frames in flight.
    """
    buffers = buffers if buffers is not None else thread_buffers()
    inversion_id = str(ids["inversion_id"])
    infos: dict[int, FrameInfo] = {}
    for step, path in zip(steps, paths):
        existing = inspect_frame(path, results, step=step)
        if existing is not None and existing.file_id == frame_file_id(inversion_id, step):
            infos[step] = existing
    todo = {step: (l1, path) for step, l1, path in zip(steps, l1s, paths) if step not in infos}
    runs = _runs(sorted(todo), batch)
    if not runs:
        return [infos[s] for s in steps]
    with ThreadPoolExecutor(1, thread_name_prefix="l2-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="l2-write") as writer:
        def read(n: int) -> Future:
            return reader.submit(StepBlock.read, results, runs[n][0], len(runs[n]), buffers=buffers, slot=n % 2)

        writes: list[Future] = []
        try:
            next_block = read(0)
            for n, run in enumerate(runs):
                block = next_block.result()
                if n + 1 < len(runs):  # the other slot's batch is made into frames: read the next one into it
                    next_block = read(n + 1)
                for step in run:
                    if len(writes) >= 2:
                        writes[-2].result()  # the frame of this slot is written: its arrays may be reused
                    l1, path = todo[step]
                    frame = prepare_frame(step, results, l1, ids, path, software_versions=software_versions,
                                          block=block, buffers=buffers, slot=len(writes) % 2)
                    writes.append(writer.submit(frame.write))
            for done in writes:
                info = done.result()
                infos[info.step] = info
        except BaseException:
            for pending in writes:
                pending.cancel()
            raise
    return [infos[s] for s in steps]


def _can_start_processes() -> bool:
    """Daemonic processes (Celery prefork children) may not start child processes."""
    return not multiprocessing.current_process().daemon


def frame_paths(results: ResultSet, l1_headers_by_step: Mapping[int, Mapping], ids: Mapping,
                out_dir: str | os.PathLike) -> dict[int, Path]:
    """Where each step's frame goes; refuses missing L1 headers and steps that would share a name."""
    missing = [s for s in range(results.n_steps) if s not in l1_headers_by_step]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise DoNotRetryError(f"no L1 header for raster step(s) {shown} of {results.n_steps}", step=STEP,
                              details={"missing_steps": missing})
    out = Path(out_dir)
    paths: dict[int, Path] = {}
    seen: dict[str, int] = {}
    for step in range(results.n_steps):
        name = frame_filename(l1_headers_by_step[step], ids)
        if name in seen:
            raise DoNotRetryError(f"raster steps {seen[name]} and {step} have the same DATE-BEG: their L2 files "
                                  f"would both be {name}", step=STEP, details={"steps": [seen[name], step]})
        seen[name] = step
        paths[step] = out / name
    return paths


def generate_all(
    results: ResultSet,
    l1_headers_by_step: Mapping[int, Mapping],
    ids: Mapping,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    software_versions: Mapping[str, str],
    progress_cb: Callable[[int, int], None] | None = None,
) -> list[FrameInfo]:
    """Generate every frame of ``results`` into ``out_dir``; frames already valid are kept.

    ``l1_headers_by_step``: step -> the fiducial arm's L1 frame (header or
    :func:`l1_frame_keys` dict). Runs over runs of steps in a process pool of ``workers``
    (default ``os.cpu_count()``); in a daemonic process, where a process pool cannot start, a
    thread pool is used instead. Each run reads ahead and writes behind (:func:`_steps_task`). ``progress_cb(done, total)`` is called in the calling process as
    frames finish. Returns one :class:`FrameInfo` per step, in step order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = frame_paths(results, l1_headers_by_step, ids, out)
    for stale in out.glob(f".*{TMP_SUFFIX}"):  # left by a killed writer
        stale.unlink(missing_ok=True)

    workers = max(1, workers or os.cpu_count() or 1)
    size = batch_size(results)
    n_batches = -(-results.n_steps // size)
    per_job = size * max(1, min(8, n_batches // (4 * workers)))  # batches read ahead within a job
    jobs = []
    for first in range(0, results.n_steps, per_job):
        steps = list(range(first, min(first + per_job, results.n_steps)))
        jobs.append((steps, results, [l1_frame_keys(l1_headers_by_step[s]) for s in steps], dict(ids),
                     [str(paths[s]) for s in steps], dict(software_versions), size))
    total = results.n_steps
    done = 0
    infos: dict[int, FrameInfo] = {}
    if workers == 1 or len(jobs) <= 1:
        buffers = FrameBuffers()  # this call's: released when it returns
        for job in jobs:
            for info in _steps_task(*job, buffers=buffers):
                infos[info.step] = info
            done += len(job[0])
            if progress_cb:
                progress_cb(done, total)
    else:
        n = min(workers, len(jobs))
        executor: Executor = ProcessPoolExecutor(max_workers=n) if _can_start_processes() \
            else ThreadPoolExecutor(max_workers=n)
        with executor:
            futures = {executor.submit(_steps_task, *job): job[0] for job in jobs}
            try:
                for future in as_completed(futures):
                    for info in future.result():
                        infos[info.step] = info
                    done += len(futures[future])
                    if progress_cb:
                        progress_cb(done, total)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return [infos[s] for s in sorted(infos)]
