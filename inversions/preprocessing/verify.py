"""Verify one dataset's L1 frames before assembly (DESIGN §7 step 2).

Checks, each failure a ``DoNotRetryError`` (step ``preprocess.verify``) that names the
file and the problem: every file opens as FITS and is complete (not truncated); the
HDUs' ``CHECKSUM``/``DATASUM`` are present and right; the headers agree across the
dataset (same ``DSETID``, dataset axes, frame shape, wavelength WCS …); every frame
of the dataset's grid is there exactly once and the count is the expected one.

The place of a frame comes only from its SPEC-214 dataset-axis keys (``DNAXISn``,
``DTYPEn``, ``DINDEXn``), never from its file name. ``DINDEX`` values are 1-based as
ViSP writes them; an axis whose indices include 0 is taken as 0-based.

Reading is streamed through a few fixed 4 MiB buffers (two files at a time; sha256, when
asked, in a helper thread): memory does not grow with file or dataset size.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from inversions.errors import DoNotRetryError
from inversions.preprocessing import fits_checksum

STEP = "preprocess.verify"
BLOCK = 2880
MAX_HEADER = BLOCK * 2000
CHUNK = BLOCK * 1456  # ~4 MiB, a whole number of FITS blocks
CHECKSUM_THREADS = 2
HEADER_THREADS = 4
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
    datasum: str  # DATASUM and CHECKSUM cards of the image HDU
    checksum: str
    regions: tuple[tuple[int, int, int], ...] = ()  # (header start, data start, data end) per HDU
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
        """sha256 over every frame's place, file name, size, ``DATASUM`` and ``CHECKSUM``:
        the "input checksum" of the dataset, independent of its folder and of whether
        per-file sha256 sums were computed."""
        digest = hashlib.sha256()
        for f in self.frames:
            digest.update(f"{f.stokes} {f.map} {f.step} {f.path.name} {f.size} {f.datasum} {f.checksum}\n".encode())
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
    header: fits.Header | None  # of the image HDU, as an image header (compressed: Z keys mapped)
    hdu_index: int
    compressed: bool
    regions: tuple[tuple[int, int, int], ...]  # (header start, data start, data end) per HDU
    size: int
    datasum: str
    checksum: str
    dindex: dict[str, int] = field(default_factory=dict)  # raw DINDEX per role
    date_beg: str = ""


def _bounded_map(fn: Callable, items: Iterable, workers: int, window: int = 32) -> Iterator:
    """``map(fn, items)`` in ``workers`` threads, in order, at most ``window`` ahead."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _consistency_keys(header: fits.Header, axes: "_Axes") -> list[str]:
    keys = list(SAME_KEYS)
    keys += [f"NAXIS{n}" for n in range(1, int(header.get("NAXIS", 0)) + 1)]
    keys += [f"{k}{d}" for d in range(1, int(header["DNAXIS"]) + 1) for k in ("DNAXIS", "DTYPE")]
    keys += [f"{k}{n}" for n in range(1, int(header.get("WCSAXES", header.get("NAXIS", 0))) + 1)
             for k in ("CTYPE", "CUNIT")]
    keys += [f"{k}{axes.spectral}" for k in ("CRPIX", "CRVAL", "CDELT")]
    return keys


def _dindex(p: "_Parsed", axes: "_Axes") -> dict[str, int]:
    values = {}
    for role, d in (("stokes", axes.stokes), ("map", axes.map), ("step", axes.step)):
        if not d:
            values[role] = 1
            continue
        try:
            values[role] = int(p.header[f"DINDEX{d}"])
        except (KeyError, ValueError, TypeError) as exc:
            raise _fail(f"{p.path.name}: missing or bad DINDEX{d}", p.path, key=f"DINDEX{d}") from exc
    return values


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


def _header_blocks(fh, path: Path, start: int) -> bytes:
    """The header starting at ``start``: whole 2880-byte blocks up to the END card."""
    fh.seek(start)
    blocks = bytearray()
    while True:
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise _fail(f"{path.name}: truncated (the file ends inside the header at byte {start})", path)
        blocks += block
        for i in range(0, BLOCK, 80):
            if block[i : i + 3] == b"END" and not block[i + 3 : i + 80].strip():
                return bytes(blocks)
        if len(blocks) > MAX_HEADER:
            raise _fail(f"{path.name}: not a readable FITS file (no END card)", path)


def _data_size(header: fits.Header) -> int:
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = int(np.prod([int(header[f"NAXIS{n}"]) for n in range(1, naxis + 1)], dtype=np.int64))
    return abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)


def _image_view(header: fits.Header) -> fits.Header:
    """A tile-compressed HDU's header seen as the image it holds (BITPIX, NAXISn)."""
    image = header.copy()
    image["BITPIX"] = header["ZBITPIX"]
    image["NAXIS"] = header["ZNAXIS"]
    for n in range(1, int(header["ZNAXIS"]) + 1):
        image[f"NAXIS{n}"] = header[f"ZNAXIS{n}"]
    return image


def scan_hdus(path: Path, size: int) -> list[tuple[int, int, int, fits.Header, bytes]]:
    """Every HDU of a FITS file as (header start, data start, data end incl. padding,
    header, raw header bytes), read from the headers alone. Errors name the file."""
    hdus = []
    position = 0
    with open(path, "rb") as fh:
        if fh.read(9) != b"SIMPLE  =":
            raise _fail(f"{path.name}: not a readable FITS file (no SIMPLE card)", path)
        while position < size:
            raw = _header_blocks(fh, path, position)
            try:
                header = fits.Header.fromstring(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _fail(f"{path.name}: not a readable FITS file (bad header: {exc})", path) from exc
            if not hdus and header.get("SIMPLE") is not True:
                raise _fail(f"{path.name}: not a readable FITS file (no SIMPLE = T)", path)
            try:
                nbytes = _data_size(header)
            except (KeyError, ValueError, TypeError) as exc:
                raise _fail(f"{path.name}: not a readable FITS file (bad {exc})", path) from exc
            data_start = position + len(raw)
            data_end = data_start + -(-nbytes // BLOCK) * BLOCK
            hdus.append((position, data_start, data_end, header, raw))
            position = data_end
    if position > size:
        raise _fail(f"{path.name}: truncated ({size} bytes, its headers need {position})", path,
                    size=size, expected=position)
    return hdus


def _open_headers(path: Path) -> _Parsed:
    """Headers and HDU layout of one frame file; errors name the file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(f"{path.name}: cannot read ({exc.strerror})", path) from exc
    if size == 0:
        raise _fail(f"{path.name}: not a readable FITS file (empty)", path)
    try:
        hdus = scan_hdus(path, size)
    except OSError as exc:
        raise _fail(f"{path.name}: cannot read ({exc})", path) from exc
    for index, (_, _, _, header, raw) in enumerate(hdus):
        compressed = header.get("ZIMAGE") is True
        image = index == 0 or header.get("XTENSION", "").strip() == "IMAGE"
        if compressed or (image and int(header.get("NAXIS", 0)) > 0):
            view = _image_view(header) if compressed else header
            return _Parsed(
                path=path, header=view, hdu_index=index, compressed=compressed,
                regions=tuple((a, b, c) for a, b, c, _, _ in hdus), size=size,
                datasum=_card_value(raw, "DATASUM") or "", checksum=_card_value(raw, "CHECKSUM") or "",
            )
    raise _fail(f"{path.name}: no image HDU (not an L1 frame)", path)


class _Hasher:
    """sha256 fed from the reading thread and computed in a helper thread (hashlib
    releases the GIL), through a small ring of reusable chunk buffers."""

    def __init__(self, enabled: bool, buffers: int = 3):
        self.digest = hashlib.sha256() if enabled else None
        self.pool = ThreadPoolExecutor(1) if enabled else None
        self.buffers = [bytearray(CHUNK) for _ in range(buffers if enabled else 1)]
        self.pending: deque = deque()
        self.turn = 0

    def buffer(self) -> bytearray:
        """The next buffer of the ring, once no pending hash reads it any more."""
        if self.digest is not None:
            while len(self.pending) >= len(self.buffers) - 1:
                self.pending.popleft().result()
        buf = self.buffers[self.turn % len(self.buffers)]
        self.turn += 1
        return buf

    def update(self, data) -> None:
        if self.digest is not None:
            self.pending.append(self.pool.submit(self.digest.update, data))

    def hexdigest(self) -> str | None:
        if self.digest is None:
            return None
        while self.pending:
            self.pending.popleft().result()
        return self.digest.hexdigest()

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)


def check_hdu(path: Path, index: int, header_bytes: bytes, data_sum: int) -> None:
    """Raise unless the HDU's ``DATASUM`` is ``data_sum`` and its ``CHECKSUM`` verifies."""
    datasum = _card_value(header_bytes, "DATASUM")
    if not datasum or not _card_value(header_bytes, "CHECKSUM"):
        raise _fail(f"{path.name}: HDU {index} has no CHECKSUM/DATASUM", path, hdu=index)
    if datasum != str(data_sum):
        raise _fail(
            f"{path.name}: DATASUM of HDU {index} does not match its data (checksum failed)",
            path, hdu=index, expected=datasum, computed=str(data_sum),
        )
    if fits_checksum.add(fits_checksum.sum32(header_bytes), data_sum) != fits_checksum.ALL_ONES:
        raise _fail(f"{path.name}: CHECKSUM of HDU {index} does not verify (checksum failed)", path, hdu=index)


def _sum_range(path: Path, start: int, end: int) -> int:
    """Ones'-complement sum of the bytes ``[start, end)`` of a file (4-aligned), streamed."""
    buffer = bytearray(CHUNK)
    total = 0
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        remaining = end - start
        while remaining:
            n = fh.readinto(memoryview(buffer)[: min(len(buffer), remaining)])
            if not n:
                raise _fail(f"{path.name}: truncated", path)
            total = fits_checksum.sum32(memoryview(buffer)[:n], total)
            remaining -= n
    return total


def verify_checksums_parallel(path: Path, regions: Sequence[tuple[int, int, int]], threads: int = 2) -> None:
    """``verify_checksums`` without sha256, each HDU's data summed in ``threads`` slices
    at once (the sum is additive): for reading back one large file."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for index, (start, data_start, data_end) in enumerate(regions):
            with open(path, "rb") as fh:
                fh.seek(start)
                header_bytes = fh.read(data_start - start)
            step = -(-(data_end - data_start) // threads // CHUNK) * CHUNK or CHUNK
            cuts = list(range(data_start, data_end, step)) + [data_end]
            sums = pool.map(lambda a_b: _sum_range(path, *a_b), zip(cuts[:-1], cuts[1:]))
            total = 0
            for part in sums:
                total = fits_checksum.add(total, part)
            check_hdu(path, index, header_bytes, total)


def verify_checksums(
    path: Path,
    regions: Sequence[tuple[int, int, int]],
    *,
    sha256: bool = False,
) -> str | None:
    """Check ``CHECKSUM``/``DATASUM`` of every HDU (``regions`` as from ``scan_hdus``)
    in one streaming pass; return the file's sha256 when asked."""
    hasher = _Hasher(sha256)
    try:
        with open(path, "rb", buffering=0) as fh:
            for index, (start, data_start, data_end) in enumerate(regions):
                fh.seek(start)
                header_bytes = fh.read(data_start - start)
                hasher.update(header_bytes)
                total = 0
                remaining = data_end - data_start
                while remaining:
                    buffer = hasher.buffer()
                    n = fh.readinto(memoryview(buffer)[: min(len(buffer), remaining)])
                    if not n:
                        raise _fail(f"{path.name}: truncated in HDU {index}", path, hdu=index)
                    chunk = memoryview(buffer)[:n]
                    total = fits_checksum.sum32(chunk, total) if n % 4 == 0 else _odd_sum(chunk, total)
                    hasher.update(chunk)
                    remaining -= n
                check_hdu(path, index, header_bytes, total)
            if sha256:
                while True:  # anything after the last HDU
                    buffer = hasher.buffer()
                    n = fh.readinto(buffer)
                    if not n:
                        break
                    hasher.update(memoryview(buffer)[:n])
        return hasher.hexdigest()
    finally:
        hasher.close()


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
    checksums: bool = True,
    sha256: bool = False,
    progress_cb: ProgressCallback | None = None,
) -> DatasetInventory:
    """Verify one dataset's frame files and return its inventory.

    ``expected_frames`` is the metadata store's ``frameCount``. ``checksums=False``
    skips the full read that checks ``CHECKSUM``/``DATASUM`` (only headers are read):
    for callers that let ``assemble_cube(verify_inputs=True)`` check them while it
    reads each frame anyway, so the data are read once. ``sha256`` adds each file's
    sha256 (same pass; needs ``checksums``). ``progress_cb(files_done, files_total,
    bytes_done)`` is called after each file's checksum pass.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise _fail("no L1 files for the dataset", expected=expected_frames)

    # headers: read by a few threads (the disk waits overlap), compared with the first
    # file's as they come, then dropped: only a few numbers per frame are kept
    parsed: list[_Parsed] = []
    with closing(_bounded_map(_open_headers, paths, HEADER_THREADS)) as results:
        for p in results:
            if not parsed:
                ref = p
                axes = _dataset_axes(ref.header, ref.path)
                keys = _consistency_keys(ref.header, axes)
            else:
                _compare(ref, p, keys)
            p.dindex = _dindex(p, axes)
            p.date_beg = str(p.header.get("DATE-BEG", ""))
            if parsed:
                p.header = None
            parsed.append(p)

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
        values = [p.dindex[role] for p in parsed]
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

    # checksums: one streaming pass per file, two files at a time (reads and sums release the GIL)
    order = sorted(seen)
    results: dict[tuple[int, int, int], str | None] = {pos: None for pos in order}
    if checksums:
        bytes_done = 0
        with ThreadPoolExecutor(max_workers=CHECKSUM_THREADS) as pool:
            futures = [pool.submit(verify_checksums, seen[pos].path, seen[pos].regions, sha256=sha256)
                       for pos in order]
            try:
                for n, (position, future) in enumerate(zip(order, futures), start=1):
                    results[position] = future.result()
                    bytes_done += seen[position].size
                    if progress_cb:
                        progress_cb(n, len(order), bytes_done)
            finally:
                for future in futures:
                    future.cancel()
    frames = [
        FrameInfo(
            path=p.path, stokes=pos[0], map=pos[1], step=pos[2], shape=shape, hdu_index=p.hdu_index,
            data_offset=p.regions[p.hdu_index][1], compressed=p.compressed,
            date_beg=p.date_beg, size=p.size, datasum=p.datasum,
            checksum=p.checksum, regions=p.regions, sha256=results[pos],
        )
        for pos, p in ((pos, seen[pos]) for pos in order)
    ]

    first = _open_headers(seen[order[0]].path)  # the header of (I, map 0, step 0)
    stokes = "IQUV" if sizes["stokes"] == 4 else "I"
    return DatasetInventory(
        dataset_id=str(h["DSETID"]), instrument=str(h["INSTRUME"]), stokes=stokes,
        n_maps=sizes["map"], n_steps=sizes["step"], n_wave=n_wave, n_slit=n_slit,
        spectral_fits_axis=axes.spectral, bitpix=int(h["BITPIX"]), frames=tuple(frames),
        header=first.header,
    )

