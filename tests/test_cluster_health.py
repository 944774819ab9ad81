"""The task cluster's health (issue 11.2): heartbeats, queued tasks, the banner, /metrics.

The heartbeat arithmetic runs on a fixed clock; a real `manage.py qcluster`
(ORM and Redis brokers) shows that its workers do beat, and that a killed
cluster with work queued is reported down.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from checkpoints.models import Run
from dashboard.cluster import ALIVE_WINDOW, beat, cluster_health
from dashboard.models import ClusterHeartbeat
from tests.mirror_data import operator, operator_client, viewer, viewer_client  # noqa: F401
from tests.test_maintenance_cluster import Cluster, redis_url  # noqa: F401

pytestmark = pytest.mark.django_db



@pytest.fixture
def t0():
    from datetime import UTC, datetime

    return datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_beats():
    from dashboard import cluster

    cluster._last_beat.clear()
    yield
    cluster._last_beat.clear()


def queued_run(created_at):
    run = Run.objects.create(kind="sweep", lock_key="sweep:*", state="queued", parameters={})
    Run.objects.filter(pk=run.pk).update(created_at=created_at)
    return run


def test_alive_within_the_window_then_down(t0):
    assert cluster_health(t0)["alive"] is False and cluster_health(t0)["last_beat"] is None
    beat(t0, pid=4242, workers=3)
    health = cluster_health(t0 + ALIVE_WINDOW)
    assert (health["alive"], health["workers"], health["clusters"], health["last_beat"]) == (True, 3, 1, t0)
    assert health["down_with_work"] is False

    beat(t0 + timedelta(seconds=5), pid=4242)  # throttled: no write
    assert ClusterHeartbeat.objects.get().beat_at == t0
    beat(t0 + timedelta(minutes=1), pid=4242)
    assert ClusterHeartbeat.objects.get().beat_at == t0 + timedelta(minutes=1)
    assert ClusterHeartbeat.objects.get().started_at == t0

    later = t0 + timedelta(minutes=1) + ALIVE_WINDOW + timedelta(seconds=1)
    health = cluster_health(later)
    assert (health["alive"], health["workers"], health["down_with_work"]) == (False, 0, False)
    assert health["last_beat_age"] == (ALIVE_WINDOW + timedelta(seconds=1)).total_seconds()


def test_two_clusters_add_their_workers(t0):
    beat(t0, pid=1, workers=2)
    beat(t0 + timedelta(minutes=1), pid=2, workers=4)
    assert cluster_health(t0 + timedelta(minutes=2))["workers"] == 6
    assert cluster_health(t0 + ALIVE_WINDOW + timedelta(seconds=30))["workers"] == 4


def test_queued_tasks_and_the_oldest_with_the_orm_broker(t0, settings):
    from django_q.brokers import get_broker
    from django_q.models import OrmQ

    broker = get_broker()
    OrmQ.objects.create(key=broker.list_key, payload="x", lock=t0 - timedelta(minutes=7))
    OrmQ.objects.create(key=broker.list_key, payload="y", lock=t0 - timedelta(minutes=2))
    # A worker holds this one: its lock is the retry time, ahead (django-q2 compares with the real clock).
    OrmQ.objects.create(key=broker.list_key, payload="taken", lock=timezone.now() + timedelta(hours=1))
    health = cluster_health(t0)
    assert health["queued_tasks"] == 2
    assert health["oldest_queued_age"] == 7 * 60
    assert health["down_with_work"] is True  # never beat, tasks wait

    queued_run(t0 - timedelta(minutes=30))
    health = cluster_health(t0)
    assert health["queued_runs"] == 1 and health["oldest_queued_age"] == 30 * 60


def test_banner_on_overview_and_maintenance_only_when_down_with_work(operator_client):
    now = timezone.now()
    beat(now - timedelta(minutes=20), pid=7, workers=2)
    for url in ["/", "/maintenance/"]:
        html = operator_client.get(url).content.decode()
        assert "Task cluster: <strong>down</strong>" in html, url
        assert "The task cluster is down" not in html, url  # nothing waits

    queued_run(now - timedelta(minutes=5))
    for url in ["/", "/maintenance/"]:
        html = operator_client.get(url).content.decode()
        assert "The task cluster is down" in html and "1 queued run" in html and "python3 manage.py qcluster" in html, url

    beat(now, pid=7)
    for url in ["/", "/maintenance/"]:
        html = operator_client.get(url).content.decode()
        assert "Task cluster: <strong>alive</strong>" in html and "2 workers" in html, url
        assert "The task cluster is down" not in html, url


def test_viewer_sees_the_cluster_line_too(viewer_client):
    html = viewer_client.get("/").content.decode()
    assert "Task cluster: <strong>down</strong>" in html and "last heartbeat never" in html


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(f"checkpoint_console_{name} "):
            return float(line.split()[1])
    return None


def test_metrics_export_the_cluster(operator_client):
    now = timezone.now()
    text = operator_client.get("/metrics").content.decode()
    assert metric(text, "cluster_up") == 0 and metric(text, "cluster_workers") == 0
    assert metric(text, "queued_tasks") == 0 and metric(text, "oldest_queued_seconds") == 0
    assert metric(text, "cluster_last_heartbeat_timestamp_seconds") is None
    assert "# TYPE checkpoint_console_cluster_up gauge" in text

    beat(now - timedelta(minutes=1), pid=9, workers=2)
    queued_run(now - timedelta(minutes=10))
    text = operator_client.get("/metrics").content.decode()
    assert metric(text, "cluster_up") == 1 and metric(text, "cluster_workers") == 2
    assert metric(text, "cluster_last_heartbeat_timestamp_seconds") == (now - timedelta(minutes=1)).timestamp()
    assert 10 * 60 <= metric(text, "oldest_queued_seconds") < 20 * 60


# --- A real cluster ------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["orm", "redis"])
def test_a_real_cluster_beats_and_a_killed_one_is_down_with_its_queue(broker, request, tmp_path, monkeypatch,
                                                                      transactional_db, settings):
    import os
    import time

    from django_q.tasks import async_task

    settings.CHECKPOINT_DATABASE_URL = ""
    url = request.getfixturevalue("redis_url") if broker == "redis" else ""
    cluster = Cluster(tmp_path, url, monkeypatch)
    pgid = None
    try:
        cluster.start()
        pgid = cluster.proc.pid
        deadline = time.monotonic() + 60
        while not ClusterHeartbeat.objects.exists():  # the workers beat when they start
            assert time.monotonic() < deadline, cluster.log.read_text()
            time.sleep(0.2)
        row = ClusterHeartbeat.objects.get()
        import socket

        assert row.pid != os.getpid() and row.host == socket.gethostname()  # the cluster's sentinel
        assert (row.workers, row.broker) == (1, broker)
        health = cluster_health()
        assert health["alive"] and health["workers"] == 1 and health["queued_tasks"] == 0
    finally:
        cluster.kill()
    # SIGKILL reaches the sentinel first: wait until its pusher, which blocks
    # on the Redis list, is gone too, or it may still take the next task.
    deadline = time.monotonic() + 60
    while pgid is not None:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)

    async_task("math.floor", 1.5)  # no worker left to take it
    now = timezone.now()
    health = cluster_health(now)
    assert health["queued_tasks"] == 1
    if broker == "orm":
        assert health["oldest_queued"] is not None and health["oldest_queued_age"] < 60
    health = cluster_health(now + ALIVE_WINDOW + timedelta(minutes=1))  # the heartbeat ages on a fixed clock
    assert not health["alive"] and health["down_with_work"] and health["queued_tasks"] == 1


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def test_a_broker_that_never_answers_is_reported_not_waited_for(silent_server, monkeypatch, t0):
    from django_q.conf import Conf

    from dashboard.settings import redis_with_timeouts

    # Without timeouts redis-py would wait forever here and hang the page.
    monkeypatch.setattr(Conf, "REDIS", redis_with_timeouts(silent_server, connect=1, read=1))
    monkeypatch.setattr(Conf, "ORM", None)
    queued, error, oldest = __import__("dashboard.cluster", fromlist=["queue_state"]).queue_state(t0)
    assert (queued, oldest) == (None, None)
    assert "Timeout" in error


def test_the_redis_broker_url_gets_timeouts(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "Q_BROKER": "redis://127.0.0.1:6379/3",
           "CONSOLE_VAR_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "from django.conf import settings; print(settings.Q_CLUSTER['redis'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "redis://127.0.0.1:6379/3?socket_connect_timeout=2&socket_timeout=10"
