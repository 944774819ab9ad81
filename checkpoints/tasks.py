"""Functions the django-q2 cluster runs on a schedule.

Each is a plain function that the management commands call too; django-q2
only schedules them.
"""

from django.conf import settings

from checkpoints.run_history import trim_runs
from checkpoints.runs import fail_dead_runs
from checkpoints.sync import sync_sources

SYNC_SCHEDULE = "sync checkpoints"
SYNC_ONE = "checkpoints.tasks.sync_one"
TRIM_SCHEDULE = "trim run history"


def sync_all():
    """The scheduled sync: skip a source whose previous sync still runs."""
    fail_dead_runs()
    return sync_sources(origin="schedule", wait=0)


def sync_one(name, user_pk=None):
    """Sync one source now, for the admin's "sync now" (queued, so never in a request).

    By name, so a task queued for a source removed since does nothing; and
    without waiting for a sync of it already running (that one is as fresh).
    """
    from django.contrib.auth import get_user_model

    from checkpoints.models import Source
    from checkpoints.sync import sync_source

    source = Source.objects.filter(name=name).first()
    if source is None:
        return None
    user = get_user_model().objects.filter(pk=user_pk).first() if user_pk is not None else None
    return sync_source(source, requested_by=user, origin="admin", wait=0)


def trim_run_history():
    """The daily trim of the run history (RUN_KEEP_DAYS, AUDIT_KEEP_DAYS)."""
    return trim_runs()


def schedules_table_exists(using="default") -> bool:
    """False during a migrate that stops before django-q2's own tables exist.

    post_migrate follows every migrate, also `migrate checkpoints 0004`; the
    schedules are written by the later migrate that creates django_q_schedule.
    """
    from django.db import connections
    from django_q.models import Schedule

    return Schedule._meta.db_table in connections[using].introspection.table_names()


def ensure_schedules(**kwargs):
    """Create or update the sync schedule from SYNC_INTERVAL, and the daily trim (after migrate)."""
    from django_q.models import Schedule

    minutes = max(1, int(settings.SYNC_INTERVAL.total_seconds() // 60))
    Schedule.objects.update_or_create(
        name=SYNC_SCHEDULE,
        defaults={"func": "checkpoints.tasks.sync_all", "schedule_type": Schedule.MINUTES, "minutes": minutes,
                  "repeats": -1},
    )
    Schedule.objects.update_or_create(
        name=TRIM_SCHEDULE,
        defaults={"func": "checkpoints.tasks.trim_run_history", "schedule_type": Schedule.DAILY, "repeats": -1},
    )
