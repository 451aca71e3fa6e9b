"""Small inversion result sets and L1 headers for the publishing tests (no database)."""

from pathlib import Path

from astropy.io import fits

from publishing.results import DEMO_LINE_IDS, demo_l1_header, validate_results, write_demo_results

#: the demo's lines in wavelength order (the files hold them as DEMO_LINE_IDS: Ca II, Fe I, Na I)
LINES = ("Na I D2 (589.0 nm)", "Fe I (630.15 nm)", "Ca II (854.21 nm)")
LINE_IDS = DEMO_LINE_IDS
N_STEPS, N_SLIT, N_DEPTH, N_WAVE = 5, 40, 12, 16
IDS = {
    "inversion_id": "inv.7f3a",
    "proposal_id": "pid_2_114",
    "experiment_id": "eid_2_114",
    "observing_program_id": "eid_2_114_opE4A3Ek_R001.82591.14097301",
    "program_id": "id.136026.452442",
    "dataset_ids": ["BVJVO", "AXYZQ"],
}
VERSIONS = {"l2": "0.1.0", "inversion": "3f2c9e1"}

#: pixel whose cgs input values are set by hand (step, slit)
KNOWN = (1, 3)
KNOWN_INPUT = {  # quantity index -> value in the inversion code's units
    2: 10.0,  # electron pressure, dyn/cm^2
    3: 2.0e5,  # microturbulence, cm/s
    4: 1000.0,  # field strength, G
    5: 1.0e5,  # LOS velocity, cm/s
    6: 400.0,  # inclination, deg (wraps to 40)
    7: -30.0,  # azimuth, deg (wraps to 330)
    8: 1.0e5,  # geometric height, km (BLANCA writes km)
    9: 10.0,  # gas pressure, dyn/cm^2
    10: 1.0e-3,  # density, g/cm^3
}


def make_results(folder: Path, *, n_steps: int = N_STEPS, n_slit: int = N_SLIT, binning: int = 1,
                 line_ids=LINE_IDS):
    """Demo result files (as BLANCA writes them) with KNOWN_INPUT written at pixel KNOWN, validated."""
    paths = write_demo_results(folder, n_steps=n_steps, n_slit=n_slit, n_depth=N_DEPTH, n_wave=N_WAVE, seed=3,
                               binning=binning, line_ids=line_ids)
    with fits.open(paths["mod"], mode="update") as hdul:
        for q, value in KNOWN_INPUT.items():
            hdul[0].data[q, :, KNOWN[0], KNOWN[1]] = value
        hdul[0].data[7, :, KNOWN[0], KNOWN[1] + 1] = -1e-6  # azimuth: -1e-6 % 360 rounds to 360 in float32
    return validate_results(folder, expected_steps=n_steps)


def l1_headers(n_steps: int = N_STEPS, n_slit: int = N_SLIT) -> dict[int, fits.Header]:
    return {s: demo_l1_header(s, n_steps=n_steps, n_slit=n_slit, n_wave=64, ids=IDS) for s in range(n_steps)}
