"""Is a task cluster alive? Heartbeats written by the workers, read by the pages and /metrics.

Why not django-q2's own `Stat.get_all()`: with the ORM broker (the default)
django-q2 saves its cluster statistics in Django's cache, and the default
cache is local memory, a separate one in every process: the web server sees
no cluster even while one runs. Only with the Redis broker (or a shared
CACHE_URL) would Stat work. A row in the console's own database works with
every broker and cache.

Who beats: every worker when it starts (django-q2's `post_spawn` signal) and
before each task it takes (`pre_execute`). The cluster takes the
per-minute policy tick (dashboard.tasks.run_due_policies) every minute, so a
live cluster beats at least every minute or so; ALIVE_WINDOW leaves room for
the scheduler's 30-second cycle and a busy minute. A cluster whose workers
are all held by long runs does not beat: the running runs' own heartbeats say
they are alive (checkpoints.runs), and the page shows them.

Several clusters on one Redis broker share the tick: each beats when it takes
a task, so one that took none for a while can look stale while another
carries the load; "alive" means at least one cluster beat within the window.
"""

import logging
import os
import socket
from datetime import timedelta

from django.db import DatabaseError
from django.db.models import Min
from django.utils import timezone

from checkpoints.models import Run

log = logging.getLogger(__name__)

ALIVE_WINDOW = timedelta(minutes=3)
FORGET_AFTER = timedelta(days=7)  # rows of clusters gone for good are deleted then
BEAT_EVERY = timedelta(seconds=20)  # at most one write per worker this often

_last_beat = {}


def beat(now=None, *, pid=None, workers=None):
    """Record that this process's cluster is alive (called in a worker process)."""
    from django_q.conf import Conf

    from dashboard.models import ClusterHeartbeat

    now = now or timezone.now()
    pid = pid or os.getppid()  # workers are children of the cluster's sentinel
    host = socket.gethostname()
    key = f"{host}:{pid}"
    last = _last_beat.get(key)
    if last is not None and now - last < BEAT_EVERY:
        return
    _last_beat[key] = now
    try:
        updated = ClusterHeartbeat.objects.filter(cluster=key).update(beat_at=now)
        if not updated:
            ClusterHeartbeat.objects.update_or_create(cluster=key, defaults={
                "host": host, "pid": pid, "workers": workers or Conf.WORKERS, "broker": _broker_name(),
                "started_at": now, "beat_at": now,
            })
            ClusterHeartbeat.objects.filter(beat_at__lt=now - FORGET_AFTER).delete()
    except DatabaseError:
        _last_beat.pop(key, None)
        log.exception("could not record the cluster heartbeat")


def _broker_name():
    from django_q.conf import Conf

    return "redis" if Conf.REDIS else "orm" if Conf.ORM else "other"


def on_worker_signal(sender=None, **kwargs):
    """post_spawn and pre_execute receiver; inline tasks (Q_CLUSTER sync) are no cluster."""
    from django_q.conf import Conf

    if not Conf.SYNC:
        beat()


def queue_state(now):
    """(queued tasks at the broker or None, its error, oldest queued task time or None)."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import OrmQ

    try:
        broker = get_broker()
        queued = broker.queue_size()
        oldest = None
        if Conf.ORM:
            # An ORM task waits with `lock` = its enqueue time until a worker
            # takes it (then `lock` moves to the retry time, in the future).
            oldest = OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key, lock__lte=now).aggregate(
                t=Min("lock"))["t"]
        return queued, None, oldest
    except Exception as e:  # noqa: BLE001 - a broker that cannot be asked is itself the news
        return None, f"{type(e).__name__}: {e}", None


def cluster_health(now=None) -> dict:
    """What the pages and /metrics say about the task cluster."""
    from dashboard.models import ClusterHeartbeat

    now = now or timezone.now()
    clusters = list(ClusterHeartbeat.objects.order_by("-beat_at")[:20])
    alive = [c for c in clusters if now - c.beat_at <= ALIVE_WINDOW]
    queued_tasks, broker_error, oldest_task = queue_state(now)
    # Runs wait as tasks at the broker too; with Redis the broker keeps no
    # enqueue time, so the oldest queued run stands in for the oldest task.
    oldest_run = Run.objects.filter(state="queued").aggregate(t=Min("created_at"))["t"]
    oldest = min((t for t in (oldest_task, oldest_run) if t is not None), default=None)
    queued_runs = Run.objects.filter(state="queued").count()
    last = clusters[0].beat_at if clusters else None
    return {
        "alive": bool(alive),
        "last_beat": last,
        "last_beat_age": (now - last).total_seconds() if last else None,
        "clusters": len(alive),
        "workers": sum(c.workers for c in alive),
        "queued_tasks": queued_tasks,
        "queued_runs": queued_runs,
        "oldest_queued": oldest,
        "oldest_queued_age": max(0.0, (now - oldest).total_seconds()) if oldest else None,
        "broker_error": broker_error,
        "down_with_work": not alive and bool(queued_runs or queued_tasks),
        "window": ALIVE_WINDOW,
    }
