"""bench/generate.py: a large source built from real LangGraph rows.

Small sources (200 threads, 2,000 checkpoints) are generated into a fresh
PostgreSQL database and a SQLite file, then checked with SQL and through
LangGraph's own savers, independently of the generator's own check.
"""

import json
import re
import sqlite3
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import ormsgpack
import psycopg
import pytest

from bench import generate as gen
from checkpoints.ids import uuid6_time
from tests.pg import server_url, url_for_database

THREADS, CHECKPOINTS = 200, 2000
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _fresh_pg():
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, url_for_database(name)


def _drop_pg(name):
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def bench_pg():
    name, url = _fresh_pg()
    result = gen.generate(url, THREADS, CHECKPOINTS, seed=3, now=NOW, log=lambda m: None)
    yield url, result
    _drop_pg(name)


@pytest.fixture(scope="module")
def bench_sqlite(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "source.sqlite"
    url = f"sqlite:///{path}"
    result = gen.generate(url, THREADS, CHECKPOINTS, seed=4, now=NOW, log=lambda m: None)
    return url, path, result


def _pg_rows(url):
    with psycopg.connect(url) as conn:
        checkpoints = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata"
            " FROM checkpoints").fetchall()
        blobs = conn.execute(
            "SELECT thread_id, checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs").fetchall()
        writes = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob"
            " FROM checkpoint_writes").fetchall()
    return checkpoints, blobs, writes


def _untoken(value: bytes) -> bytes:
    """Generated S3 URIs carry a per-thread number where the template has TOKEN."""
    return re.sub(rb"T\d{11}", gen.TOKEN.encode(), value)


def test_postgres_counts_and_schema(bench_pg):
    url, result = bench_pg
    with psycopg.connect(url) as conn:
        threads, checkpoints = conn.execute(
            "SELECT count(DISTINCT thread_id), count(*) FROM checkpoints").fetchone()
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        migrations = conn.execute("SELECT count(*) FROM checkpoint_migrations").fetchone()[0]
        templates = conn.execute(
            "SELECT count(DISTINCT thread_id) FROM checkpoints WHERE thread_id LIKE 'bench-template/%'"
        ).fetchone()[0]
        odd = conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints WHERE thread_id ~ '[ /ü日]'"
                           " AND thread_id NOT LIKE 'bench-template/%'").fetchone()[0]
        namespaces = conn.execute(
            "SELECT count(*) FROM checkpoints WHERE checkpoint_ns LIKE 'research:%'").fetchone()[0]
    assert (threads, checkpoints) == (THREADS, CHECKPOINTS)
    assert result["threads"] == THREADS and result["checkpoints"] == CHECKPOINTS
    # PostgresSaver.setup()'s schema, untouched: the benches measure real conditions.
    assert {"checkpoints_thread_id_idx", "checkpoint_blobs_thread_id_idx", "checkpoint_writes_thread_id_idx",
            "checkpoints_pkey", "checkpoint_blobs_pkey", "checkpoint_writes_pkey"} <= indexes
    assert migrations == 10
    assert templates == len(gen.TEMPLATES)
    assert odd >= 1, "thread ids with spaces, slashes and non-ASCII"
    assert namespaces > 0, "subgraph namespaces"


def test_postgres_blob_rows_and_writes_follow_the_templates(bench_pg):
    url, _ = bench_pg
    checkpoints, blobs, writes = _pg_rows(url)
    blob = {(t, ns, ch, v): (typ, bytes(b) if b is not None else None) for t, ns, ch, v, typ, b in blobs}
    template_of = {}  # (ns, channel_versions) -> template checkpoint
    for row in checkpoints:
        if row[0].startswith(gen.TEMPLATE_PREFIX):
            template_of[(row[1], json.dumps(row[4]["channel_versions"], sort_keys=True))] = row

    def joined(row):
        t, ns, _, _, ck, _ = row
        return sorted((ch, v, blob[(t, ns, ch, v)][0], _untoken(blob[(t, ns, ch, v)][1] or b""))
                      for ch, v in ck["channel_versions"].items() if (t, ns, ch, v) in blob)

    named = set()
    for row in checkpoints:
        twin = template_of.get((row[1], json.dumps(row[4]["channel_versions"], sort_keys=True)))
        assert twin is not None, f"{row[0]} {row[2]}: channel_versions of no template checkpoint"
        # Same versions, and the same blob rows behind them: the checkpoint loads the same state.
        assert joined(row) == joined(twin)
        strip = lambda ck: {k: v for k, v in ck.items() if k not in ("id", "ts")}  # noqa: E731
        assert json.loads(_untoken(json.dumps(strip(row[4])).encode())) == strip(twin[4])
        named |= {(row[0], row[1], ch, v) for ch, v in row[4]["channel_versions"].items()}
    assert set(blob) <= named, "no orphan blob rows"
    keys = {(r[0], r[1], r[2]) for r in checkpoints}
    assert all((w[0], w[1], w[2]) in keys for w in writes), "every write row has its checkpoint"
    # Threads waiting at an interrupt: pending writes on their latest checkpoint.
    latest = {}
    for t, ns, cid, *_ in checkpoints:
        if ns == "" and cid > latest.get(t, ""):
            latest[t] = cid
    waiting = {w[0] for w in writes if w[5] == "__interrupt__" and latest.get(w[0]) == w[2]}
    assert len(waiting) >= 2


def test_postgres_ids_parents_times_and_tags(bench_pg):
    url, _ = bench_pg
    checkpoints, _, _ = _pg_rows(url)
    by_thread = defaultdict(list)
    for row in checkpoints:
        by_thread[row[0]].append(row)
    tenants = Counter()
    for thread, rows in by_thread.items():
        ids = {(ns, cid) for _, ns, cid, *_ in rows}
        rows.sort(key=lambda r: r[2])
        times = [uuid6_time(r[2]) for r in rows]
        assert times == sorted(times) and len(set(times)) == len(times), f"{thread}: ids not time-ordered"
        tags = {k: rows[0][5][k] for k in gen.TAG_KEYS}
        for _, ns, cid, parent, ck, meta in rows:
            assert uuid.UUID(cid).version == 6
            assert ck["id"] == cid
            if not thread.startswith(gen.TEMPLATE_PREFIX):  # LangGraph takes ts a moment apart
                assert ck["ts"] == uuid6_time(cid).isoformat()
            if parent:
                assert (ns, parent) in ids and parent < cid
            for pns, pid in meta["parents"].items():
                assert (pns, pid) in ids and pid < cid
            assert {k: meta[k] for k in gen.TAG_KEYS} == tags, "tags are per thread"
        if not thread.startswith(gen.TEMPLATE_PREFIX):
            assert NOW - timedelta(days=121) < times[0] and times[-1] <= NOW
        assert isinstance(tags["beta"], bool) and all(isinstance(tags[k], str) for k in gen.TAG_KEYS[:5])
        tenants[tags["tenant"]] += 1
    counts = sorted(tenants.values(), reverse=True)
    assert len(counts) >= 8 and counts[0] >= 3 * counts[-1], "tenants skewed"
    days = {uuid6_time(r[2]).date() for r in checkpoints}
    assert len(days) > 60, "history spread over the last ~120 days"


def test_postgres_saver_loads_generated_threads(bench_pg):
    from langgraph.checkpoint.postgres import PostgresSaver

    url, _ = bench_pg
    checkpoints, _, _ = _pg_rows(url)
    by_versions = {}
    latest = {}
    for t, ns, cid, _, ck, _ in checkpoints:
        if t.startswith(gen.TEMPLATE_PREFIX):
            by_versions[(ns, json.dumps(ck["channel_versions"], sort_keys=True))] = (t, cid)
        elif ns == "" and cid > latest.get(t, ("",))[0]:
            latest[t] = (cid, ck)
    sample = sorted(latest)[::7] + [t for t in latest if not t.startswith("bench-0")]
    seen_templates = set()
    with PostgresSaver.from_conn_string(url) as saver:
        for thread in sample:
            cid, ck = latest[thread]
            got = saver.get_tuple({"configurable": {"thread_id": thread}})
            assert got.config["configurable"]["checkpoint_id"] == cid
            tthread, tcid = by_versions[("", json.dumps(ck["channel_versions"], sort_keys=True))]
            want = saver.get_tuple({"configurable": {"thread_id": tthread, "checkpoint_ns": "",
                                                     "checkpoint_id": tcid}})
            seen_templates.add(tthread)
            values = got.checkpoint["channel_values"]
            expected = want.checkpoint["channel_values"]
            if "attachments" in values:  # the files template: URIs differ per thread
                assert values["latest_file"] != expected["latest_file"]
                assert values["attachments"][0].startswith(f"s3://{gen.S3_BUCKET}/{gen.S3_PREFIX}T")
                values = json.loads(_untoken(json.dumps(
                    {k: values[k] for k in ("attachments", "latest_file")}).encode()))
                expected = {k: expected[k] for k in ("attachments", "latest_file")}
            assert values == expected
            assert got.metadata["tenant"] and "user_id" in got.metadata
            history = list(saver.list({"configurable": {"thread_id": thread}}))
            assert history[0].config["configurable"]["checkpoint_id"] == cid
            listed = {h.config["configurable"]["checkpoint_id"] for h in history}
            assert all(h.parent_config is None or h.parent_config["configurable"]["checkpoint_id"] in listed
                       for h in history)
    assert len(seen_templates) >= 4
    assert gen.check(url, sample=60, log=lambda m: None) == []


def test_sqlite_source(bench_sqlite):
    from langgraph.checkpoint.sqlite import SqliteSaver

    url, path, result = bench_sqlite
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type,"
                        " checkpoint, metadata FROM checkpoints").fetchall()
    writes = conn.execute("SELECT thread_id, checkpoint_ns, checkpoint_id FROM writes").fetchall()
    conn.close()
    assert len(rows) == CHECKPOINTS and len({r[0] for r in rows}) == THREADS
    assert result["checkpoints"] == CHECKPOINTS
    keys = {(r[0], r[1], r[2]) for r in rows}
    assert writes and all(w in keys for w in writes)
    latest, template_of = {}, {}
    for thread, ns, cid, parent, typ, blob, meta in rows:
        assert typ == "msgpack"
        ck = ormsgpack.unpackb(blob, ext_hook=lambda c, d: (c, d), option=ormsgpack.OPT_NON_STR_KEYS)
        assert ck["id"] == cid
        assert thread.startswith(gen.TEMPLATE_PREFIX) or ck["ts"] == uuid6_time(cid).isoformat()
        assert parent is None or ((thread, ns, parent) in keys and parent < cid)
        meta = json.loads(meta)
        assert set(gen.TAG_KEYS) <= set(meta) and list(meta)[:3] == ["source", "step", "parents"]
        assert all((thread, pns, pid) in keys for pns, pid in meta["parents"].items())
        key = (ns, json.dumps(ck["channel_versions"], sort_keys=True))
        if thread.startswith(gen.TEMPLATE_PREFIX):
            template_of[key] = (thread, cid)
        elif ns == "" and cid > latest.get(thread, ("",))[0]:
            latest[thread] = (cid, key)
    with SqliteSaver.from_conn_string(str(path)) as saver:
        for thread in sorted(latest)[::5]:
            cid, key = latest[thread]
            got = saver.get_tuple({"configurable": {"thread_id": thread}})
            tthread, tcid = template_of[key]
            want = saver.get_tuple({"configurable": {"thread_id": tthread, "checkpoint_ns": "",
                                                     "checkpoint_id": tcid}})
            assert got.config["configurable"]["checkpoint_id"] == cid
            values, expected = got.checkpoint["channel_values"], want.checkpoint["channel_values"]
            if "latest_file" in values:
                values = {k: values[k] for k in ("attachments", "latest_file")}
                values = json.loads(_untoken(json.dumps(values).encode()))
                expected = {k: expected[k] for k in ("attachments", "latest_file")}
            assert values == expected
            assert len(list(saver.list({"configurable": {"thread_id": thread}}))) >= 1
    assert gen.check(url, sample=40, log=lambda m: None) == []


def test_append_continues_threads_and_starts_new_ones(pg_source_url):
    url = pg_source_url
    gen.generate(url, 60, 700, seed=5, vacuum=False, log=lambda m: None)
    before = gen.source_counts(url)
    with psycopg.connect(url) as conn:
        old_latest = dict(conn.execute(
            "SELECT thread_id, max(checkpoint_id) FROM checkpoints GROUP BY thread_id").fetchall())
    started = datetime.now(UTC)
    result = gen.append(url, 100, seed=2, log=lambda m: None)
    after = gen.source_counts(url)
    assert after["checkpoints"] == before["checkpoints"] + 100 == 800
    assert result["checkpoints_on_existing_threads"] == 50
    assert after["threads"] == before["threads"] + result["new_threads"]
    with psycopg.connect(url) as conn:
        new_rows = conn.execute(
            "SELECT thread_id, checkpoint_id, parent_checkpoint_id FROM checkpoints"
            " WHERE thread_id = ANY(%s) ORDER BY checkpoint_id", (result["thread_ids"],)).fetchall()
    fresh = [r for r in new_rows if r[0] not in old_latest or r[1] > old_latest[r[0]]]
    assert len(fresh) == 100
    # All at "now", and the continued threads chain onto their old latest checkpoint.
    assert all(started - timedelta(minutes=5) < uuid6_time(r[1]) <= datetime.now(UTC) for r in fresh)
    continued = {r[0] for r in fresh if r[0] in old_latest}
    assert len(continued) == result["continued_threads"] > 0
    assert gen.check(url, thread_ids=result["thread_ids"], log=lambda m: None) == []

    # Once someone's real thread is in it, the database is never recreated nor appended to.
    from langgraph.checkpoint.postgres import PostgresSaver

    from tests.graphs import chat_graph

    with PostgresSaver.from_conn_string(url) as saver:
        chat_graph(saver).invoke({"messages": ["hi"]}, {"configurable": {"thread_id": "customer-1"}})
    with pytest.raises(SystemExit, match="not generated"):
        gen.generate(url, THREADS, CHECKPOINTS, recreate=True, log=lambda m: None)
    with pytest.raises(SystemExit, match="not generated"):
        gen.append(url, 10, log=lambda m: None)
    assert gen.source_counts(url)["checkpoints"] > after["checkpoints"]


def test_refuses_to_overwrite_and_loses_nothing(bench_pg):
    url, _ = bench_pg
    with pytest.raises(SystemExit, match="--recreate"):
        gen.generate(url, THREADS, CHECKPOINTS, log=lambda m: None)
    with pytest.raises(ValueError, match="between"):
        gen.generate(url, 100, 50, recreate=True, log=lambda m: None)
    assert gen.source_counts(url)["checkpoints"] == CHECKPOINTS


def test_generator_doctests():
    import doctest

    assert doctest.testmod(gen).failed == 0
