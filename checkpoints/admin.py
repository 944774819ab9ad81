"""Admin: sources can be edited here too (the sources page checks URLs first); the mirror and the runs are read-only."""

from django.contrib import admin, messages

from checkpoints.models import BlobReference, Checkpoint, DailyUsage, PruneMark, Run, Source, Thread
from checkpoints.tasks import SYNC_ONE


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# Booleans whose False is the healthy state read as words: Django's red
# cross on "references unknown: no" or "dry run: no" looks like a failure.


@admin.display(description="references", ordering="references_unknown")
def references(source):
    if source.references_unknown:
        return f"unknown ({source.undecodable_values} undecodable)"
    return "known"


@admin.display(description="state", ordering="exists")
def object_state(ref):
    return ref.state


@admin.display(description="mode", ordering="dry_run")
def mode(run):
    return "dry run" if run.dry_run else "real"


@admin.action(description="Sync selected sources now")
def sync_now(modeladmin, request, queryset):
    # Queued, not run in the request: a sync can outlast any proxy's timeout.
    # The run history shows its outcome, as for a scheduled sync.
    from django_q.tasks import async_task

    for source in queryset:
        try:
            async_task(SYNC_ONE, source.name, request.user.pk, task_name=f"sync {source.name}", group="sync")
        except Exception as e:  # the broker refused: say so, the other sources may still queue
            messages.error(request, f"{source.name}: could not queue the sync: {type(e).__name__}: {e}")
        else:
            messages.success(request, f"{source.name}: sync queued; the run history shows its outcome.")


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "display_url", "layout", "enabled", "last_sync_at", "last_sync_ok", references]
    readonly_fields = ["kind", "layout", "created_at", "last_sync_started_at", "last_sync_at", "last_sync_ok",
                       "last_success_started_at", "last_error", "references_unknown", "undecodable_values", "sync_state"]
    actions = [sync_now]

    def save_model(self, request, obj, form, change):
        from checkpoints.sources.registry import kind_of

        obj.kind = kind_of(obj.url)
        if change and "url" in form.changed_data:
            for field, value in Source.repointed(obj.url).items():  # another store: drop the old watermark
                setattr(obj, field, value)
        super().save_model(request, obj, form, change)


@admin.register(Thread)
class ThreadAdmin(ReadOnlyAdmin):
    list_display = ["thread_id", "source", "checkpoints", "stored_bytes", "last_checkpoint_at"]
    list_filter = ["source"]
    search_fields = ["thread_id"]
    list_select_related = ["source"]


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ["checkpoint_id", "thread", "checkpoint_ns", "step", "origin", "created_at", "logical_bytes"]
    list_filter = ["source", "origin"]
    search_fields = ["checkpoint_id", "thread__thread_id"]
    raw_id_fields = ["thread"]
    show_full_result_count = False


@admin.register(BlobReference)
class BlobReferenceAdmin(ReadOnlyAdmin):
    list_display = ["uri", "store", object_state, "size", "checked_at"]
    list_filter = ["store", "exists"]
    search_fields = ["uri"]


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    list_display = ["source", "day", "checkpoints", "stored_bytes", "checkpoints_added", "bytes_added"]
    list_filter = ["source"]


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "source", "state", mode, "requested_by", "origin", "created_at", "finished_at"]
    list_filter = ["kind", "state", "source"]


@admin.register(PruneMark)
class PruneMarkAdmin(ReadOnlyAdmin):
    list_display = ["thread_id", "source", "run", "created_at"]
    list_filter = ["source"]
    search_fields = ["thread_id"]
    raw_id_fields = ["run"]
