"""Run history retention: routine runs go after RUN_KEEP_DAYS, the audit log after AUDIT_KEEP_DAYS.

Every sync and reference check records a Run: with a sync a minute that is
about 2,900 rows a day, for ever. Those routine runs matter for a few weeks
(why did last Tuesday's sync fail?). Prunes, sweeps and source removals are the
audit log (who deleted what, when): they are kept for AUDIT_KEEP_DAYS. A run
that is queued or running is never trimmed, whatever its age.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from checkpoints.jobs import kinds
from checkpoints.models import Run

# Everything else (prune, sweep, remove) is audit log: a new kind is kept long
# unless its Job says it is routine (checkpoints/jobs.py).
ROUTINE_KINDS = tuple(kinds(routine=True))
# Rows deleted per statement: each batch is one short transaction, so a first
# trim of a year of history does not hold locks for long.
BATCH = 5000


def trim_runs(*, now=None, dry_run=False) -> dict:
    """Delete finished runs past their retention; {"dry_run", "routine", "audit", "routine_before", "audit_before"}.

    `routine` and `audit` count the runs deleted (or, with `dry_run`, that
    would be); a run's age is its `created_at`. `now` fixes the clock.
    """
    now = now or timezone.now()
    routine_before = now - timedelta(days=settings.RUN_KEEP_DAYS)
    audit_before = now - timedelta(days=settings.AUDIT_KEEP_DAYS)
    finished = Run.objects.filter(state__in=("done", "failed"))
    selections = {
        "routine": finished.filter(kind__in=ROUTINE_KINDS, created_at__lt=routine_before),
        "audit": finished.exclude(kind__in=ROUTINE_KINDS).filter(created_at__lt=audit_before),
    }
    result = {"dry_run": dry_run, "routine_before": routine_before.isoformat(),
              "audit_before": audit_before.isoformat()}
    for name, qs in selections.items():
        if dry_run:
            result[name] = qs.count()
            continue
        deleted = 0
        while True:
            pks = list(qs.values_list("pk", flat=True)[:BATCH])
            if not pks:
                break
            # A saved policy's last_run is set to NULL by Django's collector (SET_NULL).
            Run.objects.filter(pk__in=pks).delete()
            deleted += len(pks)
        result[name] = deleted
    return result
