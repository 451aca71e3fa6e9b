"""A real Celery worker on the real broker, killed with SIGKILL in the middle of assembling.

The assembly task was unacknowledged (``acks_late``): the broker redelivers it to a second
worker (Redis: once the visibility timeout has passed; a broker without redelivery, such as
the embedded filesystem transport, relies on beat's resending of stalled orders instead),
which resumes the order. The program ends Preprocessed exactly once and its outputs verify.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from astropy.io import fits
from django.conf import settings as django_settings

from inversions import pipeline
from inversions.models import Transition, WorkOrder
from inversions.preprocessing.verify import file_checksum
from inversions.states import State
from inversions.transfers import local_folder
from tests.scanning.test_scan_worker import ROOT, database_url


def _worker(queue: str, collections: dict, log: Path, *, hostname: str | None = None, **env_extra) -> subprocess.Popen:
    """A real ``celery worker`` (solo pool) on ``queue`` (and its own queue), named ``hostname``."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="tests.settings",
        SECRET_KEY=django_settings.SECRET_KEY,
        L2_COLLECTIONS=json.dumps({k: str(v) for k, v in collections.items()}),
        L2_TRANSFER_BACKEND="local",
        L2_PREPROCESS_POLL_SECONDS="1",
        L2_PREPROCESS_RETRY_SECONDS="1",
        **env_extra,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "l2site", "worker", "--pool", "solo", "-Q", queue,
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
         *(["-n", hostname] if hostname else [])],
        cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(predicate, seconds: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_assembly_the_program_ends_preprocessed_once(l1_program, collections, settings, tmp_path):
    redelivers = django_settings.CELERY_BROKER_URL.split(":", 1)[0] in ("redis", "rediss", "amqp", "pyamqp")
    queue = f"test-pre-{uuid.uuid4().hex[:8]}"
    program = l1_program(arms=(("IQUV", 4), ("IQUV", 6)))  # 16 + 24 frames
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    # the first worker assembles slowly (0.25 s a frame): long enough to be killed in the middle
    first = _worker(queue, collections, logs[0], L2_TEST_FRAME_DELAY="0.25", CELERY_VISIBILITY_TIMEOUT="3600")
    second = None
    try:
        order = pipeline.start(program, requested_by="test", queue=queue).order  # dispatched on commit

        def mid_assembly():
            o = WorkOrder.objects.get(pk=order.pk)
            return o.step == "assemble" and 0 < o.progress.get("frames_assembled", 0) < 16 and o

        _wait(mid_assembly, 60, "the first worker to be assembling", logs)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed = WorkOrder.objects.get(pk=order.pk)
        assert killed.status == "started" and killed.step == "assemble" and not killed.details.get("outputs")
        scratch = local_folder("scratch", killed.details["out"])
        assert not list(scratch.glob("*.fits"))  # no cube under its final name: only a partial file
        program.refresh_from_db()
        assert program.state == State.INVERTIBLE

        # a second worker; Redis redelivers the unacknowledged message after its visibility timeout
        second = _worker(queue, collections, logs[1], CELERY_VISIBILITY_TIMEOUT="2", L2_TEST_FAST_RESTORE="1")
        if not redelivers:  # e.g. the filesystem transport: beat resends the stalled order
            settings.L2_HEARTBEAT_STALE_SECONDS = 0
            WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=killed.updated_at - timedelta(minutes=1))
            pipeline.schedule(queue=queue)

        def finished():
            o = WorkOrder.objects.get(pk=order.pk)
            return o if not o.is_active else None

        done = _wait(finished, 90, "the order to finish on the second worker", logs)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
    assert done.status == "completed", done.error
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED
    assert Transition.objects.filter(program=program, to_state=State.PREPROCESSED).count() == 1
    assert WorkOrder.objects.filter(program=program).count() == 1
    assert done.attempts > 5  # the assembly ran twice
    # outputs verify: on scratch and on the science cluster, as the manifest lists them
    science = local_folder("science-cluster", pipeline.science_path(program))
    manifest = json.loads((science / "manifest.json").read_text())
    cubes = [o for o in manifest["outputs"] if o["kind"] == "stokes cube"]
    assert len(cubes) == 2
    for output in manifest["outputs"]:
        assert file_checksum(science / output["name"]) == output["sha256"]
    for cube in cubes:
        with fits.open(science / cube["name"], checksum=True) as hdul:
            hdul.verify("exception")
            assert hdul[0].data.shape[2] in (4, 6) and hdul["FRAMES"].data.shape[0] in (16, 24)
    assert not list(local_folder("scratch", done.details["out"]).glob(".*.partial"))
    if redelivers:
        assert "preprocess.assemble" in logs[1].read_text()  # the redelivered message ran there
