"""Result intake: the three FITS files of the inversion code (DESIGN §8).

Files and layout (numpy axis order, i.e. FITS ``NAXIS`` order reversed):

=====================  ==========================================  ==============================
file                   primary data                                extensions
=====================  ==========================================  ==============================
``inv_res_mod.fits``   ``[quantity, depth, step, slit]``           none
``inv_res_pre.fits``   ``[stokes, wavelength, step, slit]`` (fit)  1: wavelength offsets (mÅ),
``per_ori.fits``       same shape (original, observed profiles)    2: spectral-line id per point
=====================  ==========================================  ==============================

Axis naming. DESIGN writes the shapes as ``[quantity, depth, y, x]`` and
``[stokes, wavelength, y, x]``. Here ``y`` (numpy axis 2, FITS ``NAXIS2``) is the **raster
step** (one L1 frame, one L2 file) and ``x`` (numpy axis 3, FITS ``NAXIS1``) is the
position **along the slit**. This is the layout the DKIST/NSO Level 2 code reads
(``DataCube [Quantity, Depth, FrameY, SlitX]``, frames split on the third axis).
It is fixed in :data:`STEP_AXIS` / :data:`SLIT_AXIS`; nothing else hard-codes it.

The wavelength axis of the profile files holds the spectral lines one after the other, one
run per ViSP arm, in any order. BLANCA writes two extensions that say where each line is:
extension 1, the wavelength offsets from the line centre in mÅ, and extension 2, one
integer line id per wavelength point. The ids name the line by value (:data:`BLANCA_LINES`:
23 = Fe I 630.15, 9 = Na I D2 589.0, 4 = Ca II 854.21), not by position; an id we do not
know is refused, naming it. An arm whose dataset lists two lines (a ViSP Fe arm lists
"Fe I (630.15 nm)" and "Fe I (630.25 nm)") is still one profile, named after its id.

``inv_res_pre.fits``' primary header also names the *fiducial arm* (``DESR-FID``: the
``VSPARMID`` of the L1 dataset whose headers give the spatial WCS) and the slit binning
(``DESR-BIN``: L2 slit position ``j`` is L1 slit pixel ``j * binning``). Both are read as
written, never inferred from array lengths. The inversion may drop an incomplete last raster
step: results with one raster step fewer than the L1 datasets are accepted.

The order and input units of the physical quantities are in :data:`INVERSION_QUANTITIES`.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits

from inversions.errors import DoNotRetryError

MOD_FILE = "inv_res_mod.fits"
PRE_FILE = "inv_res_pre.fits"
ORI_FILE = "per_ori.fits"
#: role -> file name
RESULT_FILES: dict[str, str] = {"mod": MOD_FILE, "pre": PRE_FILE, "ori": ORI_FILE}

#: numpy axes of the primary arrays of all three files
QUANTITY_AXIS = 0  # mod only
STOKES_AXIS = 0  # pre / ori only
DEPTH_AXIS = 1  # mod only
WAVELENGTH_AXIS = 1  # pre / ori only
STEP_AXIS = 2  # "y": raster step = L1 frame = L2 file
SLIT_AXIS = 3  # "x": position along the slit

N_STOKES = 4  # I, Q, U, V


@dataclass(frozen=True)
class InputQuantity:
    """One plane of ``inv_res_mod.fits`` as the inversion code writes it."""

    key: str
    name: str
    unit: u.UnitBase  # unit of the inversion code (cgs)


#: Planes of ``inv_res_mod.fits`` along the quantity axis, in file order, with the units the
#: inversion code writes (cgs, except geometric height: km, as the data center's L2 product
#: takes it and writes it unconverted); inclination and azimuth are in degrees, azimuth may be
#: negative.
INVERSION_QUANTITIES: tuple[InputQuantity, ...] = (
    InputQuantity("log_tau", "Log of optical depth at 500 nm", u.dimensionless_unscaled),
    InputQuantity("temperature", "Temperature", u.K),
    InputQuantity("electron_pressure", "Electron pressure", u.dyn / u.cm**2),
    InputQuantity("microturbulence", "Microturbulence", u.cm / u.s),
    InputQuantity("field_strength", "Magnetic field strength", u.G),
    InputQuantity("los_velocity", "Line-of-sight velocity", u.cm / u.s),
    InputQuantity("inclination", "Magnetic field inclination w.r.t. line of sight", u.deg),
    InputQuantity("azimuth", "Magnetic field azimuth w.r.t. line of sight", u.deg),
    InputQuantity("geometric_height", "Geometric height", u.km),
    InputQuantity("gas_pressure", "Gas pressure", u.dyn / u.cm**2),
    InputQuantity("density", "Density", u.g / u.cm**3),
)
N_QUANTITIES = len(INVERSION_QUANTITIES)

WAVELENGTH_UNIT = u.mAngstrom  # unit of the wavelength-offset extension
FIDUCIAL_KEY = "DESR-FID"  # inv_res_pre.fits: VSPARMID of the fiducial arm
BINNING_KEY = "DESR-BIN"  # inv_res_pre.fits: slit binning of the inversion


@dataclass(frozen=True)
class SpectralLine:
    """A spectral line BLANCA inverts, and how the data center's L2 product names it."""

    line_id: int  # BLANCA's id in extension 2 of the profile files
    key: str  # profile key of the dkist reader ("FeI630" -> FeI630_orig / FeI630_fit)
    name: str  # the metadata store's name
    label: str  # EXTNAME prefix: "<label> Profile Original"
    centre_nm: float  # air wavelength of the line centre


#: BLANCA line id -> line. The ids are BLANCA's; the keys and labels the reference product's.
BLANCA_LINES: dict[int, SpectralLine] = {
    23: SpectralLine(23, "FeI630", "Fe I (630.15 nm)", "Fe I", 630.15012),
    9: SpectralLine(9, "NaID", "Na I D2 (589.0 nm)", "Na I", 588.995),
    4: SpectralLine(4, "CaII854", "Ca II (854.21 nm)", "Ca II", 854.2091),
}


@dataclass(frozen=True)
class ProfileLine:
    """One spectral line of the profile files: which line, and where on the wavelength axis."""

    line: SpectralLine
    start: int  # [start, stop) on the wavelength axis of the profile files
    stop: int
    offsets_ma: tuple[float, ...]  # wavelength offsets from the line centre, mÅ

    @property
    def wavelengths_nm(self) -> np.ndarray:
        return self.line.centre_nm + np.asarray(self.offsets_ma, dtype=np.float64) * _MA_TO_NM


_MA_TO_NM = float(WAVELENGTH_UNIT.to(u.nm))


@dataclass(frozen=True)
class ResultSet:
    """A checked set of inversion result files. Plain data: safe to pickle to workers."""

    paths: dict[str, str]  # role ("mod", "pre", "ori") -> absolute path
    n_steps: int
    n_slit: int
    n_depth: int
    n_wave: int
    n_stokes: int
    mod_shape: tuple[int, ...]
    profile_shape: tuple[int, ...]
    lines: tuple[ProfileLine, ...]  # in wavelength order
    fiducial_arm: str  # DESR-FID: VSPARMID of the L1 dataset that gives the spatial WCS
    binning: int  # DESR-BIN: L2 slit position j = L1 slit pixel j * binning
    sha256: dict[str, str] = field(default_factory=dict)  # role -> hex digest
    sizes: dict[str, int] = field(default_factory=dict)  # role -> bytes

    @property
    def spectral_lines(self) -> tuple[str, ...]:
        """The lines' metadata-store names, in wavelength order."""
        return tuple(p.line.name for p in self.lines)

    @property
    def line_slices(self) -> tuple[tuple[int, int], ...]:
        return tuple((p.start, p.stop) for p in self.lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (for manifests and history details)."""
        return {
            "files": {RESULT_FILES[r]: {"path": p, "sha256": self.sha256.get(r), "size": self.sizes.get(r)}
                      for r, p in self.paths.items()},
            "n_steps": self.n_steps,
            "n_slit": self.n_slit,
            "n_depth": self.n_depth,
            "n_wave": self.n_wave,
            "mod_shape": list(self.mod_shape),
            "profile_shape": list(self.profile_shape),
            "spectral_lines": list(self.spectral_lines),
            "line_ids": [p.line.line_id for p in self.lines],
            "line_slices": [list(s) for s in self.line_slices],
            "fiducial_arm": self.fiducial_arm,
            "binning": self.binning,
        }


# ----------------------------------------------------------------------------- validation


def _refuse(message: str, **details) -> DoNotRetryError:
    return DoNotRetryError(message, step="results", details=details)


def _resolve_paths(folder_or_paths: str | os.PathLike | Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    """Role -> path, from a folder or a mapping keyed by role or by file name."""
    if isinstance(folder_or_paths, Mapping):
        by_role: dict[str, Path] = {}
        for key, value in folder_or_paths.items():
            role = key if key in RESULT_FILES else {v: k for k, v in RESULT_FILES.items()}.get(key)
            if role is None:
                raise _refuse(f"unknown result file {key!r}; expected {', '.join(RESULT_FILES.values())}")
            by_role[role] = Path(value)
        missing = [RESULT_FILES[r] for r in RESULT_FILES if r not in by_role]
        if missing:
            raise _refuse(f"missing result file(s): {', '.join(missing)}", missing=missing)
        return by_role
    folder = Path(folder_or_paths)
    return {role: folder / name for role, name in RESULT_FILES.items()}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal consecutive values."""
    if ids.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 0) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [ids.size]))
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


@dataclass(frozen=True)
class _Structure:
    shape: tuple[int, ...]
    offsets: np.ndarray | None = None  # extension 1 of a profile file
    ids: np.ndarray | None = None  # extension 2 of a profile file
    header: fits.Header | None = None  # primary header


def _read_structure(role: str, path: Path) -> _Structure:
    """Shape of the primary array (+ wavelength offsets, line ids and header for profile files)."""
    name = RESULT_FILES[role]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=True, lazy_load_hdus=False)
        with hdul:
            truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
            if truncated:
                raise _refuse(f"{name} is truncated: {truncated[0]}", file=name)
            primary = hdul[0]
            bitpix = primary.header.get("BITPIX")
            shape = tuple(int(n) for n in (primary.shape or ()))
            if not shape:
                raise _refuse(f"{name} has no data in its primary HDU", file=name)
            if bitpix not in (-32, -64):
                raise _refuse(f"{name} holds BITPIX={bitpix} data; the inversion code writes floating point "
                              "(BITPIX -32 or -64)", file=name, bitpix=bitpix)
            # touch the last element: a truncated file fails here, not later in a worker
            _ = primary.data[(-1,) * len(shape)] if all(shape) else None
            if role == "mod":
                return _Structure(shape)
            if len(hdul) < 3:
                raise _refuse(f"{name} has {len(hdul) - 1} extension(s); the inversion code writes two: "
                              "1 = wavelength offsets (mÅ), 2 = line id per wavelength", file=name)
            offsets = np.asarray(hdul[1].data, dtype=np.float64).ravel()
            ids = np.asarray(hdul[2].data).ravel()
            return _Structure(shape, offsets, ids, primary.header.copy())
    except DoNotRetryError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError … for bad files
        raise _refuse(f"{name} is not a readable FITS file: {exc}", file=name) from exc


def _fits_axis(ndim: int, numpy_axis: int) -> str:
    return f"NAXIS{ndim - numpy_axis}"


def _profile_lines(offsets: np.ndarray, ids: np.ndarray, n_wave: int, problems: list[str]) -> list[ProfileLine]:
    """The lines of the profile files from BLANCA's two extensions, in wavelength order."""
    if ids.size != n_wave or offsets.size != n_wave:
        problems.append(f"{PRE_FILE} wavelength extensions have {offsets.size} offsets and {ids.size} line ids "
                        f"for {n_wave} wavelengths")
        return []
    if not np.all(np.isfinite(offsets)):
        problems.append(f"{PRE_FILE} wavelength offsets (extension 1) are not all finite numbers")
        return []
    if not np.all(np.isfinite(ids.astype(np.float64))) or not np.array_equal(ids, np.round(ids)):
        problems.append(f"{PRE_FILE} line ids (extension 2) are not whole numbers")
        return []
    runs = _runs(ids)
    values = [int(ids[a]) for a, _ in runs]
    if len(set(values)) != len(values):
        problems.append(f"{PRE_FILE} line ids are not contiguous per line: {_runs_text(ids)}")
        return []
    unknown = [v for v in values if v not in BLANCA_LINES]
    if unknown:
        known = ", ".join(f"{i} = {line.name}" for i, line in sorted(BLANCA_LINES.items()))
        problems.append(f"{PRE_FILE} has unknown spectral line id(s) {', '.join(map(str, unknown))} "
                        f"(extension 2); known ids: {known}")
        return []
    lines = []
    for (start, stop), value in zip(runs, values):
        part = offsets[start:stop]
        if part.size > 1 and not np.all(np.diff(part) > 0):
            problems.append(f"{PRE_FILE} wavelength offsets of {BLANCA_LINES[value].name} (id {value}) do not "
                            "increase")
        lines.append(ProfileLine(BLANCA_LINES[value], start, stop, tuple(float(x) for x in part)))
    return sorted(lines, key=lambda p: p.line.centre_nm)


def _header_int(header: fits.Header, key: str, problems: list[str], *, minimum: int) -> int | None:
    value = header.get(key)
    if value is None:
        problems.append(f"{PRE_FILE} has no {key} key in its primary header"
                        + (" (the fiducial arm: the VSPARMID of the L1 dataset giving the WCS)"
                           if key == FIDUCIAL_KEY else " (the slit binning)"))
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and number >= minimum):
        problems.append(f"{PRE_FILE} {key} = {value!r} is not a whole number >= {minimum}")
        return None
    return int(number)


def validate_results(
    folder_or_paths: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    expected_steps: int,
    expected_slit: int | None = None,
    spectral_lines: Sequence[str] | None = None,
) -> ResultSet:
    """Check a set of BLANCA result files; return its shapes, lines, sizes and sha256 checksums.

    ``expected_steps`` is the program's number of raster steps (L1 frames per Stokes
    parameter); the inversion may have that many or one fewer (it drops an incomplete last
    step). ``spectral_lines`` (the program's line names) is accepted for the caller's
    convenience: the lines of the files come from their line ids, never from it. A bad set
    raises ``DoNotRetryError`` (``step="results"``) whose message names the file(s), the id
    or the count, and every mismatch found.
    """
    paths = _resolve_paths(folder_or_paths)
    missing = [RESULT_FILES[r] for r, p in paths.items() if not p.is_file()]
    if missing:
        where = {str(paths[r].parent) for r in paths}
        raise _refuse(f"missing result file(s): {', '.join(missing)} (looked in {', '.join(sorted(where))})",
                      missing=missing)
    empty = [RESULT_FILES[r] for r, p in paths.items() if p.stat().st_size == 0]
    if empty:
        raise _refuse(f"empty result file(s): {', '.join(empty)}", empty=empty)

    structure = {role: _read_structure(role, path) for role, path in paths.items()}
    mod_shape = structure["mod"].shape
    pre, ori = structure["pre"], structure["ori"]
    pre_shape, ori_shape = pre.shape, ori.shape

    problems: list[str] = []
    if len(mod_shape) != 4:
        problems.append(f"{MOD_FILE} has {len(mod_shape)} axes {mod_shape}, expected 4 "
                        "[quantity, depth, raster step, slit]")
    for name, shape in ((PRE_FILE, pre_shape), (ORI_FILE, ori_shape)):
        if len(shape) != 4:
            problems.append(f"{name} has {len(shape)} axes {shape}, expected 4 [stokes, wavelength, raster step, slit]")
    if problems:
        raise _refuse("; ".join(problems), mod_shape=mod_shape, pre_shape=pre_shape, ori_shape=ori_shape)

    if mod_shape[QUANTITY_AXIS] != N_QUANTITIES:
        problems.append(f"{MOD_FILE} has {mod_shape[QUANTITY_AXIS]} physical quantities "
                        f"({_fits_axis(4, QUANTITY_AXIS)}), expected {N_QUANTITIES}")
    if pre_shape != ori_shape:
        problems.append(f"{PRE_FILE} shape {pre_shape} differs from {ORI_FILE} shape {ori_shape}")
    if pre_shape[STOKES_AXIS] != N_STOKES:
        problems.append(f"{PRE_FILE} has {pre_shape[STOKES_AXIS]} Stokes parameters "
                        f"({_fits_axis(4, STOKES_AXIS)}), expected {N_STOKES} (I, Q, U, V)")
    for axis, what in ((STEP_AXIS, "raster steps"), (SLIT_AXIS, "slit positions")):
        for name, shape in ((PRE_FILE, pre_shape), (ORI_FILE, ori_shape)):
            if shape[axis] != mod_shape[axis]:
                problems.append(f"{MOD_FILE} has {mod_shape[axis]} {what} ({_fits_axis(4, axis)}) but {name} "
                                f"has {shape[axis]}")
    n_steps = mod_shape[STEP_AXIS]
    if n_steps not in (expected_steps, expected_steps - 1):
        problems.append(f"{MOD_FILE} has {n_steps} raster steps ({_fits_axis(4, STEP_AXIS)}), the program's L1 "
                        f"datasets have {expected_steps} (accepted: {expected_steps}, or {expected_steps - 1} when "
                        "the inversion dropped an incomplete last step)")
    n_slit = mod_shape[SLIT_AXIS]
    if expected_slit is not None and n_slit != expected_slit:
        problems.append(f"{MOD_FILE} has {n_slit} slit positions ({_fits_axis(4, SLIT_AXIS)}), "
                        f"expected {expected_slit}")

    n_wave = pre_shape[WAVELENGTH_AXIS]
    lines = _profile_lines(pre.offsets, pre.ids, n_wave, problems)
    if ori.ids is not None and lines and (ori.ids.shape != pre.ids.shape or not np.array_equal(ori.ids, pre.ids)):
        problems.append(f"{ORI_FILE} splits the wavelengths into lines differently from {PRE_FILE} (extension 2)")
    if ori.offsets is not None and lines and (ori.offsets.shape != pre.offsets.shape
                                              or not np.allclose(ori.offsets, pre.offsets, rtol=0, atol=1e-3)):
        problems.append(f"{ORI_FILE} wavelength offsets differ from {PRE_FILE}'s (extension 1)")
    fiducial = _header_int(pre.header, FIDUCIAL_KEY, problems, minimum=0)
    binning = _header_int(pre.header, BINNING_KEY, problems, minimum=1)

    if problems:
        raise _refuse("; ".join(problems), mod_shape=mod_shape, pre_shape=pre_shape, ori_shape=ori_shape,
                      expected_steps=expected_steps)

    return ResultSet(
        paths={role: str(path.resolve()) for role, path in paths.items()},
        n_steps=n_steps,
        n_slit=n_slit,
        n_depth=mod_shape[DEPTH_AXIS],
        n_wave=n_wave,
        n_stokes=pre_shape[STOKES_AXIS],
        mod_shape=mod_shape,
        profile_shape=pre_shape,
        lines=tuple(lines),
        fiducial_arm=str(fiducial),
        binning=int(binning),
        sha256={role: _sha256(path) for role, path in paths.items()},
        sizes={role: path.stat().st_size for role, path in paths.items()},
    )


def _runs_text(ids: np.ndarray) -> str:
    return ", ".join(f"id {int(ids[a])} at {a}..{b - 1}" for a, b in _runs(ids))


# ----------------------------------------------------------------------------- writing


def _reserve_primary(path: Path, shape: tuple[int, ...], cards: Sequence[tuple] = ()) -> int:
    """Write a float32 primary header for ``shape`` and reserve its (zeroed) data.

    Returns the byte offset of the data. The data is then filled through ``np.memmap``
    so that memory does not grow with the file.
    """
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = len(shape)
    for i, n in enumerate(reversed(shape), start=1):
        header[f"NAXIS{i}"] = n
    header["EXTEND"] = True
    for card in cards:
        header.append(card)
    text = header.tostring().encode("ascii")
    nbytes = math.prod(shape) * 4
    padded = -(-nbytes // 2880) * 2880
    with open(path, "wb") as f:
        f.write(text)
        if padded:
            f.seek(len(text) + padded - 1)
            f.write(b"\0")
    return len(text)


def _append_wavelength_extensions(path: Path, offsets: np.ndarray, line_ids: np.ndarray) -> None:
    """BLANCA's two extensions: 1 = wavelength offsets (mÅ), 2 = line id per wavelength."""
    fits.append(path, np.asarray(offsets, dtype=np.float32),
                fits.Header([("EXTNAME", "WAVELENGTH"), ("BUNIT", "mAngstrom", "offset from line centre")]))
    fits.append(path, np.asarray(line_ids, dtype=np.int32),
                fits.Header([("EXTNAME", "LINE_ID", "spectral line of each wavelength point")]))


def _desr_cards(fiducial_arm: int | str | None, binning: int | None) -> list[tuple]:
    cards = []
    if fiducial_arm is not None:
        cards.append((FIDUCIAL_KEY, fiducial_arm, "VSPARMID of the fiducial arm"))
    if binning is not None:
        cards.append((BINNING_KEY, binning, "slit binning"))
    return cards


def write_results(
    folder: str | os.PathLike,
    *,
    mod: np.ndarray,
    pre: np.ndarray,
    ori: np.ndarray,
    wavelength_offsets: np.ndarray | None = None,
    line_ids: np.ndarray | None = None,
    fiducial_arm: int | str | None = 1,
    binning: int | None = 1,
) -> dict[str, Path]:
    """Write in-memory arrays as the three result files, laid out as BLANCA writes them.

    ``line_ids`` None writes profile files without the two wavelength extensions (which the
    intake refuses); ``fiducial_arm`` / ``binning`` None leave out ``DESR-FID`` / ``DESR-BIN``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {role: folder / name for role, name in RESULT_FILES.items()}
    fits.PrimaryHDU(np.asarray(mod, dtype=np.float32)).writeto(out["mod"], overwrite=True)
    for role, arr in (("pre", pre), ("ori", ori)):
        hdu = fits.PrimaryHDU(np.asarray(arr, dtype=np.float32))
        for card in _desr_cards(fiducial_arm, binning):
            hdu.header.append(card)
        hdu.writeto(out[role], overwrite=True)
        if line_ids is not None:
            offs = wavelength_offsets if wavelength_offsets is not None else np.zeros(len(line_ids))
            _append_wavelength_extensions(out[role], offs, line_ids)
    return out


#: ids of the demo's arms, in file order: not in wavelength order (BLANCA writes arms in any order)
DEMO_LINE_IDS = (4, 23, 9)


def demo_wavelength_grid(line_ids: Sequence[int], n_wave: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (mÅ from each line's centre, evenly spaced, spanning about ±400 mÅ) and line ids.

    One run per line, in the order of ``line_ids``; ``n_wave`` points per line (one number for
    all, or one per line).
    """
    counts = [int(n_wave)] * len(line_ids) if np.isscalar(n_wave) else [int(n) for n in n_wave]
    offsets, ids = [], []
    for line_id, n in zip(line_ids, counts):
        delta = max(800.0 / max(n - 1, 1), 5.0)
        offsets.append((np.arange(n) - (n - 1) // 2) * delta)  # index (n-1)//2 is the line centre
        ids.append(np.full(n, line_id, dtype=np.int32))
    return np.concatenate(offsets), np.concatenate(ids)


def _demo_step(step: int, n_steps: int, n_slit: int, n_depth: int, offsets: np.ndarray, line_ids: np.ndarray,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model atmosphere [quantity, depth, slit] and profiles [stokes, wave, slit] of one step (cgs; height km)."""
    rng = np.random.default_rng([seed, step])
    s = np.linspace(0.0, 1.0, n_slit)
    r = (step / max(n_steps - 1, 1) - 0.5) ** 2 + (s - 0.5) ** 2
    spot = np.exp(-r / 0.02)  # a magnetic concentration in the middle of the map
    log_tau = np.linspace(1.0, -4.0, n_depth)[:, None] * np.ones((1, n_slit))
    t_phot = 6400.0 - 1200.0 * spot + rng.normal(0, 60, n_slit)
    temperature = np.maximum(np.where(log_tau > 0, t_phot + 2000.0 * log_tau, t_phot + 550.0 * log_tau), 3900.0)
    electron_pressure = 10 ** (1.2 + 0.8 * log_tau) * (1 - 0.3 * spot)
    gas_pressure = 10 ** (5.08 + 0.9 * log_tau) * (1 - 0.3 * spot)
    density = 10 ** (-6.57 + 0.9 * log_tau) * (1 - 0.3 * spot)
    micro = np.full_like(log_tau, 1.0e5) + rng.normal(0, 1e4, (n_depth, n_slit))
    field_g = (2500.0 * spot + 50.0 + rng.normal(0, 20, n_slit)) * np.ones((n_depth, 1)) * (1 + 0.05 * log_tau)
    v_cms = (2.0e5 * np.sin(2 * np.pi * (s * 3 + step / 7)) * (1 - spot)) * np.ones((n_depth, 1))
    inclination = (20.0 + 140.0 * s) * np.ones((n_depth, 1))
    azimuth = (-90.0 + 180.0 * s + step) * np.ones((n_depth, 1))  # negative values: wrapped on output
    height_km = -120.0 * log_tau
    mod = np.stack([log_tau, temperature, electron_pressure, micro, np.abs(field_g), v_cms, inclination,
                    azimuth, height_km, gas_pressure, density]).astype(np.float32)

    # profiles: a Zeeman-ish line per spectral line, shifted by the velocity at log tau = 0
    i0 = int(np.argmin(np.abs(log_tau[:, 0])))
    centre = np.array([BLANCA_LINES[int(i)].centre_nm for i in line_ids])[:, None]  # nm, per wavelength
    shift_ma = centre * (v_cms[i0] / 2.99792458e10) * 1e4  # Doppler shift in mÅ
    x = (offsets[:, None] - shift_ma) / 80.0
    g = np.exp(-(x**2))
    b = field_g[i0] / 2500.0
    cos_i = np.cos(np.deg2rad(inclination[i0]))
    stokes_i = 1.0 - 0.6 * g
    stokes_v = 0.15 * b * cos_i * x * g
    stokes_q = 0.02 * b**2 * (1 - cos_i**2) * np.cos(np.deg2rad(2 * azimuth[i0])) * (1 - 2 * x**2) * g
    stokes_u = 0.02 * b**2 * (1 - cos_i**2) * np.sin(np.deg2rad(2 * azimuth[i0])) * (1 - 2 * x**2) * g
    ori = np.stack([stokes_i, stokes_q, stokes_u, stokes_v]) + rng.normal(0, 1e-3, (4,) + g.shape)
    fit = ori + rng.normal(0, 2e-3, ori.shape)
    return mod, fit.astype(np.float32), ori.astype(np.float32)


def _layout(first: tuple[int, int], n_steps: int, n_slit: int) -> tuple[int, ...]:
    """4-d shape with the step and slit lengths on STEP_AXIS / SLIT_AXIS."""
    shape = [*first, 0, 0]
    shape[STEP_AXIS], shape[SLIT_AXIS] = n_steps, n_slit
    return tuple(shape)


def blanca_line_in(wavelength_min: float | None, wavelength_max: float | None, *,
                   tolerance_nm: float = 0.5) -> SpectralLine | None:
    """The BLANCA line an arm's wavelength range covers (within ``tolerance_nm``: a ViSP range often
    starts just past its line, as qualification allows), the one nearest the range's middle."""
    if wavelength_min is None or wavelength_max is None:
        return None
    inside = [line for line in BLANCA_LINES.values()
              if wavelength_min - tolerance_nm <= line.centre_nm <= wavelength_max + tolerance_nm]
    return min(inside, key=lambda line: abs(line.centre_nm - (wavelength_min + wavelength_max) / 2), default=None)


def write_demo_results(
    folder: str | os.PathLike,
    *,
    n_steps: int,
    n_slit: int,
    n_depth: int,
    n_wave: int | Sequence[int],
    line_ids: Sequence[int] = DEMO_LINE_IDS,
    fiducial_arm: int = 1,
    binning: int = 1,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a fake inversion shaped as BLANCA writes one (plausible values); return role -> path.

    One run of ``n_wave`` wavelength points per entry of ``line_ids`` (BLANCA ids, in file
    order: the demo's are not in wavelength order), the offset and id extensions, ``DESR-FID``
    and ``DESR-BIN``. Written step by step through memory maps, so large sets do not need their
    size in memory.
    """
    unknown = [i for i in line_ids if i not in BLANCA_LINES]
    if unknown or not line_ids:
        raise ValueError(f"line_ids must be BLANCA ids ({sorted(BLANCA_LINES)}), not {list(line_ids)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    offsets, ids = demo_wavelength_grid(line_ids, n_wave)
    mod_shape = _layout((N_QUANTITIES, n_depth), n_steps, n_slit)
    pro_shape = _layout((N_STOKES, offsets.size), n_steps, n_slit)
    paths = {role: folder / name for role, name in RESULT_FILES.items()}
    info = [("ORIGIN", "L2 demo (fake inversion)"), ("DEMOSEED", seed)]
    off_mod = _reserve_primary(paths["mod"], mod_shape, info)
    off_pre = _reserve_primary(paths["pre"], pro_shape, info + _desr_cards(fiducial_arm, binning))
    off_ori = _reserve_primary(paths["ori"], pro_shape, info + _desr_cards(fiducial_arm, binning))
    for role in ("pre", "ori"):
        _append_wavelength_extensions(paths[role], offsets, ids)
    mm_mod = np.memmap(paths["mod"], dtype=">f4", mode="r+", offset=off_mod, shape=mod_shape)
    mm_pre = np.memmap(paths["pre"], dtype=">f4", mode="r+", offset=off_pre, shape=pro_shape)
    mm_ori = np.memmap(paths["ori"], dtype=">f4", mode="r+", offset=off_ori, shape=pro_shape)
    try:
        for step in range(n_steps):
            mod, fit, ori = _demo_step(step, n_steps, n_slit, n_depth, offsets, ids, seed)
            at = tuple(step if axis == STEP_AXIS else slice(None) for axis in range(4))
            mm_mod[at] = mod
            mm_pre[at] = fit
            mm_ori[at] = ori
        for mm in (mm_mod, mm_pre, mm_ori):
            mm.flush()
    finally:
        del mm_mod, mm_pre, mm_ori
    return paths


def demo_l1_header(
    step: int,
    *,
    n_steps: int,
    n_slit: int,
    n_wave: int = 960,
    ids: Mapping[str, str] | None = None,
    rotation_deg: float = 12.0,
    arm_id: int = 1,
) -> fits.Header:
    """A SPEC-214-like ViSP L1 frame header for raster ``step`` (for demos, tests, benchmarks).

    Axes as in ViSP L1 frames: 1 = AWAV (dispersion), 2 = HPLT-TAN (along the slit),
    3 = HPLN-TAN (across the slit, length 1); the spatial PC block is rotated by
    ``rotation_deg``; the step moves CRVAL3 by one slit width. Also an equatorial ``A`` WCS.
    """
    ids = dict(ids or {})
    start = np.datetime64("2023-10-16T23:55:59.513") + np.timedelta64(int(step * 3.2e3), "ms")
    cos, sin = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    slit_scale, step_scale = 0.0298, 0.0214  # arcsec
    cards = [
        ("NAXIS", 3), ("NAXIS1", n_wave), ("NAXIS2", n_slit), ("NAXIS3", 1),
        ("BUNIT", "ct"), ("DATAMIN", 0.0), ("DATAMAX", 1.0), ("DATAMEAN", 0.5), ("DATAP99", 0.99),
        ("ORIGIN", "National Solar Observatory"), ("TELESCOP", "Daniel K. Inouye Solar Telescope"),
        ("OBSRVTRY", "Haleakala High Altitude Observatory Site"), ("NETWORK", "NSF-DKIST"),
        ("INSTRUME", "VISP"), ("OBJECT", "sunspot"),
        ("DATE-BEG", str(start)), ("DATE-END", str(start + np.timedelta64(3000, "ms"))),
        ("DATE-AVG", str(start + np.timedelta64(1500, "ms"))), ("TELAPSE", 3.0), ("TIMESYS", "UTC"),
        ("DATEREF", str(start)),
        ("DSETID", ids.get("dataset_id", "BVJVO")), ("FILE_ID", _demo_file_id(step)), ("FRAMEVOL", 7.2),
        ("PROCTYPE", "L1"), ("LEVEL", 1), ("FILENAME", f"VISP_L1_{step:05d}.fits"),
        ("PROP_ID", ids.get("proposal_id", "pid_2_114")), ("EXPER_ID", ids.get("experiment_id", "eid_2_114")),
        ("OBSPR_ID", ids.get("observing_program_id", "eid_2_114_opE4A3Ek_R001.82591.14097301")),
        ("IP_ID", ids.get("program_id", "id.136026.452442")), ("DSP_ID", "dsp.1234"),
        ("NPROPOS", 1), ("PROPID01", ids.get("proposal_id", "pid_2_114")),
        ("NEXPERS", 1), ("EXPRID01", ids.get("experiment_id", "eid_2_114")),
        ("WAVEMIN", 630.0), ("WAVEMAX", 630.4), ("WAVEBAND", "Fe I (630.15 nm)"), ("LINEWAV", 630.15),
        ("NSPECLNS", 1), ("SPECLN01", "Fe I (630.15 nm)"),
        ("DSUN_OBS", 1.4871e11), ("HGLN_OBS", 0.0), ("HGLT_OBS", 5.3), ("RSUN_REF", 696000000.0),
        ("OBSGEO-X", -5466045.256), ("OBSGEO-Y", -2404388.737), ("OBSGEO-Z", 2242133.887),
        ("WCSAXES", 3), ("WCSNAME", "Helioprojective-cartesian"),
        ("CTYPE1", "AWAV"), ("CUNIT1", "nm"), ("CRPIX1", n_wave / 2), ("CRVAL1", 630.2), ("CDELT1", 0.00128),
        ("CTYPE2", "HPLT-TAN"), ("CUNIT2", "arcsec"), ("CRPIX2", n_slit / 2 + 0.5), ("CRVAL2", -310.5),
        ("CDELT2", slit_scale),
        ("CTYPE3", "HPLN-TAN"), ("CUNIT3", "arcsec"), ("CRPIX3", (n_steps + 1) / 2 - step),
        ("CRVAL3", 420.25), ("CDELT3", step_scale),
        ("PC1_1", 1.0), ("PC1_2", 0.0), ("PC1_3", 0.0), ("PC2_1", 0.0), ("PC2_2", cos), ("PC2_3", -sin),
        ("PC3_1", 0.0), ("PC3_2", sin), ("PC3_3", cos), ("LONPOLE", 180.0),
        ("WCSAXESA", 3), ("WCSNAMEA", "Equatorial equinox J2000"),
        ("CTYPE1A", "AWAV"), ("CUNIT1A", "nm"), ("CRPIX1A", n_wave / 2), ("CRVAL1A", 630.2),
        ("CDELT1A", 0.00128),
        ("CTYPE2A", "DEC--TAN"), ("CUNIT2A", "deg"), ("CRPIX2A", n_slit / 2 + 0.5), ("CRVAL2A", 12.5),
        ("CDELT2A", slit_scale / 3600),
        ("CTYPE3A", "RA---TAN"), ("CUNIT3A", "deg"), ("CRPIX3A", (n_steps + 1) / 2 - step),
        ("CRVAL3A", 210.3), ("CDELT3A", step_scale / 3600),
        ("PC1_1A", 1.0), ("PC2_2A", cos), ("PC2_3A", -sin), ("PC3_2A", sin), ("PC3_3A", cos),
        ("LONPOLEA", 180.0),
        ("DNAXIS", 5), ("DNAXIS1", n_wave), ("DTYPE1", "SPECTRAL"), ("DNAXIS2", n_slit), ("DTYPE2", "SPATIAL"),
        ("DNAXIS3", n_steps), ("DTYPE3", "SPATIAL"), ("DNAXIS4", 1), ("DTYPE4", "TEMPORAL"),
        ("DNAXIS5", 4), ("DTYPE5", "STOKES"), ("DAAXES", 3), ("DEAXES", 2),
        ("DINDEX3", step + 1), ("DINDEX4", 1), ("DINDEX5", 1),
        ("ATMOS_R0", 0.08), ("AO_LOCK", True), ("LIGHTLVL", 390.2), ("VSPARMID", arm_id),
        ("SOLARNET", 1.0), ("HEADVERS", "4.30.0"), ("HEAD_URL", "https://docs.dkist.nso.edu/projects/data-products"),
        ("INFO_URL", "https://docs.dkist.nso.edu"), ("DKISTVER", "Data Model (SPEC-0122) Revision I"),
        ("HLSVERS", "Pono_6.1.5"), ("DSHEALTH", "GOOD"), ("FIDO_CFG", "OUT_C-BS950_C-BS555_C-BS680_C-W1_C-W3"),
        ("OCS_CTRL", "Auto"), ("OBS_VR", 612.4), ("ELEV_ANG", 52.1), ("TAZIMUTH", 143.2),
        ("TELTRACK", "Standard Differential Rotation Tracking"), ("TTBLANGL", 21.5),
        ("TTBLTRCK", "fixed coude table angle"),
        ("CHECKSUM", "0000000000000000"), ("DATASUM", "0"),
    ]
    header = fits.Header(cards)
    header.add_history("L1 calibration by dkist-processing-visp")
    return header


def _demo_file_id(n: int) -> str:
    """A stable uuid-like hex id for demo headers."""
    return hashlib.md5(f"demo-l1-{n}".encode()).hexdigest()
