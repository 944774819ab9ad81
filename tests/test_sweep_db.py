"""Database orphans: rows other tools leave behind when they delete checkpoint rows by hand."""

import json
import sqlite3

import psycopg
import pytest
from django.utils import timezone

from checkpoints.dburl import parse_database_url
from checkpoints.ids import uuid6_time
from checkpoints.models import Thread
from checkpoints.sync import sync_source
from storage.sweep import sweep
from tests.clock import HOUR, OLD, written_ago
from tests.graphs import chat_graph, config, delta_graph, run_scenarios
from tests.test_sweep import make_source

pytestmark = pytest.mark.django_db

@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    """(saver, url) of a fresh PostgreSQL or SQLite LangGraph database."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


@pytest.fixture(autouse=True)
def no_objects(settings, tmp_path):
    settings.S3_BUCKET_NAME = ""
    settings.BLOB_ROOT = tmp_path / "blobs"


def query(url, sql, params=()):
    if url.startswith("sqlite"):
        conn = sqlite3.connect(parse_database_url(url)["NAME"], timeout=30, isolation_level=None)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def dump(url):
    """(checkpoints, blobs, writes): sets of row keys, plus each checkpoint's channel_versions and metadata."""
    if url.startswith("postgres"):
        ckpts = {(t, ns, cid): (json.loads(cv or "{}"), json.loads(meta)) for t, ns, cid, cv, meta in query(
            url, "SELECT thread_id, checkpoint_ns, checkpoint_id, (checkpoint->'channel_versions')::text,"
            " metadata::text FROM checkpoints")}
        blobs = set(query(url, "SELECT thread_id, checkpoint_ns, channel, version FROM checkpoint_blobs"))
        writes = set(query(url, "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM checkpoint_writes"))
    else:
        ckpts = {(t, ns, cid): (None, json.loads(meta)) for t, ns, cid, meta in query(
            url, "SELECT thread_id, checkpoint_ns, checkpoint_id, CAST(metadata AS TEXT) FROM checkpoints")}
        blobs = set()
        writes = set(query(url, "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM writes"))
    return ckpts, blobs, writes


def expected_orphans(url, cutoff):
    """The rows docs/architecture.md §4 calls db orphans, worked out here in Python from the dump."""
    ckpts, blobs, writes = dump(url)
    delta = {t for (t, _, _), (_, meta) in ckpts.items() if "counters_since_delta_snapshot" in meta}
    active = {t for (t, _, cid) in list(ckpts) + [w[:3] for w in writes] if uuid6_time(cid) > cutoff}
    named = {(t, ns, ch, str(v)) for (t, ns, _), (cv, _) in ckpts.items() for ch, v in (cv or {}).items()}
    orphan_blobs = {b for b in blobs if b not in named and b[0] not in delta | active}
    orphan_writes = {w for w in writes if w[:3] not in ckpts and w[0] not in delta and uuid6_time(w[2]) < cutoff}
    return orphan_blobs, orphan_writes


def delete_checkpoints(url, thread_id, count=None):
    """Delete a thread's oldest root checkpoints (all with count=None), as a hand-written cleanup would."""
    ids = [r[0] for r in query(
        url, "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' ORDER BY checkpoint_id"
        if url.startswith("sqlite") else
        "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' ORDER BY checkpoint_id",
        (thread_id,),
    )]
    for cid in ids[:count]:
        p = "?" if url.startswith("sqlite") else "%s"
        query(url, f"DELETE FROM checkpoints WHERE thread_id = {p} AND checkpoint_id = {p}", (thread_id, cid))


def history(saver, thread_id):
    """Every checkpoint of a thread as LangGraph loads it: values, pending writes, parent."""
    return [
        (t.config["configurable"]["checkpoint_ns"], t.config["configurable"]["checkpoint_id"],
         t.checkpoint["channel_values"], sorted(map(repr, t.pending_writes or [])),
         (t.parent_config or {}).get("configurable", {}).get("checkpoint_id"))
        for t in saver.list(config(thread_id))
    ]


def test_sweep_removes_exactly_the_orphan_rows_and_every_thread_still_loads(backend):
    saver, url = backend
    # Written two hours ago (by their ids): an hour older than the grace of
    # the sweeps below, while what is written now is an hour younger.
    with written_ago(OLD):
        threads = run_scenarios(saver)
        delta = delta_graph(saver)
        for _ in range(3):
            delta.invoke({"log": ["in"]}, config("delta"))
    source = make_source(url)
    assert sync_source(source)["error"] is None
    chat = chat_graph(saver)
    for _ in range(2):
        chat.invoke({"messages": ["new"]}, config("young"))  # newer than the grace

    # Orphans, the way other tools leave them.
    delete_checkpoints(url, "t-chat0", 3)
    delete_checkpoints(url, "t-fork")  # the whole root history
    delete_checkpoints(url, "t-interrupt", 2)
    delete_checkpoints(url, "delta", 2)  # a DeltaChannel thread: its writes stay
    delete_checkpoints(url, "young", 1)  # too recent: stays
    orphan_blobs, orphan_writes = expected_orphans(url, timezone.now() - HOUR)
    if url.startswith("postgres"):
        assert {b[0] for b in orphan_blobs} >= {"t-chat0", "t-fork", "t-interrupt"}
    assert {w[0] for w in orphan_writes} >= {"t-chat0", "t-fork", "t-interrupt"}
    ckpts, blobs, writes = dump(url)
    assert any(w[0] == "delta" and w[:3] not in ckpts for w in writes)
    assert any(w[0] == "young" and w[:3] not in ckpts for w in writes)
    remaining = sorted({t for t, _, _ in ckpts})
    loaded = {t: history(saver, t) for t in remaining}

    dry = sweep(grace=HOUR, dry_run=True)
    assert dump(url) == (ckpts, blobs, writes)
    assert dry["db_orphans"] == len(orphan_blobs) + len(orphan_writes)
    assert dry["db_orphan_rows"] == {"src": {"blobs": len(orphan_blobs), "writes": len(orphan_writes)}}

    real = sweep(grace=HOUR)
    assert real["db_orphans"] == dry["db_orphans"] and real["error"] is None
    after = dump(url)
    assert after == (ckpts, blobs - orphan_blobs, writes - orphan_writes)
    for t in remaining:
        assert history(saver, t) == loaded[t], t
    assert delta.get_state(config("delta")).values["log"] == ["in", "step"] * 3
    assert set(threads) - {"t-fork"} <= set(remaining)

    # The mirror follows the source at once.
    counts = {}
    for w in after[2]:
        counts[w[0]] = counts.get(w[0], 0) + 1
    mirrored = dict(Thread.objects.filter(source=source).values_list("thread_id", "write_rows"))
    assert mirrored == {t: counts.get(t, 0) for t in remaining}
    if url.startswith("postgres"):
        blob_counts = {}
        for b in after[1]:
            blob_counts[b[0]] = blob_counts.get(b[0], 0) + 1
        assert dict(Thread.objects.filter(source=source).values_list("thread_id", "blob_rows")) == {
            t: blob_counts.get(t, 0) for t in remaining
        }

    again = sweep(grace=HOUR, dry_run=True)
    assert again["db_orphans"] == 0


def test_orphan_writes_newer_than_the_grace_stay(backend):
    """put_writes can commit before its checkpoint row: a recent write without one is no orphan yet."""
    saver, url = backend
    chat = chat_graph(saver)
    chat.invoke({"messages": ["hi"]}, config("t"))
    delete_checkpoints(url, "t")
    make_source(url)
    _, blobs, writes = dump(url)
    assert writes

    result = sweep(grace=HOUR, dry_run=False)
    assert result["db_orphans"] == 0
    assert dump(url)[1:] == (blobs, writes)

    result = sweep(grace=HOUR, now=timezone.now() + OLD)  # two hours later: past the grace
    assert result["db_orphans"] == len(blobs) + len(writes)
    assert dump(url)[1:] == (set(), set())
