"""Admin: records are corrected here, history is never edited (DESIGN §12)."""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.html import format_html

from inversions import lifecycle
from inversions.models import Dataset, ObservingProgram, OutboxEvent, Transition, WorkOrder
from inversions.states import State


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


class CorrectStateForm(forms.Form):
    to_state = forms.ChoiceField(choices=State.choices, label="Move to state")
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Reason (recorded in the history)",
        error_messages={"required": "A correction needs a reason."},
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A correction needs a reason.")
        return reason


@admin.action(description="Correct state of selected programs…", permissions=["correct"])
def correct_state(modeladmin, request, queryset):
    if "apply" in request.POST:
        form = CorrectStateForm(request.POST)
        if form.is_valid():
            done, failed = 0, []
            for program in queryset:
                try:
                    lifecycle.correct(program, form.cleaned_data["to_state"], user=request.user, reason=form.cleaned_data["reason"])
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
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Correct state",
        "programs": queryset,
        "form": form,
        "action": "correct_state",
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/inversions/correct_state.html", context)


@admin.register(ObservingProgram)
class ObservingProgramAdmin(admin.ModelAdmin):
    list_display = ("instrument_program_execution_id", "instrument_name", "primary_proposal_id", "state", "priority", "claimed_by", "updated_at")
    list_filter = ("state", "instrument_name")
    search_fields = ("instrument_program_execution_id", "primary_proposal_id", "primary_experiment_id", "observing_program_execution_id")
    list_select_related = ("claimed_by",)
    readonly_fields = (
        "instrument_program_execution_id", "observing_program_execution_id", "primary_proposal_id",
        "primary_experiment_id", "instrument_name", "state", "state_changed_at", "queued_at", "claimed_by",
        "claimed_at", "spectral_lines", "start_time", "end_time", "newest_create_date", "settles_at",
        "dataset_count", "created_at", "updated_at",
    )
    fields = readonly_fields[:5] + ("experiment_description", "priority", "datasets_changed_at") + readonly_fields[5:]
    inlines = [TransitionInline]
    actions = [correct_state]

    def has_add_permission(self, request):
        return False  # programs come from scans

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
