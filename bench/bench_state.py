"""The checkpoint page of a checkpoint holding a 5 MB offloaded value: first view vs cached view.

Target (issue 14): the cached view >= 10x faster than the first, measured in the same run.

A real graph writes a 5 MB string through our offload() wrapper (gzip, into a
bucket on moto's S3 server on loopback) into a PostgresSaver database
(--source sqlite: SqliteSaver; --source s3: S3Saver, in another bucket of the
same moto server); the real sync mirrors it into a throwaway console
database (SQLite under a temp dir). Then the page is fetched as an operator
through the full Django stack (test client, in process):

  * first view: the cache emptied before the fetch, so the page reads the
    checkpoint from the source, decodes it, HEADs the object, streams its
    5 MB through gunzip and sha256, keeps the first PREVIEW_LIMIT bytes and
    renders everything;
  * cached view: the next fetch. Decoded values, previews and the rendered
    values and content come from the cache (the default local-memory cache;
    --cache-url for Redis); the page still reads the pending writes from the
    source (a kept connection for PostgreSQL, a listing for S3), the
    mirror's rows (lineage, references) and renders the rest.

The two alternate (first, cached, first, cached, ...) so that both see the
same machine: on a shared VM whose load moves, measuring all first views
and then all cached views compared two different machines. Before each
timed fetch the garbage is collected and the process idles 0.1 s (--settle), so that a
view does not pay for what the one before left behind (5 MB of buffers, the
in-process moto server still sending): a real second view comes later.

    python3 bench/bench_state.py [--source postgres|sqlite|s3] [--server-url postgresql://postgres@127.0.0.1:5432/postgres]
                                 [--cache-url redis://127.0.0.1:6379/9] [--s3-server moto|seaweed] [--runs 15] [--settle 0.1]
                                 [--json] [--profile]
"""

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VALUE_BYTES = 5_000_000
TARGET_RATIO = 10.0


def write_graph(saver, store, text):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from storage.offload import offload

    class State(TypedDict, total=False):
        report: str
        step: int

    g = StateGraph(State)
    g.add_node("write", lambda s: {"report": text, "step": 1})
    g.add_edge(START, "write")
    g.add_edge("write", END)
    graph = g.compile(checkpointer=offload(saver, store=store, compression="gzip"))
    graph.invoke({"step": 0}, {"configurable": {"thread_id": "bench-5mb"}})


def clock(fn):
    """(wall ms, this process's CPU ms) of fn(): CPU time moves less with the machine's load."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def summary(times):
    return statistics.median(times), min(times), max(times)


def alternating(fn, runs, clear, settle=0.1):
    """(first views, cached views): each (median, min, max) wall ms and the median CPU ms.

    Each round empties the cache, then fetches twice. Before each timed
    fetch the garbage is collected and the process idles `settle` seconds:
    no garbage and no thread (moto's server) left over from the fetch before.
    """
    first, cached = [], []
    for _ in range(runs):
        clear()
        for times in (first, cached):
            gc.collect()
            time.sleep(settle)
            times.append(clock(fn))
    return tuple((*summary([w for w, _ in t]), statistics.median([c for _, c in t])) for t in (first, cached))


def _area(filename):
    for marker, name in (("django/db/", "django.db (ORM)"), ("django/template/", "django.template"),
                         ("django/contrib/auth", "django.contrib.auth"), ("django/contrib/sessions", "sessions"),
                         ("django/core/cache", "django cache"), ("django/", "django (other)"),
                         ("psycopg", "psycopg"), ("redis", "redis"), ("botocore", "botocore"),
                         ("/dashboard/", "console: dashboard"), ("/checkpoints/", "console: checkpoints"),
                         ("/storage/", "console: storage"), ("sqlite3", "sqlite3")):
        if marker in filename:
            return name
    return "other" if filename != "~" else "builtins"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["postgres", "sqlite", "s3"], default="postgres")
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server on which a throwaway source database is created (and dropped)")
    parser.add_argument("--cache-url", default="", help="CACHE_URL (default: the local-memory cache)")
    parser.add_argument("--runs", type=int, default=15, help="timed fetches per figure (median reported)")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds idle before each timed fetch")
    parser.add_argument("--s3-server", choices=["moto", "seaweed"], default="moto",
                        help="the S3 server of the offload bucket (and of the --source s3 store): moto's server in "
                             "this process (closes each connection after one request), or SeaweedFS's `weed mini`")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print where a cached view spends its time")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the VM is shared: say how busy it was

    if args.s3_server == "seaweed":
        from tests.seaweed import SeaweedS3

        moto = SeaweedS3()  # another process: its work is not this process's, and it keeps connections open
    else:
        from tests.s3server import MotoS3

        moto = MotoS3()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    moto.client().create_bucket(Bucket=bucket)
    for key, value in moto.env(bucket, prefix="offload/").items():
        os.environ[key] = str(value).lower() if isinstance(value, bool) else value
    var = tempfile.mkdtemp(prefix="bench-state-")
    os.environ["CONSOLE_VAR_DIR"] = var
    os.environ.pop("DATABASE_URL", None)
    os.environ["CACHE_URL"] = args.cache_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

    db_name, source_url = None, None
    if args.source == "postgres":
        import psycopg

        from checkpoints.dburl import parse_database_url  # noqa: F401  (the URL helpers below)

        db_name = f"bench_state_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        source_url = args.server_url.rsplit("/", 1)[0] + "/" + db_name
    elif args.source == "sqlite":
        source_url = f"sqlite:///{var}/checkpoints.sqlite"
    else:
        store_bucket = f"bench-src-{uuid.uuid4().hex[:8]}"
        moto.client().create_bucket(Bucket=store_bucket)
        source_url = f"s3://{store_bucket}/agents/"

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.core.cache import cache
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment, teardown_test_environment

    from checkpoints.sources.registry import kind_of
    from checkpoints.models import Checkpoint, Source, Thread
    from checkpoints.sync import sync_source
    from storage.offload import S3Store

    setup_test_environment()  # the test client's response.context
    call_command("migrate", verbosity=0)
    store = S3Store(bucket, "offload/", endpoint_url=moto.endpoint_url, region=moto.region, path_style=True,
                    access_key=moto.access_key, secret_key=moto.secret_key)
    text = os.urandom(VALUE_BYTES // 2).hex()  # 5 MB, incompressible as text goes: gzip keeps ~half
    try:
        if args.source == "postgres":
            from langgraph.checkpoint.postgres import PostgresSaver

            with PostgresSaver.from_conn_string(source_url) as saver:
                saver.setup()
                write_graph(saver, store, text)
        elif args.source == "sqlite":
            import sqlite3

            from langgraph.checkpoint.sqlite import SqliteSaver

            conn = sqlite3.connect(source_url.removeprefix("sqlite:///"), check_same_thread=False)
            write_graph(SqliteSaver(conn), store, text)
            conn.close()
        else:
            from storage.s3saver import S3Saver

            saver = S3Saver(store_bucket, "agents/", client=moto.client(), metrics=False)
            write_graph(saver, store, text)
            saver.close()
        source = Source.objects.create(name="bench", url=source_url, kind=kind_of(source_url))
        result = sync_source(source, full=True)
        assert result["error"] is None, result
        thread = Thread.objects.get(thread_id="bench-5mb")
        cp = Checkpoint.objects.get(thread=thread, checkpoint_ns="", checkpoint_id=thread.latest_checkpoint_id)
        user = User.objects.create_user("bench-operator")
        user.groups.add(Group.objects.get(name="operator"))
        client = Client()
        client.force_login(user)
        path = f"/checkpoints/{cp.pk}/"

        def fetch():
            response = client.get(path)
            assert response.status_code == 200
            return response

        cache.clear()
        check = fetch()
        (row,) = check.context["content"]
        p = row["preview"]
        assert (p.status, p.verified, p.size) == ("text", True, VALUE_BYTES), (p.status, p.note)
        assert p.shown == text[: len(p.shown)]
        cached_check = fetch()
        assert cached_check.content.count(text[:1000].encode()) == check.content.count(text[:1000].encode()) == 1
        # The test environment copies every template's context for response.context: a cost of
        # the test client, not of the server. Timed without it.
        teardown_test_environment()
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        fetch()  # warm the imports, the store's client, the template
        first, cached = alternating(fetch, args.runs, cache.clear, args.settle)

        # The console's floor for any page: middleware, session, user and permission checks, and
        # a response without a template (thread_by_query without an id redirects at once).
        def floor_fetch():
            assert client.get(f"/threads/{source.name}/").status_code == 302

        _, floor = alternating(floor_fetch, args.runs, lambda: None, args.settle)

        # The source's and the store's part of the page: the values (and the fresh read of the
        # pending writes) and the preview, without the mirror's queries and the template.
        from dashboard import snapshot_cache
        from storage import previews

        target = row["target"]
        etag = cp.reference_uses.select_related("reference").get(reference__uri=target.uri).reference.etag

        def work():
            snapshot_cache.read_values_cached(source, cp, limit=settings.DISPLAY_DECODE_LIMIT)
            p = previews.preview(target, limit=settings.PREVIEW_LIMIT, cache=snapshot_cache.PREVIEWS, known_etag=etag)
            assert p.status == "text"

        cp.thread = thread
        work_first, work_cached = alternating(work, args.runs, cache.clear, args.settle)
        if args.profile:
            import cProfile
            import pstats

            fetch()  # the cache was emptied above: profile cached views only
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [fetch() for _ in range(5)])
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats(os.environ.get("SORT", "cumulative")).print_stats(int(os.environ.get("NSTAT", "35")))
            # Where the interpreter's time goes, by module area (a view's own time, summed).
            areas = {}
            for (filename, _, _), (_, calls, tottime, _, _) in stats.stats.items():
                area = _area(filename)
                n, t = areas.get(area, (0, 0.0))
                areas[area] = (n + calls, t + tottime)
            for area, (n, t) in sorted(areas.items(), key=lambda kv: -kv[1][1]):
                print(f"{area:<28} {n / 5:8.0f} calls/view {t / 5 * 1000:7.2f} ms/view (profiled)", file=sys.stderr)
    finally:
        if db_name:
            import psycopg
            from django.db import connections

            connections.close_all()
            with psycopg.connect(args.server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        moto.stop()

    ratio = first[0] / cached[0]
    out = {
        "source": args.source, "cache": args.cache_url or "local memory", "s3_server": args.s3_server, "runs": args.runs,
        "value_bytes": VALUE_BYTES, "first_view_ms": round(first[0], 1), "first_view_min_max_ms": [round(x, 1) for x in first[1:]],
        "cached_view_ms": round(cached[0], 1), "cached_view_min_max_ms": [round(x, 1) for x in cached[1:]],
        "ratio": round(ratio, 1), "target_ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO,
        "values_and_preview_first_ms": round(work_first[0], 1), "values_and_preview_cached_ms": round(work_cached[0], 1),
        "values_and_preview_ratio": round(work_first[0] / work_cached[0], 1),
        # In-process CPU only: the source's database server is another process (the first view's
        # moto server is a thread of this one). A check on the wall figures, not a replacement.
        "cpu_first_ms": round(first[3], 1), "cpu_cached_ms": round(cached[3], 1), "cpu_ratio": round(first[3] / cached[3], 1),
        "floor_ms": round(floor[0], 1), "floor_cpu_ms": round(floor[3], 1),
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"checkpoint page, 5 MB offloaded value ({args.source} source, cache: {out['cache']}, median of {args.runs}, "
              f"load average {out['load_average_1min'][0]} -> {out['load_average_1min'][1]})")
        print(f"  first view   {first[0]:8.1f} ms  (min {first[1]:.1f}, max {first[2]:.1f})")
        print(f"  cached view  {cached[0]:8.1f} ms  (min {cached[1]:.1f}, max {cached[2]:.1f})")
        print(f"  ratio        {ratio:8.1f}x  (target >= {TARGET_RATIO:.0f}x: {'met' if out['met'] else 'MISSED'})")
        print(f"  this process's CPU: first {first[3]:.1f} ms, cached {cached[3]:.1f} ms, {out['cpu_ratio']}x")
        print(f"  floor of any logged-in request (no template): {floor[0]:.1f} ms, CPU {floor[3]:.1f} ms")
        print(f"values + writes + preview alone (no mirror queries, no template): first {work_first[0]:.1f} ms, "
              f"cached {work_cached[0]:.1f} ms, {work_first[0] / work_cached[0]:.1f}x")


if __name__ == "__main__":
    main()
