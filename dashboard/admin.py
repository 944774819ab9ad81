from django.contrib import admin

from dashboard.models import ApiToken


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
