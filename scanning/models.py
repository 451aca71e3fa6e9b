"""A scan of the metadata store, the records it could not take, and the values it could not use."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class Scan(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING, db_index=True)
    full = models.BooleanField(default=False, help_text="read everything, not only what changed")
    update_date_min = models.DateTimeField(null=True, blank=True, help_text="asked for records updated since")
    triggered_by = models.CharField(max_length=150, default="beat")
    locked_at = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="when a worker took the scan (it holds the scan's advisory lock while it runs it)",
    )

    pages = models.PositiveIntegerField(default=0)
    records = models.PositiveIntegerField(default=0)
    new = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    warnings = models.PositiveIntegerField(default=0, help_text="values stored datasets sent that could not be used")
    programs_new = models.PositiveIntegerField(default=0)
    programs_qualified = models.PositiveIntegerField(default=0)
    newest_update_date = models.DateTimeField(null=True, blank=True, help_text="newest updateDate seen")
    error = models.TextField(blank=True, help_text="why the scan failed, if it did")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"scan #{self.pk} ({self.status})"

    @property
    def is_running(self) -> bool:
        return self.status == self.Status.RUNNING

    @property
    def duration(self):
        return (self.finished_at or timezone.now()) - self.started_at


class ScanRecordError(models.Model):
    """A record the scan skipped, with the reason and the record as received."""

    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="record_errors")
    dataset_id = models.CharField(max_length=200, blank=True)
    field = models.CharField(max_length=100, blank=True)
    reason = models.TextField()
    raw = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["scan_id", "id"]

    def __str__(self) -> str:
        return f"{self.dataset_id or '?'}: {self.reason}"


class ScanRecordWarning(models.Model):
    """A value of a stored dataset that could not be used: the dataset has no data for that field."""

    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="record_warnings")
    dataset_id = models.CharField(max_length=64)
    field = models.CharField(max_length=100)
    reason = models.TextField()

    class Meta:
        ordering = ["scan_id", "id"]

    def __str__(self) -> str:
        return f"{self.dataset_id} {self.field}: {self.reason}"
