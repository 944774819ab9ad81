from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_schedules_after_migrate, sender=self)
        post_migrate.connect(_groups_after_migrate, sender=self)

        from django_q.signals import post_spawn, pre_execute

        from dashboard.cluster import on_worker_signal

        # Workers record their cluster's heartbeat (dashboard/cluster.py says why not Stat).
        post_spawn.connect(on_worker_signal, dispatch_uid="console-cluster-heartbeat-spawn")
        pre_execute.connect(on_worker_signal, dispatch_uid="console-cluster-heartbeat-task")


def _schedules_after_migrate(sender, using="default", **kwargs):
    from checkpoints.tasks import schedules_table_exists
    from dashboard.tasks import ensure_schedules

    if schedules_table_exists(using):
        ensure_schedules()


def _groups_after_migrate(sender, using="default", **kwargs):
    # The groups come from a data migration; `flush` (used between
    # transactional tests, and by operators resetting a database) empties
    # them, and then emits post_migrate: put them back.
    from django.contrib.auth.models import Group, Permission

    from dashboard.migrations import _groups

    def perms(pairs):
        return [Permission.objects.db_manager(using).get(content_type__app_label=app, codename=code) for app, code in pairs]

    try:
        view = perms((app, f"view_{model}") for app, model in _groups.VIEW_MODELS)
        extra = perms(_groups.OPERATOR_EXTRA + _groups.OPERATOR_SOURCES)
    except Permission.DoesNotExist:
        return  # a partial migrate (`migrate checkpoints 0004`): the full one comes back here
    viewer, _ = Group.objects.db_manager(using).get_or_create(name="viewer")
    viewer.permissions.add(*view)
    operator, _ = Group.objects.db_manager(using).get_or_create(name="operator")
    operator.permissions.add(*view, *extra)
