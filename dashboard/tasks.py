"""The task cluster's maintenance entry points: queued runs, saved policies, reaping.

A prune or sweep asked for on the maintenance page (or by a saved policy) is a
Run row in state "queued" plus a django-q2 task `run_queued(run_pk)`. The task
loads the Run and hands it to `run_prune()` / `run_sweep()`, which mark it
running under the one-running-run-per-(kind, source) index and finish it.

What can go wrong, and what the Run says then:

- another run of the same kind and source is running when the task starts:
  the run ends failed at once ("not started: another prune of X is running")
  instead of waiting, because a prune or sweep can hold the lock for an hour
  and a worker waiting for it is a worker lost to every other task. The page
  refuses to queue a second run while one is queued or running, so this only
  happens on a race or with the schedule;
- the worker dies mid-run (restart, OOM, django-q2's timeout kills it):
  `fail_dead_runs()` marks the Run failed ("worker died") as soon as its
  process is gone from this host, or once its heartbeat (beaten by a side
  thread of the worker, see checkpoints/runs.py) is older than DEAD_AFTER.
  The reapers run at the start of every task here, every minute with the
  sync schedule, before the page queues a run and on every maintenance page view. With the ORM
  broker django-q2 delivers the task again after `retry` seconds; it finds the
  Run no longer queued and does nothing, so an interrupted prune never resumes
  on its own: run it again (a prune or sweep picks up where the data is);
- the task never reaches a worker (Redis flushed, no cluster running): the
  Run stays queued; once it is older than the cluster's timeout + retry,
  `fail_lost_runs()` marks it failed ("the task never started").

The heartbeat thread that start_run() starts keeps `heartbeat_at` fresh while
a run executes, so a slow step (one huge thread, a long listing page) is never
mistaken for a dead worker; only a dead process stops it.
"""

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from checkpoints.jobs import job
from checkpoints.lifecycle import LifecycleBusy, LifecycleRefused, run_lifecycle
from checkpoints.models import Run
from checkpoints.prune import PruneBusy, PrunePolicy, run_prune
from checkpoints.removal import RemovalRefused, remove_source
from checkpoints.runs import RunBusy, fail_dead_runs, finish_run, lock_key
from dashboard.models import SavedPolicy
from storage.sweep import SweepBusy, SweepRefused, run_sweep

logger = logging.getLogger(__name__)

TASK = "dashboard.tasks.run_queued"
POLICY_SCHEDULE = "run due maintenance policies"


class QueueError(Exception):
    """The task could not be handed to the broker."""


# --- Reaping -----------------------------------------------------------------


def lost_after() -> timedelta:
    """How long a run may stay queued: the cluster's timeout plus its retry.

    With the ORM broker a task taken by a worker that died comes back after
    `retry`; one that ran that long was killed by `timeout`. Past both, no
    worker will ever start it.
    """
    q = settings.Q_CLUSTER
    return timedelta(seconds=int(q.get("timeout") or 0) + int(q.get("retry") or 60))


def fail_lost_runs(now=None) -> int:
    """Mark queued runs older than `lost_after()` failed; return how many."""
    now = now or timezone.now()
    waited = lost_after()
    return Run.objects.filter(state="queued", created_at__lt=now - waited).update(
        state="failed", finished_at=now,
        error=f"the task never started: no worker took it within {_minutes(waited)} "
        "(is the task cluster running? start it with `python3 manage.py qcluster`)",
    )


def reap_runs() -> int:
    """Fail running runs whose worker died and queued runs no worker will take."""
    return fail_dead_runs() + fail_lost_runs()


def _minutes(td):
    return f"{int(td.total_seconds() // 60)} minutes"


# --- Queueing ----------------------------------------------------------------


def new_queued_run(kind, *, source=None, parameters, dry_run, requested_by=None, origin="page"):
    """A Run in state "queued", not yet handed to the cluster (see `enqueue`)."""
    return Run.objects.create(
        kind=kind, source=source, lock_key=lock_key(kind, source), parameters=parameters,
        requested_by=requested_by, origin=origin, dry_run=dry_run, state="queued",
    )


def enqueue(run):
    """Hand a queued Run to the cluster.

    Call it once the Run's row is committed (outside `transaction.atomic`;
    requests run in autocommit here): a Redis worker may pick the task up at
    once and must find the row.

    Raises QueueError when the broker refuses the task; the Run is then failed
    with the reason, so the history shows the attempt.
    """
    from django_q.tasks import async_task

    try:
        async_task(TASK, run.pk, task_name=f"{run.kind} run {run.pk}", group="maintenance")
    except Exception as e:
        run.refresh_from_db()
        if run.state == "queued":
            finish_run(run, result=run.result, error=f"could not queue the task: {type(e).__name__}: {e}")
        raise QueueError(f"could not queue the task: {type(e).__name__}: {e}") from e
    return run


def queue_run(kind, *, source=None, parameters, dry_run, requested_by=None, origin="page"):
    """Create a queued Run and hand its task to the cluster; return the Run."""
    run = new_queued_run(kind, source=source, parameters=parameters, dry_run=dry_run,
                         requested_by=requested_by, origin=origin)
    return enqueue(run)


def busy_run(kind, source=None):
    """The queued or running run holding (kind, source), if any (a run whose worker died holds nothing)."""
    fail_dead_runs(lock_key(kind, source))
    return Run.objects.filter(lock_key=lock_key(kind, source), state__in=["queued", "running"]).order_by("created_at").first()


# --- The task ----------------------------------------------------------------


def run_queued(run_pk):
    """Run a queued prune, sweep or source removal (the django-q2 task); return a short summary.

    Never raises for a run's own failure: the Run row records it, and a raise
    would only make django-q2 log a second copy.
    """
    reap_runs()
    run = Run.objects.select_related("source", "requested_by").filter(pk=run_pk).first()
    if run is None:
        return {"run": run_pk, "state": "missing"}
    if run.state != "queued":
        # A redelivered task (the worker died, the broker retried) or a run
        # already failed by a reaper: never start it twice.
        return {"run": run_pk, "state": run.state, "note": "not queued, not started again"}
    runner = job(run.kind).queued  # checkpoints/jobs.py: the function below that runs this kind
    try:
        if runner:
            run = import_string(runner)(run)
        else:
            run = finish_run(run, result={}, error=f"the queue does not run {run.kind} runs")
    except Exception as e:  # noqa: BLE001 - recorded on the Run by run_prune/run_sweep (or here)
        logger.exception("maintenance run %s failed", run_pk)
        run.refresh_from_db()
        if run.state in ("queued", "running"):
            finish_run(run, result=run.result, error=f"{type(e).__name__}: {e}")
    run.refresh_from_db()
    return {"run": run.pk, "kind": run.kind, "state": run.state, "error": run.error}


def queued_prune(run):
    """A queued prune or prune preview: run_prune() with the Run's parameters and its clock."""
    if run.source is None:
        return finish_run(run, result={}, error="the source of this prune no longer exists")
    try:
        policy = PrunePolicy.from_parameters(run.parameters)
    except (KeyError, ValueError) as e:
        return finish_run(run, result={}, error=f"bad parameters: {e}")
    now = _parse_time(run.parameters.get("now"))
    try:
        return run_prune(
            run.source, policy, dry_run=run.dry_run, requested_by=run.requested_by, origin=run.origin,
            now=now, run=run,
        )
    except PruneBusy:
        return _not_started(run, f"another prune of {run.source.name} is running")


def queued_sweep(run):
    """A queued sweep or sweep preview: run_sweep() with the Run's parameters."""
    params = run.parameters
    try:
        return run_sweep(
            grace=params.get("grace"), force=bool(params.get("force")), dry_run=run.dry_run,
            requested_by=run.requested_by, origin=run.origin, run=run,
        )
    except SweepRefused as e:
        return finish_run(run, result={}, error=str(e))
    except SweepBusy:
        return _not_started(run, "another sweep is running")


def queued_lifecycle(run):
    """A queued lifecycle change or its preview: run_lifecycle() with the Run's parameters."""
    if run.source is None:
        return finish_run(run, result={}, error="the source of this lifecycle change no longer exists")
    try:
        return run_lifecycle(run.source, run.parameters, dry_run=run.dry_run, requested_by=run.requested_by,
                             origin=run.origin, run=run)
    except LifecycleRefused as e:
        return finish_run(run, result={}, error=str(e))
    except LifecycleBusy:
        return _not_started(run, f"another lifecycle change of {run.source.name} is running")


def queued_removal(run):
    """A queued source removal (from the sources page): remove_source()."""
    if run.source is None:
        return finish_run(run, result={}, error="the source no longer exists: nothing to remove")
    source = run.source
    try:
        return remove_source(source, requested_by=run.requested_by, origin=run.origin, run=run)
    except RemovalRefused:
        run.refresh_from_db()  # failed with the reason by remove_source
        return run
    except RunBusy as e:
        run.refresh_from_db()
        if run.state == "running":
            return finish_run(run, result=run.result, error=str(e))
        return _not_started(run, f"another removal of {source.name} is running") if run.state == "queued" else run


def _not_started(run, what):
    """start_run already failed the run; say which run holds the lock."""
    holder = Run.objects.filter(lock_key=run.lock_key, state="running").exclude(pk=run.pk).first()
    detail = ""
    if holder is not None:
        since = f", since {holder.started_at:%Y-%m-%d %H:%M:%S} UTC" if holder.started_at else ""
        detail = f" (run #{holder.pk}{since})"
    Run.objects.filter(pk=run.pk).update(
        state="failed", finished_at=timezone.now(),
        error=f"not started: {what}{detail}; queue it again when that one has finished",
    )
    run.refresh_from_db()
    return run


def _parse_time(text):
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


# --- Saved policies ------------------------------------------------------------


def run_due_policies(now=None) -> dict:
    """Queue a real run for every enabled policy that is due (the per-minute schedule).

    Each policy is claimed by moving its `next_run_at` forward in one UPDATE
    that matches the value read: two clusters ticking at once queue it once.
    A policy whose previous run (or any run of the same kind and source) is
    still queued or running waits for the next interval.
    """
    reap_runs()
    now = now or timezone.now()
    queued, waiting, failed = [], [], []
    due = SavedPolicy.objects.filter(enabled=True).exclude(next_run_at__gt=now).select_related("source")
    # A prune policy of a disabled source waits for it to be enabled again.
    due = due.filter(Q(source__isnull=True) | Q(source__enabled=True))
    for policy in due:
        claimed = SavedPolicy.objects.filter(pk=policy.pk, next_run_at=policy.next_run_at)
        if not claimed.update(next_run_at=now + policy.interval):
            continue
        if job(policy.kind).needs_source and policy.source is None:
            failed.append(policy.name)
            continue
        holder = busy_run(policy.kind, policy.source)
        if holder is not None:
            waiting.append(policy.name)
            continue
        parameters = {**policy.parameters, "policy": policy.name, "policy_id": policy.pk}
        try:
            run = queue_run(policy.kind, source=policy.source, parameters=parameters, dry_run=False, origin="schedule")
        except QueueError:
            logger.exception("could not queue policy %s", policy.name)
            failed.append(policy.name)
            continue
        SavedPolicy.objects.filter(pk=policy.pk).update(last_run=run)
        queued.append(policy.name)
    return {"queued": queued, "waiting": waiting, "failed": failed}


def ensure_schedules(**kwargs):
    """Tick every minute: due policies are queued within a minute of their time."""
    from django_q.models import Schedule

    with transaction.atomic():
        Schedule.objects.update_or_create(
            name=POLICY_SCHEDULE,
            defaults={"func": "dashboard.tasks.run_due_policies", "schedule_type": Schedule.MINUTES, "minutes": 1,
                      "repeats": -1},
        )
