from django.apps import AppConfig


class StorageConfig(AppConfig):
    name = "storage"
    verbose_name = "Blob storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_migrate

        # checkpoints never imports storage (docs/architecture.md §2): the sync announces
        # that it finished and the reference check listens.
        from checkpoints.sync import sync_finished
        from storage.refcheck import check_after_sync

        sync_finished.connect(check_after_sync, dispatch_uid="storage.check_after_sync")
        post_migrate.connect(_schedules_after_migrate, sender=self)


def _schedules_after_migrate(sender, using="default", **kwargs):
    from checkpoints.tasks import schedules_table_exists
    from storage.tasks import ensure_schedules

    if schedules_table_exists(using):
        ensure_schedules()
