"""Change capture through logical decoding: the sync reads what the slot reports, exactly.

Every test runs on a PostgreSQL started with wal_level=logical (tests/pg_logical.py)
and compares the mirror with SQL on the source after each step.
"""

import secrets
import time
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver

from checkpoints.models import Run, Source, Thread
from checkpoints.prune import PrunePolicy, run_prune
from checkpoints.sources.capture import Capture, CaptureError, publication_sql
from checkpoints.sync import sync_source
from tests.graphs import chat_graph, config, run_scenarios
from tests.pg_logical import logical_server_url, logical_url_for_database
from tests.mirror_data import operator, operator_client  # noqa: F401
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def logical_url():
    """A fresh database with PostgresSaver's schema on the wal_level=logical server."""
    name = f"lgc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(logical_server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = logical_url_for_database(name)
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
    yield url
    with psycopg.connect(url, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    with psycopg.connect(logical_server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def saver(logical_url):
    with PostgresSaver.from_conn_string(logical_url) as saver:
        yield saver


def capturing_source(url, name="cap"):
    return Source.objects.create(name=name, url=url, kind="postgres", capture="logical")


def slot_of(source):
    source.refresh_from_db()
    return source.sync_state["slot"]


def synced_chat(saver, url):
    """A chat graph with one thread, and a capturing source that has mirrored it (its slot created)."""
    chat = chat_graph(saver)
    chat.invoke({"messages": ["a"]}, config("one"))
    source = capturing_source(url)
    sync_source(source)
    return chat, source


def pending_changes(source):
    with Capture(source.url, slot_of(source)) as capture:
        return capture.peek()


def test_first_sync_creates_the_slot_scans_once_then_reads_only_what_changed(saver, logical_url):
    run_scenarios(saver)
    source = capturing_source(logical_url)

    first = sync_source(source)
    assert first["error"] is None and first["added"] > 0
    assert_mirror_matches(source, logical_url)
    with Capture(logical_url, slot_of(source)) as capture:
        assert capture.status().exists

    chat_graph(saver).invoke({"messages": ["more"]}, config("t-chat0", tenant="acme"))
    assert pending_changes(source).threads == {"t-chat0"}
    second = sync_source(source)
    assert second["error"] is None and second["added"] > 0
    assert Run.objects.filter(kind="sync").latest("pk").progress_total == 1  # one thread read, not all
    assert_mirror_matches(source, logical_url)
    assert pending_changes(source).threads == set()  # confirmed after the mirror committed

    third = sync_source(source)
    assert (third["added"], third["updated"], third["removed"], third["error"]) == (0, 0, 0, None)
    assert Run.objects.filter(kind="sync").latest("pk").progress_total == 0


def test_a_late_commit_with_a_lower_id_arrives_in_commit_order(saver, logical_url):
    chat = chat_graph(saver)
    chat.invoke({"messages": ["a"]}, config("early"))
    source = capturing_source(logical_url)
    sync_source(source)

    slow_conn = psycopg.connect(logical_url, autocommit=False)
    slow = chat_graph(PostgresSaver(slow_conn))
    slow.invoke({"messages": ["slow"]}, config("late"))  # lower ids, not committed yet
    chat.invoke({"messages": ["b"]}, config("early"))
    sync_source(source)
    assert not Thread.objects.filter(source=source, thread_id="late").exists()
    assert_mirror_matches(source, logical_url)  # its rows are invisible to the source's SQL too

    slow_conn.commit()
    slow_conn.close()
    result = sync_source(source)
    assert result["error"] is None and result["added"] > 0
    assert_mirror_matches(source, logical_url)


def test_deletions_arrive_as_deletions_even_in_threads_that_did_not_otherwise_change(saver, logical_url):
    run_scenarios(saver)
    source = capturing_source(logical_url)
    sync_source(source)

    saver.delete_thread("t-chat1")
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoints WHERE thread_id = 't-chat2' AND checkpoint_id ="
                     " (SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 't-chat2')")
        conn.execute("DELETE FROM checkpoint_blobs WHERE thread_id = 't-bytes' AND channel = 'payload'")
    assert {"t-chat1", "t-chat2", "t-bytes"} <= pending_changes(source).threads
    result = sync_source(source)
    assert result["error"] is None and result["removed"] >= 9
    assert_mirror_matches(source, logical_url)


def test_a_prune_beside_it_and_concurrent_syncs_leave_the_mirror_equal_to_the_source(saver, logical_url):
    run_scenarios(saver)
    source = capturing_source(logical_url)
    sync_source(source)
    from datetime import timedelta

    from django.utils import timezone

    policy = PrunePolicy(older_than=timedelta(seconds=0), keep_last=1)
    run_prune(source, policy, dry_run=False, now=timezone.now() + timedelta(days=1))
    sync_source(source)
    assert_mirror_matches(source, logical_url)
    # A second sync at once finds nothing left to do.
    again = sync_source(source)
    assert (again["added"], again["removed"]) == (0, 0)


def test_a_lost_slot_falls_back_to_one_scan_and_is_recreated(saver, logical_url):
    chat, source = synced_chat(saver, logical_url)
    with Capture(logical_url, slot_of(source)) as capture:
        assert capture.drop()

    chat.invoke({"messages": ["b"]}, config("two"))  # written while no slot exists
    result = sync_source(source)
    assert result["error"] is None
    assert Thread.objects.filter(source=source, thread_id="two").exists()
    assert_mirror_matches(source, logical_url)
    with Capture(logical_url, slot_of(source)) as capture:
        assert capture.status().exists

    chat.invoke({"messages": ["c"]}, config("three"))
    sync_source(source)
    assert_mirror_matches(source, logical_url)


def test_a_sync_that_dies_before_confirming_sees_the_same_changes_again(saver, logical_url, monkeypatch):
    chat, source = synced_chat(saver, logical_url)
    chat.invoke({"messages": ["b"]}, config("two"))

    def crash(self, lsn, **kwargs):
        raise RuntimeError("console restarted")

    monkeypatch.setattr(Capture, "confirm", crash)
    with pytest.raises(RuntimeError):
        sync_source(source)
    monkeypatch.undo()
    assert pending_changes(source).threads == {"two"}  # nothing confirmed

    Thread.objects.filter(source=source, thread_id="two").delete()  # as if the mirror had lost it too
    result = sync_source(source)
    assert result["error"] is None
    assert_mirror_matches(source, logical_url)


def test_the_confirmation_is_done_when_the_sync_returns(saver, logical_url):
    chat, source = synced_chat(saver, logical_url)
    for i in range(3):
        chat.invoke({"messages": [f"b{i}"]}, config(f"t{i}"))
        assert pending_changes(source).threads == {f"t{i}"}
        assert sync_source(source)["error"] is None
        # The slot moved past what the mirror now holds, before sync_source returned.
        assert pending_changes(source).threads == set()
        assert_mirror_matches(source, logical_url)


def test_the_slot_is_free_when_the_run_finishes(saver, logical_url, monkeypatch):
    # Another worker's sync, or a removal dropping the slot, may start as soon as the run is
    # finished: the confirmation, which holds the slot, must be over by then.
    from checkpoints import sync

    chat, source = synced_chat(saver, logical_url)
    seen = []
    finish_run = sync.finish_run

    def checking(run, **kwargs):
        with psycopg.connect(logical_url, autocommit=True) as conn:
            seen.append(conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                     (slot_of(source),)).fetchone()[0])
        return finish_run(run, **kwargs)

    monkeypatch.setattr(sync, "finish_run", checking)
    for i in range(3):
        chat.invoke({"messages": [secrets.token_hex(50_000)]}, config(f"t{i}"))
        assert sync_source(source)["error"] is None
        assert sync_source(source)["error"] is None  # and one with nothing new
    assert seen == [False] * 6
    assert pending_changes(source).threads == set()


def test_a_confirmation_that_fails_is_logged_and_the_next_sync_loses_nothing(saver, logical_url, monkeypatch, caplog):
    chat, source = synced_chat(saver, logical_url)
    chat.invoke({"messages": ["b"]}, config("two"))
    confirm = Capture.confirm

    def slot_dropped_meanwhile(self, lsn, **kwargs):
        with psycopg.connect(logical_url, autocommit=True) as other:  # an operator drops it by hand
            other.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
        return confirm(self, lsn, **kwargs)

    monkeypatch.setattr(Capture, "confirm", slot_dropped_meanwhile)
    with caplog.at_level("WARNING", logger="checkpoints.sources.capture"):
        result = sync_source(source)
    monkeypatch.undo()
    assert result["error"] is None  # the mirror had committed: the sync did its work
    assert "could not confirm" in caplog.text and slot_of(source) in caplog.text
    assert_mirror_matches(source, logical_url)

    chat.invoke({"messages": ["c"]}, config("three"))
    assert sync_source(source)["error"] is None  # the slot is recreated, the source scanned once
    assert_mirror_matches(source, logical_url)
    chat.invoke({"messages": ["d"]}, config("four"))
    assert pending_changes(source).threads == {"four"}
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, logical_url)


def restart_gap(url, slot):
    """How far behind the confirmed position a read of the slot starts decoding, in bytes of WAL."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn) FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()[0]


def wal_written(url, action):
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        action()
        return conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (before,)).fetchone()[0]


def test_each_sync_moves_the_slot_s_restart_point_up_to_what_it_confirmed(saver, logical_url):
    # PostgreSQL moves a slot's restart point only to a running-transactions record, written every
    # 15 s at most: without one per sync, each peek would decode the WAL of the syncs before it again.
    chat, source = synced_chat(saver, logical_url)
    for i in range(3):
        wal = wal_written(logical_url, lambda: chat.invoke({"messages": [secrets.token_hex(100_000)]}, config(f"t{i}")))
        assert wal > 100_000
        assert sync_source(source)["error"] is None
        assert restart_gap(logical_url, slot_of(source)) < wal / 4
    assert_mirror_matches(source, logical_url)


def test_a_role_that_may_not_log_running_transactions_still_syncs(saver, logical_url):
    role = f"capture_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(logical_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(publication_sql())  # the operator's part: the role does not own the tables
    try:
        url = urlsplit(logical_url)._replace(netloc=f"{role}@{urlsplit(logical_url).netloc.rpartition('@')[2]}").geturl()
        chat = chat_graph(saver)
        chat.invoke({"messages": ["a"]}, config("one"))
        source = capturing_source(url)
        assert sync_source(source)["error"] is None
        chat.invoke({"messages": ["b"]}, config("two"))
        assert pending_changes(source).threads == {"two"}
        assert sync_source(source)["error"] is None
        assert pending_changes(source).threads == set()
        assert_mirror_matches(source, logical_url)
    finally:
        with psycopg.connect(logical_url, autocommit=True) as admin:
            for (slot,) in admin.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"):
                admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_values_never_pass_through_the_decoder(saver, logical_url):
    source = capturing_source(logical_url)
    sync_source(source)
    chat_graph(saver).invoke({"messages": ["big"], "payload": b"x" * 5_000_000}, config("big"))
    with Capture(logical_url, slot_of(source)) as capture:
        changes = capture.peek()
        assert changes.threads == {"big"}
        assert changes.decoded_bytes < 20_000  # keys only: the 5 MB blob stays in the database
    sync_source(source)
    assert_mirror_matches(source, logical_url)


def test_a_server_without_logical_wal_says_what_it_needs(pg_source_url):
    source = capturing_source(pg_source_url)
    result = sync_source(source)
    assert "wal_level" in result["error"] and "logical" in result["error"]
    with Capture(pg_source_url, "checkpoint_console_x") as capture:
        problems = capture.requirements()
    assert any("wal_level" in p for p in problems)


def test_the_publication_sql_an_operator_runs_names_key_columns_only():
    statement = publication_sql()
    assert statement.startswith("CREATE PUBLICATION checkpoint_console FOR TABLE checkpoints (thread_id,")
    assert "blob" not in statement.replace("checkpoint_blobs", "")
    assert "metadata" not in statement and "checkpoint," not in statement


def test_capture_error_is_a_source_error():
    from checkpoints.sources import SourceError

    assert issubclass(CaptureError, SourceError)


def test_a_quiet_source_still_moves_its_slot_so_it_holds_back_no_wal(saver, logical_url):
    chat_graph(saver).invoke({"messages": ["a"]}, config("one"))
    source = capturing_source(logical_url)
    sync_source(source)
    sync_source(source)

    def confirmed():
        with psycopg.connect(logical_url, autocommit=True) as conn:
            return conn.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots"
                                " WHERE slot_name = %s", (slot_of(source),)).fetchone()[0]

    before = confirmed()
    with psycopg.connect(logical_url, autocommit=True) as conn:  # WAL of something else entirely
        conn.execute("CREATE TABLE unrelated AS SELECT g FROM generate_series(1, 50000) g")
    result = sync_source(source)
    assert (result["added"], result["error"]) == (0, None)
    assert confirmed() > before
    assert_mirror_matches(source, logical_url)


@pytest.fixture
def quiet_server(logical_url):
    """The logical server with autovacuum off and none of its workers running, until the test ends.

    An autovacuum ANALYZE (of any table, in any database of the server) takes a
    transaction id; one between two syncs makes the server not quiet, and a
    test that needs a quiet server fails once in a while. ALTER SYSTEM and a
    reload take none.
    """
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET autovacuum = off")
        conn.execute("SELECT pg_reload_conf()")
        for _ in range(600):  # a worker busy with a big table finishes its table first
            (running,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'").fetchone()
            (off,) = conn.execute("SELECT current_setting('autovacuum') = 'off'").fetchone()
            if off and not running:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("autovacuum workers kept running for a minute")
    yield logical_url
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET autovacuum")
        conn.execute("SELECT pg_reload_conf()")


def test_a_scan_of_a_quiet_server_skips_the_scans_and_counts_yet_sees_the_next_write(saver, quiet_server, monkeypatch):
    """Scan mode: no transaction id handed out since the last sync proves nothing changed."""
    from checkpoints.sources.postgres.reader import PostgresReader

    logical_url = quiet_server
    chat = chat_graph(saver)
    chat.invoke({"messages": ["a"]}, config("one"))
    source = Source.objects.create(name="scan", url=logical_url, kind="postgres")
    sync_source(source)

    def must_not_scan(*args, **kwargs):
        raise AssertionError("scanned a quiet server")

    with monkeypatch.context() as patch:
        patch.setattr(PostgresReader, "totals", must_not_scan)
        patch.setattr(PostgresReader, "changed_thread_ids", must_not_scan)
        quiet = sync_source(source)
    assert quiet["error"] is None

    saver.delete_thread("one")  # a deletion alone: the counts would have been the only way to see it
    chat.invoke({"messages": ["b"]}, config("two"))
    result = sync_source(source)
    assert result["error"] is None and result["removed"] > 0 and result["added"] > 0
    assert_mirror_matches(source, logical_url)


def test_the_slot_s_retained_wal_is_exported(saver, logical_url, admin_client):
    chat_graph(saver).invoke({"messages": ["a"]}, config("one"))
    source = capturing_source(logical_url)
    sync_source(source)
    chat_graph(saver).invoke({"messages": ["b"]}, config("one"))
    sync_source(source)
    source.refresh_from_db()
    status = source.sync_state["slot_status"]
    assert status["wal_status"] in ("reserved", "extended") and status["retained_bytes"] >= 0

    text = admin_client.get("/metrics").content.decode()
    assert f'checkpoint_console_capture_slot_retained_bytes{{source="cap"}} {status["retained_bytes"]}' in text
    assert 'checkpoint_console_capture_slot_lost{source="cap"} 0' in text
    assert "checkpoint_console_capture_wal_warn_bytes 1000000000" in text


def test_the_sources_page_checks_what_logical_decoding_needs_before_saving(operator_client, pg_source_url, settings):
    settings.CHECKPOINT_DATABASE_URL = ""
    # The machine's server runs with wal_level=replica: refused, with what to change, nothing saved.
    response = operator_client.post("/sources/new", {"name": "cap", "url": pg_source_url, "capture": "logical"})
    assert response.status_code == 400
    assert "wal_level" in response.content.decode()
    assert not Source.objects.filter(name="cap").exists()
    response = operator_client.post("/sources/new", {"name": "cap", "url": pg_source_url, "capture": "scan"})
    assert response.status_code == 302 and Source.objects.get(name="cap").capture == "scan"


def test_the_sources_page_enables_logical_decoding_and_shows_the_retained_wal(operator_client, logical_url, saver,
                                                                              settings):
    settings.CHECKPOINT_DATABASE_URL = ""
    chat_graph(saver).invoke({"messages": ["a"]}, config("one"))
    response = operator_client.post("/sources/new", {"name": "cap", "url": logical_url, "capture": "logical"})
    assert response.status_code == 302
    source = Source.objects.get(name="cap")
    assert source.capture == "logical"
    sync_source(source)
    page = operator_client.get("/sources/").content.decode()
    assert "logical decoding" in page and "of WAL retained" in page

    # Back to the scan: the slot goes with it.
    slot = slot_of(source)
    response = operator_client.post(f"/sources/{source.pk}/edit", {"name": "cap", "url": logical_url, "capture": "scan"})
    assert response.status_code == 302
    with Capture(logical_url, slot) as capture:
        assert not capture.status().exists
