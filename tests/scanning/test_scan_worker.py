"""A scan started the way operators start one, run by a real Celery worker on the real broker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
from django.db import connection

from scanning.models import Scan
from tests.scanning.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    s = connection.settings_dict
    host = s["HOST"] or ""
    host = urllib.parse.quote(host, safe="") if host.startswith("/") else host
    port = f":{s['PORT']}" if s["PORT"] else ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{s['USER']}{password}@{host}{port}/{s['NAME']}"


@pytest.fixture
def celery_worker_process(metadata_store, settings):
    """A real worker process on a private queue, on the test database, pointed at the emulator."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="tests.settings",
        METADATA_STORE_URL=metadata_store.url,
        METADATA_STORE_TOKEN=TOKEN,
        SECRET_KEY=settings.SECRET_KEY,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "l2site", "worker", "--pool", "solo", "-Q", queue, "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield queue
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out[-3000:])


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_started_scan_is_run_by_a_real_worker(celery_worker_process):
    from scanning.tasks import scan_metadata_store

    scan = Scan.objects.create(full=True, triggered_by="olga")
    scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}, queue=celery_worker_process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        scan.refresh_from_db()
        if scan.status != Scan.Status.RUNNING:
            break
        time.sleep(0.5)
    assert scan.status == Scan.Status.SUCCEEDED, scan.error
    assert (scan.records, scan.new, scan.programs_new, scan.triggered_by) == (508, 508, 142, "olga")
