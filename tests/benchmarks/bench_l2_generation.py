"""Benchmark: L2 frame generation against plain astropy ``writeto`` of the same arrays (DESIGN §13).

    python tests/benchmarks/bench_l2_generation.py [--frames 50] [--slit 1000] [--depth 50]
                                                   [--wave 400] [--dir /tmp/l2bench] [--keep]

Per frame, in one process and interleaved frame by frame so that the machine's noise hits
all three alike:

* **L2**: ``generate_frame`` — read the step from the memory-mapped result files, convert
  units, build the headers and WCS, write with ``checksum=True``, rename into place;
* **writeto**: the same image arrays (already in memory, same byte order as in the L2 file)
  put in an ``HDUList`` with minimal headers (``PrimaryHDU()``, ``ImageHDU(array, name=…)``)
  and written with ``writeto``, without checksums;
* **writeto+checksum**: the same with ``checksum=True``.

Target: L2 frames/s ≥ 50 % of writeto frames/s (total time over all frames). Also printed:
the ratio of median frame times, generate_all over all frames with a process pool, and the
cost of a restart that finds every frame already valid. Writing to a RAM disk
(``--dir /dev/shm/l2bench``) shows the CPU-bound worst case: there the checksum alone costs
about a third of writeto's time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from publishing.l2files import frame_filename, generate_all, generate_frame  # noqa: E402
from publishing.results import demo_l1_header, validate_results, write_demo_results  # noqa: E402

LINES = ("Fe I (630.15 nm)", "Fe I (630.25 nm)")
IDS = {"inversion_id": "inv.bench", "proposal_id": "pid_2_114", "experiment_id": "eid_2_114",
       "program_id": "id.136026.452442", "dataset_ids": ["BVJVO", "AXYZQ"]}
VERSIONS = {"l2": "0.1.0", "inversion": "bench"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50, help="raster steps = L2 frames (default 50)")
    parser.add_argument("--slit", type=int, default=1000, help="slit positions (default 1000)")
    parser.add_argument("--depth", type=int, default=50, help="optical depth points (default 50)")
    parser.add_argument("--wave", type=int, default=400, help="wavelengths per line, 2 lines (default 400)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool size for generate_all")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="l2bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    n = args.frames
    print(f"frames={n} slit={args.slit} depth={args.depth} wavelengths={len(LINES)}x{args.wave} stokes=4 "
          f"cpus={os.cpu_count()}")
    t = time.perf_counter()
    write_demo_results(work / "results", n_steps=n, n_slit=args.slit, n_depth=args.depth, n_wave=args.wave,
                       spectral_lines=LINES, seed=0)
    t_demo = time.perf_counter() - t
    t = time.perf_counter()
    results = validate_results(work / "results", expected_steps=n, spectral_lines=LINES)
    t_valid = time.perf_counter() - t
    size = sum(results.sizes.values())
    print(f"setup: demo results {size / 1e9:.2f} GB in {t_demo:.1f} s; validate_results (incl. sha256) "
          f"{t_valid:.2f} s")

    headers = {s: demo_l1_header(s, n_steps=n, n_slit=args.slit, n_wave=args.wave) for s in range(n)}
    l2_dir, base_dir = work / "l2", work / "baseline"
    l2_dir.mkdir()
    base_dir.mkdir()

    # warm-up (imports, page cache of the inputs) and the baseline's arrays, taken from real L2 frames
    arrays: list[list[tuple[str, np.ndarray]]] = []
    for step in range(n):
        path = l2_dir / frame_filename(step, headers[step], IDS)
        generate_frame(step, results, headers[step], IDS, path, software_versions=VERSIONS)
        with fits.open(path) as hdul:
            arrays.append([(h.name, np.array(h.data)) for h in hdul[1:]])
    frame_bytes = os.path.getsize(path)
    for p in l2_dir.iterdir():
        p.unlink()
    print(f"L2 frame: {frame_bytes / 1e6:.1f} MB, {len(arrays[0])} image HDUs")

    times: dict[str, list[float]] = {"L2 generate_frame": [], "writeto": [], "writeto+checksum": []}
    for step in range(n):
        t = time.perf_counter()
        generate_frame(step, results, headers[step], IDS, l2_dir / frame_filename(step, headers[step], IDS),
                       software_versions=VERSIONS)
        times["L2 generate_frame"].append(time.perf_counter() - t)
        for label, checksum in (("writeto", False), ("writeto+checksum", True)):
            t = time.perf_counter()
            hdul = fits.HDUList([fits.PrimaryHDU(), *(fits.ImageHDU(a, name=name) for name, a in arrays[step])])
            hdul.writeto(base_dir / f"{label}_{step:05d}.fits", checksum=checksum)
            times[label].append(time.perf_counter() - t)

    # frames/s from the total time, and from the median frame (robust to other processes' bursts)
    fps = {label: n / sum(ts) for label, ts in times.items()}
    fps_median = {label: 1 / statistics.median(ts) for label, ts in times.items()}
    print()
    print(f"{'single process, per frame':26s} {'frames/s':>9s} {'ms/frame':>9s} {'MB/s':>7s} "
          f"{'median frames/s':>16s}")
    for label, rate in fps.items():
        print(f"{label:26s} {rate:9.1f} {1000 / rate:9.1f} {rate * frame_bytes / 1e6:7.0f} "
              f"{fps_median[label]:16.1f}")
    print()
    ratio = fps["L2 generate_frame"] / fps["writeto"]
    print(f"L2 / writeto          = {ratio:6.1%}  (target >= 50 %: {'PASS' if ratio >= 0.5 else 'FAIL'})")
    print(f"L2 / writeto+checksum = {fps['L2 generate_frame'] / fps['writeto+checksum']:6.1%}")
    print(f"median frames: L2 / writeto = {fps_median['L2 generate_frame'] / fps_median['writeto']:6.1%}, "
          f"L2 / writeto+checksum = {fps_median['L2 generate_frame'] / fps_median['writeto+checksum']:6.1%}")

    for p in l2_dir.iterdir():
        p.unlink()
    t = time.perf_counter()
    frames = generate_all(results, headers, IDS, l2_dir, workers=args.workers, software_versions=VERSIONS)
    t_all = time.perf_counter() - t
    assert all(f.generated for f in frames)
    t = time.perf_counter()
    frames = generate_all(results, headers, IDS, l2_dir, workers=args.workers, software_versions=VERSIONS)
    t_restart = time.perf_counter() - t
    assert not any(f.generated for f in frames)
    print(f"\ngenerate_all, {args.workers} processes: {n / t_all:.1f} frames/s ({t_all:.2f} s for {n})")
    print(f"generate_all restart, all {n} frames already valid: {t_restart:.2f} s "
          f"({1000 * t_restart / n:.1f} ms/frame to verify)")


if __name__ == "__main__":
    main()
