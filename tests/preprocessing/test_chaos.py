"""Chaos: real worker processes on the real broker, killed with SIGKILL at a random point of each stage.

Each run takes a new program from Invertible to Published: preprocessing, the result intake,
the L2 generation and the publication. In each of the four stages the worker (its whole
process group) is killed with ``kill -9`` at a random moment while the stage's work order is
active, and a new worker is started at once. The killed worker's messages are not redelivered
(the visibility timeout stays at its default hour): the new worker takes the work up because
beat — its three periodic tasks, sent every second to the worker's queue, as beat does —
resends the step of an order whose heartbeat is stale (``L2_HEARTBEAT_STALE_SECONDS``, 3 s
here). Every program must end Published with exactly one history row per step, one completed
work order per kind, one inversion in the metadata store, and each stage done within five
minutes of the restart. The figures are printed.

``L2_CHAOS_RUNS`` (default 1) sets the number of runs; ``L2_CHAOS_SEED`` the random seed;
``L2_CHAOS_STALE_SECONDS`` / ``L2_CHAOS_BEAT_SECONDS`` the heartbeat age and beat's interval
(3 and 1; the production defaults are 120 and 60).
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from inversions import lifecycle, pipeline
from inversions.models import Transition, WorkOrder
from inversions.states import State
from publishing.intake import submit_report
from publishing.l2files import frame_is_valid
from publishing.models import Inversion
from tests.scanning.conftest import TOKEN, metadata_store  # noqa: F401  (the emulator fixture)
from tests.scanning.test_scan_worker import ROOT, database_url

RUNS = int(os.environ.get("L2_CHAOS_RUNS") or 1)
# L2_HEARTBEAT_STALE_SECONDS of the workers (3: a heartbeat every second) and the seconds between
# two rounds of beat's tasks; L2_CHAOS_STALE_SECONDS=120 L2_CHAOS_BEAT_SECONDS=60 runs it with the defaults.
STALE = float(os.environ.get("L2_CHAOS_STALE_SECONDS") or 3)
BEAT = float(os.environ.get("L2_CHAOS_BEAT_SECONDS") or 1)
SLOW = 1.6  # L2_CHAOS_SLOW of the workers (tests/chaos_worker.py)
FRAME_DELAY = 0.04  # L2_TEST_FRAME_DELAY: 48 frames, about 2 s of assembly
ARMS = (("IQUV", 6), ("IQUV", 6))  # 6 raster steps of L1 (the demo inversion's steps: its L2 frames)
#: How long after the stage's order started the kill may come (uniformly): about the stage's length.
SPAN = {"preprocess": 2.5, "intake": 1.6, "generate": 1.6, "publish": 1.6}
WITHIN = 300.0  # seconds after the restart by which each stage must be done
STEPS = [State.DISCOVERED, State.INVERTIBLE, State.PREPROCESSED, State.WORKING, State.INVERTED, State.PUBLISHED]


class Workers:
    """The current worker process of the test's queue; killed and restarted by :meth:`kill`."""

    def __init__(self, queue: str, env: dict, logs: Path):
        self.queue, self.env, self.logs, self.n = queue, env, logs, 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        self.n += 1
        self.log = self.logs / f"worker-{self.n}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos_worker", "-A", "l2site", "worker", "--pool", "solo", "-Q", self.queue,
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=self.env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        return time.monotonic()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and the processes it started
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.logs.glob("worker-*.log"))[-3:])


def _wait(predicate, seconds: float, what: str, workers: Workers):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out ({seconds:.0f} s) waiting for {what}\n{workers.tail()}")


def _beat(queue: str, stop: threading.Event) -> None:
    """Beat's periodic tasks (README: preprocess, resend stalled, generate and publish), every BEAT s."""
    from inversions.tasks import preprocess_pending
    from publishing.tasks import advance_inverted, resend_stalled

    while not stop.wait(BEAT):
        for task in (preprocess_pending, resend_stalled, advance_inverted):
            task.apply_async(queue=queue, expires=30)


def _chaos(stage: str, program, workers: Workers, rng: random.Random) -> dict:
    """Wait for the stage's order to start, kill the worker at a random moment of it, restart it,
    and wait for the order to complete. Returns the figures of the stage."""
    def started():
        return WorkOrder.objects.filter(program=program, kind=stage, status=WorkOrder.Status.STARTED).first()

    order = _wait(started, 120, f"the {stage} order to start", workers)
    time.sleep(rng.uniform(0, SPAN[stage]))
    at = WorkOrder.objects.get(pk=order.pk)
    killed = at.is_active
    if killed:
        workers.kill()
    restarted = workers.start() if killed else time.monotonic()

    def completed():
        o = WorkOrder.objects.get(pk=order.pk)
        if o.status == WorkOrder.Status.FAILED:
            raise AssertionError(f"{stage} order failed: {o.error}\n{workers.tail()}")
        return o if o.status == WorkOrder.Status.COMPLETED else None

    done = _wait(completed, WITHIN, f"the {stage} order to complete after the restart", workers)
    shown = ("frames_assembled", "frames_done", "files_done", "files")
    progress = ", ".join(f"{k}={at.progress[k]}" for k in shown if k in at.progress) or "-"
    return {"stage": stage, "killed": killed, "at": f"{at.step or 'queued'} ({progress})" if killed else "finished first",
            "done_after_restart": time.monotonic() - restarted, "attempts": done.attempts}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_workers_killed_at_random_points_every_program_ends_published_once(
        l1_program, collections, scientist, settings, metadata_store, tmp_path):  # noqa: F811
    seed = int(os.environ.get("L2_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)
    queue = f"test-chaos-{uuid.uuid4().hex[:8]}"
    settings.L2_HEARTBEAT_STALE_SECONDS = STALE
    env = dict(
        os.environ, DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="tests.settings",
        SECRET_KEY=django_settings.SECRET_KEY, L2_TEST_QUEUE=queue,
        L2_COLLECTIONS=json.dumps({k: str(v) for k, v in collections.items()}), L2_TRANSFER_BACKEND="local",
        L2_PREPROCESS_POLL_SECONDS="1", L2_PREPROCESS_RETRY_SECONDS="1", L2_PREPROCESS_CONCURRENCY="0",
        L2_HEARTBEAT_STALE_SECONDS=f"{STALE:g}", L2_TEST_FRAME_DELAY=str(FRAME_DELAY), L2_CHAOS_SLOW=str(SLOW),
        L2_AUTO_GENERATE="true", L2_AUTO_PUBLISH="true", L2_GENERATE_WORKERS="1",
        METADATA_STORE_URL=metadata_store.url, METADATA_STORE_TOKEN=TOKEN, METADATA_STORE_MAX_ATTEMPTS="3",
        METADATA_STORE_BACKOFF_SECONDS="0.01", L2_PUBLISH_BACKOFF_SECONDS="1",
        CELERY_VISIBILITY_TIMEOUT="3600",  # no redelivery within the test: the heartbeat alone brings the work back
    )
    env.pop("L2_TEST_FAST_RESTORE", None)
    workers = Workers(queue, env, tmp_path)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(queue, stop), daemon=True)
    figures, ended_right = [], 0
    workers.start()
    beat.start()
    try:
        for run in range(1, RUNS + 1):
            program = l1_program(arms=ARMS, write=False)
            out = io.StringIO()
            call_command("make_demo_l1", "--programs", "1", "--results", stdout=out)
            collection, path = re.search(r"demo results to report from ([^:\s]+):(\S+)", out.getvalue()).groups()
            began = time.monotonic()
            stages = []

            pipeline.start(program, requested_by="chaos", queue=queue)
            stages.append(_chaos("preprocess", program, workers, rng))
            program.refresh_from_db()
            assert program.state == State.PREPROCESSED, program.state
            lifecycle.claim(program, user=scientist)
            intake = submit_report(program, user=scientist, actor=scientist.get_username(), enqueue=False,
                                   collection=collection, path=path, software_commit="abc1234",
                                   dataset_ids=list(program.datasets.values_list("dataset_id", flat=True)))
            from publishing.tasks import intake_results

            intake_results.apply_async(args=[intake.pk], queue=queue)
            for stage in ("intake", "generate", "publish"):
                stages.append(_chaos(stage, program, workers, rng))

            program.refresh_from_db()
            history = list(Transition.objects.filter(program=program).order_by("at", "id").values_list("to_state", flat=True))
            orders = list(WorkOrder.objects.filter(program=program).values_list("kind", "status"))
            inversion = Inversion.objects.get(program=program)
            in_store = [r for r in metadata_store.store.l2_inversions() if r["inversionId"] == inversion.inversion_id]
            frames = [f for f in inversion.files.all() if f.kind == "frame"]
            published = collections["publish"] / inversion.published_path.strip("/")
            right = (program.state == State.PUBLISHED and history == STEPS
                     and sorted(orders) == sorted((k, "completed") for k in ("preprocess", "intake", "generate", "publish"))
                     and len(in_store) == 1 and len(frames) == inversion.raster_steps > 0
                     and all(frame_is_valid(published / f.filename) for f in frames))
            ended_right += right
            figures.append((run, program, right, time.monotonic() - began, stages))
            assert right, (f"{program.state}; history {history}; orders {orders}; {len(in_store)} in the store; "
                           f"{len(frames)} L2 frames for {inversion.raster_steps} raster steps\n{workers.tail()}")
    finally:
        stop.set()
        beat.join(5)
        workers.stop()
        _print(figures, ended_right, seed)
        from l2site.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
    assert ended_right == RUNS
    slowest = max(s["done_after_restart"] for _, _, _, _, stages in figures for s in stages)
    assert slowest < WITHIN
    kills = sum(s["killed"] for _, _, _, _, stages in figures for s in stages)
    assert kills >= 3 * RUNS  # the kills landed inside the stages (a stage may rarely finish first)


def _print(figures, ended_right, seed) -> None:
    lines = [f"\nchaos: {ended_right}/{len(figures)} programs ended right (seed {seed}, "
             f"L2_HEARTBEAT_STALE_SECONDS={STALE:g}, beat every {BEAT:g} s)"]
    for run, program, right, seconds, stages in figures:
        lines.append(f"run {run}: {program} {'ended right' if right else 'WRONG'} in {seconds:.1f} s")
        for s in stages:
            lines.append(f"  {s['stage']:<10} killed: {'yes at ' + s['at'] if s['killed'] else 'no (' + s['at'] + ')'}; "
                         f"done {s['done_after_restart']:.1f} s after the restart, {s['attempts']} attempt(s)")
    every = [s["done_after_restart"] for *_, stages in figures for s in stages if s["killed"]]
    if every:
        lines.append(f"kills: {len(every)}; done after the restart: median {sorted(every)[len(every) // 2]:.1f} s, "
                     f"max {max(every):.1f} s (limit {WITHIN:.0f} s)")
    print("\n".join(lines))
