"""A scan whose worker died: failed ("worker lost") at the next look, never blocking; a redelivered
scan counts each record once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan, ScanRecordError
from scanning.scan import SCAN_LOCK_CLASS, WORKER_LOST, fail_lost_scans, run_scan
from tests.scanning.conftest import TOKEN
from tests.scanning.test_scan_worker import ROOT, database_url


def _other_session() -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"] or None,
                           port=s["PORT"] or None, autocommit=True)


def _taken_scan(**counts) -> Scan:
    """A Running scan a worker took (as a worker leaves it when killed)."""
    return Scan.objects.create(triggered_by="beat", locked_at=timezone.now(), **counts)


@pytest.mark.django_db
def test_a_running_scan_nobody_holds_is_failed_as_lost_a_held_or_queued_one_is_not():
    lost = _taken_scan(pages=2, records=200)
    alive = _taken_scan()
    queued = Scan.objects.create(triggered_by="olga")  # no worker took it yet
    with _other_session() as worker:  # the live worker holds its scan's lock
        worker.execute("SELECT pg_advisory_lock(%s, %s)", [SCAN_LOCK_CLASS, alive.pk])
        assert fail_lost_scans() == 1
        for scan in (lost, alive, queued):
            scan.refresh_from_db()
        assert (lost.status, lost.error, lost.pages) == (Scan.Status.FAILED, WORKER_LOST, 2) and lost.finished_at
        assert alive.status == queued.status == Scan.Status.RUNNING
    deadline = time.monotonic() + 10  # its worker's session ended (the backend exits a moment later): lost too
    while not fail_lost_scans() and time.monotonic() < deadline:
        time.sleep(0.05)
    alive.refresh_from_db()
    assert alive.status == Scan.Status.FAILED


@pytest.mark.django_db
def test_the_scan_list_and_starting_a_scan_see_a_dead_scan_as_failed(client, operator, monkeypatch):
    from scanning import views

    monkeypatch.setattr(views, "start_scan", lambda *, full, triggered_by: Scan.objects.create(triggered_by=triggered_by))
    dead = _taken_scan(pages=1, records=100)
    client.force_login(operator)
    html = client.get(reverse("scan-list")).content.decode()
    dead.refresh_from_db()
    assert dead.status == Scan.Status.FAILED and "worker lost" in html
    dead2 = _taken_scan()
    response = client.post(reverse("scan-start"), follow=True)
    dead2.refresh_from_db()
    assert dead2.status == Scan.Status.FAILED  # it blocks nothing: a new scan started at once
    assert "is already running" not in response.content.decode()
    assert Scan.objects.filter(status=Scan.Status.RUNNING).exclude(pk__in=[dead.pk, dead2.pk]).count() == 1


@pytest.mark.django_db
def test_the_beat_task_fails_lost_scans_first(monkeypatch):
    from scanning import tasks

    dead, redelivered = _taken_scan(), _taken_scan()
    ran = []
    monkeypatch.setattr(tasks, "run_scan", lambda scan, **kw: ran.append(scan) or scan or Scan.objects.create())
    tasks.scan_metadata_store(scan_id=redelivered.pk)  # its message came back: it runs again, the other is lost
    dead.refresh_from_db()
    assert dead.status == Scan.Status.FAILED and ran == [redelivered]
    assert tasks.scan_metadata_store(scan_id=dead.pk) == {"skipped": f"scan #{dead.pk} is not waiting to run"}
    tasks.scan_metadata_store()  # beat's own
    redelivered.refresh_from_db()
    assert redelivered.status == Scan.Status.FAILED and ran[-1] is None


@pytest.mark.django_db
def test_a_redelivered_scan_counts_each_record_once(metadata_store, settings):
    """The message of a scan whose worker died comes back while the scan is still Running."""
    settings.SCAN_PAGE_SIZE = 100
    first = _taken_scan(pages=3, records=300, new=300, errors=1)  # what the killed worker had counted
    ScanRecordError.objects.create(scan=first, dataset_id="X", reason="from the first attempt")
    client = MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=3, backoff_base=0.001)
    again = run_scan(first, store=client)
    assert again.pk == first.pk and again.status == Scan.Status.SUCCEEDED
    assert (again.pages, again.records) == (6, 508)  # not 300 + 508
    assert again.new + again.updated + again.unchanged + again.errors == 508
    assert not ScanRecordError.objects.filter(scan=first, reason="from the first attempt").exists()


@pytest.mark.django_db
def test_a_scan_held_by_another_worker_or_no_longer_running_is_not_run(metadata_store):
    client = MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0)
    held = _taken_scan()
    with _other_session() as worker:
        worker.execute("SELECT pg_advisory_lock(%s, %s)", [SCAN_LOCK_CLASS, held.pk])
        assert run_scan(held, store=client).status == Scan.Status.RUNNING and metadata_store.stats()["graphql_requests"] == 0
    failed = Scan.objects.create(status=Scan.Status.FAILED, error=WORKER_LOST)
    assert run_scan(failed, store=MetadataStoreClient(metadata_store.url, TOKEN)).error == WORKER_LOST
    assert metadata_store.stats()["graphql_requests"] == 0


# --- Real processes: a worker killed with SIGKILL in the middle of a scan -------------------------
def _worker(queue: str, store_url: str, log, **env_extra) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="tests.settings",
               METADATA_STORE_URL=store_url, METADATA_STORE_TOKEN=TOKEN, SECRET_KEY=django_settings.SECRET_KEY,
               SCAN_PAGE_SIZE="50", **env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "l2site", "worker", "--pool", "solo", "-Q", queue, "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _until(predicate, seconds: float, what: str, log):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_scan_leaves_a_scan_that_is_failed_at_the_next_look(metadata_store, client, operator,
                                                                                tmp_path):
    from scanning.tasks import scan_metadata_store

    queue = f"test-scan-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    metadata_store.faults.delay(0.4, count=100)  # a slow store: 11 pages take seconds
    worker = _worker(queue, metadata_store.url, log)
    try:
        scan = Scan.objects.create(full=True, triggered_by="olga")
        scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}, queue=queue)
        _until(lambda: Scan.objects.get(pk=scan.pk).pages >= 2, 60, "the scan to be half-way", log)
        _kill(worker)
    finally:
        _kill(worker)
    client.force_login(operator)
    began = time.monotonic()
    html = client.get(reverse("scan-list")).content.decode()
    scan.refresh_from_db()
    print(f"killed at page {scan.pages}: marked {scan.status} {time.monotonic() - began:.2f} s after the look")
    assert scan.status == Scan.Status.FAILED and scan.error == WORKER_LOST and "worker lost" in html
    response = client.post(reverse("scan-start"), follow=True)  # no hour-long block
    assert "is already running" not in response.content.decode()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_scan_redelivered_after_its_worker_was_killed_counts_each_record_once(metadata_store, tmp_path):
    from scanning.tasks import scan_metadata_store

    redelivers = django_settings.CELERY_BROKER_URL.split(":", 1)[0] in ("redis", "rediss")
    queue = f"test-scan-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    metadata_store.faults.delay(0.4, count=4)  # slow first pages: killed in the middle
    first = _worker(queue, metadata_store.url, logs[0])
    second = None
    try:
        scan = Scan.objects.create(full=True, triggered_by="olga")
        scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}, queue=queue)
        _until(lambda: Scan.objects.get(pk=scan.pk).pages >= 1, 60, "the first page", logs[0])
        _kill(first)
        counted = Scan.objects.get(pk=scan.pk).records
        # Redis gives the unacknowledged message to the next worker (a short visibility timeout here)
        second = _worker(queue, metadata_store.url, logs[1], CELERY_VISIBILITY_TIMEOUT="2", L2_TEST_FAST_RESTORE="1")
        if not redelivers:  # e.g. the filesystem transport: the same message again stands for the redelivery
            scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}, queue=queue)
        _until(lambda: Scan.objects.get(pk=scan.pk).status != Scan.Status.RUNNING, 90, "the redelivered scan", logs[1])
    finally:
        _kill(first)
        if second is not None:
            _kill(second)
    scan.refresh_from_db()
    print(f"first worker counted {counted} records before it was killed; the redelivered scan: {scan.records}")
    assert scan.status == Scan.Status.SUCCEEDED, scan.error
    assert 0 < counted < 508 and scan.records == 508 and scan.pages == 11
    if redelivers:
        assert "scanning.scan_metadata_store" in logs[1].read_text()  # the redelivered message ran there
