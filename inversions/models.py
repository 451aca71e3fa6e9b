"""The Observing Program record, its datasets, its append-only history and the event outbox.

Nothing here writes ``ObservingProgram.state``: only ``inversions.lifecycle`` does.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import MD5, Upper
from django.utils import timezone

from inversions.states import State


#: The GIN indexes' pending list (kB): large enough for a full scan's programs (DESIGN §13).
GIN_PENDING_KB = 65536
PROGRAM_TRIGRAM_INDEXES = (
    ("instrument_program_execution_id", "program_ipeid_trgm"),
    ("observing_program_execution_id", "program_opeid_trgm"),
    ("primary_proposal_id", "program_proposal_trgm"),
    ("primary_experiment_id", "program_experiment_trgm"),
)


class ObservingProgram(models.Model):
    """The datasets sharing one instrumentProgramExecutionId: the unit of work."""

    instrument_program_execution_id = models.CharField(max_length=200, unique=True)
    observing_program_execution_id = models.CharField(max_length=200, blank=True)
    # Indexed in Meta.indexes (plain btrees: a db_index CharField gets a second, LIKE-pattern
    # index too, which nothing here uses and every insert and state change would maintain).
    primary_proposal_id = models.CharField(max_length=100)
    primary_experiment_id = models.CharField(max_length=100, blank=True)
    instrument_name = models.CharField(max_length=50)
    experiment_description = models.TextField(blank=True)

    # Cached current state: always equal to the to_state of the newest Transition.
    state = models.CharField(max_length=20, choices=State.choices, default=State.DISCOVERED, editable=False)
    state_changed_at = models.DateTimeField(default=timezone.now, editable=False)

    # "Work on this next" and the claim (written by the life-cycle module with the state).
    priority = models.IntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True, editable=False)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="claims", editable=False
    )
    claimed_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Summaries of the current (not superseded) datasets, written by the scan.
    spectral_lines = ArrayField(models.CharField(max_length=40), default=list, blank=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    newest_create_date = models.DateTimeField(null=True, blank=True)
    settles_at = models.DateTimeField(null=True, blank=True, db_index=True)
    dataset_count = models.PositiveIntegerField(default=0)
    # [[wavelengthMin, wavelengthMax], …] in nm of every current dataset with a range, sorted
    wavelength_ranges = ArrayField(ArrayField(models.FloatField(), size=2), default=list, blank=True)
    # any current dataset embargoed (None: no dataset says); the latest embargo end of them
    is_embargoed = models.BooleanField(null=True, blank=True)
    embargo_end_date = models.DateTimeField(null=True, blank=True)
    # Set when datasets change once the program is Working or later (DESIGN §4).
    datasets_changed_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)

    class Meta:
        ordering = ["-start_time", "instrument_program_execution_id"]
        indexes = [
            models.Index(fields=["state", "-start_time"], name="program_state_start"),
            models.Index(fields=["primary_proposal_id"], name="program_proposal"),  # the API's proposal filter
            models.Index(fields=["primary_experiment_id"], name="program_experiment"),  # the description search
            # (instrument_name alone: the leading column of program_instrument_state)
            models.Index(fields=["instrument_name", "state"], name="program_instrument_state"),
            # The list's instrument and proposal filters are case-insensitive (UPPER(col) = UPPER(%s)):
            # expression indexes, newest observed first, so a filtered page reads only its rows
            # (the column INCLUDEd: the page's COUNT is an index-only scan).
            models.Index(Upper("instrument_name"), F("state"), F("start_time").desc(), name="program_instr_state_start",
                         include=["instrument_name"]),
            models.Index(Upper("instrument_name"), F("start_time").desc(), name="program_instr_start",
                         include=["instrument_name"]),
            models.Index(Upper("primary_proposal_id"), F("start_time").desc(), name="program_proposal_start"),
            models.Index(fields=["-start_time"], name="program_start"),
            models.Index(fields=["-state_changed_at"], name="program_state_changed"),
            models.Index(
                fields=["-priority", "queued_at", "id"], name="program_queue", condition=Q(state=State.QUEUED)
            ),
            models.Index(fields=["claimed_at"], name="program_claims", condition=Q(state=State.WORKING)),
            # The overview's "datasets changed" count and list: the few flagged programs, newest first.
            models.Index(F("datasets_changed_at").desc(), "id", name="program_changed",
                         condition=Q(datasets_changed_at__isnull=False)),
            # GIN indexes take a scan's inserts into a pending list, merged in bulk by autovacuum
            # (GIN_PENDING_KB, not the 4 MB default that makes a large scan merge them itself).
            GinIndex(fields=["spectral_lines"], name="program_lines", gin_pending_list_limit=GIN_PENDING_KB),
            # The dashboard's text search (icontains is UPPER(col) LIKE …): trigram indexes,
            # created by migration 0005 only where PostgreSQL has the pg_trgm extension.
            *[GinIndex(OpClass(Upper(column), name="gin_trgm_ops"), name=name, gin_pending_list_limit=GIN_PENDING_KB)
              for column, name in PROGRAM_TRIGRAM_INDEXES],
            # The description is searched through ExperimentDescription (one row per text, not per program).
        ]

    def __str__(self) -> str:
        return self.instrument_program_execution_id

    @property
    def state_label(self) -> str:
        return State(self.state).label


class ExperimentDescription(models.Model):
    """Each (experiment id, description) pair a program carries, once: the index of the description search.

    Thousands of programs share one experiment's description (about 1 kB of text). A trigram
    index over the programs' copies would index every copy (it made the full scan take twice
    as long); here each text is indexed once, and the dashboard's search finds the programs
    through their experiment id (``inversions.forms.description_matches``).

    Written by PostgreSQL itself (migration 0006): a trigger on ObservingProgram adds the
    pair of every program inserted, and of every program whose description or experiment
    id changes, whoever writes it (the scan, the admin, a test). So every non-empty
    description a program carries is here; a pair no program carries any longer may stay
    (the search checks the program's own description too).
    """

    experiment_id = models.CharField(max_length=100)
    description = models.TextField()

    class Meta:
        ordering = ["experiment_id", "id"]
        constraints = [
            models.UniqueConstraint(F("experiment_id"), MD5("description"), name="experiment_description_unique"),
        ]
        indexes = [
            # created by migration 0006 only where PostgreSQL has the pg_trgm extension (as 0005)
            GinIndex(OpClass(Upper("description"), name="gin_trgm_ops"), name="experiment_description_trgm"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id}: {self.description[:60]}"


class Dataset(models.Model):
    """One metadata-store record (for ViSP, one spectrograph arm's frames)."""

    dataset_id = models.CharField(max_length=64, unique=True)
    product_id = models.CharField(max_length=64, null=True, blank=True)
    # Indexed by dataset_program_current (program first); product_id in Meta.indexes (no LIKE index).
    program = models.ForeignKey(ObservingProgram, on_delete=models.PROTECT, related_name="datasets", db_index=False)

    primary_proposal_id = models.CharField(max_length=100)
    primary_experiment_id = models.CharField(max_length=100, blank=True)
    observing_program_execution_id = models.CharField(max_length=200, blank=True)
    instrument_program_execution_id = models.CharField(max_length=200)
    instrument_name = models.CharField(max_length=50)
    create_date = models.DateTimeField()
    update_date = models.DateTimeField(db_index=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    wavelength_min = models.FloatField(null=True, blank=True)
    wavelength_max = models.FloatField(null=True, blank=True)
    stokes_parameters = models.CharField(max_length=8, blank=True)
    # Canonical line names (scanning.records.lines_of): from spectralLines, or inferred from
    # the wavelength range where the record has none. The record's own list stays in raw.
    spectral_lines = ArrayField(models.CharField(max_length=40), null=True, blank=True)
    lines_listed = models.BooleanField(default=False, help_text="spectral_lines are the record's own list, not inferred")
    bounding_box = models.JSONField(null=True, blank=True, help_text="[[x1, y1], [x2, y2]] in arcsec")
    frame_count = models.PositiveIntegerField(null=True, blank=True)
    health = models.JSONField(null=True, blank=True)
    gos_status = models.JSONField(null=True, blank=True)
    ao_locked = models.IntegerField(null=True, blank=True)
    light_level = models.JSONField(null=True, blank=True)
    fried_parameter = models.JSONField(null=True, blank=True)
    exposure_time = models.FloatField(null=True, blank=True)
    bucket = models.CharField(max_length=100, blank=True)
    browse_movie_url = models.CharField(max_length=500, blank=True)
    is_embargoed = models.BooleanField(null=True, blank=True)
    embargo_end_date = models.DateTimeField(null=True, blank=True)
    # Quality and product fields (DatasetInventoryViewResponse); units in publishing.api.DATASET_UNITS
    polarimetric_accuracy = models.JSONField(null=True, blank=True, help_text="POL_SENS {min, p25, med, p75, max}")
    quality_average_fried_parameter = models.FloatField(null=True, blank=True, help_text="m")
    quality_average_polarimetric_accuracy = models.FloatField(null=True, blank=True)
    quality_report_object_key = models.CharField(max_length=1000, blank=True)
    browse_movie_object_key = models.CharField(max_length=1000, blank=True)
    asdf_object_key = models.CharField(max_length=1000, blank=True, help_text="the L1 ASDF (its gwcs), in bucket")
    dataset_size = models.FloatField(null=True, blank=True, help_text="GB")
    has_all_stokes = models.BooleanField(null=True, blank=True)
    target_types = ArrayField(models.CharField(max_length=100), null=True, blank=True)
    status = models.CharField(max_length=50, blank=True)
    # [[field, reason], …] of the values the record sent that could not be used (no data)
    field_warnings = models.JSONField(null=True, blank=True)
    # No copy of the experiment description (~1 kB, the same for thousands of datasets): the
    # raw record holds the one the store sent, the program the one it shows.

    raw = models.JSONField(help_text="The record exactly as the metadata store sent it")
    raw_hash = models.CharField(max_length=40, editable=False, help_text="SHA-1 of the canonical raw JSON")
    superseded = models.BooleanField(default=False)
    first_seen_at = models.DateTimeField(default=timezone.now)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["program_id", "wavelength_min", "dataset_id"]
        indexes = [
            models.Index(fields=["program", "superseded"], name="dataset_program_current"),
            models.Index(fields=["product_id"], name="dataset_product"),
        ]

    def __str__(self) -> str:
        return self.dataset_id


class Transition(models.Model):
    """One row of a program's history. Append-only: PostgreSQL refuses UPDATE and DELETE."""

    # Indexed by transition_program_at (program first): no index of its own to write on every row.
    program = models.ForeignKey(ObservingProgram, on_delete=models.PROTECT, related_name="transitions",
                                db_index=False)
    from_state = models.CharField(max_length=20, blank=True)  # "" for the program's creation
    to_state = models.CharField(max_length=20, choices=State.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150, help_text="user name, or a component: scan, worker, api …")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    is_correction = models.BooleanField(default=False)

    class Meta:
        ordering = ["program_id", "at", "id"]
        indexes = [
            models.Index(fields=["program", "-at", "-id"], name="transition_program_at"),
            models.Index(fields=["to_state", "-at"], name="transition_to_state_at"),
        ]

    def __str__(self) -> str:
        return f"{self.program_id}: {self.from_state or '∅'} → {self.to_state}"


class OutboxEvent(models.Model):
    """An event written with its transition, relayed to the event bus afterwards (DESIGN §10).

    ``bus`` says where it goes: our event bus (``EVENT_EXCHANGE``), or the data center's
    interservice bus (``ISB_EXCHANGE``: the frame catalog's messages of a publication).
    """

    class Bus(models.TextChoices):
        EVENTS = "events", "Event bus"
        ISB = "isb", "Interservice bus"

    created_at = models.DateTimeField(default=timezone.now)
    # db_default too: the life-cycle's COPY of large batches names only the event bus's columns
    bus = models.CharField(max_length=10, choices=Bus.choices, default=Bus.EVENTS, db_default=Bus.EVENTS)
    routing_key = models.CharField(max_length=100)
    payload = models.JSONField()
    transition = models.OneToOneField(Transition, null=True, blank=True, on_delete=models.PROTECT, related_name="event")
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["id"], name="outbox_unsent", condition=Q(sent_at__isnull=True))]

    def __str__(self) -> str:
        return f"{self.routing_key} #{self.pk}"


class WorkOrder(models.Model):
    """One run of a worker pipeline for a program (DESIGN §7): preprocess, intake, generate, publish.

    At most one active (Queued or Started) order per program and kind. ``input_fingerprint``
    (a digest of the inputs' checksums) lets a new order for the same inputs be skipped unless
    forced. ``progress`` is written as the work goes (files staged, frames assembled, bytes …)
    for the program page; ``details`` keeps what a redelivered task needs to resume (transfer
    submission ids, outputs) and, once done, the manifest.
    """

    class Kind(models.TextChoices):
        PREPROCESS = "preprocess", "Preprocess"
        GENERATE = "generate", "Generate L2"
        PUBLISH = "publish", "Publish"
        INTAKE = "intake", "Result intake"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        STARTED = "started", "Started"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.QUEUED, Status.STARTED)

    program = models.ForeignKey(ObservingProgram, on_delete=models.PROTECT, related_name="work_orders")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    step = models.CharField(max_length=40, blank=True, help_text="the step running now, or the one that failed")
    forced = models.BooleanField(default=False, help_text="run even if the inputs did not change")
    requested_by = models.CharField(max_length=150, help_text="user name, or beat")
    requested_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0, help_text="times a worker started a step of it")
    progress = models.JSONField(default=dict, blank=True)
    input_checksums = models.JSONField(default=dict, blank=True, help_text="input name -> checksum")
    input_fingerprint = models.CharField(max_length=64, blank=True, db_index=True)
    details = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    # Refreshed by the worker running a step (inversions.work_orders.heartbeat); while the order
    # waits for a retry, the time it is due again. Older than L2_HEARTBEAT_STALE_SECONDS with
    # nobody running the order: its worker died (or its message was lost) and beat resends the step.
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["program", "kind"],
                condition=Q(status__in=["queued", "started"]),
                name="workorder_one_active_per_kind",
            )
        ]
        indexes = [
            models.Index(fields=["program", "kind", "-created_at"], name="workorder_program_kind"),
            models.Index(fields=["status", "kind"], name="workorder_status_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} of {self.program_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class ProgramNote(models.Model):
    """A note on a program by a user (append-only, like the history, in which it is shown)."""

    program = models.ForeignKey(ObservingProgram, on_delete=models.PROTECT, related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField()
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["program", "at"], name="note_program_at")]

    def __str__(self) -> str:
        return f"note by {self.author_id} on {self.program_id} at {self.at:%Y-%m-%d %H:%M}"
