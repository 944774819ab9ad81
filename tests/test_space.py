"""Space at the sources (issue 11.8): dead rows and vacuums (PostgreSQL), free pages (SQLite), on real LangGraph data.

Each sync reads the figures through the source's read-only connection; the
maintenance page and /metrics show them. The expected figures are read here
with plain SQL, independently of the readers.
"""

import re
import sqlite3
from contextlib import closing

import psycopg
import pytest

from checkpoints.dburl import parse_database_url
from checkpoints.models import Source
from checkpoints.sync import sync_source
from tests.graphs import chat_graph, config, run_scenarios
from tests.mirror_data import viewer, viewer_client  # noqa: F401
from tests.test_maintenance_support import make_source, make_user
from tests.test_metrics import parse

pytestmark = pytest.mark.django_db

TABLES = ["checkpoints", "checkpoint_blobs", "checkpoint_writes"]


def many_threads(saver, n=30):
    chat = chat_graph(saver)
    for i in range(n):
        for _ in range(2):
            chat.invoke({"messages": ["hello " * 200]}, config(f"many-{i}"))
    return [f"many-{i}" for i in range(n)]


def flush_stats(conn):
    """Make this session's table statistics visible now: PostgreSQL sends them when the session
    goes idle, at most once a second, unless asked to (before the statement's reply)."""
    conn.execute("SELECT pg_stat_force_next_flush()")


def metrics(client):
    samples = parse(client.get("/metrics").content.decode())
    return lambda name, **labels: samples.get(("checkpoint_console_" + name, tuple(labels.items())))


def test_postgres_dead_rows_vacuums_and_autovacuum_per_table(pg_saver, pg_source_url, viewer_client):
    run_scenarios(pg_saver)
    threads = many_threads(pg_saver)
    with psycopg.connect(pg_source_url, autocommit=True) as conn:
        # Nothing vacuums behind the test's back: the reloption the page must notice.
        for table in TABLES:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        (server_on,) = conn.execute(
            "SELECT current_setting('autovacuum') = 'on' AND current_setting('track_counts') = 'on'").fetchone()
    flush_stats(pg_saver.conn)
    source = make_source(pg_source_url)

    space = source.sync_state["space"]
    assert space["kind"] == "postgres" and space["autovacuum"] == server_on and space["checked_at"]
    assert [t["table"] for t in space["tables"]] == TABLES
    with psycopg.connect(pg_source_url) as conn:
        for t in space["tables"]:
            (count,) = conn.execute(f"SELECT count(*) FROM {t['table']}").fetchone()
            (size,) = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (t["table"],)).fetchone()
            assert t["live_rows"] == count > 0, t
            assert t["bytes"] == size and t["autovacuum"] is False, t
            assert t["last_vacuum"] is None and t["last_autovacuum"] is None

    # LangGraph deletes most threads: their rows are dead until a VACUUM.
    for tid in threads:
        pg_saver.delete_thread(tid)
    flush_stats(pg_saver.conn)
    assert sync_source(source, full=True)["error"] is None  # full: most of the mirror goes
    source.refresh_from_db()
    tables = {t["table"]: t for t in source.sync_state["space"]["tables"]}
    assert tables["checkpoints"]["dead_rows"] > tables["checkpoints"]["live_rows"] > 0

    html = viewer_client.get("/maintenance/").content.decode()
    assert 'id="space"' in html and "checkpoint_blobs" in html
    assert f"checkpoints: {tables['checkpoints']['dead_rows']:,} dead rows outweigh" in html
    assert "autovacuum is off for checkpoints (reloption autovacuum_enabled)" in html or not server_on
    value = metrics(viewer_client)
    for name, t in tables.items():
        assert value("source_table_dead_rows", source="src", table=name) == t["dead_rows"]
        assert value("source_table_live_rows", source="src", table=name) == t["live_rows"]
        assert value("source_table_bytes", source="src", table=name) == t["bytes"]
        assert value("source_table_autovacuum_enabled", source="src", table=name) == 0
        assert value("source_table_last_vacuum_timestamp_seconds", source="src", table=name) is None

    # A plain VACUUM (the operator's, here) clears the dead rows and is dated.
    with psycopg.connect(pg_source_url, autocommit=True) as conn:
        conn.execute("VACUUM checkpoints")
        flush_stats(conn)
    assert sync_source(source)["error"] is None
    source.refresh_from_db()
    vacuumed = source.sync_state["space"]["tables"][0]
    assert vacuumed["dead_rows"] == 0 and vacuumed["last_vacuum"] is not None
    html = viewer_client.get("/maintenance/").content.decode()
    assert not re.search(r"\bcheckpoints: [0-9,]+ dead rows outweigh", html)
    assert metrics(viewer_client)("source_table_last_vacuum_timestamp_seconds", source="src", table="checkpoints") > 0


def test_sqlite_pages_and_free_pages(sqlite_saver, sqlite_source_url, viewer_client):
    threads = many_threads(sqlite_saver)
    source = make_source(sqlite_source_url)
    path = parse_database_url(sqlite_source_url)["NAME"]

    def pragmas():
        with closing(sqlite3.connect(path)) as conn:
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count", "page_size")}

    space = source.sync_state["space"]
    before = pragmas()
    assert (space["kind"], space["page_count"], space["free_pages"], space["page_size"]) == (
        "sqlite", before["page_count"], before["freelist_count"], before["page_size"])
    assert space["bytes"] == before["page_count"] * before["page_size"] and space["auto_vacuum"] == "none"

    for tid in threads[:-2]:
        sqlite_saver.delete_thread(tid)
    assert sync_source(source, full=True)["error"] is None  # full: most of the mirror goes
    source.refresh_from_db()
    space = source.sync_state["space"]
    after = pragmas()
    assert space["free_pages"] == after["freelist_count"] and space["free_pages"] * 2 > space["page_count"]

    html = viewer_client.get("/maintenance/").content.decode()
    assert f"{space['free_pages']:,} of {space['page_count']:,} pages are free" in html
    value = metrics(viewer_client)
    assert value("source_free_pages", source="src") == space["free_pages"]
    assert value("source_pages", source="src") == space["page_count"]

    # The sources page (operators) says it too, and links to the details.
    viewer_client.force_login(make_user("otto", "operator"))
    html = viewer_client.get("/sources/").content.decode()
    assert f"{space['free_pages']:,} of {space['page_count']:,} pages free" in html
    assert '/maintenance/#space" title="' in html and "1 warning</a>" in html


def test_a_source_whose_figures_cannot_be_read_still_syncs(pg_saver, pg_source_url, monkeypatch, viewer_client):
    from checkpoints.sources import SourceError
    from checkpoints.sources.postgres.reader import PostgresReader

    run_scenarios(pg_saver)

    def refused(self):
        raise SourceError("reading stats failed: permission denied")

    monkeypatch.setattr(PostgresReader, "space", refused)
    source = make_source(pg_source_url)  # asserts the sync succeeded
    assert source.sync_state["space"]["error"] == "reading stats failed: permission denied"
    assert Source.objects.get().last_sync_ok
    assert "Could not read the space figures: reading stats failed" in viewer_client.get("/maintenance/").content.decode()
