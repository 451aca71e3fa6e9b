"""Admin: records are corrected here, history is never edited (DESIGN §12)."""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.template.response import TemplateResponse
from django.utils.html import format_html

from inversions import lifecycle
from inversions.models import Dataset, ObservingProgram, OutboxEvent, Transition, WorkOrder
from inversions.states import State
from l2site.auth import SCIENCE
from l2site.inputs import reject_bad_text


class ReadOnlyAdminMixin:
    """No add, change or delete: the model admin is for looking."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def pretty_json(value) -> str:
    return format_html("<pre style='white-space:pre-wrap;max-width:60rem'>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


class TransitionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Transition
    fields = ("at", "from_state", "to_state", "actor", "reason", "is_correction")
    readonly_fields = fields
    ordering = ("at", "id")
    extra = 0
    can_delete = False
    show_change_link = True


def _reason_field(label: str = "Reason (recorded in the history)") -> forms.CharField:
    return forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), label=label, validators=[reject_bad_text],
        error_messages={"required": "A correction needs a reason."},
    )


class ReasonForm(forms.Form):
    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A correction needs a reason.")
        return reason


class CorrectStateForm(ReasonForm):
    to_state = forms.ChoiceField(choices=State.choices, label="Move to state")
    claimant = forms.ModelChoiceField(
        queryset=None, required=False, label="Claimed by (Working only)", empty_label="me",
        help_text="who holds the claim when the target is Working",
    )
    priority = forms.IntegerField(required=False, min_value=-1000, max_value=1000, label="Priority (Queued only)",
                                  help_text="empty: the program keeps its priority")
    reason = _reason_field()
    force = forms.BooleanField(
        required=False, label="Force",
        help_text="correct even though the records the target needs are missing (say why in the reason)",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        users = get_user_model().objects.filter(is_active=True)
        self.fields["claimant"].queryset = (users.filter(groups__name=SCIENCE) | users.filter(is_superuser=True)).distinct().order_by("username")


class PriorityForm(ReasonForm):
    priority = forms.IntegerField(min_value=-1000, max_value=1000, label="New priority (higher first)")
    reason = _reason_field()


def _action_page(modeladmin, request, queryset, *, title: str, action: str, form, template: str, **extra):
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "programs": queryset,
        "form": form,
        "action": action,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        "opts": modeladmin.model._meta,
        **extra,
    }
    return TemplateResponse(request, template, context)


@admin.action(description="Correct state of selected programs…", permissions=["correct"])
def correct_state(modeladmin, request, queryset):
    """Any state, through the life-cycle (a flagged transition with the reason); refused when the
    target's records are missing unless forced."""
    missing: dict = {}
    if "apply" in request.POST:
        form = CorrectStateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            target = data["to_state"]
            missing = {p: found for p in queryset if (found := lifecycle.missing_records(p, target))}
            if missing and not data["force"]:
                form.add_error("force", f"{len(missing)} program(s) lack what {State(target).label} needs (listed "
                                        "above): nothing was changed. Tick Force to correct them anyway.")
            else:
                done, failed = 0, []
                for program in queryset:
                    try:
                        lifecycle.correct(program, target, user=request.user, reason=data["reason"],
                                          force=data["force"], claimant=data["claimant"], priority=data["priority"])
                        done += 1
                    except lifecycle.LifecycleError as exc:
                        failed.append(str(exc))
                if done:
                    modeladmin.message_user(request, f"Corrected {done} program(s).", messages.SUCCESS)
                for text in failed:
                    modeladmin.message_user(request, text, messages.ERROR)
                return None
    else:
        form = CorrectStateForm()
    return _action_page(
        modeladmin, request, queryset, title="Correct state", action="correct_state", form=form,
        template="admin/inversions/correct_state.html",
        implies=[(State(s).label, text) for s, text in lifecycle.CORRECTION_IMPLIES.items()],
        missing=[(p, found) for p, found in missing.items()],
    )


@admin.action(description="Set priority of selected programs…", permissions=["correct"])
def set_priority(modeladmin, request, queryset):
    """A Queued program's new priority, through the life-cycle (a history row with the reason)."""
    if "apply" in request.POST:
        form = PriorityForm(request.POST)
        if form.is_valid():
            done = 0
            for program in queryset:
                try:
                    lifecycle.reprioritise(program, user=request.user, priority=form.cleaned_data["priority"],
                                           reason=form.cleaned_data["reason"])
                    done += 1
                except lifecycle.LifecycleError as exc:
                    modeladmin.message_user(request, f"{exc} (only a Queued program has a place in the queue)",
                                            messages.ERROR)
            if done:
                modeladmin.message_user(request, f"New priority for {done} program(s).", messages.SUCCESS)
            return None
    else:
        form = PriorityForm()
    return _action_page(modeladmin, request, queryset, title="Set priority", action="set_priority", form=form,
                        template="admin/inversions/set_priority.html")


@admin.register(ObservingProgram)
class ObservingProgramAdmin(admin.ModelAdmin):
    """Looked at here, never edited: state, claim, priority go through the actions (the life-cycle,
    with a reason and a history row); ids, description and dataset fields come from the scans."""

    list_display = ("instrument_program_execution_id", "instrument_name", "primary_proposal_id", "state", "priority", "claimed_by", "updated_at")
    list_filter = ("state", "instrument_name")
    search_fields = ("instrument_program_execution_id", "primary_proposal_id", "primary_experiment_id", "observing_program_execution_id")
    list_select_related = ("claimed_by",)
    fields = (
        "instrument_program_execution_id", "observing_program_execution_id", "primary_proposal_id",
        "primary_experiment_id", "instrument_name", "experiment_description", "state", "state_changed_at",
        "priority", "queued_at", "claimed_by", "claimed_at", "datasets_changed_at", "spectral_lines", "start_time",
        "end_time", "newest_create_date", "settles_at", "dataset_count", "created_at", "updated_at",
    )
    readonly_fields = fields
    inlines = [TransitionInline]
    actions = [correct_state, set_priority]

    def has_add_permission(self, request):
        return False  # programs come from scans

    def has_change_permission(self, request, obj=None):
        return False  # no row edits: the actions change programs, through the life-cycle

    def has_delete_permission(self, request, obj=None):
        return False  # a program with history is never deleted

    def has_correct_permission(self, request):
        return request.user.is_superuser


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("dataset_id", "program", "instrument_name", "wavelength_min", "wavelength_max", "stokes_parameters", "frame_count", "superseded", "update_date")
    list_filter = ("instrument_name", "superseded", "stokes_parameters")
    search_fields = ("dataset_id", "product_id", "instrument_program_execution_id", "primary_proposal_id")
    list_select_related = ("program",)
    exclude = ("raw",)
    readonly_fields = ("raw_record",)

    @admin.display(description="Raw record")
    def raw_record(self, obj):
        return pretty_json(obj.raw)


@admin.register(Transition)
class TransitionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("program", "from_state", "to_state", "at", "actor", "is_correction")
    list_filter = ("to_state", "is_correction")
    search_fields = ("program__instrument_program_execution_id", "actor", "reason")
    list_select_related = ("program",)
    date_hierarchy = "at"
    exclude = ("details",)
    readonly_fields = ("details_pretty",)

    @admin.display(description="Details")
    def details_pretty(self, obj):
        return pretty_json(obj.details)


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "routing_key", "created_at", "sent_at", "attempts", "last_error")
    list_filter = ("routing_key",)
    search_fields = ("routing_key",)


@admin.register(WorkOrder)
class WorkOrderAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Pipeline runs, for looking: they are written by the workers (start, retry from the program page)."""

    list_display = ("id", "program", "kind", "status", "step", "forced", "attempts", "requested_by", "created_at",
                    "finished_at", "short_error")
    list_filter = ("status", "kind", "forced")
    search_fields = ("program__instrument_program_execution_id", "requested_by", "error", "input_fingerprint")
    list_select_related = ("program",)
    date_hierarchy = "created_at"
    exclude = ("progress", "input_checksums", "details")
    readonly_fields = ("progress_pretty", "input_checksums_pretty", "details_pretty")

    @admin.display(description="Error")
    def short_error(self, obj):
        return (obj.error[:120] + "…") if len(obj.error) > 120 else obj.error

    @admin.display(description="Progress")
    def progress_pretty(self, obj):
        return pretty_json(obj.progress)

    @admin.display(description="Input checksums")
    def input_checksums_pretty(self, obj):
        return pretty_json(obj.input_checksums)

    @admin.display(description="Details (resume data, outputs, manifest)")
    def details_pretty(self, obj):
        return pretty_json(obj.details)
