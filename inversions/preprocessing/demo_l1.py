"""Many small demo L1 frames, fast: the embedded default's "L1 collection" (DESIGN §3).

``l1_frames.write_demo_dataset`` builds every frame through astropy (a few ms a frame);
the fixture programs' datasets have 850 to 2,000 frames each, so the embedded default
would wait a minute for its demo files. :func:`write_small_dataset` writes the same
frames — the same SPEC-214 header (``l1_frames._template_header``), the same per-frame
keys, uncompressed HDU 1, ``CHECKSUM``/``DATASUM`` on both HDUs — by building the
first frame with astropy and then patching the per-frame cards and the data of a copy
of its bytes for every other frame (the card images still come from astropy's
``Card``). About 0.2 ms a frame.

No Django here.
"""
from __future__ import annotations

import io
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from inversions.preprocessing import fits_checksum
from inversions.preprocessing.l1_frames import BBox, _fields, _iso, _template_header, parse_bbox, synthetic_stokes

CARD = 80
BLOCK = 2880
ZERO_CHECKSUM = "0" * 16


def _card(key: str, value, comment: str = "") -> bytes:
    return fits.Card(key, value, comment).image.encode("ascii")


def _string_card(key: str, value: str, comment: str = "") -> bytes:
    """A short string card as astropy formats it (checked against astropy for each key once)."""
    quoted = "'" + f"{value:<8}" + "'"
    text = f"{key:<8}= {quoted:<20}"
    if comment:
        text += f" / {comment}"
    return text[:CARD].ljust(CARD).encode("ascii")


def write_small_dataset(
    folder: str | Path,
    dataset_id: str,
    *,
    n_steps: int,
    n_maps: int = 1,
    stokes: str = "IQUV",
    n_wave: int = 32,
    n_slit: int = 24,
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
) -> list[Path]:
    """Write one ViSP dataset (one uncompressed FITS file per frame) into ``folder``.

    The frames are those ``write_demo_dataset(..., compress=False)`` writes for the same
    arguments (file names and noise differ); each file is written under a temporary
    name and renamed. Returns the paths sorted by name.
    """
    if stokes not in ("IQUV", "I"):
        raise ValueError("stokes must be 'IQUV' or 'I'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = datetime.fromisoformat(start_time) if isinstance(start_time, str) else start_time
    template = _template_header(
        dataset_id=dataset_id, n_steps=n_steps, n_maps=n_maps, stokes=stokes, n_wave=n_wave, n_slit=n_slit,
        wavelength_range=wavelength_range, box=parse_bbox(bbox), proposal_id=proposal_id,
        experiment_id=experiment_id, observing_program_id=observing_program_id,
        instrument_program_id=instrument_program_id, arm_id=arm_id, spectral_fits_axis=2,
        step_cadence_s=step_cadence_s,
    )
    n_stokes = len(stokes)
    stokes_axis = template["DNAXIS"] if n_stokes > 1 else None
    map_axis = 4 if n_maps > 1 else None
    exposure = min(step_cadence_s / 2.0, 1.0)
    frame_bytes = n_wave * n_slit * 4
    data_span = frame_bytes + (-frame_bytes % BLOCK)

    # the first frame through astropy: the byte layout every other frame copies
    h = template.copy()
    for key, value in (("FILE_ID", "0" * 32), ("FILENAME", "0" * 32 + ".fits"), ("DATE", _iso(datetime.now())),
                       ("DATE-BEG", _iso(t0)), ("DATE-AVG", _iso(t0)), ("DATE-END", _iso(t0)),
                       ("DATEREF", _iso(t0)), ("TELAPSE", float(exposure)), ("CRPIX3", 1.0), ("VSPSTP", 1),
                       ("VSPMAP", 1), ("DSPSNUM", 1), ("STOKES", stokes[0]),
                       ("FRAMEVOL", round(frame_bytes / 1e6, 3)), ("DINDEX3", 1)):
        h[key] = value
    if map_axis:
        h[f"DINDEX{map_axis}"] = 1
    if stokes_axis:
        h[f"DINDEX{stokes_axis}"] = 1
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((1, n_wave, n_slit), ">f4"), header=h)]).writeto(
        buffer, checksum=True
    )
    raw = buffer.getvalue()
    with fits.open(io.BytesIO(raw)) as hdul:
        header_start, data_start = hdul.fileinfo(1)["hdrLoc"], hdul.fileinfo(1)["datLoc"]
        comments = {card.keyword: card.comment for card in hdul[1].header.cards}
    primary = raw[:header_start]
    header = bytearray(raw[header_start:data_start])
    where = {header[i : i + 8].decode("ascii").strip(): i for i in range(0, len(header), CARD)}
    header[where["CHECKSUM"] : where["CHECKSUM"] + CARD] = _card("CHECKSUM", ZERO_CHECKSUM, comments["CHECKSUM"])

    def put(key: str, image: bytes) -> None:
        header[where[key] : where[key] + CARD] = image

    cached: dict[tuple[str, object], bytes] = {}

    fast_ok: dict[str, bool] = {}

    def string_card(key: str, value: str) -> bytes:
        image = _string_card(key, value, comments.get(key, ""))
        if key not in fast_ok:
            fast_ok[key] = image == _card(key, value, comments.get(key, ""))
        return image if fast_ok[key] else _card(key, value, comments.get(key, ""))

    def card(key: str, value) -> bytes:
        image = cached.get((key, value))
        if image is None:
            image = cached[(key, value)] = _card(key, value, comments.get(key, ""))
        return image

    fields = _fields(rng, n_steps, n_slit)
    wavelength = np.linspace(wavelength_range[0], wavelength_range[1], n_wave)
    data = bytearray(data_span)
    paths: list[Path] = []
    for m in range(n_maps):
        for s in range(n_steps):
            evolve = 1.0 + 0.01 * m
            spectra = synthetic_stokes(
                wavelength, fields["continuum"][s] * evolve, fields["velocity"][s] * evolve,
                fields["b_los"][s], fields["b_perp"][s], fields["azimuth"][s],
            )
            begin = t0 + timedelta(seconds=(m * n_steps + s) * step_cadence_s)
            for key, value in (("DATE-BEG", _iso(begin)), ("DATE-AVG", _iso(begin + timedelta(seconds=exposure / 2))),
                               ("DATE-END", _iso(begin + timedelta(seconds=exposure))), ("DATEREF", _iso(begin)),
                               ("CRPIX3", 1.0 + n_steps / 2.0 - (s + 0.5)), ("VSPSTP", s + 1), ("VSPMAP", m + 1),
                               ("DSPSNUM", m + 1), ("DINDEX3", s + 1)):
                put(key, card(key, value))
            if map_axis:
                put(f"DINDEX{map_axis}", card(f"DINDEX{map_axis}", m + 1))
            for k in range(n_stokes):
                image = spectra[k] * intensity_scale
                if noise:
                    image = image + rng.normal(0.0, noise * intensity_scale, image.shape)
                data[:frame_bytes] = image.astype(">f4").tobytes()
                datasum = fits_checksum.sum32(data)
                file_id = uuid.UUID(bytes=rng.bytes(16), version=4).hex
                name = f"{file_id}.fits"
                put("STOKES", card("STOKES", stokes[k]))
                if stokes_axis:
                    put(f"DINDEX{stokes_axis}", card(f"DINDEX{stokes_axis}", k + 1))
                put("FILE_ID", string_card("FILE_ID", file_id))
                put("FILENAME", string_card("FILENAME", name))
                put("DATASUM", string_card("DATASUM", str(datasum)))
                put("CHECKSUM", string_card("CHECKSUM", ZERO_CHECKSUM))
                put("CHECKSUM", string_card("CHECKSUM", fits_checksum.checksum_value(fits_checksum.sum32(header), datasum)))
                path = folder / name
                tmp = folder / f".{name}.partial"
                with open(tmp, "wb") as fh:
                    fh.write(primary)
                    fh.write(header)
                    fh.write(data)
                os.replace(tmp, path)
                paths.append(path)
    return sorted(paths)
