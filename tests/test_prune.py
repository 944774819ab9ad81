"""Prune on real LangGraph data: skip reasons, concurrent writers, retries, the command."""

import json
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from checkpoints.ids import uuid6_time
from checkpoints.models import Run, Thread
from checkpoints.prune import CONTRACT_KEYS, PruneBusy, PrunePolicy, prune, run_prune
from tests.graphs import chat_graph, config, delta_graph, run_scenarios
from tests.test_prune_support import Histories, SourceDB, build_mirror, expected, make_source
from tests.truth import assert_mirror_consistent

pytestmark = pytest.mark.django_db

LATER = timedelta(days=1)  # `now` a day ahead: every checkpoint is old, none is active


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    """(saver, url) of a fresh PostgreSQL or SQLite LangGraph database."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


def _collect(bucket):
    return lambda selection: bucket.append(selection)


# --- Skip reasons -------------------------------------------------------------


def test_thread_waiting_at_an_interrupt_is_skipped_with_pending_writes(backend):
    saver, url = backend
    db = SourceDB(url)
    threads = run_scenarios(saver)
    before = db.dump()
    source = make_source(url)
    result = prune(source, PrunePolicy(timedelta(hours=1)), dry_run=False, now=timezone.now() + LATER)

    assert {"thread_id": "t-waiting", "reason": "pending_writes"} in result["skipped"]
    assert [s["thread_id"] for s in result["skipped"]] == ["t-waiting"]
    after = db.dump()
    assert before.thread("t-waiting") == after.thread("t-waiting")
    assert result["threads"] == len(threads) - 1
    # Each other thread keeps exactly its latest root checkpoint (and nothing in subgraph namespaces).
    for tid in threads:
        if tid != "t-waiting":
            ckpts, _, _ = after.thread(tid)
            assert [k[1] for k in ckpts] == [""], tid


def test_recent_threads_are_skipped_as_active_while_the_window_covers_them(backend):
    saver, url = backend
    db = SourceDB(url)
    chat = chat_graph(saver)
    for _ in range(2):
        chat.invoke({"messages": ["old"]}, config("quiet"))
    quiet_end = uuid6_time(max(k[2] for k in db.dump().checkpoints))
    time.sleep(0.01)
    for _ in range(2):
        chat.invoke({"messages": ["new"]}, config("busy"))
    source = make_source(url)

    # Real clock, default 10 minute window: both threads ran just now.
    with override_settings(PRUNE_ACTIVE_WINDOW=timedelta(minutes=10)):
        result = prune(source, PrunePolicy(timedelta(0)), dry_run=True)
    assert sorted((s["thread_id"], s["reason"]) for s in result["skipped"]) == [("busy", "active"), ("quiet", "active")]
    assert result["checkpoints"] == 0

    # A window that starts after `quiet` ended covers only `busy`.
    now = timezone.now()
    with override_settings(PRUNE_ACTIVE_WINDOW=now - quiet_end - timedelta(microseconds=500)):
        result = prune(source, PrunePolicy(timedelta(0)), dry_run=False, now=now)
    assert result["skipped"] == [{"thread_id": "busy", "reason": "active"}]
    assert result["threads"] == 1
    assert len(db.dump().thread("quiet")[0]) == 1


def test_delta_channel_threads_are_skipped(backend):
    saver, url = backend
    db = SourceDB(url)
    graph = delta_graph(saver)
    for _ in range(3):
        graph.invoke({"log": ["in"]}, config("delta"))
    chat_graph(saver).invoke({"messages": ["hi"]}, config("plain"))
    source = make_source(url)
    before = db.dump()
    assert any("counters_since_delta_snapshot" in before.metadata(k) for k in before.checkpoints)

    result = prune(source, PrunePolicy(timedelta(hours=1)), dry_run=False, now=timezone.now() + LATER)
    assert result["skipped"] == [{"thread_id": "delta", "reason": "delta_channel"}]
    assert result["threads"] == 1
    assert db.dump().thread("delta") == before.thread("delta")
    assert graph.get_state(config("delta")).values["log"] == ["in", "step"] * 3


def test_delta_snapshots_alone_mark_a_thread(backend):
    """Without the metadata counters, the _DeltaSnapshot values (msgpack ext 7) still tell."""
    saver, url = backend
    db = SourceDB(url)
    graph = delta_graph(saver)
    for _ in range(2):
        graph.invoke({"log": ["in"]}, config("delta"))
    with db.connect() as conn:
        if db.kind == "postgres":
            conn.execute("UPDATE checkpoints SET metadata = metadata - 'counters_since_delta_snapshot'")
        else:
            conn.execute(
                "UPDATE checkpoints SET metadata = CAST(json_remove(CAST(metadata AS TEXT),"
                " '$.counters_since_delta_snapshot') AS BLOB)"
            )
    before = db.dump()
    assert not any("counters_since_delta_snapshot" in before.metadata(k) for k in before.checkpoints)
    source = make_source(url)
    result = prune(source, PrunePolicy(timedelta(hours=1)), dry_run=False, now=timezone.now() + LATER)
    assert result["skipped"] == [{"thread_id": "delta", "reason": "delta_channel"}]
    assert db.dump() == before


# --- Concurrent writers ---------------------------------------------------------


def _recording(saver):
    """A saver of the same class on the same connection that notes what it wrote, and when."""
    written = []

    class Recording(type(saver)):
        def put(self, cfg, checkpoint, metadata, new_versions):
            out = super().put(cfg, checkpoint, metadata, new_versions)
            c = out["configurable"]
            written.append((time.monotonic(), c["thread_id"], c["checkpoint_ns"], c["checkpoint_id"]))
            return out

    return Recording(saver.conn), written


def test_checkpoints_written_during_a_prune_are_untouched(backend):
    saver, url = backend
    db = SourceDB(url)
    chat = chat_graph(saver)
    invocations = {}
    for i in range(40):
        for _ in range(2):
            chat.invoke({"messages": ["old"]}, config(f"old {i}"))
        invocations[f"old {i}"] = 2
    for _ in range(2):
        chat.invoke({"messages": ["old"]}, config("hot"))
    invocations["hot"] = 2
    source = make_source(url)

    recorder, written = _recording(saver)
    live = chat_graph(recorder)
    stop = threading.Event()
    errors = []

    def writer():
        n = 0
        try:
            while not stop.is_set():
                for tid in ("hot", f"new {n}", "old 39", "old 0"):
                    live.invoke({"messages": ["live"]}, config(tid))
                    invocations[tid] = invocations.get(tid, 0) + 1
                n += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    while not written:
        time.sleep(0.005)
    removed = []

    def halfway(done, total):
        # Half way through, let the writer commit a few more checkpoints, so
        # that the prune certainly runs on while they land.
        if done == total // 2:
            target, deadline = len(written) + 3, time.monotonic() + 300
            while len(written) < target and time.monotonic() < deadline:
                time.sleep(0.005)

    with override_settings(PRUNE_ACTIVE_WINDOW=timedelta(0)):
        started = time.monotonic()
        now = timezone.now()
        result = prune(source, PrunePolicy(timedelta(0)), dry_run=False, now=now,
                       on_selection=_collect(removed), progress=halfway)
        ended = time.monotonic()
        time.sleep(0.05)
    stop.set()
    thread.join()
    assert not errors

    assert any(started <= t <= ended for t, *_ in written), "the writer wrote while the prune ran"
    after = db.dump()
    # Created after the prune began (a put commits a little after its id is made).
    late = {(tid, ns, cid) for t, tid, ns, cid in written if uuid6_time(cid) >= now}
    assert late and late <= after.checkpoints.keys()
    gone = {(s.thread_id, ns, cid) for s in removed if not s.skip for ns, cid in s.checkpoints}
    assert not gone & late
    assert all(uuid6_time(cid) < now for _, _, cid in gone)
    assert result["checkpoints"] > 0
    # Every thread loads with the state its invocations made (3 messages and 2 steps each).
    for tid, n in invocations.items():
        values = chat.get_state(config(tid)).values
        assert len(values["messages"]) == 3 * n and values["counter"] == 2 * n, tid
    # LangGraph saves a step's writes in the background: with the active window
    # at 0, writes of a checkpoint the prune just removed may still land. Only
    # threads written meanwhile can have them (the sweep removes them later;
    # the default window skips such threads).
    busy = {tid for t, tid, *_ in written if started <= t}
    assert {w[0] for w in db.orphan_writes()} <= busy


def test_serialization_failure_is_retried_from_a_fresh_snapshot(pg_saver, pg_source_url):
    chat = chat_graph(pg_saver)
    for _ in range(3):
        chat.invoke({"messages": ["hi"]}, config("raced"))
    db = SourceDB(pg_source_url)
    oldest = min(k[2] for k in db.dump().checkpoints)
    source = make_source(pg_source_url)

    # Another transaction holds a row the prune will delete, and changes it.
    other = psycopg.connect(pg_source_url)
    other.execute("UPDATE checkpoints SET metadata = metadata || '{\"touched\": 1}' WHERE checkpoint_id = %s", (oldest,))
    outcome = {}

    def run():
        outcome["result"] = prune(source, PrunePolicy(timedelta(hours=1)), dry_run=False, now=timezone.now() + LATER)

    worker = threading.Thread(target=run)
    worker.start()
    with psycopg.connect(pg_source_url, autocommit=True) as watcher:
        for _ in range(500):
            if watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the prune never waited for the other transaction")
    other.commit()  # the prune's snapshot predates this: its DELETE fails to serialize
    other.close()
    worker.join()

    result = outcome["result"]
    assert result["retries"] >= 1 and result["errors"] == []
    after = db.dump()
    assert [k[1] for k in after.checkpoints] == [""]
    assert chat.get_state(config("raced")).values["counter"] == 6


def test_a_delete_that_does_not_match_the_selection_is_rolled_back_and_reported(pg_saver, pg_source_url, monkeypatch):
    from checkpoints.sources.postgres.maintenance import PostgresMaintenance

    chat = chat_graph(pg_saver)
    for _ in range(3):
        chat.invoke({"messages": ["hi"]}, config("mismatch"))
    db = SourceDB(pg_source_url)
    before = db.dump()
    send_delete = PostgresMaintenance._send_delete

    def wrong_expectation(conn, thread_id, selection):
        cursor, expected = send_delete(conn, thread_id, selection)
        return cursor, (expected[0], expected[1] + 1, *expected[2:])  # one checkpoint more than deleted

    monkeypatch.setattr(PostgresMaintenance, "_send_delete", staticmethod(wrong_expectation))
    result = prune(make_source(pg_source_url), PrunePolicy(timedelta(hours=1)), dry_run=False,
                   now=timezone.now() + LATER)
    assert [e["thread_id"] for e in result["errors"]] == ["mismatch"]
    assert "PruneMismatch" in result["errors"][0]["error"] and "rolled back" in result["errors"][0]["error"]
    assert result["checkpoints"] == 0
    assert db.dump() == before  # nothing deleted


# --- Tags and whole threads ------------------------------------------------------


def test_tag_filters_pick_threads_from_the_mirror_and_recheck_the_source(backend):
    saver, url = backend
    db = SourceDB(url)
    run_scenarios(saver)
    source = make_source(url)
    before = db.dump()
    build_mirror(source, before)
    # The mirror says t-chat2 is acme; the source says globex: the source wins.
    Thread.objects.get(source=source, thread_id="t-chat2").tag_rows.filter(key="tenant").update(value="acme")

    tags = (("tenant", "acme"), ("user_id", "u0"))
    now = timezone.now() + LATER
    result = prune(source, PrunePolicy(timedelta(hours=1), tags=tags), dry_run=False, now=now)
    want = expected(before, keep_last=1, tags=tags, whole_threads=False, cut=now - timedelta(hours=1),
                    active_after=now - timedelta(minutes=10))
    assert {k[0] for k in want.checkpoints} == {"t-chat0"}
    assert before.checkpoints.keys() - db.dump().checkpoints.keys() == want.checkpoints
    assert result["threads"] == 1

    seen = []
    prune(source, PrunePolicy(timedelta(hours=1), tags=(("tenant", "acme"),)), dry_run=True, now=now,
          on_selection=seen.append)
    # t-fork's latest checkpoint is a fork made without the tenant in its config: untagged.
    assert {s.thread_id for s in seen} == {"t-chat1", "t-sub", "t-update", "t-file"}


def test_whole_threads_idle_longer_than_the_age_go(backend):
    saver, url = backend
    db = SourceDB(url)
    histories = Histories(saver)
    histories.run("idle", "chat", ["invoke", "invoke"], tenant="acme")
    idle_end = uuid6_time(max(k[2] for k in db.dump().checkpoints))
    time.sleep(0.01)
    histories.run("recent", "sub", ["invoke", "invoke"], tenant="acme")
    recent_state = histories.state("recent")
    source = make_source(url)
    before = db.dump()

    age = timedelta(hours=1)
    now = idle_end + age + timedelta(microseconds=500)  # the cut falls between the two threads
    with override_settings(PRUNE_ACTIVE_WINDOW=timedelta(0)):
        result = prune(source, PrunePolicy(age, keep_last=0, whole_threads=True), dry_run=False, now=now)
    after = db.dump()
    assert after.thread("idle") == ({}, {}, {})
    assert after.thread("recent") == before.thread("recent")
    assert not Thread.objects.filter(source=source, thread_id="idle").exists()
    assert_mirror_consistent()
    assert result["whole_threads"] == result["threads"] == 1
    assert histories.state("idle") is None and histories.state("recent") == recent_state


# --- The command and the run ---------------------------------------------------


@pytest.fixture
def pg_source(pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    return make_source(pg_source_url, "agents")


def _command(*args):
    from io import StringIO

    out = StringIO()
    call_command("prune_checkpoints", *args, stdout=out)
    return out.getvalue()


@override_settings(CHECKPOINT_DATABASE_URL="", PRUNE_ACTIVE_WINDOW=timedelta(0))
def test_command_dry_run_prints_the_contract_and_changes_nothing(pg_source):
    db = SourceDB(pg_source.url)
    before, total = db.dump(), db.stored_bytes()
    out = json.loads(_command("--older-than", "0s", "--source", "agents", "--dry-run", "--json"))
    assert list(out) == list(CONTRACT_KEYS)
    assert out["dry_run"] is True and out["checkpoints"] > 0 and out["bytes"] > 0
    assert out["skipped"] == [{"thread_id": "t-waiting", "reason": "pending_writes"}]
    assert db.dump() == before and db.stored_bytes() == total
    run = Run.objects.get(kind="prune")
    assert (run.state, run.dry_run, run.lock_key, run.origin) == ("done", True, "prune:agents", "command")
    assert run.parameters == {"older_than": "0s", "keep_last": 1, "tags": [], "threads": False}
    assert run.result["checkpoints"] == out["checkpoints"] and run.finished_at >= run.started_at


@override_settings(CHECKPOINT_DATABASE_URL="", PRUNE_ACTIVE_WINDOW=timedelta(0))
def test_command_prunes_records_the_run_and_refreshes_the_mirror(pg_source):
    from checkpoints.sync import sync_source

    sync_source(pg_source)
    db = SourceDB(pg_source.url)
    total = db.stored_bytes()
    out = json.loads(_command("--older-than", "0s", "--source", "agents", "--tag", "tenant=acme", "--json"))
    assert out["dry_run"] is False and out["threads"] > 0
    assert total - db.stored_bytes() == out["bytes"]
    for thread in Thread.objects.filter(source=pg_source):
        count = db.query("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread.thread_id,))[0][0]
        assert thread.checkpoints == count, thread.thread_id
    assert_mirror_consistent()
    run = Run.objects.get(kind="prune")
    assert run.state == "done" and run.result["bytes"] == out["bytes"] and not run.dry_run

    text = _command("--older-than", "0s", "--source", "agents", "--tag", "tenant=acme")
    assert "removed 0 checkpoints" in text and "VACUUM" in text


@override_settings(CHECKPOINT_DATABASE_URL="")
def test_only_one_prune_of_a_source_runs_at_once(pg_source):
    Run.objects.create(kind="prune", source=pg_source, lock_key="prune:agents", state="running",
                       started_at=timezone.now(), heartbeat_at=timezone.now())
    with pytest.raises(CommandError, match="a prune of agents is already running"):
        _command("--older-than", "1d", "--source", "agents", "--dry-run")
    with pytest.raises(PruneBusy):
        run_prune(pg_source, PrunePolicy(timedelta(days=1)), dry_run=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--older-than", "10"], "is not a duration"),
        (["--older-than", "1d", "--keep-last", "0"], "--keep-last must be at least 1"),
        (["--older-than", "1d", "--tag", "tenant"], "is not key=value"),
        (["--older-than", "1d", "--source", "nope"], "no source named 'nope'"),
    ],
)
@override_settings(CHECKPOINT_DATABASE_URL="")
def test_command_refuses_bad_input(pg_source, args, message):
    db = SourceDB(pg_source.url)
    before = db.dump()
    with pytest.raises(CommandError, match=message):
        _command(*args)
    assert db.dump() == before and not Run.objects.exists()


@override_settings(CHECKPOINT_DATABASE_URL="")
def test_a_source_that_is_not_langgraph_fails_the_run(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    make_source(f"sqlite:///{path}", "other")
    with pytest.raises(CommandError, match="no LangGraph table"):
        _command("--older-than", "1d", "--source", "other")
    run = Run.objects.get(kind="prune")
    assert run.state == "failed" and "no LangGraph table" in run.error
