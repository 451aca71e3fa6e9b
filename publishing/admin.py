from django.contrib import admin, messages

from publishing.models import ApiToken, Inversion, InversionEvent, L2File, ReconcileRun


@admin.action(description="Revoke selected tokens")
def revoke(modeladmin, request, queryset):
    n = 0
    for token in queryset.filter(revoked_at__isnull=True):
        token.revoke()
        n += 1
    modeladmin.message_user(request, f"Revoked {n} token(s).", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are issued with `manage.py api_token create` (the raw token is shown once)."""

    list_display = ("name", "user", "prefix", "reports_for_any_claimant", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at", "reports_for_any_claimant")
    fields = ("name", "user", "prefix", "reports_for_any_claimant", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")  # only the flag is edited
    actions = [revoke]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the workers: shown, never edited here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class L2FileInline(admin.TabularInline):
    model = L2File
    fields = ("kind", "step", "filename", "size", "sha256", "object_key")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


class InversionEventInline(L2FileInline):
    """The inversion's status history (append-only)."""

    model = InversionEvent
    fields = ("at", "from_status", "to_status", "actor", "reason", "details")
    readonly_fields = fields


@admin.register(Inversion)
class InversionAdmin(ReadOnlyAdmin):
    list_display = ("inversion_id", "program", "status", "software_commit", "reported_by", "created_at",
                    "generated_at", "store_recorded_at", "publications")
    list_filter = ("status", ("store_recorded_at", admin.EmptyFieldListFilter),
                   ("generated_at", admin.EmptyFieldListFilter))
    search_fields = ("inversion_id", "program__instrument_program_execution_id", "software_commit")
    list_select_related = ("program",)
    inlines = [InversionEventInline, L2FileInline]


@admin.register(ReconcileRun)
class ReconcileRunAdmin(ReadOnlyAdmin):
    """Reconcile runs (``manage.py reconcile`` and the periodic task): what each found and did."""

    list_display = ("id", "started_at", "status", "triggered_by", "dry_run", "ours", "theirs", "missing", "extra",
                    "differing", "added", "updated", "removed")
    list_filter = ("status", "dry_run")


# Sign-in with Globus keeps a user's Globus tokens (to revoke them at sign-out) in
# UserSocialAuth.extra_data: the admin shows who is linked to which identity, never the tokens.
import social_django.admin  # noqa: E402,F401  (registers UserSocialAuth first)
from social_django.models import UserSocialAuth  # noqa: E402

admin.site.unregister(UserSocialAuth)


@admin.register(UserSocialAuth)
class GlobusIdentityAdmin(social_django.admin.UserSocialAuthOption):
    fields = ("user", "provider", "uid", "created", "modified")
    readonly_fields = ("user", "provider", "uid", "created", "modified")

    def has_add_permission(self, request):
        return False
