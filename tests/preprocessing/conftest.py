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
