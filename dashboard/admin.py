from django.contrib import admin

from dashboard.models import ApiToken, SavedPolicy

# The console's name on every admin page, not Django's.
admin.site.site_header = "Checkpoint Console administration"
admin.site.site_title = "Checkpoint Console administration"
admin.site.index_title = "Sources, mirror, runs and users"
admin.site.site_url = "/"


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by `create_api_token` (the only time one is shown); here they can be revoked."""

    list_display = ["prefix", "user", "created_at", "last_used_at"]
    list_filter = ["created_at"]
    search_fields = ["prefix", "user__username"]
    readonly_fields = ["user", "prefix", "digest", "created_at", "last_used_at"]
    ordering = ["-created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SavedPolicy)
class SavedPolicyAdmin(admin.ModelAdmin):
    """Policies are made on the maintenance page; here they can be inspected, disabled or deleted."""

    list_display = ["name", "kind", "source", "interval", "enabled", "next_run_at", "created_by"]
    list_filter = ["kind", "enabled"]
    readonly_fields = ["kind", "source", "parameters", "created_by", "created_at", "last_run", "next_run_at"]
