"""Offload benchmark (issue 6): `put` of a checkpoint holding a 5 MB PDF.

    python3 bench/bench_offload.py [postgresql://postgres@127.0.0.1:5432/test] [--runs 15] [--size 5000000]

The URL (default TEST_DATABASE_URL) names a PostgreSQL server; the bench
creates its own database there and drops it at the end. S3 is moto's server
in a child process on 127.0.0.1 (a separate process, as a real S3 would be);
the file store is a temp dir.

One real graph, START -> attach -> review -> END, where `attach` puts the PDF
into state, runs on PostgresSaver in every variant below, interleaved, a new
thread per run. A timing wrapper (outermost, so it sees what LangGraph
waits for) records each `put` and `put_writes`. Reported, as medians:

- put: the `put` of the checkpoint whose new channel versions include the
  PDF (the checkpoint after `attach`);
- put_writes: the `put_writes` that carries the PDF (attach's task writes);
- invoke: the whole `graph.invoke`.

Variants:
- inline: plain PostgresSaver, the PDF in checkpoint_blobs/checkpoint_writes (the baseline);
- s3 new / file new: offload(), a fresh random PDF each run, so every run uploads;
- s3 dedup / file dedup: offload(), the same PDF every run: the object exists
  and this process already knows it (no store request at all);
- s3 dedup, cold: the same PDF, a fresh serializer per run (another process):
  one HEAD round trip and a sha256 of the 5 MB.

Also reported: "alone", the same put call replayed by itself (no concurrent
writes) into a new thread, and the floor: that put on the plain saver with a
9-byte value instead of the PDF (what any put costs on this database).

Where the upload is: `put_writes` and `put` of one step run in parallel in
LangGraph's background threads and carry the same bytes; whichever comes
first uploads, the other waits for it (one upload per key per process). So
for the "new" variants the upload cost shows in put or put_writes; the sum
column is the honest total.
"""

import argparse
import json
import operator
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypedDict
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from langgraph.checkpoint.postgres import PostgresSaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402

from storage.offload import FileStore, OffloadingSaver, OffloadSerializer, S3Store, offload  # noqa: E402
from storage.size_limit import DelegatingSaver  # noqa: E402


class State(TypedDict, total=False):
    name: str
    pdf: bytes
    notes: Annotated[list, operator.add]


class Timed(DelegatingSaver):
    """Records how long each put / put_writes of the wrapped checkpointer takes."""

    def __init__(self, saver):
        super().__init__(saver)
        self.puts = []  # (seconds, channels in new_versions, the call's arguments)
        self.writes = []  # (seconds, channels written)

    def put(self, config, checkpoint, metadata, new_versions):
        started = time.perf_counter()
        try:
            return self.saver.put(config, checkpoint, metadata, new_versions)
        finally:
            args = (config, checkpoint, metadata, new_versions)
            self.puts.append((time.perf_counter() - started, set(new_versions), args))

    def put_writes(self, config, writes, task_id, task_path=""):
        started = time.perf_counter()
        try:
            return self.saver.put_writes(config, writes, task_id, task_path)
        finally:
            self.writes.append((time.perf_counter() - started, {c for c, _ in writes}))


def build(checkpointer, pdf):
    g = StateGraph(State)
    g.add_node("attach", lambda s: {"pdf": pdf, "notes": ["attached"]})
    g.add_node("review", lambda s: {"notes": [f"reviewed {len(s['pdf'])} bytes"]})
    g.add_edge(START, "attach")
    g.add_edge("attach", "review")
    g.add_edge("review", END)
    return g.compile(checkpointer=checkpointer)


def one_run(checkpointer, pdf):
    timed = Timed(checkpointer)
    graph = build(timed, pdf)
    thread = uuid.uuid4().hex
    started = time.perf_counter()
    graph.invoke({"name": "report.pdf"}, {"configurable": {"thread_id": thread}})
    invoke = time.perf_counter() - started
    assert graph.get_state({"configurable": {"thread_id": thread}}).values["pdf"] == pdf
    ((put, args),) = [(t, args) for t, channels, args in timed.puts if "pdf" in channels]
    (writes,) = [t for t, channels in timed.writes if "pdf" in channels]
    return {"put": put, "put_writes": writes, "invoke": invoke, "thread": thread, "args": args}


def replay_put(checkpointer, args, pdf):
    """The same put call, alone (no concurrent writes), into a new thread."""
    config, checkpoint, metadata, new_versions = args
    config = {"configurable": {**config["configurable"], "thread_id": uuid.uuid4().hex}}
    checkpoint = {**checkpoint, "channel_values": {**checkpoint["channel_values"], "pdf": pdf}}
    started = time.perf_counter()
    checkpointer.put(config, checkpoint, metadata, new_versions)
    return time.perf_counter() - started


def pdf_bytes(size):
    return b"%PDF-1.7\n" + os.urandom(size - 9)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def create_database(server_url):
    name = f"bench_offload_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, urlsplit(server_url)._replace(path="/" + name).geturl()


def drop_database(server_url, name):
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def step_bytes(url, thread_id):
    """Logical bytes (docs/architecture.md §3) of the checkpoint after attach (step 1), by SQL."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            """SELECT octet_length(c.checkpoint::text) + octet_length(c.metadata::text)
                 + coalesce((SELECT sum(coalesce(octet_length(b.blob), 0)) FROM checkpoint_blobs b
                             WHERE b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
                               AND c.checkpoint->'channel_versions'->>b.channel = b.version), 0)
                 + coalesce((SELECT sum(octet_length(w.blob)) FROM checkpoint_writes w
                             WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
                               AND w.checkpoint_id = c.checkpoint_id), 0)
               FROM checkpoints c WHERE c.thread_id = %s AND (c.metadata->>'step')::int = 1""",
            (thread_id,),
        ).fetchone()[0]


def machine():
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}{load}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("TEST_DATABASE_URL", ""))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=5_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("give a PostgreSQL server URL or set TEST_DATABASE_URL")

    name, url = create_database(args.url)
    moto, endpoint = start_moto()
    blob_root = tempfile.mkdtemp(prefix="bench-offload-")
    try:
        import boto3

        s3 = dict(
            endpoint_url=endpoint, region="us-east-1", path_style=True, access_key="bench", secret_key="bench"
        )
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="bench")
        labels = ("inline", "s3 new", "s3 dedup", "s3 dedup, cold", "file new", "file dedup")
        results = {k: [] for k in labels}
        alone = {k: [] for k in labels}
        floor = []
        bytes_at_step = {}
        shared_pdf = pdf_bytes(args.size)
        with PostgresSaver.from_conn_string(url) as saver:
            saver.setup()
            plain = PostgresSaver(saver.conn)
            s3_store = S3Store("bench", "offload/", **s3)
            s3_saver = offload(PostgresSaver(saver.conn), store=s3_store)
            file_saver = offload(PostgresSaver(saver.conn), store=FileStore(blob_root))

            def cold_s3():
                # Another process's view: empty caches (sha256, presence), but
                # the boto3 client already built (that is process start-up).
                inner = PostgresSaver(saver.conn)
                serde = OffloadSerializer(inner=inner.serde, store=s3_store)
                inner.serde = serde
                return OffloadingSaver(inner, serde)

            # Warm up: connections, the shared PDF uploaded once to both stores.
            one_run(plain, pdf_bytes(args.size))
            one_run(s3_saver, shared_pdf)
            one_run(file_saver, shared_pdf)
            for _ in range(args.runs):
                variants = (
                    ("inline", plain, pdf_bytes(args.size)),
                    ("s3 new", s3_saver, pdf_bytes(args.size)),
                    ("s3 dedup", s3_saver, shared_pdf),
                    ("s3 dedup, cold", cold_s3(), shared_pdf),
                    ("file new", file_saver, pdf_bytes(args.size)),
                    ("file dedup", file_saver, shared_pdf),
                )
                for label, checkpointer, pdf in variants:
                    run = one_run(checkpointer, pdf)
                    results[label].append(run)
                    bytes_at_step.setdefault(label, step_bytes(url, run["thread"]))
                # The same put replayed alone, for each variant.
                args_of_put = results["inline"][-1]["args"]
                for label, checkpointer, pdf in variants:
                    if label == "s3 dedup, cold":
                        checkpointer = cold_s3()
                    if label.endswith("new") or label == "inline":
                        pdf = pdf_bytes(args.size)
                    alone[label].append(replay_put(checkpointer, args_of_put, pdf))
                # The floor: the same checkpoint with a 9-byte value instead of the PDF.
                floor.append(replay_put(plain, args_of_put, b"%PDF-1.7\n"))
        pg_version = psycopg.connect(args.url).execute("SHOW server_version").fetchone()[0]
    finally:
        moto.terminate()
        moto.wait()
        drop_database(args.url, name)
        import shutil

        shutil.rmtree(blob_root, ignore_errors=True)

    def med(label, key):
        return statistics.median(r[key] for r in results[label])

    baseline = med("inline", "put")
    baseline_alone = statistics.median(alone["inline"])
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgres": pg_version,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "runs": args.runs,
        "pdf_bytes": args.size,
        "floor_put_alone_ms": None,
        "variants": {
            label: {
                "put_ms": round(med(label, "put") * 1000, 2),
                "put_writes_ms": round(med(label, "put_writes") * 1000, 2),
                "put_plus_writes_ms": round(
                    statistics.median(r["put"] + r["put_writes"] for r in results[label]) * 1000, 2
                ),
                "invoke_ms": round(med(label, "invoke") * 1000, 2),
                "put_speedup_vs_inline": round(baseline / med(label, "put"), 1),
                "put_alone_ms": round(statistics.median(alone[label]) * 1000, 2),
                "put_alone_speedup_vs_inline": round(baseline_alone / statistics.median(alone[label]), 1),
                "step_checkpoint_bytes": bytes_at_step[label],
            }
            for label in results
        },
    }
    report["floor_put_alone_ms"] = round(statistics.median(floor) * 1000, 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['date']}  {report['machine']}  PostgreSQL {pg_version}")
    print(f"{report['command']}  ({args.runs} runs each, medians, PDF {args.size:,} bytes)")
    print("in the graph: put / put_writes as LangGraph runs them (in parallel, sharing the connection)")
    print("alone: the same put call replayed by itself into a new thread")
    print(
        f"{'variant':16} {'put ms':>8} {'x inline':>8} {'writes ms':>9} {'sum ms':>8} {'invoke ms':>9} "
        f"{'alone ms':>8} {'x inline':>8} {'step bytes':>10}"
    )
    for label, v in report["variants"].items():
        print(
            f"{label:16} {v['put_ms']:8.2f} {v['put_speedup_vs_inline']:8.1f} {v['put_writes_ms']:9.2f} "
            f"{v['put_plus_writes_ms']:8.2f} {v['invoke_ms']:9.2f} {v['put_alone_ms']:8.2f} "
            f"{v['put_alone_speedup_vs_inline']:8.1f} {v['step_checkpoint_bytes']:10,}"
        )
    print(
        f"floor: the same put alone, plain saver, a 9-byte value instead of the PDF: "
        f"{report['floor_put_alone_ms']:.2f} ms"
    )


if __name__ == "__main__":
    main()
