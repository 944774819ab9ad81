"""Change-capture benchmark (issue 15): incremental sync cost at two source sizes, both modes.

    python3 bench/bench_capture.py [--server URL] [--sizes 1000000,5000000] [--append 1000] [--repeat 3] [--reuse]

`--server` is a PostgreSQL server with wal_level=logical that may create databases (default: start
one from the `pgserver` wheel under --data-dir, as the tests do); it holds the sources alone.
`--console-server` holds the console's database, as in a deployment (the console's own writes would
otherwise fill the source server's WAL, which a slot must read through). For each size, in its own
process:
1. `bench/generate.py` fills a fresh source database with that many checkpoints (real LangGraph rows);
2. a fresh console database mirrors it with a source in capture mode `logical` (the first sync
   creates the slot and scans once);
3. timed, each the median of --repeat runs: a no-change sync, and a sync after `append()` adds
   --append checkpoints, in mode `logical`; then the same two in mode `scan` on the same source
   and mirror (the baseline, measured in the same run).
Targets: an incremental sync of 1,000 new checkpoints in logical mode takes the same time at both
sizes and at most 0.3 s; a no-change sync at most 50 ms. The reference check the storage app runs
after a sync that changed something (another job: HEAD requests for the source's newest and stalest
references) is timed apart and reported beside the syncs.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def database_url(server, name):
    return urlsplit(server)._replace(path="/" + name).geturl()


def recreate(server, name):
    with psycopg.connect(server, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots s JOIN pg_database d ON d.datname = s.database"
            " WHERE d.datname = %s", (name,)
        ):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(server, name)


def database_exists(server, name):
    with psycopg.connect(server, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def start_server(data_dir):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import pg_ctl
    if not os.path.exists(os.path.join(data_dir, "PG_VERSION")):  # a new cluster; pgserver then tightens it
        os.makedirs(data_dir, exist_ok=True)
        os.chmod(data_dir, 0o777)
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    server.psql("ALTER SYSTEM SET wal_level = 'logical';")
    server.psql("ALTER SYSTEM SET shared_buffers = '512MB';")
    server.psql("ALTER SYSTEM SET max_wal_size = '8GB';")
    pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user, timeout=120)
    return server.get_uri()


_after_sync = []  # what sync_finished carried: the reference check is timed apart


def _hold_check(sender, source, result, threads=None, **kwargs):
    _after_sync.append((source, threads))


def separate_reference_check():
    """The storage app checks a source's newest and stalest references (up to AFTER_SYNC_LIMIT) after
    every sync that changed something: another job, whose cost follows the source's references, not
    the sync's changes. Timed apart, as bench_s3_sync does; both figures are reported."""
    from checkpoints.sync import sync_finished

    assert sync_finished.disconnect(dispatch_uid="storage.check_after_sync")
    sync_finished.connect(_hold_check, dispatch_uid="bench.hold_check")


def median_time(fn, repeat, checks=None):
    """Median seconds of `repeat` syncs; `checks` (a list) gets the seconds of each reference check after one."""
    from storage.refcheck import AFTER_SYNC_LIMIT, run_reference_check

    times = []
    for _ in range(repeat):
        prepare = fn()
        _after_sync.clear()
        started = time.perf_counter()
        result = prepare()
        times.append(time.perf_counter() - started)
        assert result["error"] is None, result["error"]
        started = time.perf_counter()
        for source, threads in _after_sync:
            run_reference_check(source=source, limit=AFTER_SYNC_LIMIT, origin="sync", threads=threads)
        if checks is not None:
            checks.append(time.perf_counter() - started)
    return statistics.median(times), times


def one_size(server, console_server, size, append_n, repeat, reuse=False):
    from generate import append, generate

    source_name, console_name = f"bench_capture_src_{size}", f"bench_capture_console_{size}"
    reusing = reuse and database_exists(server, source_name) and database_exists(console_server, console_name)
    if reusing:  # a source and mirror left by an earlier run (with its appends): no generation, no initial sync
        source_url, console_url, generated = database_url(server, source_name), database_url(console_server, console_name), None
    else:
        source_url = recreate(server, source_name)
        console_url = recreate(console_server, console_name)
        started = time.perf_counter()
        generate(source_url, size // 10, size, seed=1, log=lambda msg: None)
        generated = time.perf_counter() - started

    os.environ["DATABASE_URL"] = console_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from checkpoints.models import Source
    from checkpoints.sync import sync_source

    call_command("migrate", interactive=False, verbosity=0)
    separate_reference_check()
    initial = None
    if reusing:
        source = Source.objects.get(name="bench")
    else:
        source = Source.objects.create(name="bench", url=source_url, kind="postgres", capture="logical")
        started = time.perf_counter()
        assert sync_source(source)["error"] is None
        initial = time.perf_counter() - started

    def no_change():
        return lambda: sync_source(source)

    def appended():
        append(source_url, append_n, log=lambda msg: None)
        return lambda: sync_source(source)

    figures = {"size": size, "generate_s": generated, "initial_sync_s": initial}
    for mode in ("logical", "scan"):
        source.capture = mode
        source.save(update_fields=["capture"])
        assert sync_source(source)["error"] is None  # settle the mode's bookkeeping
        figures[f"{mode}_no_change"] = median_time(no_change, repeat + 2)
        checks = []
        figures[f"{mode}_append"] = median_time(appended, repeat, checks)
        figures[f"{mode}_append_refcheck"] = [statistics.median(checks), checks]
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="wal_level=logical server URL (default: start one with pgserver)")
    parser.add_argument("--console-server", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="server for the console's database (default: the local PostgreSQL)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "bench-capture-pg"))
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--append", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reuse", action="store_true",
                        help="keep a size's source and mirror from an earlier run when both exist (skips generation and the initial sync)")
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_size:
        print(json.dumps(one_size(args.server, args.console_server, args.one_size, args.append, args.repeat, args.reuse)))
        return
    server = args.server or start_server(args.data_dir)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--server", server, "--console-server", args.console_server,
             "--one-size", str(size), "--append", str(args.append),
             "--repeat", str(args.repeat), *(["--reuse"] if args.reuse else [])],
            check=True, capture_output=True, text=True,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(figures), flush=True)
        rows.append(figures)

    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d}")
    print(f"| source | logical: {args.append:,} new | logical: no change | scan: {args.append:,} new | scan: no change "
          f"| reference check after {args.append:,} new (logical / scan) |")
    print("|---|---|---|---|---|---|")
    for f in rows:
        cells = [f"{f[k][0]:.3f} s" for k in ("logical_append", "logical_no_change", "scan_append", "scan_no_change")]
        cells.append(f"{f['logical_append_refcheck'][0]:.3f} / {f['scan_append_refcheck'][0]:.3f} s")
        print(f"| {f['size']:,} checkpoints | " + " | ".join(cells) + " |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"logical, {args.append:,} new: {b['logical_append'][0] / a['logical_append'][0]:.2f}x from "
              f"{a['size']:,} to {b['size']:,}; scan: {b['scan_append'][0] / a['scan_append'][0]:.2f}x")


if __name__ == "__main__":
    main()
