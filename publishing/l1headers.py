"""The L1 header of each raster step, for L2 generation (plain Python, no Django).

An L2 frame lifts its primary header and its WCS from the L1 frame of the same raster step
(DESIGN §9.1). The frames of one dataset are placed by their SPEC-214 dataset-axis keys
(``DINDEXn``), never by file name: :func:`inversions.preprocessing.verify.verify_dataset`
(headers only, no checksum pass) gives the grid, and the first Stokes parameter of the first
map is taken for each step.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from astropy.io import fits

from inversions.errors import DoNotRetryError
from inversions.preprocessing.verify import verify_dataset

STEP = "generate"


def l1_files(folder: str | Path) -> list[Path]:
    """The FITS files of a dataset folder (recursively), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".fits", ".fit", ".fts"))


def l1_arm(paths: Iterable[str | Path]) -> str | int | None:
    """``VSPARMID`` (the ViSP arm) of a dataset's first frame that has one; None when none has."""
    for path in list(paths)[:3]:
        try:
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                for hdu in hdul[:2]:
                    if "VSPARMID" in hdu.header:
                        return hdu.header["VSPARMID"]
        except (OSError, IndexError, ValueError):
            continue
    return None


def l1_headers_by_step(paths: Iterable[str | Path], expected_frames: int) -> dict[int, fits.Header]:
    """``{step: header}`` (0-based steps) of a dataset's frames: Stokes I (first), first map.

    Raises ``DoNotRetryError`` (step ``generate``) naming the problem when the frames do not
    form a complete dataset of ``expected_frames`` frames.
    """
    paths = list(paths)
    try:
        inventory = verify_dataset(paths, expected_frames, checksums=False)
    except DoNotRetryError as exc:
        raise DoNotRetryError(f"the L1 frames cannot be used: {exc.message}", step=STEP, details=exc.details) from exc
    headers: dict[int, fits.Header] = {}
    for step in range(inventory.n_steps):
        frame = inventory.frame(0, 0, step)
        try:
            with fits.open(frame.path, memmap=False, lazy_load_hdus=True) as hdul:
                headers[step] = hdul[frame.hdu_index].header.copy()
        except (OSError, IndexError, ValueError) as exc:
            raise DoNotRetryError(f"cannot read the L1 header of raster step {step} ({frame.path.name}): {exc}",
                                  step=STEP, details={"file": str(frame.path)}) from exc
    return headers
