"""Console sync of an S3 checkpoint store (issue 13, console targets), on SeaweedFS or moto.

    python3 bench/bench_s3_sync.py --console postgresql://postgres@127.0.0.1:5432/bench_s3_console \
        [--server seaweed|moto] [--small 10000] [--large 100000] [--new 1000] [--rounds 3] [--writers 32] [--processes 2] [--workers N]

Two stores, `--small` and `--large` checkpoints, are written under their own prefixes. Figures, all
measured in the same run:
- baseline: a bare listing of the large store's prefix (ListObjectsV2, 1000 keys a page, keys
  discarded, a default botocore client), timed just before its initial sync; and the same listing
  with dates left unparsed (as the console's reader lists: the fastest listing from Python);
- initial sync of the large store into an empty console database, and its ratio to the baseline
  (target <= 3x);
- incremental sync after `--new` checkpoints are added, on the small and on the large store
  (target: the same within noise), `--rounds` times, small and large alternating; medians. The
  reference check the storage app runs after every sync (HEADs of up to 1,000 of the source's
  references: its cost follows the references the source holds, not the changes) is timed apart.

`--server seaweed` (default) runs SeaweedFS's `weed mini` (tests/seaweed.py: signatures enforced,
a Go server that serves requests in parallel); `--server moto` runs moto's S3 server (one Python
process). The stores are written by S3Saver.put/put_writes (threads of 10 checkpoints, one write
each, a reference in one value in ten) from `--processes` processes of `--writers` threads, not by graphs: graphs
would take hours to write these counts on this machine.

Reusing stores (the 100,000 store takes ~20 minutes of both cores to write, untimed):
`--store-dir DIR` keeps SeaweedFS's data (and its ports) in DIR and remembers in DIR/state.json
what was written and which console database holds the initial syncs; a later run with the same
DIR and `--console` writes nothing and syncs nothing initially, and only times the incremental
rounds (the stores keep the checkpoints earlier rounds added: every figure names its store's size).
`--prepare-only` writes the stores and runs the initial syncs (timed, but outside any lock), then
stops; a reusing run first syncs both stores once, untimed (what an interrupted run left). `--lock
PATH` takes an exclusive flock on PATH around each timed part only (listings, syncs, reference
checks), never around the untimed writing; to keep other benchmarks' figures clean of the rounds'
writing (1,000 checkpoints, both cores for ~10 s), run the reusing run under `flock PATH` instead. `--no-baseline` skips the bare listings.
`--profile DIR` writes a cProfile of every incremental sync there (slower: not for figures).

The sync's overlap (entries re-read from 5 minutes before the watermark, for late commits) is
set to 0 here: the stores were written seconds before, and the overlap's cost follows the write
rate of the last 5 minutes, not the store's size.
"""

import argparse
import contextlib
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THREAD_LEN = 10


class Moto:
    access_key = secret_key = "testing"

    def __init__(self):
        from tests.s3server import free_port

        port = free_port()
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint_url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                import urllib.request

                urllib.request.urlopen(self.endpoint_url, timeout=1)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def start_server(kind, directory=None):
    if kind == "moto":
        assert directory is None, "--store-dir needs --server seaweed"
        return Moto()
    from tests.seaweed import SeaweedS3

    return SeaweedS3(directory)


_lock_path = None


@contextlib.contextmanager
def bench_lock():
    """The shared bench lock (`--lock`), held only while something is timed."""
    if _lock_path is None:
        yield
        return
    with open(_lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def client_for(server, pool=10, raw_timestamps=False):
    from checkpoints.s3client import S3Settings, build_client

    return build_client(S3Settings(endpoint_url=server.endpoint_url, path_style=True, access_key=server.access_key,
                                   secret_key=server.secret_key, max_attempts=5), max_pool_connections=pool,
                        raw_timestamps=raw_timestamps)


def write_store(server, bucket, prefix, count, tag, writers, processes=1):
    """`count` checkpoints in threads of THREAD_LEN, through S3Saver, from `processes` processes of
    `writers` threads each (botocore signs every request in Python: one process saturates a core);
    returns seconds."""
    import multiprocessing

    threads = count // THREAD_LEN
    where = (server.endpoint_url, server.access_key, server.secret_key)
    cuts = [threads * i // processes for i in range(processes + 1)]
    jobs = [(where, bucket, prefix, tag, writers, cuts[i], cuts[i + 1]) for i in range(processes)]
    started = time.perf_counter()
    if processes == 1:
        _write_threads(*jobs[0])
    else:
        # Forked, so nothing is pickled; a child that fails exits non-zero.
        children = [multiprocessing.get_context("fork").Process(target=_write_threads, args=job) for job in jobs]
        for child in children:
            child.start()
        for child in children:
            child.join()
        if any(child.exitcode for child in children):
            raise RuntimeError(f"writing {prefix} failed in a child process")
    return time.perf_counter() - started


def _write_threads(where, bucket, prefix, tag, writers, first, last):
    """Threads `first` to `last` - 1 of a store. Each checkpoint is put with its parent named (ids
    made in advance, in time order), so the checkpoints of one thread need not wait for each other."""
    from types import SimpleNamespace

    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.base.id import uuid6

    from storage.s3saver import S3Saver

    server = SimpleNamespace(endpoint_url=where[0], access_key=where[1], secret_key=where[2])
    saver = S3Saver(bucket, prefix, client=client_for(server, pool=2 * writers + 10), metrics=False, max_workers=writers)
    ids_of = {n: [str(uuid6(clock_seq=step)) for step in range(THREAD_LEN)] for n in range(first, last)}

    def one_checkpoint(i):
        n, step = divmod(i, THREAD_LEN)
        thread = f"{tag}-{n}"
        ids = ids_of[n]
        cfg = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        if step:
            cfg["configurable"]["checkpoint_id"] = ids[step - 1]
        cp = empty_checkpoint()
        cp["id"] = ids[step]
        values = {"messages": [f"message {k} of {thread}" for k in range(step + 1)], "counter": step}
        if step == 0 and n % 10 == 0:
            values["file"] = f"s3://{bucket}/uploads/{thread}.pdf"
        cp["channel_values"] = values
        cp["channel_versions"] = {k: str(step + 1) for k in values}
        cfg = saver.put(cfg, cp, {"source": "loop", "step": step, "tenant": f"t{n % 7}"}, cp["channel_versions"])
        saver.put_writes(cfg, [("messages", [f"write {step}"])], task_id=str(uuid.uuid4()))

    with ThreadPoolExecutor(writers) as pool:
        for _ in pool.map(one_checkpoint, range(first * THREAD_LEN, last * THREAD_LEN), chunksize=64):
            pass
    saver.close()


def bare_listing(client, bucket, prefix):
    started = time.perf_counter()
    keys = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += len(page.get("Contents", []))
    return time.perf_counter() - started, keys


_after_sync = []  # what sync_finished carried, for the reference check timed apart


def _hold_check(sender, source, result, threads=None, **kwargs):
    _after_sync.append(threads)


def separate_reference_check():
    """The storage app checks up to AFTER_SYNC_LIMIT of a source's references (HEAD requests) after
    every sync, even a sync that found nothing: its cost follows the source's references (capped),
    not the sync's changes. The bench times it apart from the sync."""
    from checkpoints.sync import sync_finished

    assert sync_finished.disconnect(dispatch_uid="storage.check_after_sync")
    sync_finished.connect(_hold_check, dispatch_uid="bench.hold_check")


def timed_sync(source, profile=None, locked=True, **kw):
    """(seconds of the sync, result, seconds of the reference check that follows it); the bench
    lock held around both (`locked`); `profile`: a path for a cProfile of the sync proper."""
    from checkpoints.sync import sync_source
    from storage.refcheck import AFTER_SYNC_LIMIT, run_reference_check

    _after_sync.clear()
    with bench_lock() if locked else contextlib.nullcontext():
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        result = sync_source(source, **kw)
        elapsed = time.perf_counter() - started
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        assert result["error"] is None, result
        started = time.perf_counter()
        for threads in _after_sync:
            run_reference_check(source=source, limit=AFTER_SYNC_LIMIT, origin="sync", threads=threads)
        return elapsed, result, time.perf_counter() - started


def load_average():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--console", required=True)
    parser.add_argument("--server", choices=("seaweed", "moto"), default="seaweed")
    parser.add_argument("--small", type=int, default=10000)
    parser.add_argument("--large", type=int, default=100000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, help="the S3 reader's parallel GETs (default: its WORKERS)")
    parser.add_argument("--store-dir", help="keep SeaweedFS's data here; reuse the stores and initial syncs it holds")
    parser.add_argument("--prepare-only", action="store_true", help="write the stores, sync them initially, stop")
    parser.add_argument("--lock", help="flock this file around each timed part only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare listings")
    parser.add_argument("--profile", help="a directory for a cProfile of each incremental sync")
    args = parser.parse_args()
    global _lock_path
    _lock_path = args.lock

    import psycopg

    state_file = Path(args.store_dir) / "state.json" if args.store_dir else None
    state = json.loads(state_file.read_text()) if state_file and state_file.exists() else {}
    reuse = bool(state.get("synced")) and state.get("console") == args.console
    if reuse:
        assert (state["small"], state["large"]) == (args.small, args.large), f"{args.store_dir} holds {state}"
    else:
        name = args.console.rsplit("/", 1)[1]
        with psycopg.connect(args.console.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    server = start_server(args.server, args.store_dir)
    out = {"load": [load_average()]}
    run_tag = datetime.now(UTC).strftime("%H%M%S")  # new threads' names, unique across reusing runs
    try:
        os.environ.update({
            "DATABASE_URL": args.console, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "S3_ENDPOINT_URL": server.endpoint_url, "S3_FORCE_PATH_STYLE": "true", "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "S3_BUCKET_NAME": "bench", "S3_PREFIX": "uploads/",
        })
        import django

        django.setup()
        from django.core.management import call_command

        from checkpoints.models import Source
        from checkpoints.sources.s3 import reader as s3_reader

        call_command("migrate", interactive=False, verbosity=0)
        s3_reader.OVERLAP_SECONDS = 0
        separate_reference_check()
        if args.workers:
            s3_reader.WORKERS = args.workers
        client = client_for(server)
        sizes = {"small": args.small, "large": args.large}
        sources = {}
        if reuse:
            for label in sizes:
                sources[label] = Source.objects.get(name=label)
            print(f"reusing the stores of {args.store_dir} and the console database's initial syncs: {state}",
                  file=sys.stderr, flush=True)
            for label in sizes:  # untimed: what an interrupted run wrote and never synced
                _, result, _ = timed_sync(sources[label], locked=False)
                print(f"catch-up sync of {label}: {result['added']} added", file=sys.stderr, flush=True)
        else:
            if not state.get("written"):
                client.create_bucket(Bucket="bench")
                for label, size in sizes.items():
                    out[f"write_{label}"] = write_store(server, "bench", f"{label}/", size, label, args.writers,
                                                        args.processes)
                    print(f"wrote {size:,} checkpoints in {out[f'write_{label}']:.0f} s", file=sys.stderr, flush=True)
                    state[f"write_{label}"] = out[f"write_{label}"]
                state.update(small=args.small, large=args.large, written=True)
                if state_file:
                    state_file.write_text(json.dumps(state))
            else:
                out.update({k: v for k, v in state.items() if k.startswith("write_")})
            out["load"].append(load_average())

            # Initial sync of the large store vs a bare listing of the same prefix, back to back.
            if not args.no_baseline:
                with bench_lock():
                    out["listing"], out["listed_keys"] = bare_listing(client, "bench", "large/")
                    # The same listing without parsing dates (as the console's reader lists): the fastest Python listing.
                    out["listing_raw"], _ = bare_listing(client_for(server, raw_timestamps=True), "bench", "large/")
            locked = not args.prepare_only
            sources["large"] = Source.objects.create(name="large", url="s3://bench/large/", kind="s3")
            out["initial"], result, _ = timed_sync(sources["large"], locked=locked)
            assert result["checkpoints"] == args.large, result
            sources["small"] = Source.objects.create(name="small", url="s3://bench/small/", kind="s3")
            out["initial_small"], result, _ = timed_sync(sources["small"], locked=locked)
            assert result["checkpoints"] == args.small, result
            out["load"].append(load_average())
            state.update(synced=True, console=args.console, initial=out["initial"], initial_small=out["initial_small"])
            if state_file:
                state_file.write_text(json.dumps(state))
            print(f"initial syncs (lock held: {locked}): {args.large:,} in {out['initial']:.1f} s, "
                  f"{args.small:,} in {out['initial_small']:.1f} s; load average {load_average()}",
                  file=sys.stderr, flush=True)
            if args.prepare_only:
                return

        # Incremental: the same number of new checkpoints on each store, rounds alternating.
        for label in sizes:
            for figure in ("incremental", "quiet", "check", "quiet_check"):
                out[f"{figure}_{label}"] = []
        from checkpoints.models import Checkpoint

        for label in sizes:
            out[f"held_{label}"] = []
        for r in range(args.rounds):
            for label in sizes:
                time.sleep(1)  # the new entries' stamps come after the watermark
                write_store(server, "bench", f"{label}/", args.new, f"{label}-{run_tag}-new{r}", args.writers,
                            args.processes)
                out[f"held_{label}"].append(Checkpoint.objects.filter(source=sources[label]).count())
                profile = args.profile and os.path.join(args.profile, f"{label}-{r}.prof")
                elapsed, result, check = timed_sync(sources[label], profile=profile)
                assert result["added"] == args.new, result
                out[f"incremental_{label}"].append(elapsed)
                out[f"check_{label}"].append(check)
                elapsed, _, check = timed_sync(sources[label])
                out[f"quiet_{label}"].append(elapsed)
                out[f"quiet_check_{label}"].append(check)
                print(f"round {r + 1} {label} (store of {out[f'held_{label}'][-1]:,} before the new {args.new:,} "
                      f"were synced): incremental {out[f'incremental_{label}'][-1]:.2f} s, check "
                      f"{out[f'check_{label}'][-1]:.2f} s, no-change {out[f'quiet_{label}'][-1]:.3f} s; "
                      f"load average {load_average()}", file=sys.stderr, flush=True)
        out["load"].append(load_average())
    finally:
        server.stop()

    print(f"# bench_s3_sync {datetime.now(UTC).isoformat(timespec='seconds')} on {platform.node()} "
          f"({os.cpu_count()} cores, {platform.python_version()}), server {args.server}, reader workers "
          f"{s3_reader.WORKERS}; load average (1/5/15 min) at start, after writing, after initial syncs, at end: "
          f"{' | '.join(out['load'])}")
    for label, size in sizes.items():
        if f"write_{label}" in out:
            print(f"store {label}: {size:,} checkpoints written in {out[f'write_{label}']:.0f} s "
                  f"({size / out[f'write_{label}']:,.0f} checkpoints/s)")
    if "listing" in out:
        print(f"large store: {out['listed_keys']:,} objects; bare listing {out['listing']:.2f} s "
              f"(dates not parsed: {out['listing_raw']:.2f} s)")
    if "initial" in out and "listing" in out:
        print(f"initial sync of {args.large:,}: {out['initial']:.2f} s = {out['initial'] / out['listing']:.1f}x the "
              f"listing ({out['initial'] / out['listing_raw']:.1f}x the listing without dates; "
              f"{args.large / out['initial']:,.0f} checkpoints/s); of {args.small:,}: {out['initial_small']:.2f} s")
    elif reuse:
        print(f"stores and initial syncs reused from {args.store_dir} (initial syncs then: {state.get('initial', 0):.1f} s "
              f"and {state.get('initial_small', 0):.1f} s, outside the lock)")
    med = {}
    for label, size in sizes.items():
        med[label] = statistics.median(out[f"incremental_{label}"])
        runs = ", ".join(f"{t:.2f}" for t in out[f"incremental_{label}"])
        quiet = ", ".join(f"{t:.3f}" for t in out[f"quiet_{label}"])
        checks = ", ".join(f"{t:.2f}" for t in out[f"check_{label}"] + out[f"quiet_check_{label}"])
        held = ", ".join(f"{n:,}" for n in out[f"held_{label}"])
        print(f"store of {size:,} (checkpoints before each round's new: {held}): incremental sync of {args.new:,} new: median {med[label]:.2f} s ({runs}); "
              f"no-change sync {quiet} s; reference check after each (apart): {checks} s")
    print(f"incremental large/small (medians): {med['large'] / med['small']:.2f}")


if __name__ == "__main__":
    main()
