"""Results maps of a 490-step inversion: the first drawing of a map (≤ 2 s) and the cached answer after.

    python tests/benchmarks/bench_result_maps.py [--steps 490] [--slit 508] [--depth 81] [--keep DIR]

Writes demo results and their L2 frames (the reference product's slit and depth; few wavelengths,
since a map reads only the quantity HDUs: about 3 MB a frame), then, in a fresh process each time,
times ``publishing.plots.map_png`` with an empty cache: the frames' index (headers of 490 files,
sky positions) plus the map (one quantity HDU per frame, drawn with matplotlib's Agg backend);
then the same call again (served from the PNG file); then the other three maps (index cached).
Baseline measured in the same run: reading the same 490 arrays with ``astropy.io.fits``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def prepare(work: Path, steps: int, slit: int, depth: int) -> None:
    from publishing.l2files import generate_all
    from publishing.results import demo_l1_header, validate_results, write_demo_results

    write_demo_results(work / "results", n_steps=steps, n_slit=slit, n_depth=depth, n_wave=[12, 10, 14])
    results = validate_results(work / "results", expected_steps=steps)
    headers = {s: demo_l1_header(s, n_steps=steps, n_slit=slit) for s in range(steps)}
    ids = {"inversion_id": "L2BENCHMAPS", "proposal_id": "pid_2_114", "experiment_id": "eid_2_114",
           "program_id": "id.136026.452442", "dataset_ids": ["BVJVO"]}
    generate_all(results, headers, ids, work / "files", workers=1, software_versions={"l2": "bench"})
    shutil.rmtree(work / "results")


def one_run(work: Path) -> dict:
    t0 = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure  # noqa: F401  (the web process has it loaded after its first map)

    from publishing import plots

    t_import = time.perf_counter() - t0
    paths = sorted((work / "files").glob("*.fits"))
    cache = work / "plots"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    _, drawn = plots.map_png(cache, paths, plots.MAP_BY_KEY["temperature"], -1.0)
    first = time.perf_counter() - t
    assert drawn
    t = time.perf_counter()
    _, drawn_again = plots.map_png(cache, paths, plots.MAP_BY_KEY["temperature"], -1.0)
    cached = time.perf_counter() - t
    assert not drawn_again
    others = {}
    for key in ("field_strength", "inclination", "velocity"):
        t = time.perf_counter()
        plots.map_png(cache, paths, plots.MAP_BY_KEY[key], -1.0)
        others[key] = time.perf_counter() - t

    from astropy.io import fits

    t = time.perf_counter()
    for p in paths:
        with fits.open(p, memmap=True) as hdul:
            hdul["Temperature"].data[0, :, 0].copy()
    baseline = time.perf_counter() - t
    return {"frames": len(paths), "import": t_import, "first": first, "cached": cached, "others": others,
            "astropy_read": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=490)
    parser.add_argument("--slit", type=int, default=508)
    parser.add_argument("--depth", type=int, default=81)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="folder to keep (and reuse) the frames in")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one)))
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-maps-"))
    try:
        if not (work / "files").is_dir():
            t = time.perf_counter()
            prepare(work, args.steps, args.slit, args.depth)
            print(f"prepared {args.steps} L2 frames ({args.slit} slit × {args.depth} depths) in "
                  f"{time.perf_counter() - t:.1f} s")
        print(f"{'run':>4s} {'import s':>9s} {'first map s':>12s} {'cached ms':>10s} {'next 3 maps s':>14s} "
              f"{'astropy read s':>15s}")
        for run in range(args.runs):
            out = json.loads(subprocess.run([sys.executable, __file__, "--one", str(work)], check=True,
                                            capture_output=True, text=True).stdout)
            nxt = " ".join(f"{v:.2f}" for v in out["others"].values())
            print(f"{run + 1:4d} {out['import']:9.2f} {out['first']:12.2f} {out['cached'] * 1000:10.2f} {nxt:>14s} "
                  f"{out['astropy_read']:15.2f}")
        print("target: first map of a 490-step inversion <= 2 s (index + drawing), then from the cache")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
