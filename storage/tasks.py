"""Task-queue entry points of the storage app (django-q2 runs them by dotted path)."""

from storage.refcheck import run_reference_check


def check_references():
    """The scheduled reference check: every referenced object, recorded as a Run."""
    result = run_reference_check(origin="schedule")
    return {k: v for k, v in result.items() if k != "errors"}


REFCHECK_SCHEDULE = "check references"


def ensure_schedules(**kwargs):
    """Check every referenced object hourly (syncs check their own references too)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=REFCHECK_SCHEDULE,
        defaults={"func": "storage.tasks.check_references", "schedule_type": Schedule.HOURLY, "repeats": -1},
    )
