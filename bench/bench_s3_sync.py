"""Console sync of an S3 checkpoint store (issue 13, console targets), against moto's S3 server.

    python3 bench/bench_s3_sync.py --console postgresql://postgres@127.0.0.1:5432/bench_s3_console \
        [--initial 5000] [--small 2000] [--large 20000] [--new 500]

Figures, all measured in the same run, on a moto server started in its own process:
- baseline: a bare listing of the store's prefix (ListObjectsV2, 1000 keys a page, keys discarded);
- initial sync of `--initial` checkpoints into an empty console database, and its ratio to the
  baseline (target <= 3x);
- incremental sync after `--new` checkpoints are added, on a store of `--small` and of `--large`
  checkpoints (target: the same within noise). The stores are written by S3Saver.put/put_writes
  (threads of 10 checkpoints, one write each, a reference in one value in ten), not by graphs:
  graphs would take hours to write these counts on this machine.

The sync's overlap (entries re-read from 5 minutes before the watermark, for late commits) is
set to 0 here: the stores were written seconds before, and the overlap's cost follows the write
rate of the last 5 minutes, not the store's size.
"""

import argparse
import os
import platform
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


def start_moto():
    from tests.s3server import free_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            import urllib.request

            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    return proc, url


def client_for(endpoint):
    from checkpoints.s3client import S3Settings, build_client

    return build_client(S3Settings(endpoint_url=endpoint, path_style=True, access_key="testing", secret_key="testing",
                                   max_attempts=5))


def write_store(client, bucket, prefix, count, tag):
    """`count` checkpoints in threads of THREAD_LEN, through S3Saver; returns seconds."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.base.id import uuid6

    from storage.s3saver import S3Saver

    saver = S3Saver(bucket, prefix, client=client, metrics=False, max_workers=4)
    threads = count // THREAD_LEN

    def one_thread(n):
        thread = f"{tag}-{n}"
        cfg = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        for step in range(THREAD_LEN):
            cp = empty_checkpoint()
            cp["id"] = str(uuid6(clock_seq=step))
            values = {"messages": [f"message {i} of {thread}" for i in range(step + 1)], "counter": step}
            if step == 0 and n % 10 == 0:
                values["file"] = f"s3://{bucket}/uploads/{thread}.pdf"
            cp["channel_values"] = values
            cp["channel_versions"] = {k: str(step + 1) for k in values}
            cfg = saver.put(cfg, cp, {"source": "loop", "step": step, "tenant": f"t{n % 7}"}, cp["channel_versions"])
            saver.put_writes(cfg, [("messages", [f"write {step}"])], task_id=str(uuid.uuid4()))

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_thread, range(threads)))
    saver.close()
    return time.perf_counter() - started


def bare_listing(client, bucket, prefix):
    started = time.perf_counter()
    keys = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += len(page.get("Contents", []))
    return time.perf_counter() - started, keys


def timed_sync(source, **kw):
    from checkpoints.sync import sync_source

    started = time.perf_counter()
    result = sync_source(source, **kw)
    elapsed = time.perf_counter() - started
    assert result["error"] is None, result
    return elapsed, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--console", required=True)
    parser.add_argument("--initial", type=int, default=5000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--new", type=int, default=500)
    args = parser.parse_args()

    import psycopg

    name = args.console.rsplit("/", 1)[1]
    with psycopg.connect(args.console.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')

    moto, endpoint = start_moto()
    try:
        os.environ.update({
            "DATABASE_URL": args.console, "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "S3_ENDPOINT_URL": endpoint, "S3_FORCE_PATH_STYLE": "true", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "S3_BUCKET_NAME": "bench", "S3_PREFIX": "uploads/",
        })
        import django

        django.setup()
        from django.core.management import call_command

        from checkpoints.models import Source
        from checkpoints.sources.s3 import reader as s3_reader

        call_command("migrate", interactive=False, verbosity=0)
        s3_reader.OVERLAP_SECONDS = 0
        client = client_for(endpoint)
        client.create_bucket(Bucket="bench")
        out = {}

        # Initial sync vs a bare listing of the same prefix.
        out["write_initial"] = write_store(client, "bench", "init/", args.initial, "i")
        out["listing"], out["listed_keys"] = bare_listing(client, "bench", "init/")
        source = Source.objects.create(name="init", url="s3://bench/init/", kind="s3")
        out["initial"], result = timed_sync(source)
        assert result["checkpoints"] == args.initial, result

        # Incremental: the same number of new checkpoints on a small and a large store.
        for label, size in (("small", args.small), ("large", args.large)):
            prefix = f"{label}/"
            out[f"write_{label}"] = write_store(client, "bench", prefix, size, label)
            src = Source.objects.create(name=label, url=f"s3://bench/{prefix}", kind="s3")
            out[f"initial_{label}"], _ = timed_sync(src)
            time.sleep(1)  # the new entries' stamps come after the watermark
            write_store(client, "bench", prefix, args.new, f"{label}-new")
            out[f"incremental_{label}"], result = timed_sync(src)
            assert result["added"] == args.new, result
            out[f"quiet_{label}"], _ = timed_sync(src)
    finally:
        moto.terminate()
        moto.wait()

    print(f"# bench_s3_sync {datetime.now(UTC).isoformat(timespec='seconds')} on {platform.node()} "
          f"({os.cpu_count()} cores, {platform.python_version()})")
    print(f"initial store: {args.initial:,} checkpoints, {out['listed_keys']:,} objects (written in {out['write_initial']:.1f} s)")
    print(f"bare listing of the prefix: {out['listing']:.2f} s")
    print(f"initial sync: {out['initial']:.2f} s = {out['initial'] / out['listing']:.1f}x the listing "
          f"({args.initial / out['initial']:,.0f} checkpoints/s)")
    for label, size in (("small", args.small), ("large", args.large)):
        print(f"store of {size:,}: initial sync {out[f'initial_{label}']:.2f} s; incremental sync of {args.new:,} new "
              f"{out[f'incremental_{label}']:.3f} s; no-change sync {out[f'quiet_{label}']:.3f} s")
    print(f"incremental large/small: {out['incremental_large'] / out['incremental_small']:.2f}")


if __name__ == "__main__":
    main()
