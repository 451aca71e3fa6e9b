"""Pictures of an inversion's results, read from its Level 2 frames (plain numpy/matplotlib: no Django).

A *map* is one quantity at one depth over (raster step, slit position), drawn on the sky: every
pixel at its helioprojective position, from the WCS of its frame (the PC rotation applied), so
solar north is up and west is right. The L2 frames (:mod:`publishing.l2files`) hold per raster
step the quantity HDUs (numpy shape ``(1, slit, depth)``, FITS axes 1 = LOGTAU, 2 = along the
slit, 3 = across) and per line "<line> Profile Original" / "<line> Profile Fit"
``(1, slit, wavelength, stokes)``.

Reading 490 frames with ``astropy.io.fits`` costs seconds (every header parsed, every WCS
built), so :func:`frame_index` reads only the header cards it needs from each file, in a few
hundred microseconds, and the sky positions are computed here from those cards (linear WCS, then
the gnomonic TAN deprojection of FITS paper II); the tests compare them with astropy's. Data are
read through ``numpy.memmap`` at the data offsets: a map touches one quantity HDU per frame.

:func:`render_map` writes a PNG (Agg) with axes in arcsec and a colour bar with units; the axes
box and the data limits depend on the sky positions only (:func:`map_frame`), so a click on the
picture is turned back into a pixel (:func:`pixel_at`) without keeping anything from the render.
:func:`svg_panel` draws the small line plots (the Stokes profiles, the quantities against
log tau) as inline SVG.
"""
from __future__ import annotations

import html
import math
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 2880
CARD = 80
ARCSEC_PER_UNIT = {"arcsec": 1.0, "deg": 3600.0, "arcmin": 60.0, "rad": 180 * 3600 / math.pi, "mas": 1e-3}
STOKES = ("I", "Q", "U", "V")
#: the log tau values a map can be drawn at
LOG_TAUS = (-2.0, -1.0, 0.0)
INDEX_VERSION = 1


@dataclass(frozen=True)
class MapQuantity:
    key: str  # URL word
    extname: str  # the quantity HDU's EXTNAME
    label: str
    unit: str  # shown
    scale: float  # file value × scale = shown value
    cmap: str
    diverging: bool = False
    centre: float = 0.0  # of a diverging map
    limits: tuple[float, float] | None = None  # fixed colour range


#: The four maps, in the order shown. Field strength is stored in T and shown in G.
MAP_QUANTITIES: tuple[MapQuantity, ...] = (
    MapQuantity("temperature", "Temperature", "Temperature", "K", 1.0, "inferno"),
    MapQuantity("field_strength", "Magnetic Field Strength", "Field strength", "G", 1e4, "viridis"),
    MapQuantity("inclination", "Magnetic Field Inclination (w.r.t. line-of-sight)", "Inclination", "deg", 1.0,
                "PuOr_r", diverging=True, centre=90.0, limits=(0.0, 180.0)),
    MapQuantity("velocity", "Line-of-sight Velocity", "LOS velocity", "km/s", 1.0, "RdBu_r", diverging=True),
)
MAP_BY_KEY = {q.key: q for q in MAP_QUANTITIES}
LOG_TAU_EXTNAME = "Log of Optical Depth at 500nm"
PROFILE_EXT = re.compile(r"^(?P<line>.+) Profile (?P<kind>Original|Fit)$")


class PlotError(Exception):
    """The L2 frames cannot be drawn (missing, unreadable, not of the L2 layout); the message says why."""


# ----------------------------------------------------------------------------- reading frames


@dataclass
class Hdu:
    extname: str
    shape: tuple[int, ...]  # numpy order
    offset: int  # of the data, in bytes
    cards: dict = field(default_factory=dict)


def _value(text: str):
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end + 1:end + 2] == "'":  # '' is a quote inside the string
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").rstrip() if end != -1 else text[1:].rstrip()
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text.replace("D", "E"))
        except ValueError:
            return text


_WCS_KEYS = tuple([f"{k}{i}" for k in ("CRPIX", "CRVAL", "CDELT", "CTYPE", "CUNIT") for i in range(1, 5)]
                  + [f"PC{i}_{j}" for i in range(1, 5) for j in range(1, 5)] + ["BUNIT", "EXTNAME", "LONPOLE"])
_WCS_BKEYS = tuple((k, k.encode()) for k in _WCS_KEYS)


def _wcs_cards(raw: dict[bytes, bytes]) -> dict:
    return {k: _value(raw[b].decode("ascii", "replace")) for k, b in _WCS_BKEYS if b in raw}


def _header(f, path, n: int) -> tuple[dict[bytes, bytes], int]:
    """The cards (key -> value text) of the header starting at the file position; and its length in bytes."""
    raw = b""
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise PlotError(f"{Path(path).name}: truncated header of HDU {n}")
        raw += block
        at = block.find(b"END" + b" " * 77)
        if at != -1 and at % CARD == 0:
            break
    cards = {}
    for i in range(0, len(raw), CARD):
        if raw[i + 8:i + 10] == b"= ":
            cards.setdefault(raw[i:i + 8].rstrip(), raw[i + 10:i + CARD])
        elif raw[i:i + 8] == b"END     ":
            break
    return cards, len(raw)


def read_hdus(path: str | os.PathLike, *, cards_of: Sequence[int] = ()) -> list[Hdu]:
    """Every HDU of the FITS file at ``path``: EXTNAME, shape, data offset; the WCS cards of HDUs ``cards_of``."""
    out: list[Hdu] = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            raw, length = _header(f, path, len(out))
            pos += length
            naxis = int(_value(raw.get(b"NAXIS", b"0").decode("ascii", "replace")))
            dims = [int(_value(raw.get(b"NAXIS%d" % k, b"0").decode("ascii", "replace"))) for k in range(1, naxis + 1)]
            bitpix = int(_value(raw.get(b"BITPIX", b"8").decode("ascii", "replace")))
            nbytes = abs(bitpix) // 8 * math.prod(dims) if naxis else 0
            cards = _wcs_cards(raw) if len(out) in cards_of else {}
            extname = _value(raw[b"EXTNAME"].decode("ascii", "replace")) if b"EXTNAME" in raw else ""
            out.append(Hdu(str(extname), tuple(reversed(dims)), pos, cards))
            pos += -(-nbytes // BLOCK) * BLOCK
    return out


def _data(path: str | os.PathLike, hdu: Hdu) -> np.ndarray:
    return np.memmap(path, dtype=">f4", mode="r", offset=hdu.offset, shape=hdu.shape)


def sky_positions(cards: dict, n_slit: int) -> tuple[np.ndarray, np.ndarray]:
    """Helioprojective longitude and latitude (arcsec) of slit pixels 0..n_slit-1 of a quantity HDU.

    FITS axes 1 = depth, 2 and 3 = HPLN/HPLT in either order; pixel (0, j, 0). Linear part
    (CRPIX, PC, CDELT), then the TAN (gnomonic) deprojection about CRVAL with LONPOLE 180.
    """
    axes = {}
    for k in (2, 3):
        ctype = str(cards.get(f"CTYPE{k}", "")).upper()
        if ctype.startswith("HPLN"):
            axes["lon"] = k
        elif ctype.startswith("HPLT"):
            axes["lat"] = k
    if set(axes) != {"lon", "lat"}:
        raise PlotError("the quantity HDU has no helioprojective axes 2 and 3")
    pixel = np.zeros((3, n_slit))
    pixel[1] = np.arange(n_slit)  # 0-based; FITS pixel = index + 1
    inter = {}
    for name, i in axes.items():
        unit = ARCSEC_PER_UNIT.get(str(cards.get(f"CUNIT{i}", "deg")).strip() or "deg")
        if unit is None:
            raise PlotError(f"unknown unit {cards.get(f'CUNIT{i}')!r} of axis {i}")
        total = np.zeros(n_slit)
        for j in (1, 2, 3):
            pc = float(cards.get(f"PC{i}_{j}", 1.0 if i == j else 0.0))
            if pc:
                total += pc * (pixel[j - 1] + 1 - float(cards.get(f"CRPIX{j}", 0.0)))
        inter[name] = total * float(cards.get(f"CDELT{i}", 1.0)) * unit
        inter[name + "0"] = float(cards.get(f"CRVAL{i}", 0.0)) * unit
    to_rad = math.pi / (180 * 3600)
    xi, eta = inter["lon"] * to_rad, inter["lat"] * to_rad
    lon0, lat0 = inter["lon0"] * to_rad, inter["lat0"] * to_rad
    denom = math.cos(lat0) - eta * math.sin(lat0)
    lon = lon0 + np.arctan2(xi, denom)
    lat = np.arctan2(math.sin(lat0) + eta * math.cos(lat0), np.hypot(xi, denom))
    return lon / to_rad, lat / to_rad


@dataclass
class FrameIndex:
    """Where the data of every frame of an inversion are, and where every pixel is on the sky."""

    paths: list[str]  # by raster step
    hdus: list[list[Hdu]]  # per frame
    lon: np.ndarray  # (steps, slit) arcsec
    lat: np.ndarray
    log_tau: np.ndarray  # (depth,) log tau of each depth index (frame 0, centre of the slit)

    @property
    def shape(self) -> tuple[int, int]:
        return self.lon.shape

    def hdu(self, step: int, extname: str) -> Hdu:
        for h in self.hdus[step]:
            if h.extname == extname:
                return h
        raise PlotError(f"frame {Path(self.paths[step]).name} has no HDU {extname!r}")

    def depth_of(self, log_tau: float) -> int:
        """The depth index whose log tau is nearest ``log_tau``."""
        return int(np.nanargmin(np.abs(self.log_tau - log_tau)))


def _same_layout(path: str | os.PathLike, first: list[Hdu], size: int) -> list[Hdu] | None:
    """``first``'s HDUs (with this file's WCS cards of HDU 1) when the file has the same layout; else None.

    Frames of one inversion are written by the same code with the same cards, so they have the same
    size and their headers start at the same offsets: checked by the ``XTENSION`` card at each.
    """
    if os.path.getsize(path) != size:
        return None
    starts = [0] + [h.offset + (-(-4 * math.prod(h.shape) // BLOCK) * BLOCK if h.shape else 0) for h in first[:-1]]
    with open(path, "rb") as f:
        for start in (starts[2], starts[-1]):
            f.seek(start)
            if f.read(10) != b"XTENSION= ":
                return None
        f.seek(starts[1])
        raw, length = _header(f, path, 1)
    if starts[1] + length != first[1].offset:
        return None
    cards = _wcs_cards(raw)
    if cards.get("EXTNAME") != first[1].extname:
        return None
    return [first[0], Hdu(first[1].extname, first[1].shape, first[1].offset, cards), *first[2:]]


def frame_index(paths: Sequence[str | os.PathLike]) -> FrameIndex:
    """Read the frames' layout (cheap: headers only) and their pixels' sky positions."""
    if not paths:
        raise PlotError("no L2 frames")
    hdus, lons, lats = [], [], []
    first: list[Hdu] | None = None
    size = 0
    for path in paths:
        try:
            frame = _same_layout(path, first, size) if first is not None else None
            if frame is None:
                frame = read_hdus(path, cards_of=(1,))
        except OSError as exc:
            raise PlotError(f"cannot read {Path(path).name}: {exc.strerror or exc}") from exc
        if len(frame) < 12 or frame[1].extname != LOG_TAU_EXTNAME or len(frame[1].shape) != 3:
            raise PlotError(f"{Path(path).name} is not an L2 frame (no quantity HDUs)")
        if first is None:
            first, size = frame, os.path.getsize(path)
        elif [(h.extname, h.shape) for h in frame] != [(h.extname, h.shape) for h in first]:
            raise PlotError(f"{Path(path).name} does not have the HDUs of {Path(paths[0]).name}")
        lon, lat = sky_positions(frame[1].cards, frame[1].shape[1])
        hdus.append(frame)
        lons.append(lon)
        lats.append(lat)
    tau = np.asarray(_data(paths[0], hdus[0][1])[0], dtype=np.float64)  # (slit, depth)
    log_tau = np.nanmedian(tau, axis=0) if np.isfinite(tau).any() else np.arange(tau.shape[1], dtype=float)
    return FrameIndex([str(p) for p in paths], hdus, np.array(lons), np.array(lats), log_tau)


def read_map(index: FrameIndex, quantity: MapQuantity, depth: int) -> np.ndarray:
    """``quantity`` (shown units) at depth index ``depth``: shape (steps, slit)."""
    out = np.empty(index.shape, dtype=np.float32)
    for step, path in enumerate(index.paths):
        out[step] = _data(path, index.hdu(step, quantity.extname))[0, :, depth]
    return out * np.float32(quantity.scale)


# ----------------------------------------------------------------------------- maps

FIG_W, FIG_H, DPI = 4.6, 4.0, 100
AXES_BOX = (0.17, 0.12, 0.62, 0.78)  # left, bottom, width, height (figure fractions)
CBAR_BOX = (0.83, 0.12, 0.035, 0.78)


def map_frame(lon: np.ndarray, lat: np.ndarray) -> tuple[float, float, float, float]:
    """Data limits (x0, x1, y0, y1, arcsec) of the map axes: the field plus a margin, 1″ = 1″ on both axes."""
    finite = np.isfinite(lon) & np.isfinite(lat)
    if not finite.any():
        raise PlotError("no pixel has a sky position")
    x0, x1 = float(lon[finite].min()), float(lon[finite].max())
    y0, y1 = float(lat[finite].min()), float(lat[finite].max())
    box_w, box_h = AXES_BOX[2] * FIG_W, AXES_BOX[3] * FIG_H
    span = max((x1 - x0) / box_w, (y1 - y0) / box_h, 1e-6) * 1.04  # arcsec per inch
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - span * box_w / 2, cx + span * box_w / 2, cy - span * box_h / 2, cy + span * box_h / 2


def sky_affine(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The 3×3 affine matrix from (slit, raster step) pixel indices to (lon, lat) arcsec, fitted to every pixel.

    Over a ViSP field (arcminutes) the TAN projection is linear to far below a pixel, so the
    picture is the image resampled through this matrix (fast); clicks use the exact positions.
    """
    steps, slits = np.indices(lon.shape)
    ok = np.isfinite(lon) & np.isfinite(lat)
    stride = max(1, int(math.sqrt(lon.size / 20000)))  # a fit to 20,000 pixels is as good as to all
    thin = np.zeros_like(ok)
    thin[::stride, ::stride] = True
    if (ok & thin).sum() >= 3:
        ok &= thin
    design = np.column_stack([slits[ok], steps[ok], np.ones(int(ok.sum()))]).astype(np.float64)
    (a, b, c), *_ = np.linalg.lstsq(design, lon[ok], rcond=None)
    (d, e, f), *_ = np.linalg.lstsq(design, lat[ok], rcond=None)
    if lon.shape[0] == 1:  # one raster step: no extent across the slit; one slit width, perpendicular
        b, e = -d, a
    if lon.shape[1] == 1:
        a, d = e, -b
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def colour_limits(values: np.ndarray, quantity: MapQuantity) -> tuple[float, float]:
    if quantity.limits:
        return quantity.limits
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (quantity.centre - 1, quantity.centre + 1)
    if quantity.diverging:
        half = float(np.percentile(np.abs(finite - quantity.centre), 99)) or 1.0
        return quantity.centre - half, quantity.centre + half
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    return (lo, hi) if hi > lo else (lo - 1, lo + 1)


def render_map(values: np.ndarray, lon: np.ndarray, lat: np.ndarray, quantity: MapQuantity, log_tau: float,
               out_path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw ``values`` (steps, slit) on the sky into a PNG at ``out_path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import Affine2D

    x0, x1, y0, y1 = map_frame(lon, lat)
    vmin, vmax = colour_limits(values, quantity)
    fig = Figure(figsize=(FIG_W, FIG_H), dpi=DPI)
    ax = fig.add_axes(AXES_BOX)
    cax = fig.add_axes(CBAR_BOX)
    mesh = ax.imshow(np.ma.masked_invalid(values), cmap=quantity.cmap, vmin=vmin, vmax=vmax, origin="lower",
                     interpolation="nearest", extent=(-0.5, values.shape[1] - 0.5, -0.5, values.shape[0] - 0.5))
    mesh.set_transform(Affine2D(sky_affine(lon, lat)) + ax.transData)
    ax.set_aspect("auto")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("Solar X (arcsec)", fontsize=9)
    ax.set_ylabel("Solar Y (arcsec)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_title(title or f"{quantity.label} at log τ = {log_tau:g}", fontsize=10)
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label(f"{quantity.label} ({quantity.unit})", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, out_path)
    return out_path


def pixel_at(lon: np.ndarray, lat: np.ndarray, fx: float, fy: float) -> tuple[int, int] | None:
    """The (raster step, slit) pixel under a click at (fx, fy): fractions of the picture from its top left.

    None outside the axes or farther than two pixel spacings from any pixel.
    """
    left, bottom, width, height = AXES_BOX
    ax_fx, ax_fy = (fx - left) / width, (1 - fy - bottom) / height
    if not (0 <= ax_fx <= 1 and 0 <= ax_fy <= 1):
        return None
    x0, x1, y0, y1 = map_frame(lon, lat)
    x, y = x0 + ax_fx * (x1 - x0), y0 + ax_fy * (y1 - y0)
    d2 = (lon - x) ** 2 + (lat - y) ** 2
    step, slit = np.unravel_index(int(np.nanargmin(d2)), d2.shape)
    spacing = _spacing(lon, lat)
    if math.sqrt(float(d2[step, slit])) > 2 * spacing:
        return None
    return int(step), int(slit)


def _spacing(lon: np.ndarray, lat: np.ndarray) -> float:
    gaps = []
    for axis in (0, 1):
        if lon.shape[axis] > 1:
            gaps.append(float(np.nanmedian(np.hypot(np.diff(lon, axis=axis), np.diff(lat, axis=axis)))))
    return max(gaps) if gaps else 1.0


# ----------------------------------------------------------------------------- one pixel


@dataclass
class LineProfiles:
    line: str
    wavelength_nm: np.ndarray
    original: np.ndarray  # (wavelength, stokes)
    fit: np.ndarray | None


def _axis_values(cards: dict, axis: int, n: int) -> np.ndarray:
    crpix, crval, cdelt = (float(cards.get(f"{k}{axis}", d)) for k, d in (("CRPIX", 1), ("CRVAL", 0), ("CDELT", 1)))
    return crval + (np.arange(n) + 1 - crpix) * cdelt


def pixel_profiles(path: str | os.PathLike, slit: int) -> list[LineProfiles]:
    """The original and fitted Stokes profiles of every line at slit position ``slit`` of one frame."""
    hdus = read_hdus(path)
    wanted = [i for i, h in enumerate(hdus) if PROFILE_EXT.match(h.extname)]
    hdus = read_hdus(path, cards_of=wanted)
    lines: dict[str, LineProfiles] = {}
    for i in wanted:
        h = hdus[i]
        m = PROFILE_EXT.match(h.extname)
        if len(h.shape) != 4 or not 0 <= slit < h.shape[1]:
            raise PlotError(f"{h.extname}: shape {h.shape} has no slit position {slit}")
        data = np.array(_data(path, h)[0, slit], dtype=np.float64)  # (wavelength, stokes)
        name = m["line"]
        if name not in lines:
            lines[name] = LineProfiles(name, _axis_values(h.cards, 2, h.shape[2]), data, None)
        if m["kind"] == "Original":
            lines[name].original = data
        else:
            lines[name].fit = data
    return list(lines.values())


def pixel_depth_curves(index: FrameIndex, step: int, slit: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Log tau and every map quantity (shown units) against depth at one pixel."""
    path = index.paths[step]
    log_tau = np.array(_data(path, index.hdu(step, LOG_TAU_EXTNAME))[0, slit], dtype=np.float64)
    curves = {q.key: np.array(_data(path, index.hdu(step, q.extname))[0, slit], dtype=np.float64) * q.scale
              for q in MAP_QUANTITIES}
    return log_tau, curves


# ----------------------------------------------------------------------------- small SVG plots


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]
    return ticks if len(ticks) >= 2 or n > 12 else _ticks(lo, hi, n * 2)


def _fmt(v: float, ticks: Sequence[float]) -> str:
    """``v`` with as many decimals as the tick spacing needs (630.12, 630.14 — not 630.1 twice)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(v) or 1.0
    if step >= 1e4 or step < 1e-4:
        return f"{v:.2g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step, decimals) != round(step, decimals + 3):
        decimals += 1
    return f"{v:.{decimals}f}"


def svg_panel(x: np.ndarray, series: Sequence[tuple[np.ndarray, str]], *, title: str, xlabel: str = "",
              width: int = 220, height: int = 150, invert_x: bool = False) -> str:
    """A small line plot as an SVG element; ``series`` are (y, css class) pairs drawn over the same x."""
    left, right, top, bottom = 44, 8, 18, 28 if xlabel else 18
    pw, ph = width - left - right, height - top - bottom
    x = np.asarray(x, dtype=np.float64)
    ys = [np.asarray(y, dtype=np.float64) for y, _ in series]
    finite_x = x[np.isfinite(x)]
    all_y = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    x0, x1 = (float(finite_x.min()), float(finite_x.max())) if finite_x.size else (0.0, 1.0)
    y0, y1 = (float(all_y.min()), float(all_y.max())) if all_y.size else (0.0, 1.0)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = (y1 - y0) * 0.06 or max(abs(y0) * 0.06, 1e-6)
    y0, y1 = y0 - pad, y1 + pad

    def px(v):
        f = (v - x0) / (x1 - x0)
        return left + (1 - f if invert_x else f) * pw

    def py(v):
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    parts = [f'<svg class="panel" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text class="panel-title" x="{left}" y="12">{html.escape(title)}</text>',
             f'<rect class="panel-frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>']
    yt = _ticks(y0, y1)
    for t in yt:
        parts.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                     f'<text class="tick" x="{left - 3}" y="{py(t) + 3:.1f}" text-anchor="end">{_fmt(t, yt)}</text>')
    xt = _ticks(x0, x1, 3)
    for t in xt:
        parts.append(f'<text class="tick" x="{px(t):.1f}" y="{top + ph + 11}" text-anchor="middle">{_fmt(t, xt)}</text>')
    if xlabel:
        parts.append(f'<text class="tick" x="{left + pw / 2}" y="{height - 3}" text-anchor="middle">'
                     f'{html.escape(xlabel)}</text>')
    for y, css in zip(ys, (c for _, c in series)):
        ok = np.isfinite(x) & np.isfinite(y)
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x[ok], y[ok]))
        parts.append(f'<polyline class="{html.escape(css)}" points="{points}"/>')
    parts.append("</svg>")
    return "".join(parts)


def profile_panels(lines: Sequence[LineProfiles]) -> list[dict]:
    """Per line, four panels (I, Q, U, V): the original profile and the fit."""
    out = []
    for line in lines:
        panels = []
        for k, stokes in enumerate(STOKES[: line.original.shape[1]]):
            series = [(line.original[:, k], "observed")]
            if line.fit is not None:
                series.append((line.fit[:, k], "fit"))
            panels.append(svg_panel(line.wavelength_nm, series, title=f"{line.line} · Stokes {stokes}",
                                    xlabel="wavelength (nm)"))
        out.append({"line": line.line, "panels": panels})
    return out


def depth_panels(log_tau: np.ndarray, curves: dict[str, np.ndarray]) -> list[str]:
    """One panel per map quantity against log tau (the surface, log tau 0, to the right)."""
    return [svg_panel(log_tau, [(curves[q.key], "fit")], title=f"{q.label} ({q.unit})", xlabel="log τ")
            for q in MAP_QUANTITIES if q.key in curves]


# ----------------------------------------------------------------------------- the cache on disk


def _save_index(index: FrameIndex, folder: Path) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    doc = {"version": INDEX_VERSION, "paths": [os.path.basename(p) for p in index.paths],
           "hdus": [[[h.extname, list(h.shape), h.offset] for h in frame] for frame in index.hdus]}
    tmp = folder / f".index.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, lon=index.lon, lat=index.lat, log_tau=index.log_tau, doc=np.array(json.dumps(doc)))
    os.replace(tmp, folder / "index.npz")


def _load_index(folder: Path, paths: Sequence[str | os.PathLike]) -> FrameIndex | None:
    import json

    try:
        with np.load(folder / "index.npz", allow_pickle=False) as npz:
            doc = json.loads(str(npz["doc"]))
            lon, lat, log_tau = npz["lon"], npz["lat"], npz["log_tau"]
    except (OSError, KeyError, ValueError):
        return None
    if doc.get("version") != INDEX_VERSION or doc.get("paths") != [os.path.basename(p) for p in paths]:
        return None
    hdus = [[Hdu(name, tuple(shape), offset) for name, shape, offset in frame] for frame in doc["hdus"]]
    return FrameIndex([str(p) for p in paths], hdus, lon, lat, log_tau)


def cached_index(cache: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> FrameIndex:
    """The frames' index, from ``cache/index.npz`` when it describes the same frames, else read and kept there."""
    cache = Path(cache)
    index = _load_index(cache, paths)
    if index is None:
        index = frame_index(paths)
        _save_index(index, cache)
    return index


def map_name(quantity: MapQuantity, log_tau: float) -> str:
    return f"map-{quantity.key}-tau{log_tau:+.1f}.png"


def map_png(cache: str | os.PathLike, paths: Sequence[str | os.PathLike], quantity: MapQuantity, log_tau: float,
            *, title: str = "") -> tuple[Path, bool]:
    """The PNG of ``quantity`` at ``log_tau`` in ``cache``, drawn first if it is not there; (path, drawn now)."""
    out = Path(cache) / map_name(quantity, log_tau)
    if out.is_file():
        return out, False
    index = cached_index(cache, paths)
    depth = index.depth_of(log_tau)
    values = read_map(index, quantity, depth)
    shown_tau = float(index.log_tau[depth])
    render_map(values, index.lon, index.lat, quantity, log_tau, out,
               title=title or f"{quantity.label}, log τ = {shown_tau:.2g}")
    return out, True
