"""The maintenance queue through a real django-q2 cluster (`manage.py qcluster` in a subprocess).

The page (Django's test client, in this process) queues runs on Redis at
127.0.0.1:6379 (or TEST_REDIS_URL) or on the ORM broker; the cluster, started
with the production settings pointed at this test's database, runs them. A
missing Redis fails the test: CI has one.
"""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from checkpoints.dburl import parse_database_url
from checkpoints.models import Run
from tests.pg import url_for_database
from tests.test_maintenance_support import latest_values, make_source, make_user, old_scenarios, prune_post, read_rows

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_TIMEOUT = 180  # minutes, not seconds: the machine may be busy
RUN_TIMEOUT = 300


@pytest.fixture
def redis_url():
    import redis

    # A Redis database of its own (1-15), so that runs on the same server do not share a queue.
    url = f"{REDIS_URL.rstrip('/').rsplit('/', 1)[0]}/{random.randint(1, 15)}" if REDIS_URL.count("/") == 3 else REDIS_URL
    try:
        redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:  # noqa: BLE001 - any failure means the same: no Redis to test against
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({type(e).__name__}: {e}): start redis-server "
                    "(or set TEST_REDIS_URL); this test needs a real broker")
    return url


class Cluster:
    """`manage.py qcluster` with the production settings, on this test's database and queue."""

    def __init__(self, tmp_path, broker, monkeypatch):
        from django_q.conf import Conf

        self.log = tmp_path / "qcluster.log"
        db = connection.settings_dict
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATABASE_URL": url_for_database(db["NAME"]),
            "SECRET_KEY": settings.SECRET_KEY,  # tasks are signed with it
            "CONSOLE_VAR_DIR": str(tmp_path / "var"),
            "Q_BROKER": broker,
            "Q_WORKERS": "1",
            "PRUNE_ACTIVE_WINDOW": "0s",
            "CHECKPOINT_DATABASE_URL": "",
            "LOG_LEVEL": "INFO",
        }
        # This process enqueues as the page does in production: on the broker, not inline.
        monkeypatch.setattr(Conf, "SYNC", False)
        monkeypatch.setattr(Conf, "REDIS", broker if broker else {})
        monkeypatch.setattr(Conf, "ORM", None if broker else "default")
        self.proc = None

    def start(self):
        from django_q.models import Schedule

        # Only the runs this test queues: no scheduled sync beside them.
        Schedule.objects.all().delete()
        self.out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR, env=self.env,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while b"running" not in self.log.read_bytes().lower() or b"ready for work" not in self.log.read_bytes().lower():
            assert self.proc.poll() is None, f"qcluster exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"qcluster did not start:\n{self.log.read_text()}"
            time.sleep(0.2)

    def kill(self):
        """SIGKILL the cluster and its workers (all started here), as an OOM kill or a lost machine would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.out.close()
        self.proc = None

    def stop(self):
        """Stop as a service manager does: SIGTERM, then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@pytest.fixture
def cluster_factory(tmp_path, monkeypatch, transactional_db, settings):
    settings.PRUNE_ACTIVE_WINDOW = timedelta(0)
    settings.CHECKPOINT_DATABASE_URL = ""
    made = []

    def make(broker):
        cluster = Cluster(tmp_path, broker, monkeypatch)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def wait_for(run, states=("done", "failed"), timeout=RUN_TIMEOUT, log=None):
    deadline = time.monotonic() + timeout
    while True:
        run.refresh_from_db()
        if run.state in states:
            return run
        assert time.monotonic() < deadline, f"run #{run.pk} still {run.state}:\n{log.read_text() if log else ''}"
        time.sleep(0.2)


@pytest.mark.parametrize("broker", ["redis", "orm"])
def test_a_prune_queued_from_the_page_runs_on_a_real_cluster(broker, request, cluster_factory, client, pg_saver, pg_source_url):
    url = request.getfixturevalue("redis_url") if broker == "redis" else ""
    cluster = cluster_factory(url)
    threads = old_scenarios(pg_saver)
    source = make_source(pg_source_url)
    states = latest_values(pg_saver, threads)
    before = read_rows(pg_source_url)
    client.force_login(make_user("otto", "operator"))
    cluster.start()

    response = client.post(reverse("maintenance-prune-preview"), prune_post(source))
    assert response.status_code == 302
    preview = Run.objects.get(kind="prune", dry_run=True)
    wait_for(preview, log=cluster.log)
    assert preview.state == "done", preview.error
    assert read_rows(pg_source_url) == before

    client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
    real = Run.objects.get(kind="prune", dry_run=False)
    wait_for(real, log=cluster.log)
    assert real.state == "done", real.error
    assert real.started_at > real.created_at and real.heartbeat_at is not None
    removed = before.minus(read_rows(pg_source_url))
    assert len(removed.checkpoints) == real.result["checkpoints"] == preview.result["checkpoints"] > 0
    assert removed.bytes == real.result["bytes"] == preview.result["bytes"]
    assert latest_values(pg_saver, threads) == states

    progress = client.get(reverse("maintenance-run-progress", args=[real.pk]), {"format": "json"}).json()
    assert progress["finished"] and progress["progress_done"] == progress["progress_total"] == real.result["candidates"]
    page = client.get(reverse("maintenance-run", args=[real.pk])).content.decode()
    assert "The run removed exactly what the preview showed." in page


def test_a_run_interrupted_by_a_killed_worker_ends_failed(redis_url, cluster_factory, client, sqlite_saver, sqlite_source_url):
    cluster = cluster_factory(redis_url)
    old_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url)
    client.force_login(make_user("otto", "operator"))
    cluster.start()

    client.post(reverse("maintenance-prune-preview"), prune_post(source))
    preview = wait_for(Run.objects.get(kind="prune", dry_run=True), log=cluster.log)
    assert preview.state == "done", preview.error
    # Another writer holds the SQLite database: the real prune starts, then waits for the write lock.
    blocker = sqlite3.connect(parse_database_url(sqlite_source_url)["NAME"], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
        run = Run.objects.get(kind="prune", dry_run=False)
        wait_for(run, states=("running", "done", "failed"), log=cluster.log)
        assert run.state == "running", run.error
        time.sleep(0.5)
        cluster.kill()  # the worker dies mid-run, as on a restart or an OOM kill
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    run.refresh_from_db()
    assert run.state == "running"  # nobody is left to say otherwise...
    # ...but the worker's process is gone from this host: the page fails the run at once.
    page = client.get(reverse("maintenance-run", args=[run.pk])).content.decode()
    run.refresh_from_db()
    assert run.state == "failed" and run.error.startswith("worker died: process")
    assert "worker died" in page
    # The lock is free again: the next preview of the source is accepted.
    assert client.post(reverse("maintenance-prune-preview"), prune_post(source)).status_code == 302
