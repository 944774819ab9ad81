"""Prune benchmark (issue 5): prune ~500,000 checkpoints, target >= 10,000 checkpoints/s.

    python3 bench/bench_prune.py [--server postgresql://postgres@127.0.0.1:5432/postgres]
        [--threads 40000] [--checkpoints 600000] [--reuse DBNAME] [--keep]

The source is built by bench/generate.py (real LangGraph rows replicated into
many threads, times spread over 120 days). Two copies are made of it
(CREATE DATABASE ... TEMPLATE) and each is pruned to the latest checkpoint of
every thread, measured in the same run:

- ours: `checkpoints.prune.prune()` with --older-than 1s --keep-last 1 (what
  `prune_checkpoints --older-than 1s` does; threads waiting at an interrupt are
  skipped, so it removes slightly fewer rows);
- baseline: LangGraph's own `PostgresSaver.prune(thread_ids, strategy="keep_latest")`
  on the other copy, over the same threads.

Both rates count checkpoint rows removed per second of wall time. Afterwards a
sample of threads is loaded from both copies through PostgresSaver and their
latest states compared. The copies are dropped at the end; the generated
source too unless --keep (pass it back with --reuse to skip generating).
"""

import argparse
import os
import platform
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def url_for(server, name):
    return urlsplit(server)._replace(path="/" + name).geturl()


def counts(url):
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")}


def copy_database(server, source, target):
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        # A template must have no other sessions.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (source,))
        conn.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')
    with psycopg.connect(url_for(server, target), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def drop_database(server, name):
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def baseline_keep_latest(url, thread_ids):
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        started = time.perf_counter()
        # In batches: one failing thread (there are none here) would stop a whole batch.
        for i in range(0, len(thread_ids), 1000):
            saver.prune(thread_ids[i:i + 1000], strategy="keep_latest")
        return time.perf_counter() - started


def latest_states(url, thread_ids):
    from langgraph.checkpoint.postgres import PostgresSaver

    out = {}
    with PostgresSaver.from_conn_string(url) as saver:
        for tid in thread_ids:
            tup = saver.get_tuple({"configurable": {"thread_id": tid}})
            out[tid] = None if tup is None else (tup.checkpoint["id"], tup.checkpoint["channel_values"])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server URL (any database; the bench creates its own)")
    parser.add_argument("--threads", type=int, default=40_000)
    parser.add_argument("--checkpoints", type=int, default=600_000)
    parser.add_argument("--reuse", metavar="DBNAME", help="a database generate.py filled before (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the generated source database")
    parser.add_argument("--workers", type=int, help="connections the prune uses (default: its own)")
    args = parser.parse_args()

    if "DATABASE_URL" not in os.environ:
        # The prune marks each thread (PruneMark) in the console's database before
        # deleting it: a throwaway SQLite console, migrated here, unless one is given.
        import tempfile

        os.environ["CONSOLE_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-prune-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import override_settings

    call_command("migrate", interactive=False, verbosity=0)

    from checkpoints import prune as pruning
    from checkpoints.models import Source
    from checkpoints.sources.postgres.maintenance import PostgresMaintenance

    tag = uuid.uuid4().hex[:8]
    source_db = args.reuse or f"bench_prune_src_{tag}"
    ours_db, theirs_db = f"bench_prune_ours_{tag}", f"bench_prune_base_{tag}"
    try:
        if not args.reuse:
            from generate import generate

            print(f"generating {args.checkpoints:,} checkpoints in {args.threads:,} threads ...", flush=True)
            generate(url_for(args.server, source_db), args.threads, args.checkpoints, seed=1,
                     log=lambda line: None)
        copy_database(args.server, source_db, ours_db)
        copy_database(args.server, source_db, theirs_db)
        ours, theirs = url_for(args.server, ours_db), url_for(args.server, theirs_db)
        before = counts(ours)
        with psycopg.connect(ours) as conn:
            thread_ids = [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints ORDER BY 1")]
        print(f"source: {before['checkpoints']:,} checkpoints, {before['checkpoint_blobs']:,} blob rows, "
              f"{before['checkpoint_writes']:,} write rows in {len(thread_ids):,} threads", flush=True)

        # Ours.
        if args.workers:
            PostgresMaintenance.workers = args.workers
        source, _ = Source.objects.update_or_create(name="bench", defaults={"url": ours, "kind": "postgres"})
        policy = pruning.PrunePolicy(timedelta(seconds=1), keep_last=1)
        with override_settings(PRUNE_ACTIVE_WINDOW=timedelta(0)):
            started = time.perf_counter()
            result = pruning.prune(source, policy, dry_run=False)
            ours_seconds = time.perf_counter() - started
        after = counts(ours)
        removed = before["checkpoints"] - after["checkpoints"]
        assert removed == result["checkpoints"], (removed, result["checkpoints"])
        assert not result["errors"], result["errors"][:3]
        ours_rate = removed / ours_seconds
        skipped = {}
        for s in result["skipped"]:
            skipped[s["reason"]] = skipped.get(s["reason"], 0) + 1
        print(f"ours: removed {removed:,} checkpoints, {result['blobs']:,} blob rows, {result['writes']:,} write rows "
              f"from {result['threads']:,} threads in {ours_seconds:.2f} s = {ours_rate:,.0f} checkpoints/s "
              f"(skipped {skipped}, {result['retries']} retries, {PostgresMaintenance.workers} connections)", flush=True)

        # Baseline: LangGraph's keep_latest on the copy.
        base_seconds = baseline_keep_latest(theirs, thread_ids)
        base_removed = before["checkpoints"] - counts(theirs)["checkpoints"]
        base_rate = base_removed / base_seconds
        print(f"baseline PostgresSaver.prune(keep_latest): removed {base_removed:,} checkpoints in "
              f"{base_seconds:.2f} s = {base_rate:,.0f} checkpoints/s", flush=True)

        # Same latest state in both copies.
        sample = random.Random(1).sample(thread_ids, min(300, len(thread_ids)))
        a, b = latest_states(ours, sample), latest_states(theirs, sample)
        differ = [t for t in sample if a[t] != b[t]]
        print(f"checked {len(sample)} threads through PostgresSaver: {len(differ)} differ", flush=True)

        print()
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
              f"{datetime.now(UTC):%Y-%m-%d}")
        print(f"| prune {removed:,} checkpoints (keep last 1, {len(thread_ids):,} threads) | {ours_seconds:.1f} s = "
              f"**{ours_rate:,.0f} checkpoints/s** | PostgresSaver.prune keep_latest {base_seconds:.1f} s = "
              f"{base_rate:,.0f}/s: **{ours_rate / base_rate:.2f}x** |")
        return 1 if differ else 0
    finally:
        drop_database(args.server, ours_db)
        drop_database(args.server, theirs_db)
        if not args.reuse and not args.keep:
            drop_database(args.server, source_db)


if __name__ == "__main__":
    sys.exit(main())
