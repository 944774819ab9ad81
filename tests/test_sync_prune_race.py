"""A sync running while a prune runs never puts pruned checkpoints back (issue 10, item 3).

The two are interleaved deterministically: the sync is stopped right after it
has read its batch from the source and before it writes it to the mirror, and
the prune runs (or finishes) there. Either way, once both are done the mirror
equals the source, checked against count(*) there and row by row.
"""

import threading
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from checkpoints import prune as pruning
from checkpoints import sync as syncing
from checkpoints.models import PruneMark, Run, Thread
from checkpoints.prune import PrunePolicy, run_prune
from checkpoints.sync import sync_source
from tests.graphs import run_scenarios
from tests.test_prune_support import SourceDB, make_source
from tests.truth import assert_mirror_matches

LATER = timedelta(days=1)  # `now` a day ahead: every checkpoint is old, none is active
POLICY = PrunePolicy(timedelta(hours=1), keep_last=1)
WAIT = 120  # seconds; only a hang would take that long


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


def _source_count(url):
    return len(SourceDB(url).dump().checkpoints)


def _mirrored(source):
    return Thread.objects.filter(source=source).aggregate(n=Sum("checkpoints"))["n"] or 0


def _between_read_and_write(monkeypatch, step):
    """Run `step()` once, when the sync has read its first batch from the source and not yet written it."""
    apply = syncing._apply_isolated
    done = []

    def hooked(context, rows):
        if not done and context.settled_marks is not None:  # the sync's, not the prune's refresh
            done.append(True)
            step()
        return apply(context, rows)

    monkeypatch.setattr(syncing, "_apply_isolated", hooked)
    return done


def _setup(saver, url):
    for i in range(3):
        run_scenarios(saver, prefix=f"r{i}")
    source = make_source(url)
    assert sync_source(source)["error"] is None
    before = _source_count(url)
    assert _mirrored(source) == before
    return source, before


@pytest.mark.django_db(transaction=True)
def test_a_prune_that_finishes_between_a_syncs_read_and_its_write_wins(backend, monkeypatch):
    """Sync reads, prune deletes and refreshes the mirror, sync writes: the sync's older copy must not win."""
    saver, url = backend
    source, before = _setup(saver, url)
    now = timezone.now() + LATER
    outcome = {}

    def prune_now():
        outcome["run"] = run_prune(source, POLICY, dry_run=False, now=now)

    hooked = _between_read_and_write(monkeypatch, prune_now)
    result = sync_source(source, full=True)  # a full sync reads every thread: all of them race with the prune
    assert hooked and result["error"] is None
    run = outcome["run"]
    assert run.state == "done" and run.result["checkpoints"] > 0, run.error

    after = _source_count(url)
    assert after == before - run.result["checkpoints"]
    assert _mirrored(source) == after
    assert_mirror_matches(source, url)

    # The marks stay until a sync that began after the prune had ended; that one drops them.
    assert PruneMark.objects.filter(source=source).exists()
    assert sync_source(source)["error"] is None
    assert not PruneMark.objects.filter(source=source).exists()
    assert_mirror_matches(source, url)


@pytest.mark.django_db(transaction=True)
def test_a_sync_that_writes_while_a_prune_deletes_leaves_the_threads_to_its_refresh(backend, monkeypatch):
    """Sync reads, prune deletes, sync writes, then the prune refreshes: same end."""
    saver, url = backend
    source, before = _setup(saver, url)
    now = timezone.now() + LATER
    deleted, sync_written = threading.Event(), threading.Event()
    refresh = pruning.refresh_threads
    outcome = {}

    def refresh_after_the_sync(src, thread_ids):
        deleted.set()
        assert sync_written.wait(WAIT)
        return refresh(src, thread_ids)

    monkeypatch.setattr(pruning, "refresh_threads", refresh_after_the_sync)

    def prune_in_a_worker():
        try:
            outcome["run"] = run_prune(source, POLICY, dry_run=False, now=now)
        finally:
            deleted.set()

    worker = threading.Thread(target=prune_in_a_worker)

    def start_prune():
        worker.start()
        assert deleted.wait(WAIT)  # the source rows are gone; the mirror's refresh waits for the sync

    hooked = _between_read_and_write(monkeypatch, start_prune)
    try:
        result = sync_source(source, full=True)
    finally:
        sync_written.set()
        worker.join(WAIT)
    assert hooked and result["error"] is None
    run = outcome["run"]
    assert run.state == "done" and run.result["checkpoints"] > 0, run.error

    after = _source_count(url)
    assert after == before - run.result["checkpoints"]
    assert _mirrored(source) == after
    assert_mirror_matches(source, url)
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, url)
    assert not Run.objects.filter(state="running").exists()
