"""A republish on a real Celery worker killed (SIGKILL) at three points; the store never loses the record.

After each kill the metadata store holds exactly one record of the inversion (the old one or
the new one, never none); once a new worker has taken the redelivered message (Redis, 2 s
visibility timeout) — and the stalled order's task was sent again where the message was lost
between a commit and its send, as beat does — it holds exactly one, the newest.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.conf import settings

from inversions.models import WorkOrder
from inversions.states import State
from publishing import pipeline
from publishing.models import Inversion
from publishing.tasks import generate_l2, publish_l2
from tests.scanning.conftest import TOKEN
from tests.scanning.test_scan_worker import ROOT, database_url

from .test_reinversion import generate_and_publish, report_and_accept

TASKS = {WorkOrder.Kind.GENERATE: generate_l2, WorkOrder.Kind.PUBLISH: publish_l2}


def _worker(queue: str, store, log) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="tests.settings",
               SECRET_KEY=settings.SECRET_KEY, L2_COLLECTIONS=json.dumps(settings.L2_COLLECTIONS),
               L2_TRANSFER_BACKEND="local", L2_GENERATE_WORKERS="1", PYTHONPATH=str(ROOT),
               METADATA_STORE_URL=store.url, METADATA_STORE_TOKEN=TOKEN, METADATA_STORE_MAX_ATTEMPTS="1",
               METADATA_STORE_L2_DELETE_URL=settings.METADATA_STORE_L2_DELETE_URL, L2_TEST_DEFAULT_QUEUE=queue,
               CELERY_VISIBILITY_TIMEOUT="2", L2_TEST_FAST_RESTORE="1", ISB_URL="amqp://guest:guest@127.0.0.1:1//")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "l2site", "worker", "--pool", "solo", "-Q", queue, "--loglevel",
         "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def _wait(check, seconds: float, what: str, log):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    log.flush()
    raise AssertionError(f"timed out waiting for {what}:\n" + open(log.name).read()[-4000:])


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_republish_killed_three_times_leaves_exactly_one_record_the_newest(
        make_case_for, scientist, store_settings, settings, tmp_path):
    settings.METADATA_STORE_L2_DELETE_URL = store_settings.url.rsplit("/", 1)[0] + "/_control/l2inversions/delete"
    store = store_settings.store
    case = make_case_for(scientist, steps=12)
    report_and_accept(case, scientist)
    inv = generate_and_publish(case)
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    log = open(tmp_path / "worker.log", "w+")
    worker = _worker(queue, store_settings, log)
    points = []
    try:
        for round_ in range(3):
            started = datetime.now(UTC)
            order = pipeline.request_republish(case.program, actor="olga", reason=f"fix {round_}", enqueue=False).order
            generate_l2.apply_async(kwargs={"order_id": order.pk}, queue=queue)

            # where to kill: in the middle of the frames, once the publication runs, around the store's replacement
            if round_ == 0:
                _wait(lambda: WorkOrder.objects.filter(pk=order.pk, step="frames").exists(), 60, "frames", log)
                delay = rng.uniform(0, 0.05)
            elif round_ == 1:
                _wait(lambda: WorkOrder.objects.filter(program=case.program, kind="publish",
                                                       created_at__gt=order.created_at).exists(), 60, "publish", log)
                delay = rng.uniform(0, 0.1)
            else:  # around the store's replacement: telling the store, or just after
                _wait(lambda: WorkOrder.objects.filter(program=case.program, kind="publish", step__in=["notify", "done"],
                                                       created_at__gt=order.created_at).exists(), 60, "notify", log)
                delay = rng.uniform(0, 0.03)
            time.sleep(delay)
            _kill(worker)
            active = list(WorkOrder.objects.filter(program=case.program, status__in=WorkOrder.ACTIVE)
                          .values_list("kind", "step"))
            points.append((round_, round(delay, 3), active))
            assert len(store.l2_inversions({"inversionId": inv.inversion_id})) == 1, points  # never none

            # a new worker: the unacknowledged message comes back; a lost one is sent again (beat's resend)
            worker = _worker(queue, store_settings, log)

            def settled():
                case.program.refresh_from_db()
                if case.program.state == State.PUBLISHED:
                    return True
                stalled = WorkOrder.objects.filter(program=case.program, status__in=WorkOrder.ACTIVE,
                                                   updated_at__lt=datetime.now(UTC).replace(microsecond=0)
                                                   - _seconds(8))
                for o in stalled:
                    WorkOrder.objects.filter(pk=o.pk).update(updated_at=datetime.now(UTC))
                    TASKS[o.kind].apply_async(kwargs={"order_id": o.pk}, queue=queue)
                return False

            _wait(settled, 120, f"round {round_} to finish", log)
            [record] = store.l2_inversions({"inversionId": inv.inversion_id})
            assert _parse(record["updateDate"]) >= started.replace(microsecond=0), (points, record)
            assert {k: record[k] for k in pipeline.store_record(inv)} == pipeline.store_record(inv)
            inv.refresh_from_db()
            assert inv.status == Inversion.Status.PUBLISHED and inv.publications == round_ + 2, points
    finally:
        _kill(worker)
        print("seed", seed, "kill points (round, delay s, active orders):", points)
        log.close()


def _seconds(n: float):
    from datetime import timedelta

    return timedelta(seconds=n)
