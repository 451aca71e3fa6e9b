"""Quick-look PNGs of an assembled Stokes cube (DESIGN §7 step 4).

Per cube, from map 0: the continuum intensity (Stokes I averaged over the cube's
continuum window ``CNTWPIX1…CNTWPIX2``), grey from the 1st to the 99th percentile;
and, for IQUV cubes, the net circular polarisation ``∫V dλ / ∫I dλ`` on a diverging
grey scale (mid-grey 0, white positive, black negative, ±99th percentile of |NCP|).

Images are raster step (x, across the slit) × slit (y, along it), in the instrument's frame
(the slit's rotation on the sky is not undone here; the Level 2 result maps do that),
resampled (nearest) to square arcseconds and scaled so the short side is at least
256 px and the long side at most 2048 px. Beside each plain picture goes a *figure* of the
same values (``<name>_<kind>_figure.png``, matplotlib): axes in arcsec from the cube's WCS
and a colour bar with the values' range, the one the program page shows. The cube is read one
frame at a time through a memory map of just that frame: memory stays at a few frames.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from PIL import Image
from PIL.PngImagePlugin import PngInfo

MIN_SIDE = 256
MAX_SIDE = 2048


class _Cube:
    """Frame-wise access to the primary HDU of a cube written by ``assemble_cube``."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                self.header = hdul[0].header.copy()
                self.offset = hdul.fileinfo(0)["datLoc"]
        h = self.header
        if h.get("NAXIS") != 5 or h.get("BITPIX") != -32:
            raise ValueError(f"{path.name}: not a [stokes, map, step, wavelength, slit] float32 cube")
        self.path = path
        self.shape = tuple(int(h[f"NAXIS{n}"]) for n in range(5, 0, -1))
        self.n_stokes, self.n_maps, self.n_steps, self.n_wave, self.n_slit = self.shape

    def rows(self, stokes: int, map_: int, step: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Wavelength rows ``[start, stop)`` of one frame, as float64 ``[rows, slit]``."""
        stop = self.n_wave if stop is None else stop
        index = (stokes * self.n_maps + map_) * self.n_steps + step
        offset = self.offset + ((index * self.n_wave) + start) * self.n_slit * 4
        view = np.memmap(self.path, dtype=">f4", mode="r", offset=offset, shape=(stop - start, self.n_slit))
        try:
            return np.array(view, dtype=np.float64)
        finally:
            del view


def _grey(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8), math.nan, math.nan
    lo, hi = np.percentile(values[finite], [1, 99])
    span = hi - lo if hi > lo else 1.0
    scaled = np.clip((values - lo) / span, 0.0, 1.0) * 255.0
    return np.where(finite, np.rint(scaled), 0).astype(np.uint8), float(lo), float(hi)


def _diverging(values: np.ndarray) -> tuple[np.ndarray, float]:
    finite = np.isfinite(values)
    limit = float(np.percentile(np.abs(values[finite]), 99)) if finite.any() else 0.0
    if not limit > 0:
        return np.full(values.shape, 128, np.uint8), limit
    scaled = 127.5 + 127.5 * np.clip(values / limit, -1.0, 1.0)
    return np.where(finite, np.clip(np.rint(scaled), 0, 255), 128).astype(np.uint8), limit


def image_size(header: Mapping[str, Any], n_steps: int, n_slit: int) -> tuple[int, int]:
    """(width, height) in px of a quick-look: square arcseconds, short side ≥ 256 px,
    long side ≤ 2048 px."""
    slit_scale = abs(float(header.get("CDELT1", 1.0))) or 1.0
    step_scale = abs(float(header.get("CDELT3", slit_scale))) or slit_scale
    width, height = n_steps * step_scale / slit_scale, float(n_slit)
    factor = max(1.0, MIN_SIDE / min(width, height))
    factor = min(factor, MAX_SIDE / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def _save(pixels: np.ndarray, header: fits.Header, path: Path, title: str, description: str) -> Path:
    """``pixels`` is ``[step, slit]``; written as an image with x = step, y = slit (north up)."""
    image = pixels.T  # rows = slit
    if float(header.get("CDELT1", 1.0)) > 0:
        image = image[::-1]  # increasing latitude upwards
    if float(header.get("CDELT3", 1.0)) < 0:
        image = image[:, ::-1]  # increasing longitude to the right
    n_slit, n_steps = image.shape
    picture = Image.fromarray(np.ascontiguousarray(image), mode="L")
    picture = picture.resize(image_size(header, n_steps, n_slit), Image.Resampling.NEAREST)
    info = PngInfo()
    info.add_text("Title", title)
    info.add_text("Description", description)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        picture.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def figure_path(path: str | Path) -> Path:
    """Where the figure (axes, colour bar) of the plain quick-look ``path`` is."""
    path = Path(path)
    return path.with_name(f"{path.stem}_figure.png")


def _axis(header: Mapping[str, Any], axis: int, n: int) -> tuple[float, float]:
    """Extent in arcsec of FITS axis ``axis`` (pixel edges), from CRVAL/CRPIX/CDELT (CUNIT deg or arcsec)."""
    scale = 3600.0 if str(header.get(f"CUNIT{axis}", "arcsec")).strip().lower() == "deg" else 1.0
    cdelt = float(header.get(f"CDELT{axis}", 1.0)) * scale
    crval = float(header.get(f"CRVAL{axis}", 0.0)) * scale
    crpix = float(header.get(f"CRPIX{axis}", 1.0))
    return crval + (0.5 - crpix) * cdelt, crval + (n + 0.5 - crpix) * cdelt


def _figure(values: np.ndarray, header: Mapping[str, Any], path: Path, *, title: str, label: str,
            limits: tuple[float, float], cmap: str) -> Path:
    """``values`` ``[step, slit]`` as a figure: x across the slit, y along it, arcsec, colour bar."""
    from matplotlib.figure import Figure

    n_steps, n_slit = values.shape
    x0, x1 = _axis(header, 3, n_steps)
    y0, y1 = _axis(header, 1, n_slit)
    width, height = abs(x1 - x0) or 1.0, abs(y1 - y0) or 1.0
    fig = Figure(figsize=(min(10.0, max(5.0, 3.2 * width / height + 2.6)), 4.2), dpi=100)
    fig.subplots_adjust(left=0.14, right=0.72, bottom=0.13, top=0.90)
    ax = fig.add_subplot()
    cax = fig.add_axes((0.76, 0.13, 0.025, 0.77))
    lo, hi = limits
    image = ax.imshow(values.T, origin="lower", extent=(x0, x1, y0, y1), cmap=cmap, interpolation="nearest",
                      vmin=lo if np.isfinite(lo) else None, vmax=hi if np.isfinite(hi) else None, aspect="equal")
    ax.set_xlabel("across the slit (″, raster)")
    ax.set_ylabel("along the slit (″)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, cax=cax).set_label(label)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def quicklook_pngs(cube_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the quick-look PNGs of one cube into ``out_dir``; return their paths
    (continuum first, then net circular polarisation for IQUV cubes)."""
    cube = _Cube(Path(cube_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h = cube.header
    start = int(h.get("CNTWPIX1", 1)) - 1
    stop = int(h.get("CNTWPIX2", cube.n_wave))
    if not 0 <= start < stop <= cube.n_wave:
        start, stop = 0, cube.n_wave
    name = cube.path.stem
    dataset = h.get("DSETID", name)

    continuum = np.empty((cube.n_steps, cube.n_slit))
    ncp = np.empty((cube.n_steps, cube.n_slit)) if cube.n_stokes == 4 else None
    for step in range(cube.n_steps):
        if ncp is None:
            continuum[step] = np.nanmean(cube.rows(0, 0, step, start, stop), axis=0)
            continue
        stokes_i = cube.rows(0, 0, step)
        continuum[step] = np.nanmean(stokes_i[start:stop], axis=0)
        total_i = np.nansum(stokes_i, axis=0)
        del stokes_i
        total_v = np.nansum(cube.rows(3, 0, step), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ncp[step] = np.where(total_i != 0, total_v / total_i, np.nan)

    paths = []
    pixels, lo, hi = _grey(continuum)
    window = f"{h.get('CNTWAV1', math.nan):.4f}-{h.get('CNTWAV2', math.nan):.4f} nm"
    title = f"{dataset} continuum intensity (map 0)"
    paths.append(_save(pixels, h, out_dir / f"{name}_continuum.png", title,
                       f"Stokes I / Ic averaged over {window}; black {lo:.4g}, white {hi:.4g}"))
    _figure(continuum, h, figure_path(paths[-1]), title=title, label=f"I / Ic, {window}", limits=(lo, hi),
            cmap="gray")
    if ncp is not None:
        pixels, limit = _diverging(ncp)
        title = f"{dataset} net circular polarisation (map 0)"
        paths.append(_save(pixels, h, out_dir / f"{name}_ncp.png", title,
                           f"integral V dlambda / integral I dlambda; black -{limit:.3g}, grey 0, white +{limit:.3g}"))
        _figure(ncp, h, figure_path(paths[-1]), title=title, label="∫V dλ / ∫I dλ", limits=(-limit, limit),
                cmap="RdBu_r")
    return paths
