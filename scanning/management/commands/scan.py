"""Scan the metadata store now, in this process: `manage.py scan [--full]`."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from scanning.models import Scan
from scanning.scan import run_scan


class Command(BaseCommand):
    help = "Scan the metadata store (incremental by updateDate; --full reads everything), then qualify settled programs."

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true", help="read every record, not only those updated since the last good scan")

    def handle(self, *args, full: bool, **options):
        scan = run_scan(full=full, triggered_by="command")
        self.stdout.write(
            f"scan #{scan.pk} {scan.status}: {scan.records} records in {scan.pages} pages; "
            f"{scan.new} new, {scan.updated} updated, {scan.unchanged} unchanged, {scan.errors} errors; "
            f"{scan.programs_new} new programs, {scan.programs_qualified} qualified"
        )
        if scan.status == Scan.Status.FAILED:
            self.stderr.write(f"failed: {scan.error}")
            raise SystemExit(1)
