"""Verify one dataset's L1 frames before assembly (DESIGN §7 step 2).

Checks, each failure a ``DoNotRetryError`` (step ``preprocess.verify``) that names the
file and the problem: every file opens as FITS and is complete (not truncated); the
HDUs' ``CHECKSUM``/``DATASUM`` are present and right; the headers agree across the
dataset (same ``DSETID``, dataset axes, frame shape, wavelength WCS …); every frame
of the dataset's grid is there exactly once and the count is the expected one.

The place of a frame comes only from its SPEC-214 dataset-axis keys (``DNAXISn``,
``DTYPEn``, ``DINDEXn``), never from its file name. ``DINDEX`` values are 1-based as
ViSP writes them; an axis whose indices include 0 is taken as 0-based.

Reading is streamed through one fixed buffer: memory does not grow with file or
dataset size.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from inversions.errors import DoNotRetryError
from inversions.preprocessing import fits_checksum

STEP = "preprocess.verify"
CHUNK = 2880 * 1456  # ~4 MiB, a whole number of FITS blocks
#: header keys that must be equal in every frame of a dataset
SAME_KEYS = ("DSETID", "INSTRUME", "DNAXIS", "DAAXES", "DEAXES", "BITPIX", "NAXIS")
#: numeric WCS keys of the array axes compared with a relative tolerance
WCS_TOLERANCE = 1e-9

ProgressCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class FrameInfo:
    """One L1 frame: where it is, where it goes, and what was verified."""

    path: Path
    stokes: int  # 0-based positions in the dataset
    map: int
    step: int
    shape: tuple[int, ...]  # numpy shape of the frame in its file
    hdu_index: int
    data_offset: int  # byte offset of the data (meaningful when not compressed)
    compressed: bool
    date_beg: str
    size: int
    datasum: str
    checksum: str
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetInventory:
    """A verified dataset: its grid and its frames sorted by (stokes, map, step)."""

    dataset_id: str
    instrument: str
    stokes: str  # "IQUV" or "I"
    n_maps: int
    n_steps: int
    n_wave: int
    n_slit: int
    spectral_fits_axis: int  # FITS axis of the frame holding wavelength (1 or 2)
    bitpix: int
    frames: tuple[FrameInfo, ...]
    header: fits.Header = field(repr=False)  # header of the first frame (I, map 0, step 0)

    @property
    def n_stokes(self) -> int:
        return len(self.stokes)

    @property
    def cube_shape(self) -> tuple[int, int, int, int, int]:
        """numpy shape of the assembled cube ``[stokes, map, step, wavelength, slit]``."""
        return (self.n_stokes, self.n_maps, self.n_steps, self.n_wave, self.n_slit)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.frames)

    def frame(self, stokes: int, map_: int, step: int) -> FrameInfo:
        return self.frames[(stokes * self.n_maps + map_) * self.n_steps + step]

    @property
    def fingerprint(self) -> str:
        """sha256 over every frame's name, size, ``DATASUM``, ``CHECKSUM`` (and sha256
        when computed): the "input checksum" of the dataset, independent of folder."""
        digest = hashlib.sha256()
        for f in self.frames:
            digest.update(f"{f.path.name} {f.size} {f.datasum} {f.checksum} {f.sha256 or ''}\n".encode())
        return digest.hexdigest()


def file_checksum(path: str | Path, *, algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed (constant memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def _fail(message: str, path: Path | None = None, **details) -> DoNotRetryError:
    if path is not None:
        details["file"] = str(path)
    return DoNotRetryError(message, step=STEP, details=details)


@dataclass
class _Parsed:
    path: Path
    header: fits.Header
    hdu_index: int
    compressed: bool
    regions: list[tuple[int, int, int]]  # (header start, data start, data end) per HDU
    size: int


def _open_headers(path: Path) -> _Parsed:
    """Headers and HDU layout of one file; errors name the file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(f"{path.name}: cannot read ({exc.strerror})", path) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                regions = []
                data_hdu = None
                for i, hdu in enumerate(hdul):
                    info = hdul.fileinfo(i)
                    regions.append((info["hdrLoc"], info["datLoc"], info["datLoc"] + info["datSpan"]))
                    if data_hdu is None and (
                        isinstance(hdu, fits.CompImageHDU)
                        or (isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) > 0)
                    ):
                        data_hdu = i
                header = hdul[data_hdu].header.copy() if data_hdu is not None else None
                compressed = data_hdu is not None and isinstance(hdul[data_hdu], fits.CompImageHDU)
    except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
        raise _fail(f"{path.name}: not a readable FITS file ({exc})", path) from exc
    end = regions[-1][2] if regions else 0
    if size < end:
        raise _fail(f"{path.name}: truncated ({size} bytes, its headers need {end})", path, size=size, expected=end)
    if data_hdu is None:
        detail = "truncated or not an L1 frame" if size > end else "not an L1 frame"
        raise _fail(f"{path.name}: no image HDU ({detail})", path)
    return _Parsed(path, header, data_hdu, compressed, regions, size)


def _card_value(header_bytes: bytes, key: str) -> str | None:
    """Value of a string or integer card in raw header bytes (CHECKSUM, DATASUM)."""
    prefix = key.encode().ljust(8) + b"="
    for i in range(0, len(header_bytes), 80):
        card = header_bytes[i : i + 80]
        if card.startswith(prefix):
            value = card[10:].split(b"/", 1)[0].strip()
            return value.strip(b"'").strip().decode("ascii", "replace")
        if card.startswith(b"END     "):
            break
    return None


def verify_checksums(
    path: Path,
    regions: Sequence[tuple[int, int, int]],
    *,
    buffer: bytearray | None = None,
    sha256: bool = False,
) -> tuple[str, str, str | None]:
    """Check ``CHECKSUM``/``DATASUM`` of every HDU in one streaming pass.

    Returns (DATASUM, CHECKSUM) of the last HDU and the file's sha256 when asked.
    """
    buffer = buffer if buffer is not None else bytearray(CHUNK)
    view = memoryview(buffer)
    digest = hashlib.sha256() if sha256 else None
    datasum = checksum = ""
    with open(path, "rb", buffering=0) as fh:
        for index, (start, data_start, data_end) in enumerate(regions):
            fh.seek(start)
            header_bytes = fh.read(data_start - start)
            if digest:
                digest.update(header_bytes)
            checksum = _card_value(header_bytes, "CHECKSUM") or ""
            datasum = _card_value(header_bytes, "DATASUM") or ""
            if not checksum or not datasum:
                raise _fail(f"{path.name}: HDU {index} has no CHECKSUM/DATASUM", path, hdu=index)
            total = 0
            remaining = data_end - data_start
            while remaining:
                n = fh.readinto(view[: min(len(buffer), remaining)])
                if not n:
                    raise _fail(f"{path.name}: truncated in HDU {index}", path, hdu=index)
                chunk = view[:n]
                total = fits_checksum.sum32(chunk, total) if n % 4 == 0 else _odd_sum(chunk, total)
                if digest:
                    digest.update(chunk)
                remaining -= n
            if str(total) != datasum:
                raise _fail(
                    f"{path.name}: DATASUM of HDU {index} does not match its data (checksum failed)",
                    path, hdu=index, expected=datasum, computed=str(total),
                )
            if fits_checksum.add(fits_checksum.sum32(header_bytes), total) != fits_checksum.ALL_ONES:
                raise _fail(f"{path.name}: CHECKSUM of HDU {index} does not verify (checksum failed)", path, hdu=index)
        if digest:
            while n := fh.readinto(buffer):  # anything after the last HDU
                digest.update(view[:n])
    return datasum, checksum, digest.hexdigest() if digest else None


def _odd_sum(chunk: memoryview, total: int) -> int:
    """sum32 of a piece whose length is not a multiple of 4 (only a damaged file's last read)."""
    padded = bytes(chunk) + b"\0" * (-len(chunk) % 4)
    return fits_checksum.sum32(padded, total)


@dataclass(frozen=True)
class _Axes:
    step: int  # dataset axis numbers (1-based, FITS order); 0 when absent
    map: int
    stokes: int
    spectral: int  # 1 or 2: the array axis with DTYPE SPECTRAL


def _dataset_axes(header: fits.Header, path: Path) -> _Axes:
    try:
        dnaxis, daaxes = int(header["DNAXIS"]), int(header["DAAXES"])
        dtypes = {d: str(header[f"DTYPE{d}"]).strip().upper() for d in range(1, dnaxis + 1)}
        sizes = {d: int(header[f"DNAXIS{d}"]) for d in range(1, dnaxis + 1)}
    except KeyError as exc:
        raise _fail(f"{path.name}: missing dataset axis key {exc.args[0]}", path, key=exc.args[0]) from exc
    if daaxes != 2 or sorted(dtypes[d] for d in (1, 2)) != ["SPATIAL", "SPECTRAL"]:
        raise _fail(
            f"{path.name}: array axes are not one SPECTRAL and one SPATIAL axis (DAAXES={daaxes})",
            path, key="DTYPE1",
        )
    found: dict[str, int] = {}
    names = {"SPATIAL": "step", "TEMPORAL": "map", "STOKES": "stokes"}
    for d in range(daaxes + 1, dnaxis + 1):
        role = names.get(dtypes[d])
        if role is None or role in found:
            raise _fail(f"{path.name}: unsupported dataset axis DTYPE{d}={dtypes[d]!r}", path, key=f"DTYPE{d}")
        found[role] = d
    if "step" not in found:
        raise _fail(f"{path.name}: no raster step axis (a SPATIAL axis outside the array)", path, key="DTYPEn")
    if "stokes" in found and sizes[found["stokes"]] not in (1, 4):
        raise _fail(f"{path.name}: Stokes axis of length {sizes[found['stokes']]}", path, key=f"DNAXIS{found['stokes']}")
    return _Axes(found["step"], found.get("map", 0), found.get("stokes", 0), 1 if dtypes[1] == "SPECTRAL" else 2)


def _compare(reference: _Parsed, other: _Parsed, keys: Iterable[str]) -> None:
    for key in keys:
        a, b = reference.header.get(key), other.header.get(key)
        if isinstance(a, float) or isinstance(b, float):
            same = a is not None and b is not None and np.isclose(a, b, rtol=WCS_TOLERANCE, atol=0.0)
        else:
            same = a == b
        if not same:
            raise _fail(
                f"{other.path.name}: header {key}={b!r} differs from the dataset's {key}={a!r} "
                f"(in {reference.path.name})",
                other.path, key=key, value=repr(b), expected=repr(a),
            )


def verify_dataset(
    paths: Iterable[str | Path],
    expected_frames: int,
    *,
    sha256: bool = False,
    progress_cb: ProgressCallback | None = None,
) -> DatasetInventory:
    """Verify one dataset's frame files and return its inventory.

    ``expected_frames`` is the metadata store's ``frameCount``. ``sha256`` adds each
    file's sha256 to the inventory (same pass). ``progress_cb(files_done, files_total,
    bytes_done)`` is called after each file's checksum pass.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise _fail("no L1 files for the dataset", expected=expected_frames)

    parsed = [_open_headers(p) for p in paths]
    ref = parsed[0]
    axes = _dataset_axes(ref.header, ref.path)
    dnaxis = int(ref.header["DNAXIS"])
    keys = list(SAME_KEYS)
    keys += [f"NAXIS{n}" for n in range(1, int(ref.header.get("NAXIS", 0)) + 1)]
    keys += [f"{k}{d}" for d in range(1, dnaxis + 1) for k in ("DNAXIS", "DTYPE")]
    keys += [f"{k}{n}" for n in range(1, int(ref.header.get("WCSAXES", ref.header.get("NAXIS", 0))) + 1)
             for k in ("CTYPE", "CUNIT")]
    keys += [f"{k}{axes.spectral}" for k in ("CRPIX", "CRVAL", "CDELT")]
    for other in parsed[1:]:
        _compare(ref, other, keys)

    h = ref.header
    n_wave = int(h[f"DNAXIS{axes.spectral}"])
    n_slit = int(h[f"DNAXIS{3 - axes.spectral}"])
    shape = tuple(int(h[f"NAXIS{n}"]) for n in range(int(h["NAXIS"]), 0, -1))
    if int(np.prod(shape)) != n_wave * n_slit or h.get(f"NAXIS{axes.spectral}") != n_wave:
        raise _fail(f"{ref.path.name}: frame shape {shape} does not match DNAXIS1/DNAXIS2", ref.path, key="NAXIS")
    sizes = {role: (int(h[f"DNAXIS{d}"]) if d else 1) for role, d in
             (("stokes", axes.stokes), ("map", axes.map), ("step", axes.step))}
    grid_total = sizes["stokes"] * sizes["map"] * sizes["step"]
    if grid_total != expected_frames:
        raise _fail(
            f"the dataset's axes describe {grid_total} frames "
            f"({sizes['stokes']} Stokes × {sizes['map']} maps × {sizes['step']} steps) "
            f"but {expected_frames} were expected",
            expected=expected_frames, described=grid_total,
        )

    # positions from DINDEX
    raw: dict[str, list[int]] = {}
    for role, d in (("stokes", axes.stokes), ("map", axes.map), ("step", axes.step)):
        values = []
        for p in parsed:
            if not d:
                values.append(1)
                continue
            try:
                values.append(int(p.header[f"DINDEX{d}"]))
            except (KeyError, ValueError) as exc:
                raise _fail(f"{p.path.name}: missing or bad DINDEX{d}", p.path, key=f"DINDEX{d}") from exc
        base = 0 if min(values) == 0 else 1
        raw[role] = [v - base for v in values]
        for p, v in zip(parsed, raw[role]):
            if not 0 <= v < sizes[role]:
                raise _fail(
                    f"{p.path.name}: DINDEX{d}={v + base} outside 1…{sizes[role]}", p.path, key=f"DINDEX{d}"
                )
    seen: dict[tuple[int, int, int], _Parsed] = {}
    for i, p in enumerate(parsed):
        position = (raw["stokes"][i], raw["map"][i], raw["step"][i])
        if position in seen:
            raise _fail(
                f"{p.path.name} and {seen[position].path.name} are the same frame "
                f"(stokes {position[0]}, map {position[1]}, step {position[2]})",
                p.path, other=str(seen[position].path), position=list(position),
            )
        seen[position] = p
    missing = [
        (k, m, s) for k in range(sizes["stokes"]) for m in range(sizes["map"]) for s in range(sizes["step"])
        if (k, m, s) not in seen
    ]
    if missing:
        shown = ", ".join(f"(stokes {k}, map {m}, step {s})" for k, m, s in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise _fail(
            f"{len(missing)} of {expected_frames} frames missing (0-based): {shown}{more}",
            missing=[list(x) for x in missing[:1000]], count=len(missing), expected=expected_frames,
        )

    # checksums, one streaming pass per file
    buffer = bytearray(CHUNK)
    frames: list[FrameInfo] = []
    bytes_done = 0
    order = sorted(seen)
    for n, position in enumerate(order, start=1):
        p = seen[position]
        datasum, checksum, digest = verify_checksums(p.path, p.regions, buffer=buffer, sha256=sha256)
        bytes_done += p.size
        frames.append(FrameInfo(
            path=p.path, stokes=position[0], map=position[1], step=position[2], shape=shape,
            hdu_index=p.hdu_index, data_offset=p.regions[p.hdu_index][1], compressed=p.compressed,
            date_beg=str(p.header.get("DATE-BEG", "")), size=p.size, datasum=datasum,
            checksum=checksum, sha256=digest,
        ))
        if progress_cb:
            progress_cb(n, len(order), bytes_done)

    first = seen[order[0]]
    stokes = "IQUV" if sizes["stokes"] == 4 else "I"
    return DatasetInventory(
        dataset_id=str(h["DSETID"]), instrument=str(h["INSTRUME"]), stokes=stokes,
        n_maps=sizes["map"], n_steps=sizes["step"], n_wave=n_wave, n_slit=n_slit,
        spectral_fits_axis=axes.spectral, bitpix=int(h["BITPIX"]), frames=tuple(frames),
        header=first.header,
    )

