"""VACUUM after a prune (issue 11.8c): form, saved policy and --vacuum; the run reports what it changed.

Real LangGraph data on both backends; the figures are checked against the
source with plain SQL. The old checkpoints are two hours old by their ids
(tests/clock.py), the cut is one hour.
"""

import io
import json
import sqlite3
from contextlib import closing
from datetime import timedelta

import psycopg
import pytest
from django.core.management import call_command
from django.urls import reverse

from checkpoints.dburl import parse_database_url
from checkpoints.models import Run
from dashboard.models import SavedPolicy
from tests.clock import written_ago
from tests.graphs import chat_graph, config, run_scenarios
from tests.mirror_data import operator, operator_client  # noqa: F401
from tests.test_maintenance_support import make_source, prune_post, read_rows

pytestmark = pytest.mark.django_db

TABLES = ["checkpoints", "checkpoint_blobs", "checkpoint_writes"]


@pytest.fixture(autouse=True)
def settings_for_prune(settings):
    settings.CHECKPOINT_DATABASE_URL = ""


def old_history(saver, threads=20, turns=3):
    """Threads of several turns, written two hours ago: a 1h prune keeps one checkpoint of each."""
    chat = chat_graph(saver)
    with written_ago():
        run_scenarios(saver)
        for i in range(threads):
            for _ in range(turns):
                chat.invoke({"messages": ["hello " * 300]}, config(f"long-{i}"))


def test_prune_vacuum_on_postgres_reports_dead_rows_and_bytes(pg_saver, pg_source_url):
    old_history(pg_saver)
    with psycopg.connect(pg_source_url, autocommit=True) as conn:
        for table in TABLES:  # nothing vacuums behind the test's back
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        files = dict(conn.execute("SELECT relname, relfilenode FROM pg_class WHERE relname = ANY(%s)", (TABLES,)))
    # The saver's own statistics (its upserts leave dead rows too) are counted before the prune's.
    pg_saver.conn.execute("SELECT pg_stat_force_next_flush()")
    make_source(pg_source_url)
    before = read_rows(pg_source_url)

    out = io.StringIO()
    call_command("prune_checkpoints", "--older-than", "1h", "--source", "src", "--vacuum", "--json", stdout=out)
    result = json.loads(out.getvalue())
    removed = before.minus(read_rows(pg_source_url))
    assert result["checkpoints"] == len(removed.checkpoints) > 0 and result["blobs"] == len(removed.blobs) > 0

    vacuum = result["vacuum"]["src"]
    dead_before, dead_after = vacuum["before"]["dead_rows"], vacuum["after"]["dead_rows"]
    assert list(dead_before) == TABLES
    # Every deleted row was a dead row until the VACUUM, and no dead row is left after it.
    assert dead_before["checkpoints"] >= len(removed.checkpoints)
    assert dead_before["checkpoint_blobs"] >= len(removed.blobs)
    assert dead_before["checkpoint_writes"] >= len(removed.writes)
    assert dead_after == {t: 0 for t in TABLES}
    with psycopg.connect(pg_source_url, autocommit=True) as conn:
        (size,) = conn.execute("SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(%s::text[]) t",
                               (TABLES,)).fetchone()
        assert vacuum["after"]["bytes"] == size == result["disk_bytes_after"]
        assert vacuum["before"]["bytes"] > 0
        vacuumed = dict(conn.execute("SELECT relname, last_vacuum IS NOT NULL FROM pg_stat_user_tables"
                                     " WHERE relname = ANY(%s)", (TABLES,)))
        assert vacuumed == {t: True for t in TABLES}
        # A plain VACUUM: the tables keep their files (VACUUM FULL would rewrite them under an exclusive lock).
        assert dict(conn.execute("SELECT relname, relfilenode FROM pg_class WHERE relname = ANY(%s)", (TABLES,))) == files

    run = Run.objects.get(kind="prune")
    assert run.parameters["vacuum"] is True and run.state == "done", run.error
    out = io.StringIO()
    call_command("prune_checkpoints", "--older-than", "1h", "--source", "src", "--vacuum", stdout=out)
    assert "VACUUM in" in out.getvalue() and "dead rows checkpoints 0 -> 0" in out.getvalue()


def test_prune_vacuum_from_the_page_on_sqlite_and_in_a_saved_policy(sqlite_saver, sqlite_source_url, operator_client):
    old_history(sqlite_saver)
    source = make_source(sqlite_source_url)
    path = parse_database_url(sqlite_source_url)["NAME"]

    def pragma(name):
        with closing(sqlite3.connect(path)) as conn:
            return conn.execute(f"PRAGMA {name}").fetchone()[0]

    data = {**prune_post(source), "prune-vacuum": "on"}
    operator_client.post(reverse("maintenance-prune-preview"), data)
    preview = Run.objects.get(kind="prune", dry_run=True)
    assert preview.state == "done" and preview.parameters["vacuum"] is True
    assert "vacuum" not in preview.result  # a dry run changes nothing, VACUUM included
    page = operator_client.get(reverse("maintenance-run", args=[preview.pk])).content.decode()
    assert "VACUUM after" in page and "ends with a plain VACUUM" in page
    pages_before = pragma("page_count")

    operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
    real = Run.objects.get(kind="prune", dry_run=False)
    assert real.state == "done", real.error
    vacuum = real.result["vacuum"]
    assert vacuum["before"]["free_pages"] > 0 and vacuum["after"]["free_pages"] == 0 == pragma("freelist_count")
    assert vacuum["before"]["bytes"] == pages_before * pragma("page_size")
    assert vacuum["after"]["bytes"] == pragma("page_count") * pragma("page_size") < vacuum["before"]["bytes"]
    assert real.result["disk_bytes_after"] == vacuum["after"]["bytes"]
    page = operator_client.get(reverse("maintenance-run", args=[real.pk])).content.decode()
    assert "VACUUM after the prune" in page and "Free pages" in page
    assert f"<td class=\"num\">{vacuum['before']['free_pages']:,}</td>" in page

    # The same form saves a policy that keeps the choice.
    operator_client.post(reverse("maintenance-policy-new", args=["prune"]),
                         {**data, "policy-name": "nightly", "policy-interval": "24h"})
    policy = SavedPolicy.objects.get()
    assert policy.parameters["vacuum"] is True
    assert "VACUUM after" in operator_client.get("/maintenance/").content.decode()


def test_a_failed_vacuum_leaves_the_prune_done_and_says_so(sqlite_saver, sqlite_source_url, monkeypatch):
    from checkpoints import prune as pruning
    from checkpoints.sources.sqlite.maintenance import SqliteMaintenance

    old_history(sqlite_saver, threads=2)
    source = make_source(sqlite_source_url)
    before = read_rows(sqlite_source_url)

    def locked(conn):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteMaintenance, "vacuum", staticmethod(locked))
    run = pruning.run_prune(source, pruning.PrunePolicy(timedelta(hours=1), vacuum=True), dry_run=False)
    assert run.result["checkpoints"] == len(before.minus(read_rows(sqlite_source_url)).checkpoints) > 0
    assert run.result["vacuum"]["error"] == "OperationalError: database is locked"
    assert run.error == "the prune is done but VACUUM failed: OperationalError: database is locked"
