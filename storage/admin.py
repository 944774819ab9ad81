from django.contrib import admin

from storage.models import Download


@admin.register(Download)
class DownloadAdmin(admin.ModelAdmin):
    """The download log: read-only, it is an audit trail."""

    list_display = ["created_at", "user", "uri", "remote_addr"]
    list_filter = ["created_at"]
    search_fields = ["uri", "user__username", "remote_addr"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
