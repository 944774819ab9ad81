"""A source's running totals (checkpoints.totals) stay equal to the mirror's sums (issue 15).

The usage bookkeeping after a sync reads them instead of summing the mirror,
so every writer must keep them exact: syncs in both modes, late commits,
deletions at the source, a prune whose refresh runs beside a sync, a removal.
After each step the row is compared with a fresh aggregate of the mirror,
and the mirror with SQL on the source.
"""

import logging
import threading
from datetime import timedelta

import psycopg
import pytest
from django.utils import timezone
from langgraph.checkpoint.postgres import PostgresSaver

from checkpoints import prune as pruning
from checkpoints import totals as running_totals
from checkpoints import usage
from checkpoints.models import Checkpoint, DailyUsage, Source, SourceTotals, Thread
from checkpoints.prune import PrunePolicy, run_prune
from checkpoints.sync import sync_source
from tests.graphs import chat_graph, config, run_scenarios
from tests.test_sync_capture import logical_url  # noqa: F401 - a fixture
from tests.test_sync_prune_race import _between_read_and_write
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = PrunePolicy(timedelta(hours=1), keep_last=2)
WAIT = 120  # seconds; only a hang would take that long


@pytest.fixture
def logical_saver(logical_url):  # noqa: F811
    with PostgresSaver.from_conn_string(logical_url) as saver:
        yield saver


@pytest.fixture(params=["scan", "logical"])
def mode(request):
    """(saver, source url, capture mode): scan on the machine's server, logical on one with wal_level=logical."""
    if request.param == "scan":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url"), "scan"
    return request.getfixturevalue("logical_saver"), request.getfixturevalue("logical_url"), "logical"


@pytest.fixture(autouse=True)
def no_drift(caplog):
    """The warnings of syncs that found the totals wrong (a scan would otherwise repair a slip unseen)."""
    caplog.set_level(logging.WARNING, logger="checkpoints.sync")
    yield
    assert [r.getMessage() for r in caplog.get_records("call") if "had drifted" in r.getMessage()] == []


def stored_totals(source) -> dict:
    """The row as the writers left it (not current(), which may count the day again)."""
    return SourceTotals.objects.values(*running_totals.FIELDS, "day").get(source=source)


def assert_exact(source, url):
    """Running totals == a fresh aggregate of the mirror == SQL on the source; today's usage row from them."""
    assert_mirror_matches(source, url)
    row = stored_totals(source)
    assert row == {**running_totals.fresh(source.pk, row["day"]), "day": row["day"]}
    assert row["checkpoints"] > 0
    today = timezone.now().date()
    start, _ = running_totals.day_bounds(today)
    day = DailyUsage.objects.get(source=source, day=today)
    assert (day.threads, day.checkpoints, day.stored_bytes) == (row["threads"], row["checkpoints"], row["stored_bytes"])
    assert day.checkpoints_added == Checkpoint.objects.filter(source=source, created_at__gte=start).count()
    return row


def sync(source):
    result = sync_source(source)
    assert result["error"] is None, result["error"]
    return result


def test_running_totals_follow_syncs_late_commits_deletions_and_a_prune_beside_the_sync(mode, monkeypatch):
    saver, url, capture = mode
    run_scenarios(saver)
    source = Source.objects.create(name="totals", url=url, kind="postgres", capture=capture)
    first = sync(source)
    assert stored_totals(source)["checkpoints"] == first["checkpoints"] > 0
    assert_exact(source, url)

    # New threads and new checkpoints, one commit late with lower ids, deletions at the source.
    chat = chat_graph(saver)
    slow_conn = psycopg.connect(url, autocommit=False)
    chat_graph(PostgresSaver(slow_conn)).invoke({"messages": ["slow"]}, config("late"))
    chat.invoke({"messages": ["more"]}, config("t-chat0", tenant="acme"))
    chat.invoke({"messages": ["new"]}, config("fresh"))
    saver.delete_thread("t-chat1")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoints WHERE thread_id = 't-chat2' AND checkpoint_id ="
                     " (SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 't-chat2')")
        conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = 't-chat0'")
    result = sync(source)
    assert result["added"] > 0 and result["removed"] > 0
    assert not Thread.objects.filter(source=source, thread_id="late").exists()
    before = assert_exact(source, url)
    slow_conn.commit()
    slow_conn.close()
    sync(source)
    after = assert_exact(source, url)
    assert after["threads"] == before["threads"] + 1

    # A prune on its own: its refresh of the mirror keeps the totals.
    run_prune(source, POLICY, dry_run=False, now=timezone.now() + timedelta(days=1))
    assert_exact(source, url)

    # A prune that deletes and refreshes the mirror between the sync's read and its write.
    chat.invoke({"messages": ["again"]}, config("fresh"))
    chat.invoke({"messages": ["again"]}, config("t-chat2"))
    pruned = {}
    hooked = _between_read_and_write(monkeypatch, lambda: pruned.setdefault(
        "run", run_prune(source, POLICY, dry_run=False, now=timezone.now() + timedelta(days=1))))
    sync(source)
    assert hooked and pruned["run"].state == "done" and pruned["run"].result["checkpoints"] > 0
    monkeypatch.undo()
    assert_exact(source, url)
    sync(source)  # re-reads the threads the prune marked
    assert_exact(source, url)


def test_a_prune_refreshing_while_the_sync_writes_adds_up_with_it(mode, monkeypatch):
    """The prune's refresh of the mirror waits for the sync's batch (thread locks): both differences count."""
    saver, url, capture = mode
    for i in range(2):
        run_scenarios(saver, prefix=f"r{i}")
    source = Source.objects.create(name="totals", url=url, kind="postgres", capture=capture)
    sync(source)
    chat = chat_graph(saver)
    for tid in ("r0-chat0", "r1-chat1", "another"):
        chat.invoke({"messages": ["more"]}, config(tid))
    deleted, sync_written = threading.Event(), threading.Event()
    refresh = pruning.refresh_threads
    outcome = {}

    def refresh_after_the_sync(src, thread_ids):
        deleted.set()
        assert sync_written.wait(WAIT)
        return refresh(src, thread_ids)

    def prune_in_a_worker():
        try:
            outcome["run"] = run_prune(source, POLICY, dry_run=False, now=timezone.now() + timedelta(days=1))
        finally:
            deleted.set()

    monkeypatch.setattr(pruning, "refresh_threads", refresh_after_the_sync)
    worker = threading.Thread(target=prune_in_a_worker)

    def start_prune():
        worker.start()
        assert deleted.wait(WAIT)

    hooked = _between_read_and_write(monkeypatch, start_prune)
    try:
        sync(source)
    finally:
        sync_written.set()
        worker.join(WAIT)
    assert hooked and outcome["run"].state == "done" and outcome["run"].result["checkpoints"] > 0
    monkeypatch.undo()
    sync(source)
    assert_exact(source, url)


def test_a_new_day_counts_its_checkpoints_again_and_a_scan_repairs_drifted_totals(pg_saver, pg_source_url, caplog):
    run_scenarios(pg_saver)
    source = Source.objects.create(name="totals", url=pg_source_url, kind="postgres")
    sync(source)
    exact = assert_exact(source, pg_source_url)

    # Written on another day: today's figures are counted again from the mirror, the sums kept.
    SourceTotals.objects.filter(source=source).update(day=exact["day"] - timedelta(days=1), day_checkpoints=999)
    assert usage.thread_totals(source)["added"] == exact["day_checkpoints"]
    assert stored_totals(source) == exact

    # Drifted (a writer that bypassed them): a scan sees the mirror differ from the source's
    # counts, compares every thread, finds none to re-read, and sets the totals from the mirror.
    SourceTotals.objects.filter(source=source).update(checkpoints=exact["checkpoints"] + 5, stored_bytes=1)
    chat_graph(pg_saver).invoke({"messages": ["more"]}, config("t-chat0"))  # not a quiet server: the scan runs
    sync(source)
    assert stored_totals(source)["checkpoints"] > exact["checkpoints"]
    assert_exact(source, pg_source_url)
    warned = [r.getMessage() for r in caplog.records if "had drifted" in r.getMessage()]
    assert len(warned) == 1 and "'checkpoints': (" in warned[0] and "'stored_bytes': (" in warned[0]
    caplog.clear()  # expected here


def test_a_source_without_totals_gets_them_from_the_mirror_once(pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    source = Source.objects.create(name="totals", url=pg_source_url, kind="postgres")
    sync(source)
    exact = stored_totals(source)
    SourceTotals.objects.filter(source=source).delete()  # as after the migration that added them
    chat_graph(pg_saver).invoke({"messages": ["more"]}, config("t-chat0"))
    sync(source)
    assert stored_totals(source)["checkpoints"] > exact["checkpoints"]
    assert_exact(source, pg_source_url)
