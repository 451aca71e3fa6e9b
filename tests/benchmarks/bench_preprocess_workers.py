"""Preprocessing across workers (issue 16, target 4): one Celery worker vs two, same run.

    python tests/benchmarks/bench_preprocess_workers.py                 # 8 programs, 3 rounds
    python tests/benchmarks/bench_preprocess_workers.py --programs 4 --steps 50 --repeat 1   # smoke

Needs PostgreSQL (``DATABASE_URL`` names the server; the benchmark's own database,
``--database``, is created, migrated and dropped) and Redis (``CELERY_BROKER_URL``, e.g.
``redis://127.0.0.1:6379/13``).

Each round preprocesses ``--programs`` fresh Invertible programs (two IQUV datasets of
``--steps`` raster steps each: 8 × ``--steps`` frames a program), whose L1 frames the demo
generator writes (``manage.py make_demo_l1``: 32 × 24-pixel ViSP frames with SPEC-214
headers) into a temporary L1 collection, through the real pipeline (stage, verify,
assemble, quick-look, hand-over) on real ``celery worker`` processes on the real broker:

* **baseline, one worker**: one worker process (``--pool solo``: one task at a time,
  hostname ``one@bench``, its own scratch folder ``L2_SCRATCH_DIR``);
* **two workers**: two such processes (``a@bench``, ``b@bench``), each with its own scratch
  folder (so a program's steps after staging stay on the worker that staged it).

Each worker runs in its own session, as worker daemons do (``celery multi``, a systemd unit):
Linux's autogroup scheduling gives every session an equal share of the CPU under load, so
two workers started in one session would share one session's share with each other.

The two cases alternate in each round (one, then two), under the same machine load. The wall
time of a case is from just before the programs are started to the last order's finish
(``finished_at`` in the database). Target: two workers' wall time ≤ 0.65 × one worker's.

Exactly once is checked from the history: each program has one order, one transition to
Preprocessed, and each of the five steps ran once (the order's ``details["runs"]``), all on
the worker that staged it; in the two-worker case both workers took programs. Printed per
case: wall time, programs per worker, the workers' CPU seconds (``/proc/<pid>/stat``), and
the machine's CPU use during the case (``/proc/stat``: 100 % = both cores busy), which shows
what the two workers compete for on a two-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import _benchdb  # noqa: E402

ROOT = _benchdb.ROOT
TARGET = 0.65
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process (and its waited-for children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Workers:
    """Real ``celery worker`` processes on one queue, each with its own hostname and scratch."""

    def __init__(self, database: str, queue: str, names: list[str], base: Path, collections: dict[str, str]):
        self.names, self.procs, self.logs = names, [], []
        base.mkdir(parents=True, exist_ok=True)
        for name in names:
            scratch = base / f"scratch-{name.split('@')[0]}"
            log = base / f"{name.split('@')[0]}.log"
            env = _benchdb.bench_env(
                database, L2_COLLECTIONS=json.dumps(collections), L2_SCRATCH_DIR=str(scratch),
                L2_TRANSFER_BACKEND="local", L2_PREPROCESS_POLL_SECONDS="1", L2_PREPROCESS_CONCURRENCY="0",
                LOG_LEVEL="INFO",
            )
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "l2site", "worker", "--pool", "solo", "-Q", queue, "-n", name,
                 "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                start_new_session=True,  # as a daemon runs (celery multi, systemd): its own session
            ))
            self.logs.append(log)
        deadline = time.monotonic() + 90
        while not all(log.exists() and "ready." in log.read_text() for log in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise SystemExit("workers did not start:\n" + "\n".join(log.read_text()[-2000:] for log in self.logs))
            time.sleep(0.2)

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def make_programs(tag: str, n: int, steps: int) -> list:
    """``n`` Invertible programs of two IQUV datasets each, with demo L1 frames (make_demo_l1)."""
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from inversions import lifecycle
    from inversions.management.commands.make_demo_l1 import MARKER
    from inversions.models import Dataset, ObservingProgram
    from inversions.states import State
    from inversions.transfers import local_folder

    made = lifecycle.create_programs([
        ObservingProgram(instrument_program_execution_id=f"id.bench.{tag}.{i}", primary_proposal_id="pid_1_118",
                         primary_experiment_id="eid_1_118", instrument_name="VISP") for i in range(n)
    ], actor="bench")
    now = timezone.now()
    for i, program in enumerate(made):
        lifecycle.transition(program, State.INVERTIBLE, actor="bench", reason="benchmark")
        for k in range(2):
            Dataset.objects.create(
                dataset_id=f"B{tag}P{i}A{k}", program=program, primary_proposal_id=program.primary_proposal_id,
                instrument_program_execution_id=program.instrument_program_execution_id, instrument_name="VISP",
                create_date=now, update_date=now, stokes_parameters="IQUV", frame_count=4 * steps, bucket="public",
                wavelength_min=630.0 + k, wavelength_max=630.3 + k, raw={"datasetId": f"B{tag}P{i}A{k}"},
                raw_hash=f"{tag}{i:04d}{k:04d}",
            )
    (local_folder(settings.L2_L1_COLLECTION, "/") / MARKER).unlink(missing_ok=True)  # this round's programs
    with open(os.devnull, "w") as quiet:
        call_command("make_demo_l1", programs=n, stdout=quiet)
    return made


def run_case(label: str, database: str, names: list[str], base: Path, collections: dict, n: int, steps: int) -> dict:
    from django.db.models import Max, Min

    from inversions import pipeline
    from inversions.models import Transition, WorkOrder
    from inversions.states import State

    tag = uuid.uuid4().hex[:6]
    programs = make_programs(tag, n, steps)
    queue = f"bench-pre-{tag}"
    workers = Workers(database, queue, names, base / tag, collections)
    try:
        cpu0, (busy0, total0) = workers.cpu(), machine_ticks()
        started = time.monotonic()
        orders = [pipeline.start(p, requested_by="bench", queue=queue).order.pk for p in programs]
        def unsettled() -> bool:  # a finished order lists every run, its last step's included (same transaction)
            return WorkOrder.objects.filter(pk__in=orders, status__in=WorkOrder.ACTIVE).exists()

        while unsettled():
            if time.monotonic() - started > 1800 or any(p.poll() is not None for p in workers.procs):
                raise SystemExit(f"{label}: the orders did not finish\n" +
                                 "\n".join(log.read_text()[-3000:] for log in workers.logs))
            time.sleep(0.05)
        cpu1, (busy1, total1) = workers.cpu(), machine_ticks()
    finally:
        workers.stop()
    done = list(WorkOrder.objects.filter(pk__in=orders).select_related("program"))
    span = WorkOrder.objects.filter(pk__in=orders).aggregate(a=Min("created_at"), b=Max("finished_at"))
    wall = (span["b"] - span["a"]).total_seconds()
    failed = [(o.program_id, o.error) for o in done if o.status != "completed"]
    if failed:
        raise SystemExit(f"{label}: orders failed: {failed}")
    per_worker = {name: 0 for name in names}
    for order in done:
        program = order.program
        program.refresh_from_db()
        assert program.state == State.PREPROCESSED, program.state
        assert Transition.objects.filter(program=program, to_state=State.PREPROCESSED).count() == 1
        assert WorkOrder.objects.filter(program=program).count() == 1
        runs = order.details.get("runs")
        assert runs == {step: 1 for step in pipeline.STEPS}, f"not exactly once: {program} {runs}"
        owner = order.details["scratch_worker"]
        assert set(order.details["workers"].values()) == {owner}, order.details["workers"]
        per_worker[owner] += 1
    assert all(per_worker.values()), f"{label}: a worker took no program: {per_worker}"
    steps_s = {s: round(sum(o.details["timings"][s] for o in done), 2) for s in pipeline.STEPS}
    return {
        "label": label, "wall": wall, "per_worker": per_worker,
        "cpu": [round(b - a, 2) for a, b in zip(cpu0, cpu1)],
        "machine_cpu": (busy1 - busy0) / max(1, total1 - total0), "steps": steps_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="raster steps per dataset (2 IQUV datasets a program)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (one worker, two workers)")
    parser.add_argument("--database", default="l2_bench_preprocess_workers")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="l2-bench-workers-"))
    collections = {name: str(base / "collections" / name) for name in ("dkist-l1", "scratch", "science-cluster", "publish")}
    for folder in collections.values():
        Path(folder).mkdir(parents=True)
    os.environ.update(L2_COLLECTIONS=json.dumps(collections), L2_TRANSFER_BACKEND="local", LOG_LEVEL="WARNING")
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}")
    print(f"migrating {args.database}: {_benchdb.create_database(args.database):.1f} s")
    _benchdb.setup_django(args.database)
    rounds = []
    try:
        for r in range(args.repeat):
            one = run_case("one worker", args.database, ["one@bench"], base, collections, args.programs, args.steps)
            two = run_case("two workers", args.database, ["a@bench", "b@bench"], base, collections, args.programs,
                           args.steps)
            rounds.append((one, two))
            print(f"round {r + 1} (load {os.getloadavg()[0]:.2f}):")
            for case in (one, two):
                print(f"  {case['label']:<12} {case['wall']:7.2f} s   programs per worker {case['per_worker']}   "
                      f"worker CPU {case['cpu']} s   machine CPU {case['machine_cpu']:.0%}   "
                      f"step seconds (sum over programs) {case['steps']}")
            print(f"  ratio two/one: {two['wall'] / one['wall']:.3f}  (target ≤ {TARGET})")
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            _benchdb.drop_database(args.database)
        shutil.rmtree(base, ignore_errors=True)
    ones = [o["wall"] for o, _ in rounds]
    twos = [t["wall"] for _, t in rounds]
    ratios = [t / o for o, t in zip(ones, twos)]
    frames = args.programs * 8 * args.steps
    print(f"\n{args.programs} programs, {frames} frames in all (32 × 24 px), {args.repeat} round(s); "
          f"every program preprocessed exactly once (history checked)")
    print(f"{'':<14}{'median s':>10}{'min':>9}{'max':>9}")
    print(f"{'one worker':<14}{statistics.median(ones):>10.2f}{min(ones):>9.2f}{max(ones):>9.2f}")
    print(f"{'two workers':<14}{statistics.median(twos):>10.2f}{min(twos):>9.2f}{max(twos):>9.2f}")
    print(f"{'ratio':<14}{statistics.median(ratios):>10.3f}{min(ratios):>9.3f}{max(ratios):>9.3f}   target ≤ {TARGET}: "
          f"{'met' if statistics.median(ratios) <= TARGET else 'NOT met'}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
