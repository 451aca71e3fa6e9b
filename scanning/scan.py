"""A scan of the metadata store (DESIGN §5): the scan's row, its locks, and the pipeline.

The pipeline (:func:`_scan`) runs four stages, one module each, imported one way (a stage
imports only the stages before it, never this module or the tasks):

* :mod:`scanning.fetch`: page through the store, the next pages read ahead in threads;
* :mod:`scanning.prepare`: canonical JSON and digests, and in a first scan the parsed
  records, their rows and the programs they form (in the read-ahead thread, no database);
* :mod:`scanning.store`: each page upserted in one transaction (``COPY``), then the
  summaries of the programs the pages could not summarise;
* :mod:`scanning.qualify`: every settled Discovered program qualified.

A scan that wrote many rows then vacuums the program table (:func:`scanning.store.vacuum_if_rewritten`).

One scan at a time: a PostgreSQL advisory lock (session level, held for the whole run) makes
a second scan wait for the first, so two scans never insert the same dataset twice. A worker
also holds a lock of the scan's own while it runs (or waits for) it: a Running scan whose
lock nobody holds lost its worker and is marked failed ("worker lost") by
:func:`fail_lost_scans`, which the scans page, starting a scan and beat call. A redelivered
scan starts its counts again, so each record is counted once.

An unchanged store costs no writes but the scan row's: records are compared by the SHA-1 of
their canonical JSON (an unchanged record is not even parsed), and only programs whose
datasets changed are touched.

The rest of the code starts scans here (:func:`start_scan`, :func:`run_scan`,
:func:`fail_lost_scans`); the stages' own names are imported from their modules.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from inversions.errors import L2Error
from scanning import fetch, prepare, qualify, store
from scanning.fetch import client
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan, ScanRecordError, ScanRecordWarning
from scanning.store import PageResult

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x4C32_5343  # "L2SC"


SCAN_LOCK_CLASS = 0x5343  # "SC": pg_advisory_lock(SCAN_LOCK_CLASS, scan id) while a worker has the scan


WORKER_LOST = "worker lost: the process running the scan ended without finishing it"


def start_scan(*, full: bool = False, triggered_by: str = "operator") -> Scan:
    """Record a scan and hand it to a worker; the page polls the row for progress."""
    from scanning.tasks import scan_metadata_store

    scan = Scan.objects.create(full=full, triggered_by=triggered_by)

    def enqueue():
        try:
            scan_metadata_store.apply_async(kwargs={"scan_id": scan.pk}, retry=False)
        except Exception as exc:  # the broker is down: the scan did not start, say so on its row
            Scan.objects.filter(pk=scan.pk).update(
                status=Scan.Status.FAILED, finished_at=timezone.now(), error=f"could not be queued: {type(exc).__name__}: {exc}"
            )
            raise

    transaction.on_commit(enqueue)
    return scan


def run_scan(scan: Scan | None = None, *, full: bool = False, triggered_by: str = "beat", store: MetadataStoreClient | None = None, now: datetime | None = None) -> Scan:
    """Run one scan to the end and return its row (status succeeded or failed, never raising for the store).

    A scan no longer Running (finished, or failed as lost meanwhile), or one another worker
    holds, is returned as it is, without running.
    """
    scan = scan or Scan.objects.create(full=full, triggered_by=triggered_by)
    with scan_lock(scan.pk) as ours:
        if not ours or not _take(scan):
            scan.refresh_from_db()
            if store is not None:
                store.close()
            return scan
        _run(scan, store or client(), now)
    return scan


def _take(scan: Scan) -> bool:
    """This worker has the scan: its counts start again (a redelivered scan counts each record
    once) and the bad records of an earlier attempt go (they are met again). The warnings of
    the datasets an earlier attempt stored stay (those records are unchanged now, so they are
    not warned about again). False if it is no longer Running."""
    zero = dict(pages=0, records=0, new=0, updated=0, unchanged=0, errors=0, programs_new=0, programs_qualified=0)
    kept = ScanRecordWarning.objects.filter(scan_id=scan.pk).count()
    taken = Scan.objects.filter(pk=scan.pk, status=Scan.Status.RUNNING).update(
        locked_at=timezone.now(), warnings=kept, **zero)
    if not taken:
        return False
    ScanRecordError.objects.filter(scan_id=scan.pk).delete()
    scan.refresh_from_db()
    return True


def _run(scan: Scan, source: MetadataStoreClient, now: datetime | None) -> None:
    with advisory_lock():
        try:
            _scan(scan, source, now)
            scan.status = Scan.Status.SUCCEEDED
        except L2Error as exc:
            log.warning("scan #%s failed: %s", scan.pk, exc)
            scan.status = Scan.Status.FAILED
            scan.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # recorded, then raised for the worker's log
            scan.status, scan.error = Scan.Status.FAILED, f"{type(exc).__name__}: {exc}"
            scan.finished_at = timezone.now()
            scan.save()
            raise
        finally:
            source.close()
        scan.finished_at = timezone.now()
        scan.save()


class scan_lock:
    """Session-level advisory lock on the scan itself, held while a worker runs or waits for it
    (PostgreSQL releases it when the worker's connection ends: killed, too). Yields False when
    another session holds it."""

    def __init__(self, scan_id: int):
        self.scan_id, self.held = scan_id, False

    def __enter__(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [SCAN_LOCK_CLASS, self.scan_id])
            self.held = cursor.fetchone()[0]
        return self.held

    def __exit__(self, *exc):
        if self.held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [SCAN_LOCK_CLASS, self.scan_id])
            except DatabaseError:  # the connection is gone: so is the lock
                pass


def fail_lost_scans(*, exclude: int | None = None) -> int:
    """Mark failed every Running scan a worker took whose lock nobody holds now (its worker
    died), but ``exclude`` (the scan a redelivered message is about to run again); returns
    how many. One UPDATE: cheap enough for every look at the scans."""
    table = Scan._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, finished_at = now(), error = %s "
            f"WHERE status = %s AND locked_at IS NOT NULL AND NOT EXISTS ("
            f"SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
            f"AND l.objid = {table}.id AND l.objsubid = 2 "
            f"AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) AND id <> %s",
            [Scan.Status.FAILED, WORKER_LOST, Scan.Status.RUNNING, SCAN_LOCK_CLASS, exclude or 0],
        )
        lost = cursor.rowcount
    if lost:
        log.warning("%d scan(s) marked failed: %s", lost, WORKER_LOST)
    return lost


class advisory_lock:
    """Session-level advisory lock on the default connection: the second scan waits."""

    def __enter__(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])


def _last_watermark(scan: Scan) -> datetime | None:
    """The newest updateDate any earlier successful scan saw (the incremental scans' watermark)."""
    return (
        Scan.objects.filter(status=Scan.Status.SUCCEEDED, newest_update_date__isnull=False)
        .exclude(pk=scan.pk)
        .order_by("-started_at")
        .values_list("newest_update_date", flat=True)
        .first()
    )


def _since(scan: Scan, last: datetime | None) -> datetime | None:
    if scan.full:
        return None
    return last - timedelta(minutes=settings.SCAN_OVERLAP_MINUTES) if last else None


def _scan(scan: Scan, client: MetadataStoreClient, now: datetime | None) -> None:
    """The pipeline: fetch → prepare → store, page by page; then summaries, qualification, vacuum."""
    previous = _last_watermark(scan)  # no other scan runs meanwhile (advisory lock)
    scan.update_date_min = _since(scan, previous)
    scan.save(update_fields=["update_date_min"])
    descriptions = prepare.storable_descriptions(client.experiment_descriptions())
    pages = client.iter_dataset_inventory_pages(settings.SCAN_PAGE_SIZE, update_date_min=scan.update_date_min)
    preparer = prepare.Preparer(descriptions, parse_ahead=previous is None)  # a first scan parses ahead
    with store.Stored() as stored:  # what the pages stored, for the stages after them
        with fetch.read_ahead(pages, prepare=preparer) as prepared_pages:  # threads + GIL interval end here
            for prepared in prepared_pages:
                with transaction.atomic():  # the page and the scan's progress: one commit
                    result = store.upsert_page(scan, prepared.page, descriptions, stored.memory, prepared)
                    _count_page(scan, prepared.page, result)
                preparer.stored(prepared.page, result.new + result.updated + result.errors)
                stored.add(result)
        scan.newest_update_date = max(filter(None, [stored.newest, previous]), default=None)
        stored.finish(descriptions)
        scan.programs_qualified = qualify.qualify_settled(now=now, reports=stored.memory.reports)
    store.vacuum_if_rewritten(scan.new + scan.updated + scan.programs_new + scan.programs_qualified)


def _count_page(scan: Scan, page: list, result: PageResult) -> None:
    scan.pages += 1
    scan.records += len(page)
    scan.new += result.new
    scan.updated += result.updated
    scan.unchanged += result.unchanged
    scan.errors += result.errors
    scan.warnings += result.warnings
    scan.programs_new += result.programs_new
    # progress for the scans page: the scan row is the only row an unchanged store writes
    Scan.objects.filter(pk=scan.pk).update(
        pages=scan.pages, records=scan.records, new=scan.new, updated=scan.updated,
        unchanged=scan.unchanged, errors=scan.errors, warnings=scan.warnings, programs_new=scan.programs_new,
    )


