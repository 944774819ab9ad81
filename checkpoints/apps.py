from django.apps import AppConfig


class CheckpointsConfig(AppConfig):
    name = "checkpoints"
    verbose_name = "Checkpoints"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_schedules_after_migrate, sender=self)


def _schedules_after_migrate(sender, using="default", **kwargs):
    from checkpoints.tasks import ensure_schedules, schedules_table_exists

    if schedules_table_exists(using):
        ensure_schedules()
