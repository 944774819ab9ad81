"""S3Saver against PostgresSaver, same run: time of a step's put + put_writes, requests on the wire.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/bench_s3saver.py [--steps 200] [--long 10000]

Time: `put` of a typical step (a few channels, a message list of ~2 KB) followed by `put_writes`
of two writes, on a local SeaweedFS (tests/seaweed.py, `weed mini`, signatures enforced) and on
the local PostgreSQL (a fresh database), median per step. The S3Saver is built as an application
builds it (`S3Saver.from_env`: the client of checkpoints.s3client, checksums only when required,
a connection per concurrent request), once with its default layout (small payloads inline in
the manifest) and once with `inline_limit=0` (every payload an object of its own, written before
the manifest: the layout of large payloads, and of every payload before format 2). Requests: counted on the wire with
botocore's `before-send` event (fired once per HTTP request actually sent, retries included) for
get_tuple of a thread of 10 and of `--long` checkpoints, a put, and list(limit=10).

The floor, in the same interleaved rounds: one bare PUT of a small object (`--bare-size` bytes, about
a step's inline manifest) to a new key, and two such PUTs one after the other (a step is at least a
`put` then a `put_writes`, each at least one PUT that must complete before the next call starts),
through a plain boto3 client (botocore's defaults, as tests/seaweed.py builds it) and through the
saver's own client (checkpoints.s3client: checksums only when required, no parameter validation);
every figure is also given as a ratio to PostgresSaver's whole step.
"""

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from langgraph.checkpoint.base import empty_checkpoint  # noqa: E402
from langgraph.checkpoint.postgres import PostgresSaver  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from storage.s3saver import S3Saver  # noqa: E402
from tests.pg import server_url, url_for_database  # noqa: E402
from tests.seaweed import SeaweedS3  # noqa: E402


def step_items(thread_id, i, parent):
    cp = empty_checkpoint()
    cp["channel_values"] = {
        "messages": [{"role": "user" if j % 2 else "assistant", "content": f"message {j} " + "x" * 200} for j in range(8)],
        "count": i,
        "plan": {"next": "tool", "args": {"q": "weather", "n": i}},
    }
    cp["channel_versions"] = {"messages": i + 1, "count": i + 1, "plan": i + 1}
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    if parent:
        config["configurable"]["checkpoint_id"] = parent
    return config, cp, {"source": "loop", "step": i, "tenant": "acme"}, dict(cp["channel_versions"])


class BarePuts:
    """`puts` sequential PUTs of a small object to new keys per step, through `client`: the floor of
    a step that makes `puts` dependent round trips, with nothing of the saver's work."""

    def __init__(self, client, bucket, puts, size):
        self.client, self.bucket, self.puts = client, bucket, puts
        self.body = b"x" * size


def time_bare(bare, steps):
    prefix = f"bare-{uuid.uuid4().hex[:8]}/"
    times = []
    for i in range(steps):
        started = time.perf_counter()
        for k in range(bare.puts):
            bare.client.put_object(Bucket=bare.bucket, Key=f"{prefix}{i:06d}-{k}", Body=bare.body)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_steps(saver, steps):
    if isinstance(saver, BarePuts):
        return time_bare(saver, steps)
    thread_id = f"bench-{uuid.uuid4().hex[:8]}"
    parent = None
    times = []
    for i in range(steps):
        config, cp, md, versions = step_items(thread_id, i, parent)
        started = time.perf_counter()
        stored = saver.put(config, cp, md, versions)
        saver.put_writes(stored, [("messages", {"role": "assistant", "content": "ok"}), ("count", i + 1)], f"task-{i}")
        times.append(time.perf_counter() - started)
        parent = stored["configurable"]["checkpoint_id"]
    return statistics.median(times)


class Wire:
    def __init__(self, client):
        self.n = 0
        client.meta.events.register("before-send.s3", self._sent, unique_id="bench-wire")

    def _sent(self, **kwargs):
        self.n += 1

    def take(self):
        n, self.n = self.n, 0
        return n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--long", type=int, default=10000)
    parser.add_argument("--bare-size", type=int, default=2048, help="bytes of the bare PUTs' object")
    args = parser.parse_args()

    seaweed = SeaweedS3()
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        seaweed.client().create_bucket(Bucket=bucket)
        env = {k: str(v) for k, v in seaweed.env(bucket, prefix="bench/").items()}
        s3 = S3Saver.from_env(env, registry=CollectorRegistry())
        s3_object = S3Saver.from_env(env, registry=CollectorRegistry(), inline_limit=0)
        with PostgresSaver.from_conn_string(url_for_database(name)) as pg:
            pg.setup()
            plain = seaweed.client()  # a plain boto3 client, botocore's defaults
            savers = {
                "PostgresSaver": pg, "S3Saver/SeaweedFS": s3, "S3Saver/SeaweedFS, inline_limit=0": s3_object,
                "1 bare PUT, plain boto3 client": BarePuts(plain, bucket, 1, args.bare_size),
                "2 sequential bare PUTs, plain boto3 client": BarePuts(plain, bucket, 2, args.bare_size),
                "1 bare PUT, the saver's client": BarePuts(s3.client, bucket, 1, args.bare_size),
                "2 sequential bare PUTs, the saver's client": BarePuts(s3.client, bucket, 2, args.bare_size),
            }
            for saver in savers.values():
                time_steps(saver, 10)  # warm all
            times = {label: [] for label in savers}
            for _ in range(3):  # interleaved rounds: load on the machine hits all alike
                for label, saver in savers.items():
                    times[label].append(time_steps(saver, args.steps // 3))
            pg_med = statistics.median(times["PostgresSaver"])
            print(f"put+put_writes per step: PostgresSaver {pg_med * 1000:.2f} ms")
            rounds = ", ".join(f"{t * 1000:.2f}" for t in times["PostgresSaver"])
            print(f"  (medians of the {len(times['PostgresSaver'])} rounds: {rounds} ms)")
            for label in list(savers)[1:]:
                med = statistics.median(times[label])
                rounds = ", ".join(f"{t * 1000:.2f}" for t in times[label])
                what = "per step" if label.startswith("S3Saver") else "floor"
                print(f"{what}: {label} {med * 1000:.2f} ms, ratio to PostgresSaver's step {med / pg_med:.2f}x "
                      f"(rounds: {rounds} ms)")

        # Requests on the wire.
        for thread, n in (("short", 10), ("long", args.long)):
            items, parent = [], None
            for i in range(n):
                item = step_items(thread, i, parent)
                items.append(item)
                parent = item[1]["id"]
            for start in range(0, n, 500):
                s3.put_many(items[start:start + 500])
        wire = Wire(s3.client)
        for thread, n in (("short", 10), ("long", args.long)):
            s3.get_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})
            print(f"get_tuple, thread of {n} checkpoints: {wire.take()} requests")
        latest = s3.get_tuple({"configurable": {"thread_id": "long", "checkpoint_ns": ""}})
        wire.take()
        s3.put(*step_items("long", args.long, latest.checkpoint["id"]))
        print(f"put: {wire.take()} requests")
        wire_object = Wire(s3_object.client)
        s3_object.put(*step_items("object", 0, None))
        print(f"put, inline_limit=0: {wire_object.take()} requests")
        listed = list(s3.list({"configurable": {"thread_id": "long", "checkpoint_ns": ""}}, limit=10))
        assert len(listed) == 10
        print(f"list(limit=10), thread of {args.long + 1}: {wire.take()} requests")
    finally:
        seaweed.stop()
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
