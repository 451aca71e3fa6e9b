"""Level 2 file generation (DESIGN §9.1): one FITS file per raster step + one ASDF file.

Each L2 frame is::

    0      PrimaryHDU  no data; the step's L1 header (science keys) + L2 keys
    1..11  ImageHDU    one physical quantity (:data:`QUANTITIES`), numpy shape
                       (1, depth, slit), FITS axes 1 = slit, 2 = depth (log tau), 3 = raster
    12..   ImageHDU    per spectral line "<line> Original", "<line> Fit", numpy shape
                       (1, stokes, wavelength, slit), FITS axes 1 = slit, 2 = AWAV (nm),
                       3 = STOKES (1..4 = I, Q, U, V), 4 = raster

Image HDUs carry the helioprojective WCS of their L1 frame: the spatial axes are copied
from the step's L1 header (slit axis and the length-1 raster axis), so that pixel
(0, …, 0) of an image maps to the sky position of pixel (0, …, 0) of the L1 frame.
If the inversion binned the slit (fewer slit positions than the L1 frame), L2 pixel ``j``
maps to L1 slit pixel ``j * binning`` (0-based) and the PC column of the slit axis is scaled.
Cross terms between the L1 spectral and spatial axes are ignored (zero in DKIST L1).

Files are written with ``checksum=True`` to a temporary name and renamed into place, so a
killed writer never leaves a file that :func:`frame_is_valid` accepts. No ``fsync``: a file
lost in a power cut fails the check and is generated again.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asdf
import astropy.units as u
import numpy as np
from astropy.io import fits

from inversions.errors import DoNotRetryError, RetryError
from publishing.results import (
    INVERSION_QUANTITIES,
    STEP_AXIS,
    WAVELENGTH_AXIS,
    WAVELENGTH_UNIT,
    ResultSet,
    line_centre_nm,
)

STEP = "publish.generate"
TMP_SUFFIX = ".l2tmp"
PROFILE_BTYPE = "spect.line.profile;phys.polarization.stokes"


@dataclass(frozen=True)
class Quantity:
    """One physical-quantity HDU of an L2 frame and its conversion from the inversion code."""

    key: str  # key in results.INVERSION_QUANTITIES
    extname: str
    btype: str  # IVOA UCD1+
    bunit: str  # FITS unit string
    in_unit: u.UnitBase  # unit of the inversion code
    factor: float  # L2 value = input value * factor
    wrap_degrees: bool = False  # wrap to [0, 360)


def _quantity(key: str, extname: str, btype: str, bunit: str, *, wrap: bool = False) -> Quantity:
    in_unit = {q.key: q.unit for q in INVERSION_QUANTITIES}[key]
    out_unit = u.Unit(bunit, format="fits") if bunit else u.dimensionless_unscaled
    factor = float(f"{in_unit.to(out_unit):.15g}")  # 999.9999999999999 -> 1000.0
    return Quantity(key, extname, btype, bunit, in_unit, factor, wrap)


#: The 11 quantity HDUs, in file order (= order of ``inv_res_mod.fits``).
QUANTITIES: tuple[Quantity, ...] = (
    _quantity("log_tau", "Log of Optical Depth at 500nm", "phys.absorption.opticalDepth", ""),
    _quantity("temperature", "Temperature", "phys.temperature", "K"),
    _quantity("electron_pressure", "Electron Pressure", "phys.pressure;phys.electron", "N/m^2"),
    _quantity("microturbulence", "Microturbulence", "phys.veloc.microTurb", "km/s"),
    _quantity("field_strength", "Magnetic Field Strength", "phys.magField", "T"),
    _quantity("los_velocity", "Line-of-sight Velocity", "spect.dopplerVeloc", "km/s"),
    _quantity("inclination", "Magnetic Field Inclination (w.r.t. line-of-sight)",
              "pos.spherical.colat;phys.magField", "deg", wrap=True),
    _quantity("azimuth", "Magnetic Field Azimuth (w.r.t. line-of-sight)",
              "pos.spherical.azi;phys.magField", "deg", wrap=True),
    _quantity("geometric_height", "Geometric Height", "pos.bodyrc.alt", "km"),
    _quantity("gas_pressure", "Gas Pressure", "phys.pressure", "N/m^2"),
    _quantity("density", "Density", "phys.density", "kg/m^3"),
)
assert [q.key for q in QUANTITIES] == [q.key for q in INVERSION_QUANTITIES]


@dataclass(frozen=True)
class FrameInfo:
    """One L2 frame on disk."""

    step: int
    path: str
    filename: str
    size: int
    file_id: str
    header: dict  # primary header, scalar values only (for the dataset table)
    generated: bool  # False when an existing valid file was kept


# ----------------------------------------------------------------------------- names


def line_label(name: str) -> str:
    """``"Fe I (630.15 nm)"`` -> ``"Fe I 630.15"``."""
    label = re.sub(r"\s*\(\s*([0-9.]+)\s*nm\s*\)", r" \1", name).strip()
    return re.sub(r"\s+", " ", label)


def expected_extnames(results: ResultSet) -> list[str]:
    """EXTNAMEs of the image HDUs of every frame of ``results``, in order."""
    names = [q.extname for q in QUANTITIES]
    for line in results.spectral_lines:
        names += [f"{line_label(line)} Original", f"{line_label(line)} Fit"]
    return names


def frame_filename(step: int, l1_header: fits.Header, ids: Mapping) -> str:
    """``<INVERSION>_<DATE-BEG>_<STEP>_L2.fits``, upper case, ``[A-Z0-9_]`` only."""
    date = str(l1_header.get("DATE-BEG", "") or "")
    parts = [str(ids["inversion_id"]), date, f"{step:05d}", "L2"]
    stem = "_".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_").upper() + ".fits"


def frame_file_id(inversion_id: str, step: int) -> str:
    """Stable FILE_ID: the same frame gets the same id when it is generated again."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"dkist-l2:{inversion_id}:{step}").hex


# ----------------------------------------------------------------------------- headers

_DROP_EXACT = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER", "EXTLEVEL",
    "BSCALE", "BZERO", "BLANK", "BUNIT", "BTYPE", "CHECKSUM", "DATASUM", "END",
    # identity of the L1 file, replaced by L2 values
    "DSETID", "FILE_ID", "FILENAME", "FRAMEVOL", "PROCTYPE", "LEVEL", "DATE",
    # spectral lines of one arm; the L2 frame lists the lines of the inversion
    "NSPECLNS",
}
_DROP_PATTERNS = re.compile(
    r"^(?:"
    r"NAXIS\d+"
    r"|Z(?:IMAGE|SIMPLE|BITPIX|NAXIS\d*|TILE\d+|CMPTYPE|NAME\d+|VAL\d+|QUANTIZ|DITHER0|EXTEND|BLOCKED|TENSION"
    r"|PCOUNT|GCOUNT|HECKSUM|DATASUM)"  # tile compression
    r"|DATA(?:MIN|MAX|MEAN|MEDN|RMS|KURT|SKEW|P\d\d)"  # statistics of the L1 array
    r"|WCSAXES[A-Z]?|WCSNAME[A-Z]?|LONPOLE[A-Z]?|LATPOLE[A-Z]?"  # WCS of the L1 array: in each image HDU
    r"|(?:CTYPE|CUNIT|CRPIX|CRVAL|CDELT|CROTA|CNAME|CRDER|CSYER)\d+[A-Z]?"
    r"|(?:PC|CD|PV|PS)\d+_\d+[A-Z]?"
    r"|DNAXIS\d*|DTYPE\d+|DPNAME\d+|DWNAME\d+|DUNIT\d+|DINDEX\d+|DAAXES|DEAXES"  # L1 dataset axes
    r"|SPECLN\d+"
    r")$"
)
#: keys copied into each image HDU so its WCS stands alone (time and observer)
_WCS_CONTEXT_KEYS = ("DATE-BEG", "DATE-AVG", "TIMESYS", "RSUN_REF", "DSUN_OBS", "HGLN_OBS", "HGLT_OBS", "SPECSYS")


def _keep_l1_key(keyword: str) -> bool:
    return keyword not in _DROP_EXACT and not _DROP_PATTERNS.match(keyword)


def primary_header(
    step: int,
    l1_header: fits.Header,
    ids: Mapping,
    *,
    software_versions: Mapping[str, str],
    spectral_lines: Sequence[str],
    filename: str,
) -> fits.Header:
    """Primary header of an L2 frame: science keys of the L1 header + the L2 keys."""
    header = fits.Header([card for card in l1_header.cards if _keep_l1_key(card.keyword)])
    inversion_id = str(ids["inversion_id"])
    l2 = [
        ("LEVEL", 2, "Processing level"),
        ("PROCTYPE", "L2", "Degree of processing of the frame"),
        ("DSETID", inversion_id, "Inversion id (L2 dataset)"),
        ("FILE_ID", frame_file_id(inversion_id, step), "Unique id of this file"),
        ("FILENAME", filename, "File name"),  # short: long names must not truncate the comment
        ("STEPIDX", step, "Raster step of this frame (0-based)"),
        ("DATE", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "File creation time (UTC)"),
    ]
    if "DSETID" in l1_header:
        l2.append(("L1DSETID", str(l1_header["DSETID"]), "L1 dataset of the source frame"))
    if "FILE_ID" in l1_header:
        l2.append(("L1FILEID", str(l1_header["FILE_ID"]), "L1 file this frame comes from"))
    for key, id_key, comment in (
        ("PROP_ID", "proposal_id", "Proposal"),
        ("EXPER_ID", "experiment_id", "Experiment"),
        ("OBSPR_ID", "observing_program_id", "Observing program execution"),
        ("IP_ID", "program_id", "Instrument program execution"),
    ):
        if ids.get(id_key):
            l2.append((key, str(ids[id_key]), comment))
    if ids.get("dataset_ids"):
        l2.append(("L1DSETS", ",".join(map(str, ids["dataset_ids"])), "L1 datasets used by the inversion"))
    l2.append(("NSPECLNS", len(spectral_lines), "Number of spectral lines"))
    l2 += [(f"SPECLN{i:02d}", name, "Spectral line") for i, name in enumerate(spectral_lines, 1)]
    for i, (name, version) in enumerate(software_versions.items(), 1):
        l2.append((f"SWNAME{i}", str(name), "Software"))
        l2.append((f"SWVERS{i}", str(version), f"Version of {name}"))
    for key, value, comment in l2:
        header[key] = (value, comment)
    return header


# ----------------------------------------------------------------------------- WCS


def _axis_length(h: fits.Header, i: int) -> int | None:
    for key in (f"ZNAXIS{i}", f"NAXIS{i}") if h.get("ZIMAGE") else (f"NAXIS{i}",):
        if key in h:
            return int(h[key])
    return None


@dataclass(frozen=True)
class _SpatialAxes:
    slit: int  # 1-based FITS axis of the L1 frame along the slit
    raster: int  # 1-based FITS axis of the L1 frame across the slit (length 1)
    slit_length: int | None


def _spatial_axes(h: fits.Header, step: int) -> _SpatialAxes:
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
        return _SpatialAxes(long_axes[0], one_axes[0], lengths[long_axes[0]])
    if f"DINDEX{lon}" in h and f"DINDEX{lat}" not in h:
        return _SpatialAxes(lat, lon, lengths[lat])
    if f"DINDEX{lat}" in h and f"DINDEX{lon}" not in h:
        return _SpatialAxes(lon, lat, lengths[lon])
    raise DoNotRetryError(
        f"L1 header of raster step {step}: cannot tell the slit axis from the raster axis "
        f"(HPLN axis {lon} length {lengths[lon]}, HPLT axis {lat} length {lengths[lat]})",
        step=STEP, details={"raster_step": step})


def _alternates(h: fits.Header, axes: _SpatialAxes) -> list[str]:
    return [alt for alt in ("", "A") if f"CTYPE{axes.slit}{alt}" in h and f"CTYPE{axes.raster}{alt}" in h]


@dataclass(frozen=True)
class _LinearAxis:
    ctype: str
    cunit: str
    crpix: float
    crval: float
    cdelt: float


def _wcs_cards(
    h: fits.Header, axes: _SpatialAxes, n_slit: int, others: Sequence[_LinearAxis], *, alternates: Sequence[str]
) -> list[tuple]:
    """WCS cards for an image whose FITS axes are (slit, *others, raster)."""
    n_axes = len(others) + 2
    new_slit, new_raster = 1, n_axes
    binning = (axes.slit_length / n_slit) if axes.slit_length else 1.0
    cards: list[tuple] = []
    for alt in alternates:
        cards.append((f"WCSAXES{alt}", n_axes, "Number of WCS axes"))
        if f"WCSNAME{alt}" in h:
            cards.append((f"WCSNAME{alt}", h[f"WCSNAME{alt}"]))
        spatial = ((new_slit, axes.slit), (new_raster, axes.raster))
        for new, old in spatial:
            cards.append((f"CTYPE{new}{alt}", h[f"CTYPE{old}{alt}"]))
            cards.append((f"CUNIT{new}{alt}", h.get(f"CUNIT{old}{alt}", "deg")))
            crpix = float(h.get(f"CRPIX{old}{alt}", 1.0))
            if old == axes.slit:
                crpix = (crpix - 1.0) / binning + 1.0
            cards.append((f"CRPIX{new}{alt}", crpix))
            cards.append((f"CRVAL{new}{alt}", float(h.get(f"CRVAL{old}{alt}", 0.0))))
            cards.append((f"CDELT{new}{alt}", float(h.get(f"CDELT{old}{alt}", 1.0))))
        for k, axis in enumerate(others, start=2):
            cards += [
                (f"CTYPE{k}{alt}", axis.ctype),
                (f"CUNIT{k}{alt}", axis.cunit),
                (f"CRPIX{k}{alt}", axis.crpix),
                (f"CRVAL{k}{alt}", axis.crval),
                (f"CDELT{k}{alt}", axis.cdelt),
            ]
        for i_new, i_old in spatial:
            for j_new, j_old in spatial:
                pc = float(h.get(f"PC{i_old}_{j_old}{alt}", 1.0 if i_old == j_old else 0.0))
                if j_old == axes.slit:
                    pc *= binning
                cards.append((f"PC{i_new}_{j_new}{alt}", pc))
        for key in (f"LONPOLE{alt}", f"LATPOLE{alt}"):
            if key in h:
                cards.append((key, h[key]))
    cards += [(key, h[key]) for key in _WCS_CONTEXT_KEYS if key in h]
    return cards


def _depth_axis(log_tau: np.ndarray) -> _LinearAxis:
    """Log tau axis when the grid is the same for every slit position and evenly spaced."""
    grid = np.asarray(log_tau[:, 0], dtype=np.float64)
    if grid.size > 1 and np.all(np.isfinite(grid)):
        step = np.diff(grid)
        if (np.allclose(log_tau, grid[:, None], rtol=0, atol=1e-4)
                and np.allclose(step, step.mean(), rtol=1e-3, atol=1e-6) and step.mean() != 0):
            return _LinearAxis("LOGTAU", "", 1.0, float(grid[0]), float(step.mean()))
    return _LinearAxis("DEPTH", "", 1.0, 0.0, 1.0)  # depth index


_MA_TO_NM = float(WAVELENGTH_UNIT.to(u.nm))


def _wavelength_axis(results: ResultSet, line: int, l1_header: fits.Header) -> _LinearAxis:
    start, stop = results.line_slices[line]
    name = results.spectral_lines[line]
    centre = line_centre_nm(name)
    if centre is None and len(results.spectral_lines) == 1 and "LINEWAV" in l1_header:
        centre = float(l1_header["LINEWAV"])
    ctype = "AWAV" if centre is not None else "WAVEOFF"  # offset from an unknown centre
    if results.wavelength_offsets is not None:
        nm = np.asarray(results.wavelength_offsets[start:stop]) * _MA_TO_NM
        delta = float(np.mean(np.diff(nm))) if nm.size > 1 else 1.0
        return _LinearAxis(ctype, "nm", 1.0, float((centre or 0.0) + nm[0]), delta)
    delta = 1.0
    for i in range(1, 4):
        if str(l1_header.get(f"CTYPE{i}", "")).upper() in ("AWAV", "WAVE"):
            delta = float(l1_header.get(f"CDELT{i}", 1.0))
    return _LinearAxis(ctype, "nm", (stop - start + 1) / 2, float(centre or 0.0), delta)


_STOKES_AXIS = _LinearAxis("STOKES", "", 1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- data


_cache_lock = threading.Lock()
_open_results: dict[str, tuple[tuple, fits.HDUList, np.ndarray]] = {}


def _primary_data(path: str) -> np.ndarray:
    """Memory-mapped primary array of a result file, kept open per process."""
    st = os.stat(path)
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _cache_lock:
        hit = _open_results.get(path)
        if hit and hit[0] == key:
            return hit[2]
        if hit:
            hit[1].close()
        hdul = fits.open(path, memmap=True)
        data = hdul[0].data
        _open_results[path] = (key, hdul, data)
        return data


def close_result_files() -> None:
    """Close the result files this process keeps open."""
    with _cache_lock:
        for _, hdul, _ in _open_results.values():
            hdul.close()
        _open_results.clear()


def _min_max(data: np.ndarray) -> list[tuple]:
    lo = float(np.fmin.reduce(data, axis=None))
    hi = float(np.fmax.reduce(data, axis=None))
    cards = []
    if math.isfinite(lo):
        cards.append(("DATAMIN", lo, "Minimum data value"))
    if math.isfinite(hi):
        cards.append(("DATAMAX", hi, "Maximum data value"))
    return cards


def _convert(plane: np.ndarray, quantity: Quantity) -> np.ndarray:
    if quantity.factor == 1.0:
        out = np.array(plane, dtype=np.float32)  # contiguous copy, byte order as stored
    else:
        out = np.multiply(plane, quantity.factor, dtype=np.float32)
    if quantity.wrap_degrees:
        out = np.mod(out, np.float32(360.0), dtype=np.float32)
        out[out >= 360.0] = 0.0  # -1e-9 % 360 rounds to 360 in float32
    return out


@functools.lru_cache(maxsize=8192)
def _card(*card) -> fits.Card:
    """A card with its 80-character image formatted once; most cards repeat frame after frame."""
    out = fits.Card(*card)
    _ = out.image
    return out


def _cards(cards: Sequence[tuple]) -> list[fits.Card]:
    return [_card(*card) for card in cards]


def _describe(btype: str, bunit: str) -> list[fits.Card]:
    return _cards([("BTYPE", btype, "IVOA UCD1+"), ("BUNIT", bunit, "Unit of the data values")])


#: constant cards of the quantity HDUs (copied into each HDU)
_QUANTITY_CARDS = [_describe(q.btype, q.bunit) for q in QUANTITIES]


def _image_hdu(data: np.ndarray, extname: str, describe: Sequence[fits.Card],
               wcs: Sequence[fits.Card]) -> fits.ImageHDU:
    """Image HDU from prepared, already formatted cards.

    The cards are shared between HDUs (astropy only adds its own cards when writing and
    never changes these); the HDUs live only inside ``generate_frame``.
    """
    hdu = fits.ImageHDU(data)  # not name=: astropy would upper-case the EXTNAME
    header = hdu.header
    for card in (fits.Card("EXTNAME", extname, "Name of the HDU"), *describe,
                 *(fits.Card(*card) for card in _min_max(data)), *wcs):
        header.append(card, end=True)
    return hdu


def generate_frame(
    step_index: int,
    results: ResultSet,
    l1_header: fits.Header,
    ids: Mapping,
    out_path: str | os.PathLike,
    *,
    software_versions: Mapping[str, str],
) -> FrameInfo:
    """Write the L2 frame of one raster step (atomically) and describe it.

    ``ids``: ``inversion_id`` (required; becomes ``DSETID``), and when known
    ``proposal_id`` (``PROP_ID``), ``experiment_id`` (``EXPER_ID``), ``program_id`` =
    instrumentProgramExecutionId (``IP_ID``), ``observing_program_id`` (``OBSPR_ID``),
    ``dataset_ids`` (``L1DSETS``). ``software_versions``: name -> version, written as
    ``SWNAMEn`` / ``SWVERSn``. Bad L1 headers raise ``DoNotRetryError``, I/O errors ``RetryError``.
    """
    if not 0 <= step_index < results.n_steps:
        raise DoNotRetryError(f"raster step {step_index} is outside 0..{results.n_steps - 1}", step=STEP)
    out_path = Path(out_path)
    axes = _spatial_axes(l1_header, step_index)
    alternates = _alternates(l1_header, axes)

    mod = _primary_data(results.paths["mod"])
    pre = _primary_data(results.paths["pre"])
    ori = _primary_data(results.paths["ori"])
    if mod.shape != results.mod_shape or pre.shape != results.profile_shape or ori.shape != results.profile_shape:
        raise DoNotRetryError("result files changed since they were checked: shapes "
                              f"{mod.shape}, {pre.shape}, {ori.shape} instead of {results.mod_shape}, "
                              f"{results.profile_shape}", step=STEP)
    frame = np.asarray(np.take(mod, step_index, axis=STEP_AXIS))  # [quantity, depth, slit], in memory

    hdus: list[fits.hdu.base.ExtensionHDU] = []
    log_tau = np.asarray(frame[0], dtype=np.float64)
    quantity_wcs = _cards(_wcs_cards(l1_header, axes, results.n_slit, [_depth_axis(log_tau)],
                                     alternates=alternates))
    for i, quantity in enumerate(QUANTITIES):
        data = _convert(frame[i], quantity)[np.newaxis]
        hdus.append(_image_hdu(data, quantity.extname, _QUANTITY_CARDS[i], quantity_wcs))

    for line, (start, stop) in enumerate(results.line_slices):
        name = results.spectral_lines[line]
        wcs = _cards(_wcs_cards(l1_header, axes, results.n_slit,
                                [_wavelength_axis(results, line, l1_header), _STOKES_AXIS], alternates=alternates))
        for kind, cube in (("Original", ori), ("Fit", pre)):
            index: list = [slice(None)] * 4
            index[STEP_AXIS] = step_index
            index[WAVELENGTH_AXIS] = slice(start, stop)
            data = np.ascontiguousarray(cube[tuple(index)])[np.newaxis]  # (1, stokes, wave, slit)
            describe = _describe(PROFILE_BTYPE, "") + _cards(
                [("LINENAME", name, "Spectral line"), ("PROFTYPE", kind, "Original (observed) or Fit")])
            hdus.append(_image_hdu(data, f"{line_label(name)} {kind}", describe, wcs))

    header = primary_header(step_index, l1_header, ids, software_versions=software_versions,
                            spectral_lines=results.spectral_lines, filename=out_path.name)
    primary = fits.PrimaryHDU(header=header)
    try:  # the lifted L1 cards: fix what is fixable, refuse the rest; image HDUs hold only our own cards
        primary.verify("silentfix+exception")
    except fits.verify.VerifyError as exc:
        raise DoNotRetryError(f"L1 header of raster step {step_index} has cards that are not FITS standard: {exc}",
                              step=STEP, details={"raster_step": step_index}) from exc
    hdul = fits.HDUList([primary, *hdus])
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        hdul.writeto(tmp, checksum=True, output_verify="ignore")
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RetryError(f"could not write L2 frame {out_path.name}: {exc}", step=STEP,
                         details={"raster_step": step_index, "path": str(out_path)}) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FrameInfo(step_index, str(out_path), out_path.name, out_path.stat().st_size,
                     str(header["FILE_ID"]), _header_dict(hdul[0].header), True)


def _header_dict(header: fits.Header) -> dict:
    out = {}
    for card in header.cards:
        key = card.keyword
        if not key or key in ("COMMENT", "HISTORY") or key in out:
            continue
        value = card.value
        out[key] = value if isinstance(value, (bool, int, float, str)) else None
    return out


# ----------------------------------------------------------------------------- checks


def _inspect_frame(path: str | os.PathLike, expected: Sequence[str] | None) -> fits.Header | None:
    """The primary header of a complete, checksum-valid L2 frame; None otherwise."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=True) as hdul:
                primary = hdul[0].header
                if primary.get("LEVEL") != 2 or primary.get("PROCTYPE") != "L2":
                    return None
                names = [hdu.header.get("EXTNAME") for hdu in hdul[1:]]
                if expected is not None:
                    if names != list(expected):
                        return None
                elif (names[: len(QUANTITIES)] != [q.extname for q in QUANTITIES]
                      or len(names) < len(QUANTITIES) + 2 or (len(names) - len(QUANTITIES)) % 2):
                    return None
                for hdu in hdul:
                    if hdu.verify_checksum() != 1:
                        return None
                    if hdu is not hdul[0] and (hdu.data is None or hdu.data.size == 0):
                        return None
                header = primary.copy()
        if any(issubclass(w.category, (fits.verify.VerifyWarning, UserWarning)) for w in caught):
            return None
        return header
    except Exception:
        return None


def frame_is_valid(path: str | os.PathLike, expected_extnames: Sequence[str] | None = None) -> bool:
    """True when ``path`` is a complete L2 frame: opens, every HDU checksum verifies, HDUs as expected."""
    return _inspect_frame(path, expected_extnames) is not None


# ----------------------------------------------------------------------------- all frames


def _frame_task(step: int, results: ResultSet, header_text: str, ids: Mapping, path: str,
                software_versions: Mapping[str, str], expected: Sequence[str]) -> FrameInfo:
    """Keep a valid existing frame, otherwise generate it (runs in a pool worker)."""
    existing = _inspect_frame(path, expected)
    if existing is not None:
        return FrameInfo(step, path, Path(path).name, os.path.getsize(path), str(existing.get("FILE_ID", "")),
                         _header_dict(existing), False)
    l1_header = fits.Header.fromstring(header_text)
    return generate_frame(step, results, l1_header, ids, path, software_versions=software_versions)


def _can_start_processes() -> bool:
    """Daemonic processes (Celery prefork children) may not start child processes."""
    return not multiprocessing.current_process().daemon


def generate_all(
    results: ResultSet,
    l1_headers_by_step: Mapping[int, fits.Header],
    ids: Mapping,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    software_versions: Mapping[str, str],
    progress_cb: Callable[[int, int], None] | None = None,
) -> list[FrameInfo]:
    """Generate every frame of ``results`` into ``out_dir``; frames already valid are kept.

    Runs over frames in a process pool of ``workers`` (default ``os.cpu_count()``); in a
    daemonic process, where a process pool cannot start, a thread pool is used instead.
    ``progress_cb(done, total)`` is called in the calling process as frames finish.
    Returns one :class:`FrameInfo` per step, in step order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [s for s in range(results.n_steps) if s not in l1_headers_by_step]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise DoNotRetryError(f"no L1 header for raster step(s) {shown} of {results.n_steps}", step=STEP,
                              details={"missing_steps": missing})
    for stale in out.glob(f".*{TMP_SUFFIX}"):  # left by a killed writer
        stale.unlink(missing_ok=True)

    expected = expected_extnames(results)
    jobs = []
    for step in range(results.n_steps):
        header = l1_headers_by_step[step]
        path = str(out / frame_filename(step, header, ids))
        jobs.append((step, results, header.tostring(), dict(ids), path, dict(software_versions), expected))

    total = len(jobs)
    done = 0
    infos: dict[int, FrameInfo] = {}
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or total <= 1:
        try:
            for job in jobs:
                infos[job[0]] = _frame_task(*job)
                done += 1
                if progress_cb:
                    progress_cb(done, total)
        finally:
            close_result_files()
    else:
        n = min(workers, total)
        executor: Executor = ProcessPoolExecutor(max_workers=n) if _can_start_processes() \
            else ThreadPoolExecutor(max_workers=n)
        with executor:
            futures = {executor.submit(_frame_task, *job): job[0] for job in jobs}
            try:
                for future in as_completed(futures):
                    info = future.result()
                    infos[info.step] = info
                    done += 1
                    if progress_cb:
                        progress_cb(done, total)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        if isinstance(executor, ThreadPoolExecutor):
            close_result_files()
    return [infos[s] for s in sorted(infos)]


# ----------------------------------------------------------------------------- dataset file

INVENTORY_KEYS = ("inversionId", "primaryProposalId", "instrumentProgramExecutionId", "datasetIds", "spectralLines")


def write_dataset_metadata(frames: Sequence[FrameInfo], inventory: Mapping, out_path: str | os.PathLike) -> Path:
    """Write the dataset-level ASDF file: inventory, files and the table of primary headers.

    ``inventory`` uses the metadata store's names (``inversionId``, ``primaryProposalId``,
    ``instrumentProgramExecutionId``, ``datasetIds``, ``spectralLines`` …); ``frameCount``
    is set from ``frames``. The header table is stored as columns: one list per key, one
    entry per file (``None`` where a file lacks the key).
    """
    missing = [k for k in INVENTORY_KEYS if k not in inventory]
    if missing:
        raise ValueError(f"inventory lacks {', '.join(missing)}")
    if "frameCount" in inventory and int(inventory["frameCount"]) != len(frames):
        raise DoNotRetryError(f"inventory says {inventory['frameCount']} frames, {len(frames)} were generated",
                              step="publish.metadata")
    frames = sorted(frames, key=lambda f: f.step)
    keys: dict[str, None] = {}
    for frame in frames:
        keys.update(dict.fromkeys(frame.header))
    tree = {
        "inventory": {**{k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in inventory.items()},
                      "frameCount": len(frames)},
        "files": {
            "filenames": [f.filename for f in frames],
            "steps": [f.step for f in frames],
            "sizes": [f.size for f in frames],
            "file_ids": [f.file_id for f in frames],
        },
        "quantities": [{"extname": q.extname, "btype": q.btype, "bunit": q.bunit} for q in QUANTITIES],
        "headers": {"keys": list(keys), "columns": {k: [f.header.get(k) for f in frames] for k in keys}},
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        asdf.AsdfFile(tree).write_to(tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def dataset_metadata_filename(inversion_id: str) -> str:
    """Name of the dataset-level ASDF file of an inversion."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{inversion_id}_L2_metadata").upper() + ".asdf"
