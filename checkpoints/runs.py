"""Runs: the audit log, the progress bar and the lock of every job.

At most one run per (kind, source) is running: a partial unique index on
`lock_key` where state = 'running' enforces it in the database, so it holds
across web processes and task workers on several machines.

A worker killed mid-run (kill -9, out of memory, a lost machine) leaves a
running row behind that would block every later run of its key. So a run
records where it runs (host, pid) and a side thread of its process beats
`heartbeat_at` every HEARTBEAT_EVERY while it runs, whatever the job is doing.
`fail_dead_runs()` marks a running run failed ("worker died") as soon as its
process is gone from this host, or once its heartbeat is older than
DEAD_AFTER (a few beats: a slow database never fakes a death, a lost machine
is noticed within a minute). It is called wherever a running run would block
another: at every run's start, before the page queues one, by the reapers.
"""

import logging
import os
import socket
import threading
import time
from datetime import timedelta

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from checkpoints.models import Run

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = timedelta(seconds=15)
DEAD_AFTER = timedelta(seconds=60)  # four missed beats


class RunBusy(Exception):
    """Another run with the same lock key is running."""


def lock_key(kind: str, source=None) -> str:
    return f"{kind}:{source.name if source is not None else '*'}"


def start_run(kind, source=None, *, parameters=None, requested_by=None, origin="command", dry_run=False, wait=0.0, run=None):
    """Mark a run as running (creating it unless given), waiting up to `wait` seconds for the lock.

    From then on a side thread beats its heartbeat until `finish_run()` (or
    until the row is no longer running).
    """
    key = lock_key(kind, source)
    deadline = time.monotonic() + wait
    if run is None:
        run = Run(kind=kind, source=source, lock_key=key, parameters=parameters or {},
                  requested_by=requested_by, origin=origin, dry_run=dry_run)
    host, pid, pid_ns = this_worker()
    while True:
        now = timezone.now()
        run.state, run.started_at, run.heartbeat_at, run.lock_key = "running", now, now, key
        run.worker_host, run.worker_pid, run.worker_pid_ns = host, pid, pid_ns
        try:
            with transaction.atomic():
                run.save()
        except IntegrityError:
            pass
        else:
            _start_heartbeats(run.pk)
            return run
        if fail_dead_runs(key):
            continue  # the holder was dead: the lock is free now
        if time.monotonic() >= deadline:
            holder = Run.objects.filter(lock_key=key, state="running").first()
            since = f" since {holder.started_at:%Y-%m-%d %H:%M:%S} UTC" if holder and holder.started_at else ""
            if run.pk:
                Run.objects.filter(pk=run.pk).update(state="failed", error=f"skipped: another {kind} run is running{since}", finished_at=timezone.now())
            raise RunBusy(f"another {kind} of {source.name if source else 'all sources'} is running{since}")
        time.sleep(0.2)


# --- Who runs it, and is it alive ----------------------------------------------


def this_worker():
    """(host name, pid, pid namespace) of this process.

    The namespace tells two containers that share a host name apart: a pid
    is only looked up where it means the same process.
    """
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return socket.gethostname()[:255], os.getpid(), pid_ns[:64]


def process_gone(pid: int) -> bool:
    """Whether no live process has this pid here (a zombie counts as gone)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process: alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) S ...": the state follows the last ")" (comm may hold one).
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def dead_reason(run, now=None):
    """Why this running run's worker is dead, or None while it may be alive.

    >>> from datetime import datetime, UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> r = Run(state="running", heartbeat_at=t, worker_host="elsewhere", worker_pid=1)
    >>> dead_reason(r, t + timedelta(seconds=59)) is None
    True
    >>> dead_reason(r, t + timedelta(seconds=61))
    'worker died: it stopped sending heartbeats at 2026-01-01 00:00:00 UTC (more than 60 s ago: killed, out of memory or a lost machine)'
    """
    now = now or timezone.now()
    host, _, pid_ns = this_worker()
    if run.worker_pid and run.worker_host == host and run.worker_pid_ns == pid_ns and process_gone(run.worker_pid):
        return (f"worker died: process {run.worker_pid} on {host} is gone "
                "(killed, out of memory or restarted) before the run finished")
    beat = run.heartbeat_at or run.started_at
    if beat is not None and now - beat > DEAD_AFTER:
        return (f"worker died: it stopped sending heartbeats at {beat:%Y-%m-%d %H:%M:%S} UTC "
                f"(more than {int(DEAD_AFTER.total_seconds())} s ago: killed, out of memory or a lost machine)")
    return None


def fail_dead_runs(key=None, *, now=None) -> int:
    """Mark running runs whose worker died as failed (see the module doc); return how many.

    `now` fixes the clock the heartbeat ages are measured with.
    """
    now = now or timezone.now()
    qs = Run.objects.filter(state="running")
    if key is not None:
        qs = qs.filter(lock_key=key)
    failed = 0
    for run in qs.only("pk", "heartbeat_at", "started_at", "worker_host", "worker_pid", "worker_pid_ns"):
        reason = dead_reason(run, now)
        if reason is not None:
            # Matching the heartbeat read: a run that beat meanwhile is alive.
            failed += Run.objects.filter(pk=run.pk, state="running", heartbeat_at=run.heartbeat_at).update(
                state="failed", finished_at=now, error=reason,
            )
    return failed


# --- Heartbeats -----------------------------------------------------------------


_beating = {}  # run pk -> Event that stops its heartbeat thread
_beating_lock = threading.Lock()


def _start_heartbeats(run_pk, every=None):
    """Beat the run's heartbeat from a daemon thread until it is stopped or the run is no longer running.

    A daemon thread dies with its process, which is the point: the heartbeat
    stops exactly when the worker does, never while a long step runs.
    """
    every = (every or HEARTBEAT_EVERY).total_seconds()
    stop = threading.Event()
    with _beating_lock:
        old = _beating.pop(run_pk, None)
        if old is not None:
            old.set()
        _beating[run_pk] = stop

    def beat():
        try:
            while not stop.wait(every):
                try:
                    if not Run.objects.filter(pk=run_pk, state="running").update(heartbeat_at=timezone.now()):
                        return  # finished (or failed by someone else): nothing left to keep alive
                except DatabaseError as e:  # a missed beat is retried at the next one; never kill the run
                    log.warning("heartbeat of run %s failed: %s", run_pk, e)
        finally:
            with _beating_lock:
                if _beating.get(run_pk) is stop:
                    del _beating[run_pk]
            connection.close()  # this thread's own connection

    threading.Thread(target=beat, name=f"heartbeat-{run_pk}", daemon=True).start()


def _stop_heartbeats(run_pk):
    with _beating_lock:
        stop = _beating.pop(run_pk, None)
    if stop is not None:
        stop.set()


def heartbeat(run, done=None, total=None):
    """Record progress (and a sign of life) now."""
    fields = {"heartbeat_at": timezone.now()}
    if done is not None:
        run.progress_done = fields["progress_done"] = done
    if total is not None:
        run.progress_total = fields["progress_total"] = total
    Run.objects.filter(pk=run.pk).update(**fields)


def throttled_progress(run, interval=0.5):
    """A `progress(done, total)` callback for a job: heartbeats `run` a few times a second at most.

    The progress bar needs a few updates a second, not one per thread or
    object; the last one (done == total) is always written.
    """
    last = [0.0]

    def progress(done, total):
        now = time.monotonic()
        if done == total or now - last[0] > interval:
            last[0] = now
            heartbeat(run, done=done, total=total)

    return progress


def finish_run(run, *, result=None, error=""):
    _stop_heartbeats(run.pk)
    run.state = "failed" if error else "done"
    run.result = result or {}
    run.error = error
    run.finished_at = timezone.now()
    run.save(update_fields=["state", "result", "error", "finished_at"])
    return run
