from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_schedules_after_migrate, sender=self)


def _schedules_after_migrate(sender, **kwargs):
    from dashboard.tasks import ensure_schedules

    ensure_schedules()
