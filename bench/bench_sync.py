"""Sync benchmark (issue 2): initial and incremental sync of a large source.

    python3 bench/bench_sync.py --source postgresql://postgres@127.0.0.1:5432/bench_src \
        --console postgresql://postgres@127.0.0.1:5432/bench_console [--append 1000] [--keep-console]

Figures, all measured in the same run:
- baseline: `COPY (SELECT <the columns the sync reads>) TO STDOUT` of the whole source, streamed
  and discarded: the cost of just getting the data out of PostgreSQL;
- initial sync of the whole source into an empty console database (checkpoints/s, and the ratio
  to the baseline; target >= 50,000/s and <= 5x), and for scale the time to COPY the mirror's
  checkpoint rows alone, already formatted, into an empty copy of their table;
- incremental sync after `bench/generate.py`'s append() adds N checkpoints (target <= 0.5 s for 1,000),
  and, run alone right after it, the part of it that any exact incremental sync pays on the source:
  the change scan by xmin since the previous sync and the row counts that reveal deletions;
- a no-change incremental sync.
The source is only read, except for the append step.
"""

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# The SELECT lists of checkpoints/sources/postgres.py, over whole tables.
BASELINE_QUERIES = [
    """SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
              octet_length(checkpoint::text) + octet_length(metadata::text),
              metadata, checkpoint->'channel_versions', checkpoint->>'ts',
              CASE WHEN (checkpoint->'channel_values')::text ~ '(s3|minio|file)://'
                   THEN checkpoint->'channel_values' END, xmin
       FROM checkpoints""",
    """SELECT thread_id, checkpoint_ns, channel, version, type, coalesce(octet_length(blob), 0),
              CASE WHEN position('\\x73333a2f2f'::bytea in blob) > 0 OR type LIKE '%+%' THEN blob END, xmin
       FROM checkpoint_blobs""",
    """SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type,
              coalesce(octet_length(blob), 0),
              CASE WHEN position('\\x73333a2f2f'::bytea in blob) > 0 OR type LIKE '%+%' THEN blob END, xmin
       FROM checkpoint_writes""",
]


def copy_baseline(url) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for query in BASELINE_QUERIES:
            with cur.copy(f"COPY ({query}) TO STDOUT") as copy:
                for block in copy:
                    size += len(block)
    return time.perf_counter() - started, size


def source_scans(url, since) -> float:
    """Seconds of the reader's change scan since `since` and its row counts, run alone."""
    from checkpoints.sources import open_reader

    with open_reader(url) as reader:
        started = time.perf_counter()
        reader.changed_thread_ids(since, reader.watermark())
        reader.totals()
        return time.perf_counter() - started


def mirror_load_floor(url) -> float:
    """Seconds to COPY the mirror's checkpoint rows, already formatted, into an empty copy of their table.

    The least any sync spends writing those rows; the scratch table is dropped.
    """
    import io

    with psycopg.connect(url) as conn:
        buffer = io.BytesIO()
        with conn.cursor().copy("COPY checkpoints_checkpoint TO STDOUT") as copy:
            for block in copy:
                buffer.write(block)
        conn.execute("CREATE TABLE bench_load_floor (LIKE checkpoints_checkpoint INCLUDING ALL)")
        conn.commit()
        try:
            conn.execute("SET synchronous_commit TO OFF")
            started = time.perf_counter()
            with conn.cursor().copy("COPY bench_load_floor FROM STDIN") as copy:
                copy.write(buffer.getbuffer())
            conn.commit()
            return time.perf_counter() - started
        finally:
            conn.execute("DROP TABLE bench_load_floor")
            conn.commit()


def recreate_database(url):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="PostgreSQL URL of a LangGraph source (bench/generate.py)")
    parser.add_argument("--console", required=True, help="PostgreSQL URL for the console's own database (recreated)")
    parser.add_argument("--append", type=int, default=1000, help="checkpoints appended before the incremental sync")
    parser.add_argument("--reuse-console", action="store_true", help="skip the initial sync, reuse the mirror")
    args = parser.parse_args()

    if not args.reuse_console:
        recreate_database(args.console)
    os.environ["DATABASE_URL"] = args.console
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from checkpoints.models import Source
    from checkpoints.sync import sync_source

    call_command("migrate", interactive=False, verbosity=0)
    with psycopg.connect(args.source) as conn:
        (checkpoints,) = conn.execute("SELECT count(*) FROM checkpoints").fetchone()
        (threads,) = conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()
    print(f"source: {checkpoints:,} checkpoints in {threads:,} threads")

    lines = []
    if not args.reuse_console:
        baseline, size = copy_baseline(args.source)
        print(f"baseline COPY of the columns the sync reads: {baseline:.2f} s ({size / 1e6:.0f} MB)")
        source = Source.objects.create(name="bench", url=args.source, kind="postgres")
        started = time.perf_counter()
        result = sync_source(source, full=True)
        initial = time.perf_counter() - started
        assert result["error"] is None, result["error"]
        rate = result["added"] / initial
        print(f"initial sync: {initial:.2f} s, {rate:,.0f} checkpoints/s, {initial / baseline:.2f}x the COPY baseline")
        lines.append(f"| initial sync, {checkpoints:,} checkpoints | {initial:.2f} s = {rate:,.0f} checkpoints/s | "
                     f"COPY baseline {baseline:.2f} s: **{initial / baseline:.2f}x** |")
        load = mirror_load_floor(args.console)
        print(f"  for scale: COPY of the mirror's {result['added']:,} checkpoint rows alone into an empty copy of "
              f"their table (same indexes): {load:.2f} s; baseline + that = {baseline + load:.2f} s "
              f"= {result['added'] / (baseline + load):,.0f} checkpoints/s before any other work")
    source = Source.objects.get(name="bench")

    started = time.perf_counter()
    result = sync_source(source)
    idle = time.perf_counter() - started
    print(f"incremental sync, nothing new: {idle:.3f} s")

    if args.append:
        from generate import append

        source.refresh_from_db()
        previous = source.sync_state["watermark"]
        append(args.source, args.append)
        started = time.perf_counter()
        result = sync_source(source)
        incremental = time.perf_counter() - started
        assert result["error"] is None, result["error"]
        print(f"incremental sync of {result['added']:,} new checkpoints (+{result['updated']} updated): {incremental:.3f} s")
        scans = source_scans(args.source, previous)
        print(f"  of which any exact incremental sync pays on the source: {scans:.3f} s "
              "(the xmin change scan of checkpoints and writes, and the row counts that reveal deletions)")
        lines.append(f"| incremental sync, {result['added']:,} new on a {checkpoints:,} mirror | "
                     f"**{incremental:.3f} s** | no-change sync {idle:.3f} s; the source's change scan and "
                     f"counts alone {scans:.3f} s |")
    print()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
