"""Run history retention (issue 11.8): routine runs trimmed after RUN_KEEP_DAYS, the audit log after AUDIT_KEEP_DAYS."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from checkpoints.models import Run
from checkpoints.run_history import trim_runs
from dashboard.models import SavedPolicy

pytestmark = pytest.mark.django_db


def run(kind, days_old, state="done", now=None):
    """A run created `days_old` days before `now` (created_at is auto_now_add: moved back after)."""
    r = Run.objects.create(kind=kind, lock_key=f"{kind}:x", state=state)
    Run.objects.filter(pk=r.pk).update(created_at=now - timedelta(days=days_old))
    return r


@pytest.fixture
def history(settings):
    settings.RUN_KEEP_DAYS, settings.AUDIT_KEEP_DAYS = 30, 400
    now = timezone.now()
    made = {
        "sync new": run("sync", 29, now=now),
        "sync old": run("sync", 31, now=now),
        "sync old failed": run("sync", 31, "failed", now=now),
        "refcheck old": run("refcheck", 45, now=now),
        "prune 300": run("prune", 300, now=now),
        "sweep 300": run("sweep", 300, "failed", now=now),
        "prune old": run("prune", 401, now=now),
        "sweep old": run("sweep", 500, now=now),
        "remove old": run("remove", 401, now=now),  # a kind this module does not know: audit log
        "sync running": run("sync", 90, "running", now=now),  # never trimmed while it runs
        "prune queued": run("prune", 900, "queued", now=now),
    }
    return now, made


def test_routine_runs_go_after_run_keep_days_and_the_audit_log_after_audit_keep_days(history):
    now, made = history
    policy = SavedPolicy.objects.create(name="p", kind="prune", interval=timedelta(hours=1), last_run=made["prune old"])

    preview = trim_runs(now=now, dry_run=True)
    assert (preview["routine"], preview["audit"]) == (3, 3)
    assert Run.objects.count() == len(made)  # a dry run deletes nothing

    result = trim_runs(now=now)
    assert (result["routine"], result["audit"], result["dry_run"]) == (3, 3, False)
    assert result["routine_before"] == (now - timedelta(days=30)).isoformat()
    left = set(Run.objects.values_list("pk", flat=True))
    assert left == {made[k].pk for k in ("sync new", "prune 300", "sweep 300", "sync running", "prune queued")}
    policy.refresh_from_db()
    assert policy.last_run is None  # the policy stays, its link to the trimmed run goes
    assert trim_runs(now=now)["routine"] == 0


def test_batches_delete_everything_past_the_cut(settings, monkeypatch):
    from checkpoints import run_history

    monkeypatch.setattr(run_history, "BATCH", 7)
    now = timezone.now()
    for _ in range(30):
        run("sync", 60, now=now)
    kept = run("sync", 1, now=now)
    assert trim_runs(now=now)["routine"] == 30
    assert list(Run.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_command_and_its_schedule(history, settings):
    from django_q.models import Schedule

    from checkpoints.tasks import TRIM_SCHEDULE, trim_run_history

    schedule = Schedule.objects.get(name=TRIM_SCHEDULE)
    assert (schedule.func, schedule.schedule_type) == ("checkpoints.tasks.trim_run_history", Schedule.DAILY)

    out = io.StringIO()
    call_command("trim_runs", "--dry-run", "--json", stdout=out)
    assert json.loads(out.getvalue())["routine"] == 3
    settings.RUN_KEEP_DAYS = 100  # the setting decides
    out = io.StringIO()
    call_command("trim_runs", stdout=out)
    assert "deleted 0 routine runs" in out.getvalue() and "and 3 maintenance runs" in out.getvalue()
    settings.RUN_KEEP_DAYS = 30
    assert trim_run_history()["routine"] == 3
