"""The scans page: history, bad records, starting a scan and polling its progress."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from scanning import selectors as scan_selectors
from scanning import views as scan_views
from scanning.models import Scan, ScanRecordError, ScanRecordWarning

pytestmark = pytest.mark.django_db


@pytest.fixture
def started(monkeypatch):
    """Replace the hand-over to a worker: record the call, create the row as start_scan does."""
    calls = []

    def fake(*, full, triggered_by):
        calls.append((full, triggered_by))
        return Scan.objects.create(full=full, triggered_by=triggered_by)

    monkeypatch.setattr(scan_views, "start_scan", fake)
    return calls


def test_history_lists_counts_and_links_bad_records(client, scientist):
    now = timezone.now()
    scan = Scan.objects.create(status=Scan.Status.SUCCEEDED, started_at=now - timedelta(seconds=95), finished_at=now,
                               pages=2, records=1372, new=1000, updated=300, unchanged=70, errors=2, programs_new=12,
                               programs_qualified=9)
    ScanRecordError.objects.create(scan=scan, dataset_id="BADID", field="frameCount", reason="frameCount must be a count, not 'lots'",
                                   raw={"datasetId": "BADID", "frameCount": "lots"})
    ScanRecordError.objects.create(scan=scan, dataset_id="", field="", reason="not a JSON object", raw=["junk"])
    failed = Scan.objects.create(status=Scan.Status.FAILED, finished_at=now, error="BackoffRetryError: store answered 503")
    client.force_login(scientist)
    html = client.get(reverse("scan-list")).content.decode()
    assert "1 min 35 s" in html and "1372" in html and "12 / 9" in html
    assert f'href="{reverse("scan-detail", args=[scan.pk])}#bad-records" class="bad">2</a>' in html
    assert "store answered 503" in html and f"#{failed.pk}" in html
    assert "Start scan" not in html  # science users do not start scans
    detail = client.get(reverse("scan-detail", args=[scan.pk])).content.decode()
    assert "frameCount must be a count, not &#x27;lots&#x27;" in detail
    assert "&quot;frameCount&quot;: &quot;lots&quot;" in detail  # the raw record, as JSON
    assert "not a JSON object" in detail


def test_the_scan_pages_show_warnings_apart_from_bad_records(client, scientist):
    now = timezone.now()
    scan = Scan.objects.create(status=Scan.Status.SUCCEEDED, finished_at=now, records=10, new=9, errors=1, warnings=2)
    ScanRecordError.objects.create(scan=scan, dataset_id="D" * 65, field="datasetId", reason="datasetId is longer than 64 characters")
    ScanRecordWarning.objects.create(scan=scan, dataset_id="BKRKL", field="boundingBox",
                                     reason="boundingBox must look like '(x1,y1),(x2,y2)' in arcsec, got '(NaN,NaN),(NaN,NaN)'.")
    ScanRecordWarning.objects.create(scan=scan, dataset_id="BLZLV", field="frameCount", reason="frameCount is beyond what the database holds")
    client.force_login(scientist)
    html = client.get(reverse("scan-list")).content.decode()
    assert f'href="{reverse("scan-detail", args=[scan.pk])}#bad-records" class="bad">1</a>' in html
    assert f'href="{reverse("scan-detail", args=[scan.pk])}#warnings" class="warn">2</a>' in html
    detail = client.get(reverse("scan-detail", args=[scan.pk])).content.decode()
    bad, warnings = detail.split('id="bad-records"')[1].split('id="warnings"')
    assert "longer than 64 characters" in bad and "BKRKL" not in bad
    assert "BKRKL" in warnings and "(NaN,NaN),(NaN,NaN)" in warnings and "beyond what the database holds" in warnings
    assert "(2; each dataset was stored" in warnings
    progress = client.get(reverse("scan-progress", args=[scan.pk])).content.decode()
    assert "1 bad" in progress and "2 with warnings" in progress


def test_operator_starts_a_scan_and_watches_it(client, operator, started):
    client.force_login(operator)
    assert "Start scan" in client.get(reverse("scan-list")).content.decode()
    response = client.post(reverse("scan-start"), {"full": "1"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert started == [(True, "olga")]
    scan = Scan.objects.get()
    html = response.content.decode()
    assert "Full scan #%d started." % scan.pk in html  # the message, swapped out of band
    assert f'hx-get="{reverse("scan-progress", args=[scan.pk])}" hx-trigger="every 2s"' in html

    Scan.objects.filter(pk=scan.pk).update(pages=3, records=3000, new=2500)
    polling = client.get(reverse("scan-progress", args=[scan.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "3000 records: 2500 new" in polling and 'hx-trigger="every 2s"' in polling

    Scan.objects.filter(pk=scan.pk).update(status=Scan.Status.SUCCEEDED, finished_at=timezone.now())
    done = client.get(reverse("scan-progress", args=[scan.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert 'data-status="succeeded"' in done and "hx-trigger" not in done  # polling stops


def test_a_running_scan_is_not_started_twice(client, operator, started):
    running = Scan.objects.create(triggered_by="beat")
    client.force_login(operator)
    response = client.post(reverse("scan-start"), follow=True)
    assert started == []
    assert f"Scan #{running.pk} is already running" in response.content.decode()


def test_a_scan_that_cannot_start_says_why(client, operator, monkeypatch):
    def broken(**kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(scan_views, "start_scan", broken)
    client.force_login(operator)
    response = client.post(reverse("scan-start"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "The scan could not be started: broker unreachable" in response.content.decode()


def test_overview_shows_last_and_running_scan(client, scientist):
    Scan.objects.create(status=Scan.Status.SUCCEEDED, finished_at=timezone.now(), new=7, errors=1)
    running = Scan.objects.create(pages=4, records=4000)
    client.force_login(scientist)
    html = client.get(reverse("overview")).content.decode()
    assert "7 new, 0 updated, 1 bad record" in html
    assert f'id="scan-progress-{running.pk}"' in html and "4000 records" in html


def test_next_scan_comes_from_the_beat_schedule(client, scientist):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(every=900, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(
        name="scan the metadata store",
        defaults={"task": scan_selectors.SCAN_TASK, "interval": every, "enabled": True,
                  "last_run_at": timezone.now() - timedelta(minutes=5)},
    )
    when = scan_selectors.next_scan()
    assert when is not None and timedelta(minutes=9) < when - timezone.now() <= timedelta(minutes=10)
    PeriodicTask.objects.filter(task=scan_selectors.SCAN_TASK).update(enabled=False)
    assert scan_selectors.next_scan() is None
    client.force_login(scientist)
    assert "not scheduled" in client.get(reverse("overview")).content.decode()
