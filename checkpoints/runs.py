"""Runs: the audit log, the progress bar and the lock of every job.

At most one run per (kind, source) is running: a partial unique index on
`lock_key` where state = 'running' enforces it in the database, so it holds
across web processes and task workers on several machines. A worker killed
mid-run leaves a running row behind; its heartbeat stops, and the next run of
the same key marks it failed instead of waiting for ever.
"""

import time
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from checkpoints.models import Run

STALE_AFTER = timedelta(minutes=10)


class RunBusy(Exception):
    """Another run with the same lock key is running."""


def lock_key(kind: str, source=None) -> str:
    return f"{kind}:{source.name if source is not None else '*'}"


def start_run(kind, source=None, *, parameters=None, requested_by=None, origin="command", dry_run=False, wait=0.0, run=None):
    """Mark a run as running (creating it unless given), waiting up to `wait` seconds for the lock."""
    key = lock_key(kind, source)
    deadline = time.monotonic() + wait
    if run is None:
        run = Run(kind=kind, source=source, lock_key=key, parameters=parameters or {},
                  requested_by=requested_by, origin=origin, dry_run=dry_run)
    while True:
        now = timezone.now()
        run.state, run.started_at, run.heartbeat_at, run.lock_key = "running", now, now, key
        try:
            with transaction.atomic():
                run.save()
            return run
        except IntegrityError:
            pass
        fail_stale_runs(key)
        if time.monotonic() >= deadline:
            holder = Run.objects.filter(lock_key=key, state="running").first()
            since = f" since {holder.started_at:%Y-%m-%d %H:%M:%S} UTC" if holder and holder.started_at else ""
            if run.pk:
                Run.objects.filter(pk=run.pk).update(state="failed", error=f"skipped: another {kind} run is running{since}", finished_at=timezone.now())
            raise RunBusy(f"another {kind} of {source.name if source else 'all sources'} is running{since}")
        time.sleep(0.2)


def fail_stale_runs(key=None) -> int:
    """Mark running runs whose heartbeat stopped as failed; return how many."""
    cutoff = timezone.now() - STALE_AFTER
    qs = Run.objects.filter(state="running", heartbeat_at__lt=cutoff)
    if key is not None:
        qs = qs.filter(lock_key=key)
    return qs.update(
        state="failed", finished_at=timezone.now(),
        error="interrupted: the worker stopped sending heartbeats (restarted or killed)",
    )


def heartbeat(run, done=None, total=None):
    fields = {"heartbeat_at": timezone.now()}
    if done is not None:
        run.progress_done = fields["progress_done"] = done
    if total is not None:
        run.progress_total = fields["progress_total"] = total
    Run.objects.filter(pk=run.pk).update(**fields)


def finish_run(run, *, result=None, error=""):
    run.state = "failed" if error else "done"
    run.result = result or {}
    run.error = error
    run.finished_at = timezone.now()
    run.save(update_fields=["state", "result", "error", "finished_at"])
    return run
