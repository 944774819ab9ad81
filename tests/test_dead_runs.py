"""Runs whose worker died (kill -9, OOM, a lost machine) leave nothing stuck (issue 10, item 2).

A real prune runs in a subprocess on real LangGraph data and is killed with
SIGKILL half-way; then the run is recognised as dead, the next sync mirrors
the source on its own (no --full) and the next prune, dry run included, runs.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from checkpoints.models import PruneMark, Run, Thread
from checkpoints.prune import PrunePolicy, run_prune
from checkpoints.runs import RunBusy, _start_heartbeats, _stop_heartbeats, fail_dead_runs, start_run, this_worker
from checkpoints.sync import sync_source
from dashboard.tasks import busy_run
from tests.graphs import run_scenarios
from tests.mirror_data import viewer, viewer_client  # noqa: F401
from tests.pg import url_for_database
from tests.test_prune_support import SourceDB, make_source
from tests.truth import assert_mirror_matches

LATER = timedelta(days=1)  # `now` a day ahead: every checkpoint is old, none is active
POLICY = PrunePolicy(timedelta(hours=1), keep_last=1)
STOP_AFTER = 40  # threads pruned before the worker is killed, of about 60

KILLED_PRUNE = """
import os, threading, time
from datetime import datetime
import django
django.setup()
from checkpoints import prune as p
from checkpoints.models import Source
from checkpoints.sources.postgres.maintenance import PostgresMaintenance
from checkpoints.sources.sqlite.maintenance import SqliteMaintenance

lock, done = threading.Lock(), [0]
stop_after, flag = int(os.environ["STOP_AFTER"]), os.environ["FLAG"]

def hook(orig):
    def prune_thread(self, *args, **kwargs):
        with lock:
            go = done[0] < stop_after
        if not go:  # park every worker thread here until the test kills the process
            open(flag, "w").close()
            time.sleep(3600)
        selection = orig(self, *args, **kwargs)
        with lock:
            done[0] += 1
        return selection
    return prune_thread

PostgresMaintenance.prune_thread = hook(PostgresMaintenance.prune_thread)
SqliteMaintenance.prune_thread = hook(SqliteMaintenance.prune_thread)
source = Source.objects.get(name=os.environ["SOURCE"])
policy = p.PrunePolicy.from_options("1h", 1)
p.run_prune(source, policy, dry_run=False, now=datetime.fromisoformat(os.environ["NOW"]))
raise SystemExit("the prune finished: the test meant to kill it first")
"""


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


def _kill_prune_midway(tmp_path, source, now):
    """Run a real prune of `source` in a subprocess and SIGKILL it after STOP_AFTER threads; return its pid."""
    flag = tmp_path / "parked"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DATABASE_URL": url_for_database(connection.settings_dict["NAME"]),
        "SECRET_KEY": settings.SECRET_KEY,
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "CHECKPOINT_DATABASE_URL": "",
        "PRUNE_ACTIVE_WINDOW": "0s",
        "SOURCE": source.name, "NOW": now.isoformat(), "STOP_AFTER": str(STOP_AFTER), "FLAG": str(flag),
    }
    log = tmp_path / "prune.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_PRUNE], cwd=settings.BASE_DIR, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # as the OOM killer would: no cleanup runs
    proc.wait()
    if source.kind == "postgres":
        _wait_for_orphaned_transactions(source.url)
    return proc.pid


def _wait_for_orphaned_transactions(url):
    """Until the server has ended the transactions a killed client left open (it notices the closed socket)."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND (state IN ('active', 'idle in transaction') OR backend_xid IS NOT NULL)"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed prune's transactions never ended"
            time.sleep(0.05)


def _mirrored(source):
    return Thread.objects.filter(source=source).aggregate(n=Sum("checkpoints"))["n"] or 0


@pytest.mark.django_db(transaction=True)
def test_a_prune_killed_midway_blocks_nothing_and_the_next_sync_mirrors_the_source(backend, tmp_path, viewer_client):  # noqa: F811
    saver, url = backend
    threads = []
    for i in range(6):
        threads += run_scenarios(saver, prefix=f"k{i}")
    source = make_source(url)
    assert sync_source(source)["error"] is None
    mirrored = _mirrored(source)
    now = timezone.now() + LATER

    pid = _kill_prune_midway(tmp_path, source, now)

    run = Run.objects.get(kind="prune")
    assert (run.state, run.worker_pid, run.worker_host) == ("running", pid, this_worker()[0])
    assert run.progress_done < run.progress_total  # the bar stopped part-way
    left = len(SourceDB(url).dump().checkpoints)
    # What the prune deleted before it died is more than half of the mirror: the guard
    # against a wrong URL used to refuse every sync from here on.
    assert mirrored - left > mirrored / 2, (mirrored, left)
    assert PruneMark.objects.filter(source=source, run=run).count() == len(threads)

    # The run page tells at once: its process is gone from this host.
    page = viewer_client.get(reverse("maintenance-run", args=[run.pk])).content.decode()
    run.refresh_from_db()
    assert run.state == "failed" and run.error.startswith(f"worker died: process {pid} on ")
    assert "<strong>Failed:</strong> worker died: process" in page
    fragment = viewer_client.get(reverse("maintenance-run-progress", args=[run.pk])).content.decode()
    assert "failed: worker died" in fragment  # what a page left open shows at its next poll

    # A preview (dry run) of the next prune is not refused.
    preview = run_prune(source, POLICY, dry_run=True, now=now)
    assert preview.state == "done", preview.error

    # The next sync succeeds on its own, and the mirror equals the source.
    result = sync_source(source)
    assert result["error"] is None and result["checkpoints"] == left, (result, left)
    assert_mirror_matches(source, url)
    assert not PruneMark.objects.filter(source=source).exists()

    # The next real prune finishes what the killed one began.
    again = run_prune(source, POLICY, dry_run=False, now=now)
    assert again.state == "done", again.error
    assert again.result["threads"] > 0
    assert_mirror_matches(source, url)


@pytest.mark.django_db
def test_a_run_is_dead_once_its_heartbeat_is_older_than_a_minute():
    beat = timezone.now()
    run = Run.objects.create(kind="sync", lock_key="sync:far", state="running", started_at=beat, heartbeat_at=beat,
                             worker_host="another-machine", worker_pid=1, worker_pid_ns="pid:[1]")
    assert fail_dead_runs(now=beat + timedelta(seconds=59)) == 0
    run.refresh_from_db()
    assert run.state == "running"
    assert fail_dead_runs(now=beat + timedelta(seconds=61)) == 1
    run.refresh_from_db()
    assert run.state == "failed" and run.error.startswith("worker died: it stopped sending heartbeats")
    # A run of this very process is alive by its pid: only its heartbeat's age could tell otherwise.
    host, pid, ns = this_worker()
    mine = Run.objects.create(kind="sync", lock_key="sync:here", state="running", started_at=beat, heartbeat_at=beat,
                              worker_host=host, worker_pid=pid, worker_pid_ns=ns)
    assert fail_dead_runs(now=beat + timedelta(seconds=30)) == 0
    mine.refresh_from_db()
    assert mine.state == "running"


@pytest.mark.django_db
def test_a_sweep_whose_process_is_gone_does_not_block_the_next_one():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host, _, ns = this_worker()
    now = timezone.now()  # a fresh heartbeat: only the missing process tells
    dead = Run.objects.create(kind="sweep", lock_key="sweep:*", state="running", started_at=now, heartbeat_at=now,
                              worker_host=host, worker_pid=gone.pid, worker_pid_ns=ns)
    assert busy_run("sweep") is None
    dead.refresh_from_db()
    assert dead.state == "failed" and f"process {gone.pid}" in dead.error

    live = Run.objects.create(kind="sweep", lock_key="sweep:*", state="running", started_at=now, heartbeat_at=now,
                              worker_host=host, worker_pid=os.getpid(), worker_pid_ns=ns)
    with pytest.raises(RunBusy):
        start_run("sweep")
    assert busy_run("sweep") == live


@pytest.mark.django_db(transaction=True)
def test_a_running_run_beats_its_heartbeat_from_a_side_thread_until_it_finishes():
    old = timezone.now() - timedelta(hours=1)
    run = Run.objects.create(kind="sync", lock_key="sync:beat", state="running", started_at=old, heartbeat_at=old)
    _start_heartbeats(run.pk, every=timedelta(milliseconds=10))
    try:
        deadline = time.monotonic() + 120
        while Run.objects.get(pk=run.pk).heartbeat_at == old:
            assert time.monotonic() < deadline, "no heartbeat in two minutes"
            time.sleep(0.01)
    finally:
        _stop_heartbeats(run.pk)
    assert fail_dead_runs(run.lock_key) == 0
