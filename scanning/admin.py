from django.contrib import admin

from inversions.admin import ReadOnlyAdminMixin, pretty_json
from scanning.models import Scan, ScanRecordError, ScanRecordWarning


class ScanRecordErrorInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ScanRecordError
    fields = ("dataset_id", "field", "reason")
    readonly_fields = fields
    extra = 0
    show_change_link = True


class ScanRecordWarningInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ScanRecordWarning
    fields = ("dataset_id", "field", "reason")
    readonly_fields = fields
    extra = 0


@admin.register(Scan)
class ScanAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "started_at", "finished_at", "status", "full", "records", "new", "updated", "unchanged", "errors", "warnings", "triggered_by")
    list_filter = ("status", "full")
    inlines = [ScanRecordErrorInline, ScanRecordWarningInline]


@admin.register(ScanRecordError)
class ScanRecordErrorAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("scan", "dataset_id", "field", "reason")
    search_fields = ("dataset_id", "reason")
    exclude = ("raw",)
    readonly_fields = ("raw_record",)

    @admin.display(description="Record as received")
    def raw_record(self, obj):
        return pretty_json(obj.raw)
