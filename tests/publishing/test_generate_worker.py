"""A real Celery worker killed (SIGKILL) in the middle of L2 generation; the rerun writes only the missing frames."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings

from inversions.models import WorkOrder
from inversions.states import State
from publishing import intake, pipeline
from publishing.l2files import frame_is_valid
from publishing.models import L2File
from publishing.tasks import generate_l2
from tests.scanning.test_scan_worker import ROOT, database_url

STEPS = 60


def valid_frames(folder) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of the complete, valid frames in ``folder``."""
    out = {}
    for path in sorted(folder.glob("*_L2.fits")):
        if frame_is_valid(path):
            st = path.stat()
            out[path.name] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_killed_generation_is_rerun_writing_only_the_missing_frames(make_case_for, make_user):
    scientist = make_user("han", "science")
    case = make_case_for(scientist, steps=STEPS, slit=80, l1_wave=8, depth=16, wave=16, stokes="I")
    order = intake.submit_report(case.program, user=scientist, actor="han", enqueue=False, **case.report())
    assert intake.run_intake(order.pk) == intake.Outcome.DONE
    case.program.refresh_from_db()
    inversion = pipeline.current_inversion(case.program)
    out = case.root / "scratch" / pipeline.l2_folder(inversion).strip("/")

    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="tests.settings",
               SECRET_KEY=settings.SECRET_KEY, L2_COLLECTIONS=json.dumps(settings.L2_COLLECTIONS),
               L2_TRANSFER_BACKEND="local", L2_GENERATE_WORKERS="1", PYTHONPATH=str(ROOT))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "l2site", "worker", "--pool", "solo", "-Q", queue, "--loglevel",
         "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        generate = pipeline.request_generate(case.program, actor="olga", enqueue=False).order
        generate_l2.apply_async(args=[generate.pk], queue=queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("*_L2.fits"))) < 6:
            assert worker.poll() is None, worker.stdout.read()[-3000:]
            time.sleep(0.02)
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and anything it started, mid-generation
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        log = worker.stdout.read()
    before = valid_frames(out)
    generate.refresh_from_db()
    case.program.refresh_from_db()
    assert 6 <= len(before) < STEPS, log[-3000:]
    assert generate.status == WorkOrder.Status.STARTED and generate.attempts == 1 and generate.step == "frames"
    assert case.program.state == State.INVERTED and not L2File.objects.exists()  # nothing taken for done

    # the redelivered task (acks_late: the killed worker never acknowledged it)
    assert generate_l2.apply(args=[generate.pk]).get() == "done"
    generate.refresh_from_db()
    after = valid_frames(out)
    assert len(after) == STEPS and generate.status == WorkOrder.Status.COMPLETED and generate.attempts == 2
    assert {name: after[name] for name in before} == before  # kept: same inode, same mtime
    assert generate.details["kept"] == len(before) and generate.details["written"] == STEPS - len(before)
    assert not list(out.glob(".*.l2tmp"))  # the killed writer's partial file is gone
    assert L2File.objects.filter(inversion=inversion, kind="frame").count() == STEPS
