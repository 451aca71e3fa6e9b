"""Assemble one verified ViSP dataset (arm) into a Stokes cube (DESIGN §7 step 3).

Output: a FITS file whose primary HDU is a float32 cube, numpy axes
``[stokes, map, raster step, wavelength, slit]`` (FITS ``NAXIS1`` = slit …
``NAXIS5`` = Stokes), with the L1 WCS carried over (slit, wavelength and raster axes
from the frame of Stokes I, map 0, step 0) plus a time axis for the maps and a FITS
``STOKES`` axis; then a ``FRAMES`` binary table listing every input frame (its place,
file name, ``DATE-BEG``, checksums). Frames go where their ``DINDEX`` keys say (the
inventory is already sorted that way), never where their file names would.

Continuum normalisation: every Stokes parameter is divided by one number per cube,
the continuum intensity ``Ic``. The continuum window is the contiguous run of
wavelength pixels (3 % of the axis, at least 3) with the highest mean Stokes I over a
sample of up to 8 I frames spread over the dataset (the outer 2 % of the axis is
left out); ``Ic`` is the median over all I frames of each frame's median over that
window. That light first pass reads the sample frames and only the window's rows of
the other I frames. ``Ic`` and the window are recorded in the header (``CNORM``,
``CNTWPIX1/2``, ``CNTWAV1/2``).

Streaming: the header is written first; then two worker threads each read a whole
frame into their own buffer (``readinto``; RICE frames are decompressed by astropy),
check its input checksums on those bytes, scale it in place and ``pwrite`` it at its
offset, while the main thread adds up ``DATASUM``, reports progress in frame order and
asks the kernel to start reading the next few frames (``POSIX_FADV_WILLNEED``), so the
disk reads while the workers compute;
``CHECKSUM`` is written into the header at the end; a thread of its own flushes the cube
to disk behind the writing (``fdatasync`` every ``WRITEBACK_BYTES``), so the disk writes
overlap the reading instead of all waiting for the final ``fsync``. Memory is a few frames
whatever the dataset size. (On the benchmark machine a memory map of the inputs ran at half the
speed of ``readinto``; two workers overlap one frame's disk wait with another's work.)
The file is written under a temporary name, fsynced, read back and checked
(``CHECKSUM``/``DATASUM``) and only then renamed: a worker killed at any point never
leaves a file under the final name; ``remove_partials`` clears what it left.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import queue
import re
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import astropy.table  # noqa: F401  (see below)
import numpy as np
from astropy.io import fits

from inversions.errors import DoNotRetryError, RetryError
from inversions.preprocessing import fits_checksum
from inversions.preprocessing.verify import (
    DatasetInventory,
    FrameInfo,
    check_hdu,
    verify_checksums,
    verify_checksums_parallel,
)

# ``astropy.table`` is imported here, with this module, not by the first ``FRAMES`` table:
# ``BinTableHDU`` imports it on first use, and with it the I/O registry's plugins (asdf):
# about 0.25 s, paid once by a worker process, not by every cube.

STEP = "preprocess.assemble"
CONTINUUM_FRACTION = 0.03
EDGE_FRACTION = 0.02
SAMPLE_FRAMES = 8
WORKERS = 2  # frames in work at once (threads)
READAHEAD_FRAMES = 4  # frames asked of the kernel ahead of the ones in work
WRITEBACK_BYTES = 64 * 1024 * 1024  # the cube is flushed to disk behind the writing, this much at a time
PARTIAL_SUFFIX = ".partial"
#: L1 keys copied into the cube header when present
COPIED_KEYS = (
    "TELESCOP", "OBSRVTRY", "NETWORK", "INSTRUME", "OBJECT", "TIMESYS", "DSETID", "PROP_ID",
    "EXPER_ID", "OBSPR_ID", "IP_ID", "DSP_ID", "WAVEBAND", "WAVEUNIT", "WAVEREF", "WAVEMIN",
    "WAVEMAX", "LINEWAV", "NSPECLNS", "VSPARMID", "VSPPOLMD", "VSPSLTSS", "WCSNAME", "LONPOLE",
    "LATPOLE", "SPECSYS", "VELOSYS", "RSUN_REF", "DSUN_OBS", "HGLN_OBS", "HGLT_OBS",
    "OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z",
)

ProgressCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class CubeInfo:
    """What was written: enough for the work order's manifest."""

    path: Path
    dataset_id: str
    shape: tuple[int, int, int, int, int]  # numpy [stokes, map, step, wavelength, slit]
    size: int  # bytes on disk
    frames: int
    input_bytes: int
    continuum: float  # Ic, in the L1 unit
    continuum_window: tuple[int, int]  # wavelength pixels [start, stop), 0-based
    continuum_wavelengths: tuple[float, float]  # nm, first and last pixel of the window
    sha256: str | None  # when asked for
    datasum: str
    checksum: str
    seconds: float
    timings: dict[str, float]  # seconds: continuum, frames, fsync, readback


def _fail(message: str, **details) -> DoNotRetryError:
    return DoNotRetryError(message, step=STEP, details=details)


# --------------------------------------------------------------------------- reading


def _plain(inventory: DatasetInventory, frame: FrameInfo) -> bool:
    """Uncompressed float data without scaling: read straight into a buffer."""
    h = inventory.header
    return not frame.compressed and inventory.bitpix in (-32, -64) and "BSCALE" not in h and "BZERO" not in h


class FrameReader:
    """Reads frames into one reused buffer, checking each HDU's ``DATASUM``/``CHECKSUM``
    on the bytes read when ``verify`` is set (so a dataset verified with
    ``verify_dataset(checksums=False)`` is still read, and checked, only once).

    Plain (uncompressed float) frames are read with ``readinto``: measured twice as
    fast as a memory map here, and their pages never count in the process's RSS.
    Tile-compressed frames are decompressed by astropy.
    """

    def __init__(self, inventory: DatasetInventory, *, verify: bool):
        self.inventory = inventory
        self.verify = verify
        self.dtype = np.dtype(">f4" if inventory.bitpix == -32 else ">f8")
        self.count = int(np.prod(inventory.frames[0].shape))
        self.buffer = bytearray(-(-self.count * self.dtype.itemsize // 2880) * 2880)

    def read(self, frame: FrameInfo) -> np.ndarray:
        """The frame as ``[wavelength, slit]``; for plain files a view of the reused
        buffer (valid until the next read, writable)."""
        try:
            if _plain(self.inventory, frame):
                data = self._read_plain(frame)
            else:
                if self.verify:
                    verify_checksums(frame.path, frame.regions)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with fits.open(frame.path, memmap=False) as hdul:
                        data = np.array(hdul[frame.hdu_index].data)
        except OSError as exc:
            raise RetryError(f"{frame.path.name}: cannot read ({exc})", step=STEP,
                             details={"file": str(frame.path)}) from exc
        data = data.reshape(data.shape[-2:])
        return data.T if self.inventory.spectral_fits_axis == 1 else data

    def _read_plain(self, frame: FrameInfo) -> np.ndarray:
        start, data_start, data_end = frame.regions[frame.hdu_index]
        span = data_end - data_start
        if span > len(self.buffer):
            raise _fail(f"{frame.path.name}: data larger than its frame shape", file=str(frame.path))
        view = memoryview(self.buffer)[:span]
        with open(frame.path, "rb", buffering=0) as fh:
            if self.verify:
                for index, (h0, d0, d1) in enumerate(frame.regions):
                    if index != frame.hdu_index:  # the small HDUs (the empty primary)
                        fh.seek(h0)
                        raw = fh.read(d1 - h0)
                        check_hdu(frame.path, index, raw[: d0 - h0], fits_checksum.sum32(raw[d0 - h0 :]))
                fh.seek(start)
                header_bytes = fh.read(data_start - start)
            fh.seek(data_start)
            done = 0
            while done < span:
                n = fh.readinto(view[done:])
                if not n:
                    raise _fail(f"{frame.path.name}: truncated", file=str(frame.path))
                done += n
        if self.verify:
            check_hdu(frame.path, frame.hdu_index, header_bytes, fits_checksum.sum32(view))
        return np.frombuffer(self.buffer, dtype=self.dtype, count=self.count).reshape(frame.shape)

    def rows(self, frame: FrameInfo, start: int, stop: int) -> np.ndarray:
        """Wavelength rows ``[start, stop)`` of a frame as float64 ``[rows, slit]``,
        reading little else (no checksum: a light pass)."""
        inv = self.inventory
        if inv.spectral_fits_axis == 2 and _plain(inv, frame):
            row = inv.n_slit * self.dtype.itemsize
            with open(frame.path, "rb", buffering=0) as fh:
                fh.seek(frame.data_offset + start * row)
                raw = fh.read((stop - start) * row)
            if len(raw) != (stop - start) * row:
                raise _fail(f"{frame.path.name}: truncated", file=str(frame.path))
            return np.frombuffer(raw, dtype=self.dtype).reshape(stop - start, inv.n_slit).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(frame.path, memmap=True) as hdul:
                section = hdul[frame.hdu_index].section
                if inv.spectral_fits_axis == 1:
                    return np.asarray(section[0, :, start:stop], dtype=np.float64).T
                return np.asarray(section[0, start:stop, :], dtype=np.float64)


def read_frame(inventory: DatasetInventory, frame: FrameInfo) -> np.ndarray:
    """One frame as a float64 ``[wavelength, slit]`` array (no checksum check)."""
    return np.array(FrameReader(inventory, verify=False).read(frame), dtype=np.float64)


def _mean_spectrum(frame: np.ndarray) -> np.ndarray:
    spectrum = frame.mean(axis=1, dtype=np.float64)
    if not np.isfinite(spectrum).all():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            spectrum = np.nanmean(np.asarray(frame, dtype=np.float64), axis=1)
    return spectrum


def continuum_window(inventory: DatasetInventory, reader: FrameReader | None = None) -> tuple[int, int]:
    """Wavelength pixels ``[start, stop)`` of the continuum window (see module doc)."""
    reader = reader or FrameReader(inventory, verify=False)
    n_wave = inventory.n_wave
    width = max(3, int(round(n_wave * CONTINUUM_FRACTION)))
    edge = int(n_wave * EDGE_FRACTION)
    if n_wave - 2 * edge < width:
        edge = 0
    width = min(width, n_wave)
    i_frames = [f for f in inventory.frames if f.stokes == 0]
    picks = sorted({round(i) for i in np.linspace(0, len(i_frames) - 1, min(SAMPLE_FRAMES, len(i_frames)))})
    total = np.zeros(n_wave)
    count = np.zeros(n_wave)
    for index in picks:
        spectrum = _mean_spectrum(reader.read(i_frames[index]))
        good = np.isfinite(spectrum)
        total[good] += spectrum[good]
        count[good] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    usable = mean[edge : n_wave - edge]
    if not np.isfinite(usable).any():
        raise _fail(f"dataset {inventory.dataset_id}: Stokes I has no finite values", dataset=inventory.dataset_id)
    scores = np.convolve(np.where(np.isfinite(usable), usable, -1e300), np.ones(width), mode="valid")
    start = edge + int(np.argmax(scores))
    return start, start + width


def continuum_level(inventory: DatasetInventory, window: tuple[int, int], reader: FrameReader | None = None) -> float:
    """Median over the I frames of each frame's median over the continuum window."""
    reader = reader or FrameReader(inventory, verify=False)
    medians = []
    for frame in inventory.frames:
        if frame.stokes == 0:
            rows = reader.rows(frame, *window)
            finite = rows[np.isfinite(rows)]
            if finite.size:
                medians.append(float(np.median(finite)))
    level = float(np.median(medians)) if medians else math.nan
    if not (math.isfinite(level) and level > 0):
        raise _fail(
            f"dataset {inventory.dataset_id}: no positive continuum intensity in window {window}",
            dataset=inventory.dataset_id, window=list(window),
        )
    return level


# --------------------------------------------------------------------------- header


def _seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def _wcs_suffixes(header: fits.Header) -> list[str]:
    return [s for s in [""] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] if f"CTYPE1{s}" in header]


def cube_header(
    inventory: DatasetInventory,
    *,
    window: tuple[int, int],
    level: float,
    software_version: str,
    provenance: Mapping[str, object],
) -> fits.Header:
    """Primary header of the cube, with ``CHECKSUM``/``DATASUM`` placeholders."""
    src = inventory.header
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 5
    for n, size in enumerate(reversed(inventory.cube_shape), start=1):
        h[f"NAXIS{n}"] = size
    h["EXTEND"] = True
    h["BUNIT"] = ("", "Stokes parameters / continuum intensity")
    h["BTYPE"] = "phot.flux;arith.ratio"
    h.add_comment("numpy axes: [stokes, map, raster step, wavelength, slit]")

    # WCS: cube axis -> L1 frame axis (1 slit, 2 wavelength, 3 raster)
    spatial = 3 - inventory.spectral_fits_axis
    to_frame = {1: spatial, 2: inventory.spectral_fits_axis, 3: 3}
    first, frames = inventory.frames[0], inventory.frames
    # map axis: time of each map's first frame from DATEREF (a linear approximation)
    map_cadence = _seconds_between(first.date_beg, inventory.frame(0, 1, 0).date_beg) if inventory.n_maps > 1 else 0.0
    if not map_cadence > 0:
        map_cadence = 1.0
    for s in _wcs_suffixes(src):
        h[f"WCSAXES{s}"] = 5
        for i, j in to_frame.items():
            for key in ("CTYPE", "CUNIT", "CRPIX", "CRVAL", "CDELT"):
                if f"{key}{j}{s}" in src:
                    h[f"{key}{i}{s}"] = src[f"{key}{j}{s}"]
        for i, j in to_frame.items():
            for k, m in to_frame.items():
                if f"CD{j}_{m}{s}" in src:
                    raise _fail(f"dataset {inventory.dataset_id}: CD matrix WCS is not supported", key=f"CD{j}_{m}{s}")
                value = src.get(f"PC{j}_{m}{s}", 1.0 if j == m else 0.0)
                if value != (1.0 if i == k else 0.0):
                    h[f"PC{i}_{k}{s}"] = value
        h[f"CTYPE4{s}"], h[f"CUNIT4{s}"] = "TIME", "s"
        h[f"CRPIX4{s}"], h[f"CRVAL4{s}"], h[f"CDELT4{s}"] = 1.0, 0.0, map_cadence
        h[f"CTYPE5{s}"] = "STOKES"
        h[f"CRPIX5{s}"], h[f"CRVAL5{s}"], h[f"CDELT5{s}"] = 1.0, 1.0, 1.0
    h["DATEREF"] = (first.date_beg, "time zero: first frame")

    with warnings.catch_warnings():  # a long value's comment is cut to fit the card: fine
        warnings.simplefilter("ignore")
        for key in COPIED_KEYS:
            if key in src and key not in h:
                h[key] = (src[key], src.comments[key])
    for n in range(1, int(src.get("NSPECLNS", 0)) + 1):
        if f"SPECLN{n:02d}" in src:
            h[f"SPECLN{n:02d}"] = src[f"SPECLN{n:02d}"]
    h["DATE-BEG"] = (min(f.date_beg for f in frames), "first L1 frame start")
    h["DATE-END"] = (max(f.date_beg for f in frames), "last L1 frame start")
    h["DATE"] = (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "file creation (UTC)")

    h["CNORM"] = (level, "continuum intensity Ic (L1 unit) divided out")
    h["CNTWPIX1"] = (window[0] + 1, "continuum window start pixel (1-based)")
    h["CNTWPIX2"] = (window[1], "continuum window end pixel (1-based)")
    wave = lambda p: float(h["CRVAL2"] + h["CDELT2"] * (p + 1 - h["CRPIX2"]))  # noqa: E731
    unit = h.get("CUNIT2", "")
    h["CNTWAV1"] = (wave(window[0]), f"[{unit}] continuum window start")
    h["CNTWAV2"] = (wave(window[1] - 1), f"[{unit}] continuum window end")
    h["CNTMETH"] = ("median of per-I-frame window medians", "continuum method")
    h["L2SWVER"] = (software_version, "L2 preprocessing software version")
    h["NINFILES"] = (len(frames), "L1 frames assembled (see FRAMES table)")
    h["INFPRINT"] = inventory.fingerprint  # sha256 fingerprint of the inputs
    for key, value in provenance.items():
        name = re.sub(r"[^A-Z0-9_-]", "_", str(key).upper())[:24]
        if not isinstance(value, (str, int, float, bool)):
            value = str(value)
        h[f"HIERARCH PROV {name}"] = value
    h["DATASUM"] = ("0", "data unit checksum")
    h["CHECKSUM"] = ("0" * 16, "HDU checksum")
    return h


def _frames_table(inventory: DatasetInventory) -> bytes:
    """The ``FRAMES`` binary table HDU, with checksums, as bytes."""
    frames = inventory.frames
    names = [f.path.name for f in frames]
    columns = [
        fits.Column("STOKES", "I", array=[f.stokes for f in frames]),
        fits.Column("MAP", "J", array=[f.map for f in frames]),
        fits.Column("STEP", "J", array=[f.step for f in frames]),
        fits.Column("FILENAME", f"{max(map(len, names))}A", array=names),
        fits.Column("DATE_BEG", "26A", array=[f.date_beg for f in frames]),
        fits.Column("SIZE", "K", array=[f.size for f in frames]),
        fits.Column("DATASUM", "10A", array=[f.datasum for f in frames]),
        fits.Column("CHECKSUM", "16A", array=[f.checksum for f in frames]),
        fits.Column("SHA256", "64A", array=[f.sha256 or "" for f in frames]),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="FRAMES")
    table.header["DSETID"] = inventory.dataset_id
    buffer = io.BytesIO()
    table.writeto(buffer, checksum=True)  # written after an empty primary HDU
    raw = buffer.getvalue()
    with fits.open(io.BytesIO(raw)) as hdul:
        start = hdul.fileinfo(1)["hdrLoc"]
    return raw[start:]


# --------------------------------------------------------------------------- writing


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that a rename in it is durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partials(out_path: str | Path) -> list[Path]:
    """Delete temporary files left for ``out_path`` by killed runs; return them."""
    out_path = Path(out_path)
    removed = []
    for p in out_path.parent.glob(f".{out_path.name}.*{PARTIAL_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


class _FrameJob:
    """Reads one frame, scales it into the cube's layout and writes it at its place
    (``pwrite``: frames of different workers land in order whatever the timing)."""

    def __init__(self, inventory: DatasetInventory, fd: int, data_start: int, level: float, verify: bool):
        self.reader = FrameReader(inventory, verify=verify)
        self.out = np.empty((inventory.n_wave, inventory.n_slit), dtype=">f4")
        self.fd, self.data_start, self.level = fd, data_start, level
        self.frame_bytes = self.out.nbytes

    def __call__(self, index: int, frame: FrameInfo) -> int:
        src = self.reader.read(frame)
        # scale in place when the frame buffer already has the cube's layout
        target = src if src.dtype == self.out.dtype and src.flags.c_contiguous and src.flags.writeable else self.out
        with np.errstate(invalid="ignore"):  # NaN pixels stay NaN
            np.divide(src, self.level, out=target, casting="unsafe")
        view = memoryview(target).cast("B")
        offset = self.data_start + index * self.frame_bytes
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written
        return fits_checksum.sum32(target)


class _Writeback:
    """Flushes the cube to disk while it is being written (``fdatasync`` in a thread of its
    own, each time ``WRITEBACK_BYTES`` more were written), so that the disk writes overlap
    the reading of the next frames instead of all waiting for the final ``fsync``. Memory
    stays flat: dirty pages do not pile up in the page cache (they stay cached, clean, for
    the read-back check)."""

    def __init__(self, fd: int):
        self.fd, self.flushed, self.error = fd, 0, None
        self.wanted = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="cube-writeback", daemon=True)
        self.thread.start()

    def note(self, written: int) -> None:
        if written - self.flushed >= WRITEBACK_BYTES:
            self.flushed = written
            self.wanted.set()

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.stopping:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as exc:  # the final fsync reports it again
                self.error = exc
                return

    def stop(self) -> None:
        self.stopping = True
        self.wanted.set()
        self.thread.join()


def _readahead(frame: FrameInfo) -> None:
    """Ask the kernel to start reading a frame file now (``POSIX_FADV_WILLNEED`` does not
    wait), so that the disk keeps reading while the workers are busy with numbers."""
    try:
        fd = os.open(frame.path, os.O_RDONLY)
    except OSError:
        return  # the worker's own read reports it
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_frames(
    inventory: DatasetInventory,
    fd: int,
    data_start: int,
    level: float,
    verify: bool,
    progress_cb: ProgressCallback | None,
) -> int:
    """Write every frame; return the data's ones'-complement sum.

    ``WORKERS`` threads each own a frame buffer and take frames in turn (reading, the
    numpy work and ``pwrite`` release the GIL, so one frame's disk wait overlaps
    another's work); the main thread reports progress in frame order and stops them on
    the first error, waiting until none is writing any more.
    """
    total = len(inventory.frames)
    jobs: queue.Queue = queue.Queue()
    for _ in range(WORKERS):
        jobs.put(_FrameJob(inventory, fd, data_start, level, verify))

    def run(index: int, frame: FrameInfo) -> int:
        job = jobs.get()
        try:
            return job(index, frame)
        finally:
            jobs.put(job)

    datasum = 0
    ahead = iter(inventory.frames)
    for frame in itertools.islice(ahead, WORKERS + 1 + READAHEAD_FRAMES):
        _readahead(frame)
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cube") as pool:
        pending: deque = deque()
        frames = iter(enumerate(inventory.frames))
        done = 0
        try:
            while True:
                while len(pending) < WORKERS + 1 and (item := next(frames, None)) is not None:
                    pending.append(pool.submit(run, *item))
                    if (frame := next(ahead, None)) is not None:
                        _readahead(frame)
                if not pending:
                    break
                datasum = fits_checksum.add(datasum, pending.popleft().result())
                done += 1
                if progress_cb:
                    progress_cb(done, total, data_start + done * inventory.n_wave * inventory.n_slit * 4)
        finally:
            for future in pending:
                future.cancel()
            # leaving the with-block waits for running frames: nothing writes after return
    return datasum


def assemble_cube(
    inventory: DatasetInventory,
    out_path: str | Path,
    *,
    software_version: str,
    provenance: Mapping[str, object],
    progress_cb: ProgressCallback | None = None,
    verify_inputs: bool = True,
    sha256: bool = False,
) -> CubeInfo:
    """Write the dataset's Stokes cube to ``out_path`` (atomically) and describe it.

    ``progress_cb(frames_done, frames_total, bytes_done)`` is called after each frame
    (bytes of the cube written so far); an exception from it aborts the run and
    leaves no file at ``out_path``. ``verify_inputs`` checks every input HDU's
    ``DATASUM``/``CHECKSUM`` on the bytes read for the cube (a bad one raises
    ``DoNotRetryError``). ``sha256`` adds the cube's sha256, computed while it is read
    back for the final check.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    out_path = Path(out_path)
    light = FrameReader(inventory, verify=False)
    window = continuum_window(inventory, light)
    level = continuum_level(inventory, window, light)
    del light
    timings["continuum"] = time.monotonic() - started
    header = cube_header(inventory, window=window, level=level, software_version=software_version,
                         provenance=provenance)
    header_bytes = header.tostring().encode("ascii")
    n_wave, n_slit = inventory.n_wave, inventory.n_slit
    frame_bytes = n_wave * n_slit * 4
    total_frames = len(inventory.frames)
    data_bytes = frame_bytes * total_frames
    padding = -data_bytes % 2880

    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, header_bytes)
            writeback = _Writeback(fd)

            def written(done: int, total: int, nbytes: int) -> None:
                writeback.note(nbytes)
                if progress_cb:
                    progress_cb(done, total, nbytes)

            try:
                datasum = _write_frames(inventory, fd, len(header_bytes), level, verify_inputs, written)
            finally:
                writeback.stop()
            os.lseek(fd, len(header_bytes) + data_bytes, os.SEEK_SET)
            _write_all(fd, bytes(padding))
            timings["frames"] = time.monotonic() - started - timings["continuum"]
            header["DATASUM"] = str(datasum)
            header["CHECKSUM"] = fits_checksum.checksum_value(
                fits_checksum.sum32(header.tostring().encode("ascii")), datasum
            )
            final_header = header.tostring().encode("ascii")
            if len(final_header) != len(header_bytes):  # fixed-width cards: cannot happen
                raise RuntimeError("cube header changed size")
            os.pwrite(fd, final_header, 0)
            _write_all(fd, _frames_table(inventory))
            mark = time.monotonic()
            os.fsync(fd)
            timings["fsync"] = time.monotonic() - mark
        finally:
            os.close(fd)
        # read back what is on disk: structure by astropy, checksums by a streaming pass
        mark = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(tmp, memmap=False) as hdul:
                regions = [
                    (info["hdrLoc"], info["datLoc"], info["datLoc"] + info["datSpan"])
                    for info in (hdul.fileinfo(i) for i in range(len(hdul)))
                ]
                if hdul[0].shape != inventory.cube_shape:
                    raise RuntimeError(f"cube reads back with shape {hdul[0].shape}")
        try:
            if sha256:
                digest = verify_checksums(tmp, regions, sha256=True)
            else:
                digest = None
                verify_checksums_parallel(tmp, regions, threads=WORKERS)
        except DoNotRetryError as exc:  # what we just wrote does not read back
            raise RetryError(f"cube {out_path.name} failed its read-back check: {exc}", step=STEP) from exc
        timings["readback"] = time.monotonic() - mark
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RetryError(f"writing {out_path.name}: {exc}", step=STEP, details={"file": str(out_path)}) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return CubeInfo(
        path=out_path,
        dataset_id=inventory.dataset_id,
        shape=inventory.cube_shape,
        size=out_path.stat().st_size,
        frames=total_frames,
        input_bytes=inventory.total_bytes,
        continuum=level,
        continuum_window=window,
        continuum_wavelengths=(float(header["CNTWAV1"]), float(header["CNTWAV2"])),
        sha256=digest,
        datasum=str(header["DATASUM"]),
        checksum=str(header["CHECKSUM"]),
        seconds=time.monotonic() - started,
        timings=timings,
    )
