"""Reconcile our published inversions with the metadata store's l2Inversions (DESIGN §9.5)."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from publishing.models import ReconcileRun
from publishing.reconcile import run


class Command(BaseCommand):
    help = ("Compare our published inversions with the metadata store's l2Inversions (ours are the truth): "
            "add what the store lacks, report what only it has; --dry-run prints the plan and changes nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
        parser.add_argument("--update-existing", action="store_true",
                            help="make records on both sides that differ like ours (needs METADATA_STORE_L2_DELETE_URL)")
        parser.add_argument("--remove-extra", action="store_true",
                            help="remove records only the store has (needs METADATA_STORE_L2_DELETE_URL)")

    def handle(self, *args, dry_run, update_existing, remove_extra, **options):
        record = run(dry_run=dry_run, update_existing=update_existing, remove_extra=remove_extra,
                     triggered_by="manage.py reconcile")
        from publishing.reconcile import Plan

        if record.plan:
            plan = Plan(**record.plan)
            title = "Plan (dry run: nothing changed)" if dry_run else "Plan"
            self.stdout.write(f"{title}:")
            for line in plan.lines():
                self.stdout.write(line)
        for action in record.actions:
            done = "done" if action["done"] else "NOT done"
            why = action.get("error") or action.get("reason") or ""
            self.stdout.write(f"{action['action']} {action['inversionId']}: {done}{' — ' + why if why else ''}")
        summary = (f"reconcile run #{record.pk}: {record.get_status_display()}; added {record.added}, "
                   f"updated {record.updated}, removed {record.removed}")
        if record.status == ReconcileRun.Status.FAILED:
            raise CommandError(f"{summary}: {record.error}")
        self.stdout.write(summary)
