"""Dashboard speed on a big mirror: tag browsing, the overview, and LangGraph's own search.

Targets (issue 3), measured in one run on the same data:
  * threads filtered by two tags: the query <= 5 ms and the page <= 50 ms server time,
    and >= 100x faster than PostgresSaver.list(None, filter={the two keys}, limit=100);
  * the overview page <= 150 ms server time.

Run it on existing data (the console DB holding the mirror, and the LangGraph
database that was synced into it):

    python3 bench/bench_pages.py --console-url postgresql://.../console --source-url postgresql://.../langgraph

or build a throwaway pair first (100,000 threads, about 1,000,000 checkpoints;
both databases are created, and dropped again with --drop):

    python3 bench/bench_pages.py --generate --server-url postgresql://postgres@127.0.0.1:5432/postgres

The generated source is a valid PostgresSaver schema (setup() ran) filled by
SQL, and the mirror is written by SQL with the same threads and tags, so both
sides answer the same question. Page times are server time: the Django test
client calls the full stack (middleware, view, template) in-process.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"tag_query_ms": 5.0, "tag_page_ms": 50.0, "overview_ms": 150.0, "ratio": 100.0}


# --- generation (SQL on throwaway databases) -------------------------------------------

# Tag values are functions of the thread number i, identical on both sides.
# (Every statement here runs with parameters, hence %% for a modulo.)
TAG_SQL = {
    "tenant": "'tenant-' || ((i * 7919) %% 100)",
    "project": "'project-' || ((i * 31) %% 20)",
    "env": "CASE WHEN i %% 3 = 0 THEN 'staging' ELSE 'prod' END",
    "user_id": "'user-' || ((i * 104729) %% 10000)",
    "model": "(ARRAY['gpt-4o', 'claude', 'llama'])[1 + i %% 3]",
}
COUNT_SQL = "(1 + (i * 37) %% 19)"  # checkpoints per thread: 1..19, mean 10
# Checkpoint n of thread i is written at ts = start + 10 min * n; t and tp are the
# 100 ns uuid6 ticks of it and of its parent.
SERIES_SQL = f"""
    FROM generate_series(1::bigint, %(threads)s::bigint) AS i
    CROSS JOIN LATERAL generate_series(0, {COUNT_SQL} - 1) AS n
    CROSS JOIN LATERAL (SELECT now() - make_interval(days => (i %% %(days)s)::int) + make_interval(mins => (10 * n)::int) AS ts) AS tt
    CROSS JOIN LATERAL (SELECT (extract(epoch FROM ts) * 10000000)::bigint + 122192928000000000 AS t,
                               (extract(epoch FROM ts) * 10000000)::bigint + 122192928000000000 - 6000000000 AS tp) AS tk
"""


def uuid6_sql(ticks, step):
    """SQL for the uuid6 text LangGraph would write at `ticks` (step in the 4th group, thread in the 5th)."""
    return (
        f"lpad(to_hex({ticks} >> 28), 8, '0') || '-' || lpad(to_hex(({ticks} >> 12) & 65535), 4, '0') || '-6' "
        f"|| lpad(to_hex({ticks} & 4095), 3, '0') || '-' || lpad(to_hex(32768 + {step}), 4, '0') || '-' "
        "|| lpad(to_hex(i::bigint), 12, '0')"
    )


def metadata_sql():
    pairs = ", ".join(f"'{k}', {v}" for k, v in TAG_SQL.items())
    return f"jsonb_build_object('source', 'loop', 'step', n - 1, 'parents', '{{}}'::jsonb, {pairs})"


def admin_connect(server_url):
    import psycopg

    return psycopg.connect(server_url, autocommit=True)


def url_with_db(server_url, name):
    parts = urlsplit(server_url)
    return parts._replace(path="/" + name).geturl()


def create_database(server_url, name, replace):
    with admin_connect(server_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and not replace:
            raise SystemExit(f"database {name} exists: pass --replace to rebuild it, or drop --generate to use it")
        if exists:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url_with_db(server_url, name)


def generate_source(url, threads, days):
    """A PostgresSaver database: its own setup(), then rows written by SQL."""
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
    version = "lpad((n + 1)::text, 32, '0') || '.0.5'"
    cid = uuid6_sql("t", "n")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""
            INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
            SELECT 'thread-' || lpad(i::text, 7, '0'), '', {cid},
                   CASE WHEN n > 0 THEN {uuid6_sql("tp", "n - 1")} END,
                   jsonb_build_object('v', 4, 'id', {cid}, 'ts', ts,
                     'channel_values', jsonb_build_object('counter', n, 'label', 'turn-' || n),
                     'channel_versions', jsonb_build_object('messages', {version}, 'counter', {version}, 'label', {version}),
                     'versions_seen', '{{}}'::jsonb, 'updated_channels', jsonb_build_array('messages')),
                   {metadata_sql()}
            {SERIES_SQL}
            """,
            {"threads": threads, "days": days},
        )
        conn.execute(
            f"""
            INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
            SELECT 'thread-' || lpad(i::text, 7, '0'), '', 'messages', {version}, 'msgpack',
                   convert_to(repeat('m', (100 + (i * n) %% 400)::int), 'UTF8')
            {SERIES_SQL}
            """,
            {"threads": threads, "days": days},
        )
        conn.execute("VACUUM ANALYZE")


def _insert(conn, model, exprs, from_sql, params):
    """INSERT ... SELECT for a Django model: `exprs` maps columns to SQL, other columns get their defaults."""
    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        column = field.column
        columns.append(f'"{column}"')
        if column in exprs:
            values.append(exprs[column])
        else:
            default = field.get_default()
            if isinstance(default, (dict, list)):
                values.append(f"'{json.dumps(default)}'::jsonb")
            elif default is None:
                values.append("NULL")
            elif isinstance(default, bool):
                values.append("true" if default else "false")
            elif isinstance(default, (int, float)):
                values.append(str(default))
            else:
                values.append("''")
    sql = f'INSERT INTO "{model._meta.db_table}" ({", ".join(columns)}) SELECT {", ".join(values)} {from_sql}'
    with conn.cursor() as cur:
        cur.execute(sql, params)


def generate_mirror(source_url, threads, days, limit):
    """The console's mirror of the generated source, written by SQL in the console DB."""
    from django.core.management import call_command
    from django.db import connection

    from checkpoints.models import BlobReference, Checkpoint, DailyUsage, ReferenceUse, Source, Tag, Thread

    call_command("migrate", verbosity=0)
    source = Source.objects.create(name="bench", url=source_url, kind="postgres", layout="standard")
    p = {"threads": threads, "days": days, "source": source.pk, "limit": limit}
    tags_json = "jsonb_build_object(" + ", ".join(f"'{k}', {v}" for k, v in TAG_SQL.items()) + ")"
    base = "(2000 + (i %% 50) * 500)"
    logical = f"(CASE WHEN i %% 997 = 0 AND n = {COUNT_SQL} - 1 THEN %(limit)s + 1000000 ELSE {base} * (n + 1) + (i * n) %% 1000 END)"
    conn = connection
    thread_series = "FROM generate_series(1::bigint, %(threads)s::bigint) AS i"
    count = COUNT_SQL
    first = "now() - make_interval(days => (i %% %(days)s)::int)"
    last = f"{first} + make_interval(mins => (10 * ({count} - 1))::int)"
    _insert(conn, Thread, {
        "source_id": "%(source)s", "thread_id": "'thread-' || lpad(i::text, 7, '0')", "checkpoints": count,
        "first_checkpoint_at": first, "last_checkpoint_at": last,
        "latest_checkpoint_id": "''", "logical_bytes": f"{base} * {count}",
        "stored_bytes": f"{base} * {count} * ({count} + 1) / 2 + 400 * {count}",
        "tags": tags_json,
    }, thread_series, p)
    for key, expr in TAG_SQL.items():
        _insert(conn, Tag, {
            "source_id": "%(source)s", "thread_id": "t.id", "key": f"'{key}'", "value": expr,
        }, "FROM generate_series(1::bigint, %(threads)s::bigint) AS i JOIN checkpoints_thread t ON t.source_id = %(source)s AND t.thread_id = 'thread-' || lpad(i::text, 7, '0')", p)
    metadata = metadata_sql()
    series = SERIES_SQL + " JOIN checkpoints_thread th ON th.source_id = %(source)s AND th.thread_id = 'thread-' || lpad(i::text, 7, '0')"
    _insert(conn, Checkpoint, {
        "source_id": "%(source)s", "thread_id": "th.id", "checkpoint_ns": "''", "checkpoint_id": uuid6_sql("t", "n"),
        "parent_checkpoint_id": "''", "created_at": "ts", "step": "n - 1", "origin": "'loop'", "metadata": metadata,
        "row_bytes": "300", "blob_bytes": f"{logical} - 400", "write_bytes": "100", "write_count": "1",
        "logical_bytes": logical, "new_bytes": f"{base} + 400",
    }, series, p)
    _insert(conn, DailyUsage, {
        "source_id": "%(source)s", "day": "current_date - d", "checkpoints": "(%(days)s - d) * 2700",
        "stored_bytes": "(%(days)s - d)::bigint * 40000000", "checkpoint_bytes": "(%(days)s - d)::bigint * 800000",
        "blob_bytes": "(%(days)s - d)::bigint * 38000000", "write_bytes": "(%(days)s - d)::bigint * 1200000",
        "threads": "(%(days)s - d) * 270", "external_bytes": "(%(days)s - d)::bigint * 5000000",
        "checkpoints_added": "2700", "bytes_added": "40000000", "threads_added": "270", "external_bytes_added": "5000000",
    }, "FROM generate_series(0, %(days)s - 1) AS d", p)
    _insert(conn, BlobReference, {
        "uri": "'s3://bench/uploads/' || j || '.pdf'", "store": "'s3'", "size": "1000 * j",
        "exists": "CASE WHEN j %% 50 = 0 THEN false ELSE true END", "first_seen_at": "now()",
    }, "FROM generate_series(1, 5000) AS j", p)
    _insert(conn, ReferenceUse, {
        "reference_id": "r.id", "thread_id": "c.thread_id", "checkpoint_id": "c.id", "location": "'value:attachment'",
    }, "FROM checkpoints_blobreference r JOIN LATERAL (SELECT id, thread_id FROM checkpoints_checkpoint WHERE id = r.id * 150) c ON true", p)
    with conn.cursor() as cur:
        cur.execute("UPDATE checkpoints_source SET last_sync_at = now(), last_sync_ok = true, last_sync_started_at = now()")
    connection.close()
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as raw:
        raw.execute("VACUUM ANALYZE")


# --- the indexes the dashboard's queries want ----------------------------------------

# Proposed for checkpoints/models.py (see the report); --add-indexes creates them
# here so a mirror built before that migration can be measured with them.
RECOMMENDED_INDEXES = {
    "tag_key_value_thread_idx": "CREATE INDEX IF NOT EXISTS tag_key_value_thread_idx ON checkpoints_tag (key, value, thread_id)",
    "tag_thread_key_value_idx": "CREATE INDEX IF NOT EXISTS tag_thread_key_value_idx ON checkpoints_tag (thread_id, key, value)",
    "checkpoint_time_size_idx": "CREATE INDEX IF NOT EXISTS checkpoint_time_size_idx ON checkpoints_checkpoint (created_at) INCLUDE (logical_bytes, source_id)",
    "thread_totals_idx": "CREATE INDEX IF NOT EXISTS thread_totals_idx ON checkpoints_thread (source_id) INCLUDE (checkpoints, stored_bytes)",
}
RECOMMENDED_STATISTICS = (
    "CREATE STATISTICS IF NOT EXISTS tag_key_value_stats (mcv, ndistinct, dependencies) ON key, value FROM checkpoints_tag"
)


def index_report(connection):
    """Which of the recommended indexes (by column list) the console DB has."""
    wanted = {
        "tag (key, value, thread_id)": ("checkpoints_tag", "(key, value, thread_id)"),
        "tag (thread_id, key, value)": ("checkpoints_tag", "(thread_id, key, value)"),
        "checkpoint (created_at) INCLUDE (logical_bytes, source_id)": ("checkpoints_checkpoint", "(created_at) INCLUDE (logical_bytes, source_id)"),
        "thread (source_id) INCLUDE (checkpoints, stored_bytes)": ("checkpoints_thread", "(source_id) INCLUDE (checkpoints, stored_bytes)"),
    }
    with connection.cursor() as cur:
        cur.execute("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema()")
        defs = cur.fetchall()
        cur.execute("SELECT count(*) FROM pg_statistic_ext WHERE stxrelid = 'checkpoints_tag'::regclass")
        has_stats = cur.fetchone()[0] > 0
    present = {name: any(t == table and d.endswith(cols) for t, d in defs) for name, (table, cols) in wanted.items()}
    present["statistics on tag (key, value)"] = has_stats
    return present


def add_indexes(connection):
    with connection.cursor() as cur:
        for sql in RECOMMENDED_INDEXES.values():
            cur.execute(sql)
        cur.execute(RECOMMENDED_STATISTICS)
        cur.execute("ANALYZE checkpoints_tag")
        cur.execute("ANALYZE checkpoints_checkpoint")
        cur.execute("ANALYZE checkpoints_thread")


def calibrate(connection):
    """Milliseconds for a fixed amount of work on the database and in Python.

    An idle 2-core machine here does the SQL in about 60 ms and the Python in
    about 200 ms; a busy one takes several times longer, and every figure
    above grows with it.
    """
    def sql():
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM generate_series(1, 1000000)")
            cur.fetchone()

    def python():
        sum(i * i for i in range(3_000_000))

    return {"calibration_sql_ms": timed(sql, 3), "calibration_python_ms": timed(python, 3)}


# --- measuring ---------------------------------------------------------------------


def timed(fn, runs):
    """Median milliseconds of `runs` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def pick_tags(source):
    """Two tags to filter by: the most used value of the two most used keys, that co-occur."""
    from django.db.models import Count

    from checkpoints.models import Tag

    keys = list(Tag.objects.filter(source=source).values("key").annotate(n=Count("id")).order_by("-n", "key")[:2])
    k1 = keys[0]["key"]
    v1 = Tag.objects.filter(source=source, key=k1).values("value").annotate(n=Count("id")).order_by("-n", "value")[0]["value"]
    k2 = keys[1]["key"]
    with_first = Tag.objects.filter(source=source, key=k1, value=v1).values("thread_id")
    v2 = (Tag.objects.filter(source=source, key=k2, thread_id__in=with_first).values("value")
          .annotate(n=Count("id")).order_by("-n", "value")[0]["value"])
    return [(k1, v1), (k2, v2)]


def metadata_value(text):
    """A tag's text back to the JSON value LangGraph stored (tags are text; metadata keeps types).

    >>> metadata_value("true"), metadata_value("2"), metadata_value("acme"), metadata_value("1.5")
    (True, 2, 'acme', 1.5)
    """
    if text in ("true", "false"):
        return text == "true"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float)) else text


def measure(source_url, pairs, runs):
    from django.contrib.auth.models import User
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import override_settings

    from checkpoints.models import Source, Thread
    from dashboard import browse

    source = Source.objects.get(url=source_url) if source_url and Source.objects.filter(url=source_url).exists() else Source.objects.first()
    if pairs is None:
        pairs = pick_tags(source)
    from django.db.models import Sum

    results = {"tags": [f"{k}:{v}" for k, v in pairs], "threads": Thread.objects.count()}
    results.update(calibrate(connection))
    results["indexes"] = index_report(connection)
    results["checkpoints"] = Thread.objects.aggregate(n=Sum("checkpoints"))["n"]
    found = browse.find_threads(pairs)
    results["matching_threads"] = found.count()

    # The query behind the page: the first page of threads, newest activity
    # first. Timed as SQL sent and rows fetched over the connection (the
    # query), and separately with the ORM turning it into model objects.
    sql, params = found[:50].query.sql_with_params()

    def tag_query():
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    results["tag_query_ms"] = timed(tag_query, runs)
    results["tag_query_orm_ms"] = timed(lambda: list(found[:50]), runs)
    results["tag_count_ms"] = timed(found.count, runs)
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        plan = cur.fetchone()[0]
        plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    results["tag_query_plan_ms"] = plan["Execution Time"]

    user, _ = User.objects.get_or_create(username="bench-pages", defaults={"is_superuser": True})
    user.is_superuser = True
    user.save()
    static = {
        "STORAGES": {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
                     "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}},
        "ALLOWED_HOSTS": ["testserver"],
        "DEBUG": False,
    }
    with override_settings(**static):
        client = Client()
        client.force_login(user)
        url = "/threads/?" + urlencode([("tag", browse.tag_text(k, v)) for k, v in pairs])

        def get(path):
            def call():
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)
            return call

        results["tag_page_ms"] = timed(get(url), runs)

        def cold():  # the count and facets of a filter are cached per sync: the first view pays them
            from django.core.cache import cache

            cache.clear()
            get(url)()

        results["tag_page_cold_ms"] = timed(cold, runs)
        results["api_threads_ms"] = timed(get("/api/threads/?" + urlencode([("tag", browse.tag_text(k, v)) for k, v in pairs])), runs)
        results["overview_ms"] = timed(get("/"), runs)
        results["overview_all_ms"] = timed(get("/?range=all"), runs)
        results["unfiltered_threads_ms"] = timed(get("/threads/"), runs)
    reset_queries()

    if source.kind == "postgres":
        from langgraph.checkpoint.postgres import PostgresSaver

        metadata_filter = {k: metadata_value(v) for k, v in pairs}
        with PostgresSaver.from_conn_string(source.url) as saver:
            listed = []

            def baseline():
                listed[:] = list(saver.list(None, filter=metadata_filter, limit=100))

            results["saver_list_ms"] = timed(baseline, max(3, runs // 5))
            results["saver_list_rows"] = len(listed)
        results["ratio"] = results["saver_list_ms"] / results["tag_query_ms"]
        results["orm_ratio"] = results["saver_list_ms"] / results["tag_query_orm_ms"]
        results["page_ratio"] = results["saver_list_ms"] / results["tag_page_ms"]
    return results


def report(results):
    def line(name, value, target=None, better="lower"):
        if value is None:
            return f"  {name:34} n/a"
        mark = ""
        if target is not None:
            ok = value <= target if better == "lower" else value >= target
            mark = f"  target {'<=' if better == 'lower' else '>='} {target:g}: {'PASS' if ok else 'FAIL'}"
        return f"  {name:34} {value:10.2f}{mark}"

    print(f"mirror: {results['threads']:,} threads, {results['checkpoints']:,} checkpoints")
    print(f"machine: {results['calibration_sql_ms']:.0f} ms SQL / {results['calibration_python_ms']:.0f} ms Python "
          "calibration (the same figures vary 2x between runs on this VM)")
    missing = [name for name, ok in results["indexes"].items() if not ok]
    print("recommended indexes: " + ("all present" if not missing else "missing " + "; ".join(missing)))
    print(f"filter: {' AND '.join(results['tags'])} -> {results['matching_threads']:,} threads")
    print(line("tag query, first page (ms)", results["tag_query_ms"], TARGETS["tag_query_ms"]))
    print(line("  same, EXPLAIN ANALYZE (ms)", results["tag_query_plan_ms"]))
    print(line("  same, through the ORM (ms)", results["tag_query_orm_ms"]))
    print(line("tag count (ms)", results["tag_count_ms"]))
    print(line("/threads/?tag&tag page (ms)", results["tag_page_ms"], TARGETS["tag_page_ms"]))
    print(line("  same, first view of the filter (ms)", results["tag_page_cold_ms"]))
    print(line("/api/threads/?tag&tag (ms)", results["api_threads_ms"]))
    print(line("/threads/ unfiltered page (ms)", results["unfiltered_threads_ms"]))
    print(line("overview / (ms)", results["overview_ms"], TARGETS["overview_ms"]))
    print(line("overview /?range=all (ms)", results["overview_all_ms"], TARGETS["overview_ms"]))
    if "saver_list_ms" in results:
        print(line("PostgresSaver.list(limit=100) (ms)", results["saver_list_ms"]))
        print(f"  {'  rows returned':34} {results['saver_list_rows']:10d}")
        print(line("ratio list / tag query", results["ratio"], TARGETS["ratio"], better="higher"))
        print(line("ratio list / tag query via the ORM", results["orm_ratio"]))
        print(line("ratio list / tag page", results["page_ratio"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--console-url", help="the console DB holding the mirror (PostgreSQL)")
    parser.add_argument("--source-url", help="the LangGraph PostgreSQL database mirrored in it (for the baseline)")
    parser.add_argument("--tag", action="append", help="key:value to filter by (twice); default: the most used pair")
    parser.add_argument("--generate", action="store_true", help="build a throwaway source and mirror first")
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="server on which --generate creates its two databases")
    parser.add_argument("--prefix", default="dashbench", help="database name prefix for --generate")
    parser.add_argument("--threads", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--replace", action="store_true", help="with --generate: drop existing bench databases first")
    parser.add_argument("--drop", action="store_true", help="with --generate: drop both databases at the end")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per figure (median reported)")
    parser.add_argument("--add-indexes", action="store_true",
                        help="create the recommended indexes and statistics in the console DB first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    if args.generate:
        started = time.perf_counter()
        args.source_url = create_database(args.server_url, f"{args.prefix}_source", args.replace)
        args.console_url = create_database(args.server_url, f"{args.prefix}_console", args.replace)
        generate_source(args.source_url, args.threads, args.days)
        print(f"source generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    elif not args.console_url:
        parser.error("give --console-url (and --source-url), or --generate")

    os.environ["DATABASE_URL"] = args.console_url
    os.environ.setdefault("CONSOLE_VAR_DIR", tempfile.mkdtemp(prefix="bench-pages-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    if args.generate:
        from django.conf import settings

        started = time.perf_counter()
        generate_mirror(args.source_url, args.threads, args.days, settings.CHECKPOINT_SIZE_LIMIT)
        print(f"mirror generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    from checkpoints.tags import split_tag

    if args.add_indexes:
        from django.db import connection

        add_indexes(connection)

    pairs = [split_tag(t, ":") for t in args.tag] if args.tag else None
    try:
        results = measure(args.source_url, pairs, args.runs)
    finally:
        if args.generate and args.drop:
            from django.db import connections

            connections.close_all()
            with admin_connect(args.server_url) as conn:
                for name in (f"{args.prefix}_source", f"{args.prefix}_console"):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if args.json:
        print(json.dumps(results, default=str))
    else:
        report(results)


if __name__ == "__main__":
    main()
