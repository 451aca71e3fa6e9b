"""Publishing records, and the API tokens machine clients use."""
from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A revocable token for a machine client (science cluster, metadata store …).

    Only the SHA-256 of the token is stored; the token itself is shown once, at creation.
    The client acts as ``user`` and has that user's groups.
    """

    name = models.CharField(max_length=100, help_text="who uses it, e.g. 'blanca-cluster'")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="the first characters, to recognise it")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    reports_for_any_claimant = models.BooleanField(
        default=False,
        help_text="a cluster client that may report a program inverted whoever claimed it (set by an admin); "
                  "otherwise only the claimant's own token may report it",
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, name: str, user, reports_for_any_claimant: bool = False) -> tuple["ApiToken", str]:
        """Create a token; return the row and the raw token (never stored)."""
        raw = settings.L2_API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(name=name, user=user, key_hash=hash_token(raw), prefix=raw[:10],
                                   reports_for_any_claimant=reports_for_any_claimant)
        return token, raw

    @classmethod
    def authenticate(cls, raw: str):
        """The token's user, or None for an unknown or revoked token."""
        token = cls.objects.active().select_related("user").filter(key_hash=hash_token(raw)).first()
        if token is None or not token.user.is_active:
            return None
        cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class InversionQuerySet(models.QuerySet):
    def published(self):
        """The current publication of each program (what reconcile compares with l2Inversions)."""
        return self.filter(status=Inversion.Status.PUBLISHED)


class Inversion(models.Model):
    """One accepted set of inversion results for a program (DESIGN §8, §9).

    Created by the result intake once the three result files were fetched and checked; then
    generation adds its :class:`L2File` rows, publication the published location and the
    metadata store's record. ``updated_at`` moves with every change (``updated_since`` in the API).

    A program has any number of them (a re-inversion adds one). ``status`` follows
    accepted → generated → published, or archived (and restored); a published one becomes
    superseded when a newer inversion of its program is published. It changes only through
    :mod:`publishing.inversion_status`, each change an :class:`InversionEvent`.
    """

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        GENERATED = "generated", "Generated"
        PUBLISHED = "published", "Published"
        SUPERSEDED = "superseded", "Superseded"
        ARCHIVED = "archived", "Archived"

    inversion_id = models.CharField(max_length=64, unique=True, help_text="public id (the L2 dataset id)")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACCEPTED, editable=False)
    status_changed_at = models.DateTimeField(default=timezone.now, editable=False)
    #: when it became the inversion its program is carried on with (accepted, or a republish started)
    selected_at = models.DateTimeField(default=timezone.now, editable=False)
    superseded_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                      editable=False)
    republished_at = models.DateTimeField(null=True, blank=True, editable=False)
    publications = models.PositiveIntegerField(default=0, editable=False, help_text="times published (republish: 2, 3 …)")
    program = models.ForeignKey("inversions.ObservingProgram", on_delete=models.PROTECT, related_name="inversions")
    software_commit = models.CharField(max_length=40)
    dataset_ids = ArrayField(models.CharField(max_length=64), help_text="the L1 datasets the inversion used")
    spectral_lines = ArrayField(models.CharField(max_length=40), default=list, blank=True)
    raster_steps = models.PositiveIntegerField()
    notes = models.TextField(blank=True)

    # Where the science team said the results are, and where the worker fetched them to.
    reported_collection = models.CharField(max_length=200)
    reported_path = models.CharField(max_length=1000)
    scratch_path = models.CharField(max_length=1000, help_text="folder in the scratch collection holding the fetched files")
    #: [{"name", "size", "sha256", "shape"}] of inv_res_mod.fits, inv_res_pre.fits, per_ori.fits
    result_files = models.JSONField(default=list)

    reported_by = models.CharField(max_length=150, help_text="user name, api:<token>, or bus:<client>")
    reported_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reported_at = models.DateTimeField(help_text="when the report was received")
    created_at = models.DateTimeField(default=timezone.now, help_text="when the files were accepted")

    generated_at = models.DateTimeField(null=True, blank=True)
    l2_path = models.CharField(max_length=1000, blank=True, help_text="folder of the generated files in scratch")
    published_collection = models.CharField(max_length=200, blank=True)
    published_path = models.CharField(max_length=1000, blank=True)
    published_at = models.DateTimeField(null=True, blank=True, help_text="when the files reached the publish collection")
    bucket = models.CharField(max_length=100, blank=True)
    asdf_object_key = models.CharField(max_length=1000, blank=True)
    store_recorded_at = models.DateTimeField(null=True, blank=True, help_text="when the metadata store recorded it")
    store_record = models.JSONField(null=True, blank=True, help_text="the metadata store's answer")

    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = InversionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["updated_at", "id"], name="inversion_updated"),
            models.Index(fields=["program", "-created_at"], name="inversion_program"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["program"], condition=models.Q(status="published"),
                                    name="inversion_one_published_per_program"),
        ]

    def __str__(self) -> str:
        return self.inversion_id

    def touch(self, *fields: str) -> None:
        """Save ``fields`` and ``updated_at``."""
        self.updated_at = timezone.now()
        self.save(update_fields=[*fields, "updated_at"])


class InversionEvent(models.Model):
    """One change of an inversion's status (append-only): who, when, why."""

    inversion = models.ForeignKey(Inversion, on_delete=models.PROTECT, related_name="events")
    from_status = models.CharField(max_length=20, blank=True)  # "" when it was accepted
    to_status = models.CharField(max_length=20, choices=Inversion.Status.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150)
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["inversion", "at"], name="inversionevent_inversion")]

    def __str__(self) -> str:
        return f"{self.inversion_id}: {self.from_status or '∅'} → {self.to_status}"


class L2File(models.Model):
    """One generated Level 2 file: a frame (one raster step) or the dataset's ASDF metadata file."""

    class Kind(models.TextChoices):
        FRAME = "frame", "L2 frame (FITS)"
        METADATA = "metadata", "Dataset metadata (ASDF)"

    inversion = models.ForeignKey(Inversion, on_delete=models.CASCADE, related_name="files")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    step = models.PositiveIntegerField(null=True, blank=True, help_text="raster step (0-based) of a frame")
    filename = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    file_id = models.CharField(max_length=64, blank=True, help_text="FILE_ID of a frame")
    object_key = models.CharField(max_length=1000, blank=True, help_text="key in the bucket once published")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["inversion_id", "kind", "step", "filename"]
        constraints = [models.UniqueConstraint(fields=["inversion", "filename"], name="l2file_unique_name")]
        verbose_name = "L2 file"

    def __str__(self) -> str:
        return self.filename


class ReconcileRun(models.Model):
    """One comparison of our published inversions with the metadata store's l2Inversions (DESIGN §9.5)."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    triggered_by = models.CharField(max_length=150, help_text="user name, command, or beat")
    dry_run = models.BooleanField(default=False)
    update_existing = models.BooleanField(default=False)
    remove_extra = models.BooleanField(default=False)
    ours = models.PositiveIntegerField(default=0, help_text="inversions we published")
    theirs = models.PositiveIntegerField(default=0, help_text="inversions the store lists")
    missing = models.PositiveIntegerField(default=0, help_text="ours, absent from the store")
    extra = models.PositiveIntegerField(default=0, help_text="in the store, not published by us")
    differing = models.PositiveIntegerField(default=0, help_text="on both sides with different fields")
    added = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    removed = models.PositiveIntegerField(default=0)
    plan = models.JSONField(default=dict, blank=True)
    actions = models.JSONField(default=list, blank=True, help_text="what was done (or could not be), one entry per record")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        kind = "dry run" if self.dry_run else "run"
        return f"Reconcile {kind} #{self.pk} ({self.status})"
