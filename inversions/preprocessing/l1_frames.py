"""Demo / synthetic ViSP Level 1 frames with SPEC-214-shaped headers.

Layout, as the DKIST data center ships L1 (SPEC-214: "Calibrated DKIST FITS files
will be stored and delivered with a RICE compression"): one FITS file per frame, an
empty primary HDU and HDU 1 holding the frame with the full header (a RICE
``CompImageHDU``; ``compress=False`` writes a plain ``ImageHDU`` instead, which is
what the benchmark uses to write gigabytes quickly). ``CHECKSUM``/``DATASUM`` on
every HDU.

The frame is the ViSP detector image: numpy ``[1, wavelength, slit]`` (FITS axis 1
along the slit, HPLT-TAN; axis 2 wavelength, AWAV; axis 3 the raster position,
HPLN-TAN, length 1 whose ``CRPIX3`` moves with the raster step). The dataset axes
(``DNAXIS``…) are those of the ViSP L1 pipeline: 1 slit, 2 wavelength, 3 raster
step (SPATIAL), then 4 map (TEMPORAL) when there is more than one map, then the
Stokes axis (STOKES) for polarimetric data. ``DINDEXk`` are 1-based, as ViSP writes
them (``VSPSTP`` runs 1…``VSPNSTP``; Stokes 1…4).

File names are random UUIDs: nothing about a frame's place can be read from them.

Headers carry every key SPEC-214 requires in its fits, dataset, datacenter, dkist-id
and ViSP sections (checked against ``dkist-fits-specifications`` in the tests); the
observatory-state sections (camera, weather station, PAC, telescope position) are
left out of the demo.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

#: Fe I 630.15 / 630.25 nm (air, nm), depth, Gaussian sigma (nm), effective Landé g;
#: then the two telluric O2 lines (no Zeeman effect).
SOLAR_LINES = ((630.1501, 0.62, 0.0045, 1.67), (630.2494, 0.58, 0.0045, 2.50))
TELLURIC_LINES = ((630.2005, 0.33, 0.0016), (630.2764, 0.30, 0.0016))
C_KM_S = 299_792.458
STOKES_NAMES = "IQUV"

FrameValues = Callable[[int, int, int], np.ndarray]
BBox = str | Sequence[Sequence[float]]


def parse_bbox(bbox: BBox) -> tuple[float, float, float, float]:
    """``(x_min, y_min, x_max, y_max)`` in arcsec from the metadata store's
    ``"(x1,y1),(x2,y2)"`` string or a pair of (x, y) corners."""
    if isinstance(bbox, str):
        numbers = [float(v) for v in bbox.replace("(", " ").replace(")", " ").replace(",", " ").split()]
        if len(numbers) != 4:
            raise ValueError(f"bounding box {bbox!r} is not '(x1,y1),(x2,y2)'")
        (x1, y1), (x2, y2) = numbers[:2], numbers[2:]
    else:
        (x1, y1), (x2, y2) = bbox
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _fields(rng: np.random.Generator, n_steps: int, n_slit: int) -> dict[str, np.ndarray]:
    """Solar-looking maps over (raster step, slit): continuum, velocity, field, azimuth."""
    x = np.linspace(0.0, 1.0, n_steps)[:, None]
    y = np.linspace(0.0, 1.0, n_slit)[None, :]
    gran = np.zeros((n_steps, n_slit))
    for _ in range(64):  # granulation-like cells: plane waves of random direction
        k, angle = rng.uniform(10, 18), rng.uniform(0, np.pi)
        kx, ky = k * np.cos(angle), k * np.sin(angle)
        gran += np.cos(2 * np.pi * (kx * x + ky * y) + rng.uniform(0, 2 * np.pi))
    gran /= max(np.abs(gran).max(), 1e-9)
    # a pore (dark, strong positive field) and an opposite-polarity plage patch
    pore = np.exp(-((x - 0.35) ** 2 + (y - 0.55) ** 2) / (2 * 0.08**2))
    plage = np.exp(-((x - 0.72) ** 2 + (y - 0.30) ** 2) / (2 * 0.12**2))
    return {
        "continuum": (1.0 + 0.06 * gran) * (1.0 - 0.45 * pore),
        "velocity": -1.2 * gran * (1.0 - pore),  # km/s, bright granules rise (blue shift)
        "b_los": 900.0 * pore - 450.0 * plage,  # gauss
        "b_perp": 400.0 * pore + 250.0 * plage,
        "azimuth": np.pi * (x + 0.5 * y),
    }


def synthetic_stokes(
    wavelength: np.ndarray,
    continuum: np.ndarray,
    velocity: np.ndarray,
    b_los: np.ndarray,
    b_perp: np.ndarray,
    azimuth: np.ndarray,
) -> np.ndarray:
    """Stokes I, Q, U, V ``[4, wavelength, slit]`` for one raster step (weak-field
    approximation on Gaussian lines; V slightly asymmetric so its net circular
    polarisation is not zero)."""
    lam = wavelength[:, None]
    ic = continuum[None, :]
    absorb = np.zeros((lam.shape[0], ic.shape[1]))
    first = np.zeros_like(absorb)
    second = np.zeros_like(absorb)
    v_sig = np.zeros_like(absorb)
    for lam0, depth, sigma, g in SOLAR_LINES:
        u = lam - lam0 * (1.0 + velocity[None, :] / C_KM_S)
        e = depth * np.exp(-(u**2) / (2 * sigma**2))
        absorb += e
        d1 = e * u / sigma**2  # dI/dλ / Ic
        d2 = -e * (u**2 / sigma**4 - 1.0 / sigma**2)  # d²I/dλ² / Ic
        zeeman = 4.67e-12 * g * lam0**2  # nm per gauss
        v_sig += -zeeman * b_los[None, :] * d1 * (1.0 + 0.25 * np.tanh(-u / sigma))
        second += -0.25 * (zeeman * b_perp[None, :]) ** 2 * d2
        first += d1
    for lam0, depth, sigma in TELLURIC_LINES:
        absorb += depth * np.exp(-((lam - lam0) ** 2) / (2 * sigma**2))
    out = np.empty((4,) + absorb.shape)
    out[0] = ic * np.clip(1.0 - absorb, 0.02, None)
    out[1] = ic * second * np.cos(2 * azimuth[None, :])
    out[2] = ic * second * np.sin(2 * azimuth[None, :])
    out[3] = ic * v_sig
    return out


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _template_header(
    *,
    dataset_id: str,
    n_steps: int,
    n_maps: int,
    stokes: str,
    n_wave: int,
    n_slit: int,
    wavelength_range: tuple[float, float],
    box: tuple[float, float, float, float],
    proposal_id: str,
    experiment_id: str,
    observing_program_id: str,
    instrument_program_id: str,
    arm_id: int,
    spectral_fits_axis: int,
    step_cadence_s: float,
) -> fits.Header:
    wmin, wmax = wavelength_range
    x0, y0, x1, y1 = box
    slit_scale = (y1 - y0) / n_slit
    step_scale = (x1 - x0) / n_steps
    spatial_axis = 3 - spectral_fits_axis  # the other array axis
    h = fits.Header()
    card = h.append

    for key, value, comment in (
        ("ORIGIN", "National Solar Observatory", "Organization creating the file"),
        ("TELESCOP", "Daniel K. Inouye Solar Telescope", None),
        ("OBSRVTRY", "Haleakala High Altitude Observatory Site", None),
        ("NETWORK", "NSF-DKIST", None),
        ("INSTRUME", "VISP", "Instrument"),
        ("OBJECT", "quietsun", None),
        ("EXTNAME", "OBSERVATION", None),
        ("SOLARNET", 1.0, None),
        ("TIMESYS", "UTC", None),
        ("BUNIT", "ct", None),
        ("BTYPE", "phot.count", None),
        ("LEVEL", 1, "Data level"),
        ("PROCTYPE", "L1", None),
        ("HEADVERS", "4.30.0", "Version of SPEC-214"),
        ("DSETID", dataset_id, "Dataset ID"),
        ("POINT_ID", dataset_id, None),
        ("FRAMEVOL", 0.0, "[MB] Size of the frame on disk"),
        ("OBS_HDU", 1, "The HDU with the observation"),
        ("PROP_ID", proposal_id, "Proposal ID"),
        ("EXPER_ID", experiment_id, "Experiment ID"),
        ("OBSPR_ID", observing_program_id, None),
        ("IP_ID", instrument_program_id, "Instrument program execution ID"),
        ("DSP_ID", f"{instrument_program_id}.dsp", None),
        ("NPROPOS", 1, None),
        ("PROPID01", proposal_id, None),
        ("NEXPERS", 1, None),
        ("EXPRID01", experiment_id, None),
        ("DSPSREPS", n_maps, "Repeats of the data set parameter sequence"),
        ("DSHEALTH", "GOOD", None),
        ("GOS_STAT", "open", None),
        ("AO_LOCK", True, None),
        ("ATMOS_R0", 0.09, "[m] Fried parameter"),
        ("LIGHTLVL", 390.0, None),
        ("WAVEBAND", "Fe I (630.25 nm)", None),
        ("WAVEUNIT", -9, "nm"),
        ("WAVEREF", "Air", None),
        ("WAVEMIN", float(wmin), "[nm] Minimum wavelength"),
        ("WAVEMAX", float(wmax), "[nm] Maximum wavelength"),
        ("LINEWAV", 630.2494, "[nm] Line of interest"),
        ("FRAMEWAV", 630.2494, "[nm] ViSP: the line of interest"),
        ("NSPECLNS", 2, None),
        ("SPECLN01", "Fe I (630.15 nm)", None),
        ("SPECLN02", "Fe I (630.25 nm)", None),
        ("CADENCE", float(step_cadence_s), "[s]"),
        ("VSPARMID", arm_id, "ViSP arm"),
        ("VSPPOLMD", "observe_polarimetric" if len(stokes) > 1 else "observe_intensity", None),
        ("VSPNSTP", n_steps, "Raster steps in a map"),
        ("VSPNMAPS", n_maps, "Maps in the dataset"),
        ("VSPSLTSS", float(step_scale), "[arcsec] Raster step size"),
        # configuration keys SPEC-214 requires; plausible constants for the demo
        ("RRUNID", 1, None),
        ("RECIPEID", 1, None),
        ("RINSTID", 1, None),
        ("IDSOBSID", 1, None),
        ("DKISTVER", "Data Model (SPEC-0122) Revision I", None),
        ("HLSVERS", "Pono_6.1.5", None),
        ("FIDO_CFG", "OUT_C-BS950_C-BS555_C-BS680_C-W1_C-W3", None),
        ("OCS_CTRL", "Auto", None),
        ("OBS_VR", 612.4, "[m/s] Observer radial velocity"),
        ("ELEV_ANG", 52.1, "[deg] Telescope elevation"),
        ("TAZIMUTH", 143.2, "[deg] Telescope azimuth"),
        ("TELTRACK", "Standard Differential Rotation Tracking", None),
        ("TTBLANGL", 21.5, "[deg] Coude table angle"),
        ("TTBLTRCK", "fixed coude table angle", None),
        ("CALVERS", "demo", None),
        ("HEAD_URL", "", None),
        ("INFO_URL", "", None),
        ("CAL_URL", "", None),
        ("NBIN1", 1, None),
        ("NBIN2", 1, None),
        ("NBIN3", 1, None),
        ("NBIN", 1, None),
        ("VSPARMPS", -4.0, None),
        ("VSPARMFC", 0.0, None),
        ("VSPFILT", "FF01-623_32-25", None),
        ("VSPFWVLN", 621.548, None),
        ("VSPMODID", "demo", None),
        ("VSPMOD", "continuous", None),
        ("VSPEXPRT", 0.0, None),
        ("VSPGRTID", "316/63", None),
        ("VSPGRTCN", 316.0, None),
        ("VSPGRTBA", 63.4, None),
        ("VSPGRTAN", -65.0, None),
        ("VSPWID", 0.041, None),
        ("VSPTPOS", 0.0, None),
        ("VSPMIRPS", 0.0, None),
        ("VSPSPOS", 0.0, None),
    ):
        card((key, value, comment) if comment else (key, value))

    # WCS (FITS axis order of the frame)
    wave_cdelt = (wmax - wmin) / max(n_wave - 1, 1)
    axes = {
        spatial_axis: ("HPLT-TAN", "arcsec", (n_slit + 1) / 2.0, (y0 + y1) / 2.0, slit_scale),
        spectral_fits_axis: ("AWAV", "nm", 1.0, float(wmin), wave_cdelt),
        3: ("HPLN-TAN", "arcsec", 1.0, (x0 + x1) / 2.0, step_scale),  # CRPIX3 set per step
    }
    card(("WCSAXES", 3))
    card(("WCSNAME", "Helioprojective-cartesian"))
    for n in (1, 2, 3):
        ctype, cunit, crpix, crval, cdelt = axes[n]
        card((f"CTYPE{n}", ctype))
        card((f"CUNIT{n}", cunit))
        card((f"CRPIX{n}", crpix))
        card((f"CRVAL{n}", crval))
        card((f"CDELT{n}", cdelt))
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            card((f"PC{i}_{j}", 1.0 if i == j else 0.0))
    card(("LONPOLE", 180.0))
    card(("SPECSYS", "TOPOCENT"))
    card(("VELOSYS", 0.0))

    # dataset axes (SPEC-214)
    dataset_axes = [
        (n_slit, "SPATIAL", "spatial along slit", "helioprojective latitude", "arcsec"),
        (n_wave, "SPECTRAL", "dispersion axis", "wavelength", "nm"),
    ]
    if spectral_fits_axis == 1:
        dataset_axes.reverse()
    dataset_axes.append((n_steps, "SPATIAL", "raster scan step number", "helioprojective longitude", "arcsec"))
    if n_maps > 1:
        dataset_axes.append((n_maps, "TEMPORAL", "raster map repeat number", "time", "s"))
    if len(stokes) > 1:
        dataset_axes.append((len(stokes), "STOKES", "polarization state", "polarization state", ""))
    card(("DNAXIS", len(dataset_axes), "Number of axes in the dataset"))
    for d, (size, dtype, pname, wname, unit) in enumerate(dataset_axes, start=1):
        card((f"DNAXIS{d}", size))
        card((f"DTYPE{d}", dtype))
        card((f"DPNAME{d}", pname))
        card((f"DWNAME{d}", wname))
        card((f"DUNIT{d}", unit))
    card(("DAAXES", 2, "Dataset axes in this array"))
    card(("DEAXES", len(dataset_axes) - 2, "Dataset axes not in this array"))
    return h


def write_demo_dataset(
    folder: str | Path,
    dataset_id: str,
    *,
    n_steps: int = 40,
    n_maps: int = 1,
    stokes: str = "IQUV",
    n_wave: int = 240,
    n_slit: int = 160,
    wavelength_range: tuple[float, float] = (630.05, 630.35),
    bbox: BBox = "(-60.0,-400.0),(-40.0,-370.0)",
    start_time: str | datetime = "2022-06-02T17:21:59.6475",
    proposal_id: str = "pid_1_118",
    experiment_id: str = "eid_1_118",
    observing_program_id: str = "eid_1_118_opAvoqBr_R001.82591.13964206",
    instrument_program_id: str = "id.85415.162408",
    arm_id: int = 1,
    step_cadence_s: float = 3.28,
    intensity_scale: float = 2.0e4,
    noise: float = 1.0e-3,
    seed: int = 0,
    compress: bool = True,
    fast: bool = False,
    frame_values: FrameValues | None = None,
    spectral_fits_axis: int = 2,
) -> list[Path]:
    """Write one ViSP dataset, one FITS file per frame, into ``folder``.

    ``stokes`` is ``"IQUV"`` or ``"I"``. ``frame_values(stokes, map, step)`` (0-based)
    replaces the synthetic spectra with a given ``[n_wave, n_slit]`` array.
    ``fast`` computes the spectra of one raster step only and scales it per step
    (for benchmarks). ``spectral_fits_axis=1`` writes the older ViSP layout with
    wavelength along FITS axis 1. Returns the paths sorted by file name.
    """
    if stokes not in ("IQUV", "I"):
        raise ValueError("stokes must be 'IQUV' or 'I'")
    if spectral_fits_axis not in (1, 2):
        raise ValueError("spectral_fits_axis must be 1 or 2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    box = parse_bbox(bbox)
    t0 = datetime.fromisoformat(start_time) if isinstance(start_time, str) else start_time
    template = _template_header(
        dataset_id=dataset_id, n_steps=n_steps, n_maps=n_maps, stokes=stokes, n_wave=n_wave,
        n_slit=n_slit, wavelength_range=wavelength_range, box=box, proposal_id=proposal_id,
        experiment_id=experiment_id, observing_program_id=observing_program_id,
        instrument_program_id=instrument_program_id, arm_id=arm_id,
        spectral_fits_axis=spectral_fits_axis, step_cadence_s=step_cadence_s,
    )
    wavelength = np.linspace(wavelength_range[0], wavelength_range[1], n_wave)
    n_stokes = len(stokes)
    stokes_axis = template["DNAXIS"] if n_stokes > 1 else None
    map_axis = 4 if n_maps > 1 else None
    fields = _fields(rng, n_steps, n_slit) if frame_values is None else None
    fast_template = None
    exposure = min(step_cadence_s / 2.0, 1.0)
    paths: list[Path] = []

    for m in range(n_maps):
        for s in range(n_steps):
            if frame_values is None:
                if fast and fast_template is None:
                    fast_template = synthetic_stokes(wavelength, *(f[0] for f in fields.values()))
                if fast:
                    spectra = fast_template * (1.0 + 0.03 * math.sin(0.7 * s + 1.3 * m))
                else:
                    evolve = 1.0 + 0.01 * m
                    spectra = synthetic_stokes(
                        wavelength,
                        fields["continuum"][s] * evolve,
                        fields["velocity"][s] * evolve,
                        fields["b_los"][s],
                        fields["b_perp"][s],
                        fields["azimuth"][s],
                    )
            begin = t0 + timedelta(seconds=(m * n_steps + s) * step_cadence_s)
            for k in range(n_stokes):
                if frame_values is not None:
                    image = np.asarray(frame_values(k, m, s), dtype=np.float64)
                else:
                    image = spectra[k] * intensity_scale
                    if not fast and noise:
                        image = image + rng.normal(0.0, noise * intensity_scale, image.shape)
                if image.shape != (n_wave, n_slit):
                    raise ValueError(f"frame_values returned {image.shape}, expected {(n_wave, n_slit)}")
                if spectral_fits_axis == 1:
                    image = image.T
                data = image.astype(">f4")[None, :, :]
                file_id = uuid.UUID(bytes=rng.bytes(16), version=4)
                name = f"{file_id.hex}.fits"
                h = template.copy()
                h["FILE_ID"] = file_id.hex
                h["FILENAME"] = name
                h["DATE"] = _iso(datetime.now())
                h["DATE-BEG"] = _iso(begin)
                h["DATE-AVG"] = _iso(begin + timedelta(seconds=exposure / 2))
                h["DATE-END"] = _iso(begin + timedelta(seconds=exposure))
                h["DATEREF"] = _iso(begin)
                h["TELAPSE"] = float(exposure)
                # the raster position: world x of this step's slit = x_min + (s + ½)·step
                h["CRPIX3"] = 1.0 + n_steps / 2.0 - (s + 0.5)
                h["VSPSTP"] = s + 1
                h["VSPMAP"] = m + 1
                h["DSPSNUM"] = m + 1
                h["STOKES"] = stokes[k]
                h["FRAMEVOL"] = round(data.nbytes / 1e6, 3)
                h["DINDEX3"] = s + 1
                if map_axis:
                    h[f"DINDEX{map_axis}"] = m + 1
                if stokes_axis:
                    h[f"DINDEX{stokes_axis}"] = k + 1
                if compress:
                    hdu = fits.CompImageHDU(data=data, header=h, compression_type="RICE_1")
                else:
                    hdu = fits.ImageHDU(data=data, header=h)
                path = folder / name
                fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, checksum=True)
                paths.append(path)
    return sorted(paths)


def frames_per_dataset(n_steps: int, n_maps: int = 1, stokes: str = "IQUV") -> int:
    """Frames ``write_demo_dataset`` writes (the metadata store's ``frameCount``)."""
    return n_steps * n_maps * len(stokes)
