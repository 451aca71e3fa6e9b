from django.contrib import admin, messages

from publishing.models import ApiToken


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

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    readonly_fields = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = [revoke]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
