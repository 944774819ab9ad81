"""The maintenance page on real LangGraph data: access, prune and sweep previews, confirmed runs, policies, reaping.

The test settings run django-q2 with `sync: True`, so a task queued by the
page runs inline before the response returns; tests/test_maintenance_cluster.py
runs the same flow through a real cluster.
"""

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import timezone

from checkpoints.models import Run
from checkpoints.prune import PrunePolicy, prune
from checkpoints.runs import lock_key
from dashboard.models import SavedPolicy
from dashboard.tasks import POLICY_SCHEDULE, new_queued_run, run_due_policies, run_queued
from tests.graphs import chat_graph, config, file_graph
from tests.mirror_data import operator, operator_client, viewer, viewer_client  # noqa: F401
from tests.test_maintenance_support import (
    latest_values, make_source, make_user, old_scenarios, prune_post, read_rows,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    """(saver, url) of a fresh PostgreSQL or SQLite LangGraph database."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


@pytest.fixture(autouse=True)
def quiet_window(settings):
    # Threads written a second ago are not "active": the age cut alone decides.
    settings.PRUNE_ACTIVE_WINDOW = timedelta(0)
    settings.CHECKPOINT_DATABASE_URL = ""


def run_url(run):
    return reverse("maintenance-run", args=[run.pk])


def finished_prune(**fields):
    now = timezone.now()
    values = {"kind": "prune", "lock_key": "prune:x", "state": "done", "parameters": {"older_than": "30d", "keep_last": 1,
              "tags": [], "threads": False}, "result": {"threads": 1, "checkpoints": 2, "writes": 0, "blobs": 0,
              "bytes": 123, "skipped": []}, "started_at": now, "finished_at": now, "origin": "command"}
    values.update(fields)
    return Run.objects.create(**values)


# --- Access ---------------------------------------------------------------------


def test_anonymous_is_sent_to_login(client):
    run = finished_prune()
    for url in ["/maintenance/", run_url(run), reverse("maintenance-run-progress", args=[run.pk])]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next="), url
    response = client.post(reverse("maintenance-prune-preview"), {})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert Run.objects.count() == 1


def test_viewer_sees_history_and_runs_but_no_forms_and_cannot_post(viewer_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    preview = finished_prune(source=source, dry_run=True, parameters={"older_than": "1h", "keep_last": 1, "tags": [],
                             "threads": False, "now": timezone.now().isoformat()}, lock_key=lock_key("prune", source))
    policy = SavedPolicy.objects.create(name="nightly", kind="sweep", parameters={"grace": "24h", "force": False},
                                        interval=timedelta(hours=24))

    response = viewer_client.get("/maintenance/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="{run_url(preview)}"' in html and "nightly" in html
    assert reverse("maintenance-prune-preview") not in html and reverse("maintenance-sweep-preview") not in html
    assert "operator" in html
    response = viewer_client.get(run_url(preview))
    assert response.status_code == 200
    assert reverse("maintenance-run-confirm", args=[preview.pk]) not in response.content.decode()

    posts = [
        (reverse("maintenance-prune-preview"), prune_post(source)),
        (reverse("maintenance-sweep-preview"), {"sweep-grace": "24h"}),
        (reverse("maintenance-run-confirm", args=[preview.pk]), {}),
        (reverse("maintenance-policy-new", args=["sweep"]), {"sweep-grace": "24h", "policy-name": "x", "policy-interval": "1h"}),
        (reverse("maintenance-policy-toggle", args=[policy.pk]), {}),
        (reverse("maintenance-policy-delete", args=[policy.pk]), {}),
    ]
    runs = Run.objects.count()
    for url, data in posts:
        response = viewer_client.post(url, data)
        assert response.status_code == 403, url
    assert Run.objects.count() == runs
    assert SavedPolicy.objects.get(pk=policy.pk).enabled


def test_user_without_group_cannot_see_the_page(client):
    client.force_login(make_user("nobody"))
    assert client.get("/maintenance/").status_code == 403


# --- Prune: preview, confirm, run -------------------------------------------------


def test_prune_preview_then_confirm_removes_exactly_the_previewed_rows(backend, operator_client, operator):
    saver, url = backend
    threads = old_scenarios(saver)  # two hours old
    chat_graph(saver).invoke({"messages": ["just now"]}, config("fresh"))  # an hour younger than the cut: untouched
    source = make_source(url)
    before = read_rows(url)
    states = latest_values(saver, threads + ["fresh"])

    response = operator_client.post(reverse("maintenance-prune-preview"), prune_post(source, older_than="1h"))
    assert response.status_code == 302
    preview = Run.objects.get(kind="prune", dry_run=True)
    assert response["Location"] == run_url(preview)
    assert preview.state == "done", preview.error
    assert (preview.requested_by, preview.origin, preview.source) == (operator, "page", source)
    assert read_rows(url) == before  # a dry run changes nothing

    # The page's preview is prune()'s dry run at the preview's clock.
    now = datetime.fromisoformat(preview.parameters["now"])
    direct = prune(source, PrunePolicy.from_options("1h", 1), dry_run=True, now=now)
    for key in ("threads", "checkpoints", "writes", "blobs", "bytes", "skipped", "disk_bytes_before", "sample"):
        assert preview.result[key] == direct[key], key
    assert preview.result["checkpoints"] > 0
    assert {"thread_id": "t-waiting", "reason": "pending_writes"} in preview.result["skipped"]

    page = operator_client.get(run_url(preview)).content.decode()
    confirm = reverse("maintenance-run-confirm", args=[preview.pk])
    assert f'action="{confirm}"' in page
    assert f"Prune {preview.result['checkpoints']} checkpoints" in page
    assert "t-waiting" in page and "pending_writes" in page and "VACUUM" in page
    assert f'title="{preview.result["bytes"]:,} bytes"' in page

    response = operator_client.post(confirm)
    real = Run.objects.get(kind="prune", dry_run=False)
    assert response.status_code == 302 and response["Location"] == run_url(real)
    assert real.state == "done", real.error  # sync=True: the task ran inline
    assert real.parameters["now"] == preview.parameters["now"] and real.parameters["preview_run"] == preview.pk
    assert (real.requested_by, real.origin) == (operator, "page")

    removed = before.minus(read_rows(url))
    assert len(removed.checkpoints) == real.result["checkpoints"] == preview.result["checkpoints"]
    assert len(removed.writes) == real.result["writes"] == preview.result["writes"]
    assert len(removed.blobs) == real.result["blobs"] == preview.result["blobs"]
    assert removed.bytes == real.result["bytes"] == preview.result["bytes"]
    assert len(removed.threads()) == real.result["threads"] == preview.result["threads"]
    assert "fresh" not in removed.threads() and "t-waiting" not in removed.threads()
    assert latest_values(saver, threads + ["fresh"]) == states  # every thread loads its latest state unchanged

    page = operator_client.get(run_url(real)).content.decode()
    assert "The run removed exactly what the preview showed." in page
    assert "Bytes freed" in page and "Disk size before" in page
    # A confirmed preview cannot be confirmed twice.
    assert operator_client.post(confirm)["Location"] == run_url(real)
    assert Run.objects.filter(kind="prune", dry_run=False).count() == 1
    assert f'href="{run_url(real)}"' in operator_client.get(run_url(preview)).content.decode()


def test_checkpoints_written_after_the_preview_make_the_thread_active(pg_saver, pg_source_url, operator_client):
    old_scenarios(pg_saver)
    source = make_source(pg_source_url)
    operator_client.post(reverse("maintenance-prune-preview"), prune_post(source))
    preview = Run.objects.get(kind="prune", dry_run=True)
    assert "t-chat0" in {s["thread_id"] for s in preview.result["sample"]}
    chat0 = {k for k in read_rows(pg_source_url).checkpoints if k[0] == "t-chat0"}

    chat_graph(pg_saver).invoke({"messages": ["again"]}, config("t-chat0"))  # after the preview's clock
    operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
    real = Run.objects.get(kind="prune", dry_run=False)
    assert real.state == "done", real.error
    assert {"thread_id": "t-chat0", "reason": "active"} in real.result["skipped"]
    assert real.result["threads"] == preview.result["threads"] - 1
    assert chat0 <= set(read_rows(pg_source_url).checkpoints)  # nothing of it went

    page = operator_client.get(run_url(real)).content.decode()
    assert "The data changed between the preview and this run" in page


def test_bad_prune_input_is_refused_with_the_reason_and_queues_nothing(operator_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    cases = [
        (prune_post(source, older_than="ten days"), "is not a duration"),
        (prune_post(source, keep_last=0), "0 is only allowed with whole threads"),
        (prune_post(source, tags="tenant"), "is not key:value"),
        ({**prune_post(source), "prune-source": 999999}, "Select a valid choice"),
    ]
    for data, message in cases:
        response = operator_client.post(reverse("maintenance-prune-preview"), data)
        assert response.status_code == 400, data
        html = response.content.decode()
        assert message in html, message
        assert f'value="{data["prune-older_than"]}"' in html  # what was typed is kept
    assert not Run.objects.filter(kind="prune").exists()


def test_tag_filters_and_whole_threads_reach_the_prune(sqlite_saver, sqlite_source_url, operator_client):
    threads = old_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url)
    before = read_rows(sqlite_source_url)
    data = prune_post(source, keep_last=0, tags="tenant=acme\nproject=demo", threads=True)
    operator_client.post(reverse("maintenance-prune-preview"), data)
    preview = Run.objects.get(kind="prune", dry_run=True)
    assert preview.parameters["tags"] == ["tenant=acme", "project=demo"] and preview.parameters["threads"] is True
    assert preview.result["whole_threads"] == preview.result["threads"] == 2  # t-chat0 and t-chat1
    operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
    removed = before.minus(read_rows(sqlite_source_url))
    assert removed.threads() == {"t-chat0", "t-chat1"}
    assert set(threads) - {"t-chat0", "t-chat1"} <= {k[0] for k in read_rows(sqlite_source_url).checkpoints}


def test_an_old_preview_cannot_be_confirmed(operator_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    preview = finished_prune(source=source, dry_run=True, lock_key=lock_key("prune", source),
                             parameters={"older_than": "1h", "keep_last": 1, "tags": [], "threads": False,
                                         "now": timezone.now().isoformat()},
                             finished_at=timezone.now() - timedelta(hours=2))
    response = operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]), follow=True)
    assert "too old to confirm" in response.content.decode()
    assert "Preview again" in response.content.decode()
    assert Run.objects.filter(kind="prune").count() == 1


# --- Progress --------------------------------------------------------------------


def test_progress_fragment_and_json_follow_the_run(viewer_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    run = new_queued_run("prune", source=source, parameters={"older_than": "1h"}, dry_run=False)
    url = reverse("maintenance-run-progress", args=[run.pk])

    fragment = viewer_client.get(url)
    assert fragment["Cache-Control"] == "no-store"
    html = fragment.content.decode()
    assert 'data-state="queued"' in html and "waiting for a worker" in html
    assert viewer_client.get(url, {"format": "json"}).json()["state"] == "queued"

    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(state="running", started_at=now, heartbeat_at=now, progress_done=3, progress_total=4)
    html = viewer_client.get(url).content.decode()
    assert '<progress max="4" value="3">' in html and "3 of 4 threads" in html and "75%" in html
    data = viewer_client.get(url, HTTP_ACCEPT="application/json").json()
    assert (data["state"], data["progress_done"], data["progress_total"], data["percent"], data["finished"]) == ("running", 3, 4, 75, False)
    assert data["url"] == run_url(run)

    page = viewer_client.get(run_url(run)).content.decode()
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page  # no JavaScript: the page reloads
    assert "js/maintenance.js" in page and f'data-poll="{url}"' in page

    Run.objects.filter(pk=run.pk).update(state="done", finished_at=now, progress_done=4)
    assert viewer_client.get(url, {"format": "json"}).json()["finished"] is True
    assert "refresh" not in viewer_client.get(run_url(run)).content.decode()


# --- The queue: one run per source, stale and lost runs ------------------------------------


def test_a_run_with_a_stopped_heartbeat_is_failed_by_the_page_and_by_the_next_task(viewer_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    old = timezone.now() - timedelta(minutes=11)

    def stuck():
        return Run.objects.create(kind="prune", source=source, lock_key=f"prune:stuck{Run.objects.count()}",
                                  state="running", started_at=old, heartbeat_at=old)

    first = stuck()
    response = viewer_client.get(run_url(first))
    first.refresh_from_db()
    assert first.state == "failed" and "stopped sending heartbeats" in first.error
    assert "stopped sending heartbeats" in response.content.decode()

    second = stuck()
    viewer_client.get("/maintenance/")
    second.refresh_from_db()
    assert second.state == "failed"

    third = stuck()
    other = new_queued_run("sweep", parameters={"grace": "24h", "force": False}, dry_run=True)
    Run.objects.filter(pk=other.pk).update(state="done")  # the task finds it not queued, but reaps first
    assert run_queued(other.pk)["note"] == "not queued, not started again"
    third.refresh_from_db()
    assert third.state == "failed"

    fresh = Run.objects.create(kind="prune", source=source, lock_key="prune:fresh", state="running",
                               started_at=timezone.now(), heartbeat_at=timezone.now())
    viewer_client.get(run_url(fresh))
    fresh.refresh_from_db()
    assert fresh.state == "running"  # a live run is left alone


def test_a_queued_run_no_worker_took_is_failed_as_never_started(viewer_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    run = new_queued_run("prune", source=source, parameters={"older_than": "1h"}, dry_run=True)
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=3))
    waiting = new_queued_run("sweep", parameters={"grace": "24h"}, dry_run=True)
    html = viewer_client.get(run_url(run)).content.decode()
    run.refresh_from_db()
    assert run.state == "failed" and run.error.startswith("the task never started")
    assert "manage.py qcluster" in html
    waiting.refresh_from_db()
    assert waiting.state == "queued"  # just queued: still waiting


def test_a_second_prune_of_a_source_is_refused_while_one_runs(operator_client, sqlite_saver, sqlite_source_url):
    old_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url)
    before = read_rows(sqlite_source_url)
    now = timezone.now()
    holder = Run.objects.create(kind="prune", source=source, lock_key=lock_key("prune", source), state="running",
                                started_at=now, heartbeat_at=now)

    response = operator_client.post(reverse("maintenance-prune-preview"), prune_post(source))
    assert response.status_code == 409
    assert f"A prune of src is running (run #{holder.pk})" in response.content.decode()
    assert Run.objects.filter(kind="prune").count() == 1

    # A queued run that reaches a worker while another holds the lock ends failed at once, saying which.
    queued = new_queued_run("prune", source=source, parameters={"older_than": "1h", "keep_last": 1}, dry_run=False)
    assert run_queued(queued.pk)["state"] == "failed"
    queued.refresh_from_db()
    assert queued.error.startswith(f"not started: another prune of src is running (run #{holder.pk}")
    assert read_rows(sqlite_source_url) == before
    # Other sources are not blocked: the lock is per (kind, source).
    assert holder.lock_key == "prune:src"


def test_the_queue_settings(settings):
    q = settings.Q_CLUSTER
    assert q["retry"] > q["timeout"], "a task still running when `retry` expires would be started twice"
    assert q["sync"] is True and "orm" in q  # the tests run tasks inline; the default broker is the ORM

    def cluster_conf(broker):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "Q_BROKER": broker,
               "CONSOLE_VAR_DIR": str(Path(django_settings.VAR_DIR))}
        code = "import django; django.setup(); from django.conf import settings; import json; print(json.dumps(settings.Q_CLUSTER))"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             cwd=django_settings.BASE_DIR, timeout=60)
        return out

    redis = cluster_conf("redis://127.0.0.1:6379/3")
    assert redis.returncode == 0, redis.stderr
    conf = json.loads(redis.stdout)
    # the broker URL gains socket timeouts (test_cluster_health checks why)
    assert conf["redis"] == "redis://127.0.0.1:6379/3?socket_connect_timeout=2&socket_timeout=10" and "orm" not in conf
    assert conf["retry"] > conf["timeout"]
    bad = cluster_conf("amqp://nope")
    assert bad.returncode != 0 and "Q_BROKER='amqp://nope' is invalid" in bad.stderr


# --- Saved policies ----------------------------------------------------------------


def test_saved_policy_runs_when_due_and_can_be_disabled_and_deleted(operator_client, operator, sqlite_saver, sqlite_source_url):
    from django_q.models import Schedule

    assert Schedule.objects.filter(name=POLICY_SCHEDULE, func="dashboard.tasks.run_due_policies").exists()
    old_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url)
    before = read_rows(sqlite_source_url)
    data = {**prune_post(source), "policy-name": "hourly trim", "policy-interval": "1h"}
    response = operator_client.post(reverse("maintenance-policy-new", args=["prune"]), data)
    assert response.status_code == 302
    policy = SavedPolicy.objects.get()
    assert (policy.kind, policy.source, policy.interval, policy.created_by) == ("prune", source, timedelta(hours=1), operator)
    assert policy.parameters == {"older_than": "1h", "keep_last": 1, "tags": [], "threads": False}
    assert not Run.objects.filter(kind="prune").exists()  # saving runs nothing

    assert run_due_policies() == {"queued": [], "waiting": [], "failed": []}  # not due for an hour
    later = policy.next_run_at + timedelta(seconds=1)
    assert run_due_policies(now=later)["queued"] == ["hourly trim"]
    run = Run.objects.get(kind="prune")
    assert (run.state, run.origin, run.dry_run, run.requested_by) == ("done", "schedule", False, None), run.error
    assert run.parameters["policy"] == "hourly trim"
    assert len(before.minus(read_rows(sqlite_source_url)).checkpoints) == run.result["checkpoints"] > 0
    policy.refresh_from_db()
    assert policy.last_run == run and policy.next_run_at == later + timedelta(hours=1)
    assert run_due_policies(now=later)["queued"] == []  # claimed once

    page = operator_client.get("/maintenance/").content.decode()
    assert "hourly trim" in page and "older than 1h · keep last 1" in page and f'href="{run_url(run)}"' in page
    assert "policy hourly trim" in page  # the history says which policy ran

    operator_client.post(reverse("maintenance-policy-toggle", args=[policy.pk]))
    policy.refresh_from_db()
    assert policy.enabled is False
    assert run_due_policies(now=later + timedelta(days=2))["queued"] == []
    operator_client.post(reverse("maintenance-policy-toggle", args=[policy.pk]))
    policy.refresh_from_db()
    assert policy.enabled is True and policy.next_run_at > timezone.now()

    operator_client.post(reverse("maintenance-policy-delete", args=[policy.pk]))
    assert not SavedPolicy.objects.exists()
    assert Run.objects.filter(pk=run.pk).exists()  # the audit log stays


def test_bad_policy_input_is_refused(operator_client, sqlite_source_url):
    source = make_source(sqlite_source_url)
    SavedPolicy.objects.create(name="taken", kind="sweep", interval=timedelta(hours=1))
    cases = [
        ({**prune_post(source), "policy-name": "p", "policy-interval": "5m"}, "at most every 10 minutes"),
        ({**prune_post(source), "policy-name": "p", "policy-interval": "daily"}, "is not a duration"),
        ({**prune_post(source), "policy-name": "taken", "policy-interval": "1h"}, "exists already"),
        ({**prune_post(source, keep_last=0), "policy-name": "p", "policy-interval": "1h"}, "only allowed with whole threads"),
    ]
    for data, message in cases:
        response = operator_client.post(reverse("maintenance-policy-new", args=["prune"]), data)
        assert response.status_code == 400
        assert message in response.content.decode(), message
    assert SavedPolicy.objects.count() == 1


def test_a_policy_waits_while_its_previous_run_is_running(sqlite_source_url):
    source = make_source(sqlite_source_url)
    SavedPolicy.objects.create(name="p", kind="prune", source=source, interval=timedelta(hours=1),
                               parameters={"older_than": "1h", "keep_last": 1, "tags": [], "threads": False})
    now = timezone.now()
    Run.objects.create(kind="prune", source=source, lock_key=lock_key("prune", source), state="running",
                       started_at=now, heartbeat_at=now)
    assert run_due_policies() == {"queued": [], "waiting": ["p"], "failed": []}
    assert Run.objects.filter(kind="prune").count() == 1


# --- Sweep ---------------------------------------------------------------------------


@pytest.fixture
def file_store(tmp_path, settings):
    root = tmp_path / "blobs"
    root.mkdir()
    settings.BLOB_ROOT = root
    settings.S3_BUCKET_NAME = ""
    return root


def aged(path, body=b"data", hours=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    t = time.time() - hours * 3600
    os.utime(path, (t, t))
    return path


def test_sweep_preview_then_confirm_on_the_file_store(operator_client, operator, sqlite_saver, sqlite_source_url, file_store):
    referenced = aged(file_store / "u1" / "report.pdf", hours=3)
    orphan = aged(file_store / "u2" / "left-behind.bin", b"x" * 1234, hours=3)
    young = aged(file_store / "u3" / "uploading.bin")  # just written, its checkpoint maybe not yet
    file_graph(sqlite_saver).invoke({"attachment": f"file://{referenced}"}, config("with-file"))
    make_source(sqlite_source_url)

    response = operator_client.post(reverse("maintenance-sweep-preview"), {"sweep-grace": "1h"})
    preview = Run.objects.get(kind="sweep", dry_run=True)
    assert response["Location"] == run_url(preview)
    assert preview.state == "done", preview.error
    assert preview.parameters == {"grace": "1h", "force": False}
    assert preview.result["orphans"] == 1 and preview.result["orphan_bytes"] == 1234
    assert [o["uri"] for o in preview.result["sample"]] == [f"file://{orphan}"]
    assert orphan.exists()
    page = operator_client.get(run_url(preview)).content.decode()
    assert f"file://{orphan}" in page and "Sweep 1 orphans" in page

    operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
    real = Run.objects.get(kind="sweep", dry_run=False)
    assert real.state == "done", real.error
    assert (real.result["deleted"], real.requested_by, real.parameters["preview_run"]) == (1, operator, preview.pk)
    assert not orphan.exists() and referenced.exists() and young.exists()
    assert "Deleted" in operator_client.get(run_url(real)).content.decode()


def test_sweep_grace_under_an_hour_needs_force(operator_client, file_store, sqlite_source_url):
    make_source(sqlite_source_url)
    response = operator_client.post(reverse("maintenance-sweep-preview"), {"sweep-grace": "30m"})
    assert response.status_code == 400
    assert "under 1h" in response.content.decode()
    assert not Run.objects.filter(kind="sweep").exists()
    response = operator_client.post(reverse("maintenance-sweep-preview"), {"sweep-grace": "30m", "sweep-force": "on"})
    assert response.status_code == 302
    run = Run.objects.get(kind="sweep")
    assert run.parameters == {"grace": "30m", "force": True} and run.state == "done", run.error


# --- History ---------------------------------------------------------------------------


def test_history_is_paginated_and_filtered_by_kind(viewer_client, viewer):
    for i in range(55):
        finished_prune(requested_by=viewer, origin="page")
    Run.objects.create(kind="sync", lock_key="sync:x", state="done", result={"added": 7, "updated": 0, "removed": 0})
    sweep = Run.objects.create(kind="sweep", lock_key="sweep:*", state="failed", error="refused to delete objects: nope",
                               parameters={"grace": "24h", "force": False})

    first = viewer_client.get("/maintenance/")
    assert len(first.context["rows"]) == 50 and first.context["page"].paginator.count == 56  # prune and sweep
    html = first.content.decode()
    assert "refused to delete objects: nope" in html and "grace 24h" in html and "vera" in html
    assert "older than 30d · keep last 1" in html and 'title="123 bytes"' in html
    assert len(viewer_client.get("/maintenance/", {"page": 2}).context["rows"]) == 6
    assert [r["run"].kind for r in viewer_client.get("/maintenance/", {"kind": "sync"}).context["rows"]] == ["sync"]
    assert [r["run"].pk for r in viewer_client.get("/maintenance/", {"kind": "sweep"}).context["rows"]] == [sweep.pk]
    assert viewer_client.get("/maintenance/", {"kind": "all"}).context["page"].paginator.count == 57
