"""Small synthetic ViSP datasets for the preprocessing tests (plain pytest, no database)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inversions.preprocessing.l1_frames import write_demo_dataset

N_WAVE, N_SLIT = 24, 16


def encoded(stokes: int, map_: int, step: int) -> np.ndarray:
    """A frame whose every value says where it belongs: 1000 + 100·stokes + 10·map + step,
    plus a wavelength/slit ramp; Stokes I is brightest in wavelength pixels 3…8."""
    w = np.arange(N_WAVE)[:, None]
    x = np.arange(N_SLIT)[None, :]
    frame = 1000.0 + 100 * stokes + 10 * map_ + step + 0.01 * w + 0.0001 * x
    if stokes == 0:
        frame = frame + np.where((w >= 3) & (w < 9), 50.0, 0.0)
    return frame


@pytest.fixture
def encoded_dataset(tmp_path: Path) -> tuple[list[Path], dict]:
    """IQUV, 2 maps × 5 steps, uncompressed frames with position-encoding values."""
    params = dict(n_steps=5, n_maps=2, stokes="IQUV", n_wave=N_WAVE, n_slit=N_SLIT, compress=False,
                  frame_values=encoded, seed=3)
    paths = write_demo_dataset(tmp_path / "l1", "AYDEW", **params)
    return paths, params


# --- The Django side (inversions.pipeline): programs with real L1 files in local collections ---
import itertools  # noqa: E402

from django.utils import timezone  # noqa: E402

_ids = itertools.count(1)


@pytest.fixture
def collections(settings, tmp_path):
    """The four collections as folders under tmp_path; the local transfer backend; quick retries."""
    roots = {name: tmp_path / "collections" / name for name in ("dkist-l1", "scratch", "science-cluster", "publish")}
    for root in roots.values():
        root.mkdir(parents=True)
    settings.L2_COLLECTIONS = {name: str(root) for name, root in roots.items()}
    settings.L2_TRANSFER_BACKEND = "local"
    settings.L2_L1_COLLECTION, settings.L2_SCRATCH_COLLECTION = "dkist-l1", "scratch"
    settings.L2_SCIENCE_COLLECTION = "science-cluster"
    settings.L2_PREPROCESS_RETRY_SECONDS = 0
    settings.L2_PREPROCESS_POLL_SECONDS = 0
    settings.L2_PREPROCESS_MAX_RETRIES = 2
    return roots


@pytest.fixture
def l1_program(make_program, collections):
    """An Invertible program whose current datasets have small real L1 frames in the L1 collection.

    ``l1_program(arms=(("IQUV", 3), ("I", 4)))``: one dataset per (stokes, raster steps).
    Returns the program; its datasets' frame folders are ``l1_folder(dataset)``.
    """
    from inversions.models import Dataset
    from inversions.pipeline import l1_path
    from inversions.preprocessing.demo_l1 import write_small_dataset
    from inversions.states import State

    def make(arms=(("IQUV", 3), ("IQUV", 2)), *, write=True, state=State.INVERTIBLE):
        n = next(_ids)
        program = make_program(state, ipeid=f"id.pre.{n}")
        now = timezone.now()
        for k, (stokes, steps) in enumerate(arms):
            dataset = Dataset.objects.create(
                dataset_id=f"D{n}X{k}", program=program, primary_proposal_id=program.primary_proposal_id,
                instrument_program_execution_id=program.instrument_program_execution_id, instrument_name="VISP",
                create_date=now, update_date=now, stokes_parameters=stokes, frame_count=len(stokes) * steps,
                bucket="public", wavelength_min=630.0 + k, wavelength_max=630.5 + k, raw={"datasetId": f"D{n}X{k}"},
                raw_hash=f"{n:04d}{k:04d}abcdef",
            )
            if write:
                write_small_dataset(l1_folder(dataset), dataset.dataset_id, n_steps=steps, stokes=stokes,
                                    n_wave=N_WAVE, n_slit=N_SLIT, seed=k,
                                    instrument_program_id=program.instrument_program_execution_id)
        return program

    def l1_folder(dataset):
        from inversions.transfers import local_folder

        return local_folder("dkist-l1", l1_path(dataset))

    make.l1_folder = l1_folder
    return make
