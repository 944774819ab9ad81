"""Sync memory with one huge value (issue 10.4): peak RSS of a sync, against the same sync without it.

    python3 bench/bench_sync_memory.py [--size 200MB] [--backends postgres,sqlite] \
        [--pg postgresql://postgres@127.0.0.1:5432/] [--workdir /tmp/bench_syncmem]

For each backend, two LangGraph databases are written by the real saver (PostgresSaver or
SqliteSaver) through a real graph: the same ten small threads in both, and in the second one
more thread whose node returns a `bytes` value of --size beginning with `s3://` (PostgreSQL:
one blob row and one write row of that size; SQLite: the checkpoint row holding it and the
write row). Each sync runs alone in a fresh subprocess (the sync_checkpoints --full job into a fresh
PostgreSQL console database) and reports its peak RSS (VmHWM: see peak_rss()). Figures: the peak with the
big value, the baseline without it in the same run, their difference, and whether the
reference was recorded. Target: under 300 MB with a 200 MB value.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
URI = "s3://bench-bucket/uploads/huge.bin"


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def recreate_pg(server: str, name: str) -> str:
    with psycopg.connect(server + "postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server + name


def write_source(url: str, big: int):
    """Ten small threads, and with big > 0 one more holding a bytes value of that size."""
    import operator
    from typing import Annotated, TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        messages: Annotated[list, operator.add]
        payload: bytes

    def chat(state):
        return {"messages": [f"reply {len(state.get('messages', []))} " + "x" * 200]}

    def upload(state):
        head = (URI + " ").encode()
        return {"payload": head + os.urandom(big - len(head))}

    def graph(saver, node):
        g = StateGraph(State)
        g.add_node("n", node)
        g.add_edge(START, "n")
        g.add_edge("n", END)
        return g.compile(checkpointer=saver)

    def run(saver):
        for i in range(10):
            for _ in range(3):
                graph(saver, chat).invoke({"messages": ["hello"]}, {"configurable": {"thread_id": f"small-{i}"}})
        if big:
            graph(saver, upload).invoke({"messages": ["upload"]}, {"configurable": {"thread_id": "huge"}})

    if url.startswith("postgresql"):
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(url) as saver:
            saver.setup()
            run(saver)
    else:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        path = url.removeprefix("sqlite:///")
        if os.path.exists(path):
            os.remove(path)
        with sqlite3.connect(path, check_same_thread=False) as conn:
            saver = SqliteSaver(conn)
            saver.setup()
            run(saver)


def measure(console: str, source: str) -> dict:
    """Migrate the console database, then sync in a fresh process: its peak RSS and result."""
    env = {**os.environ, "DATABASE_URL": console, "CHECKPOINT_DATABASE_URL": source,
           "DJANGO_SETTINGS_MODULE": "dashboard.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([sys.executable, __file__, "--child"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, which starts afresh at exec.

    ru_maxrss would do but for one thing: Linux carries it across exec, so a
    child forked from a parent that once held a big value would report the
    parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def child():
    """The sync, in this process: prints its result, peak RSS and whether the reference was recorded."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from checkpoints.models import BlobReference
    from checkpoints.sync import sync_sources

    started = time.perf_counter()
    result = sync_sources(full=True)["sources"][0]
    seconds = time.perf_counter() - started
    peak = peak_rss()
    recorded = BlobReference.objects.filter(uri=URI, uses__isnull=False).exists()
    print(json.dumps({"peak_rss": peak, "seconds": round(seconds, 2), "error": result["error"],
                      "checkpoints": result["checkpoints"], "recorded": recorded}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="200MB")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/")
    parser.add_argument("--workdir", default="/tmp/bench_syncmem")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    if args.write:
        return write_source(args.write[0], int(args.write[1]))
    size = parse_size(args.size)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, value {size:,} bytes")
    rows = []
    for backend in args.backends.split(","):
        figures = {}
        for label, big in (("baseline", 0), ("big", size)):
            if backend == "postgres":
                source = recreate_pg(args.pg, f"bench_syncmem_src_{label}")
            else:
                source = f"sqlite:///{args.workdir}/{label}.sqlite"
            # Written by another process, whose memory (LangGraph holds the value several times) goes with it.
            subprocess.run([sys.executable, __file__, "--write", source, str(big)], cwd=ROOT, check=True)
            console = recreate_pg(args.pg, "bench_syncmem_console")
            figures[label] = measure(console, source)
            print(backend, label, json.dumps(figures[label]), flush=True)
        base, big = figures["baseline"], figures["big"]
        rows.append((backend, base, big))
    print()
    print("| backend | baseline peak RSS | with the value | difference | sync time (baseline / with) | reference recorded |")
    print("|---|---|---|---|---|---|")
    mb = 1e6
    for backend, base, big in rows:
        print(f"| {backend} | {base['peak_rss'] / mb:.0f} MB | **{big['peak_rss'] / mb:.0f} MB** | "
              f"+{(big['peak_rss'] - base['peak_rss']) / mb:.0f} MB ({big['peak_rss'] / base['peak_rss']:.2f}x) | "
              f"{base['seconds']} s / {big['seconds']} s | {'yes' if big['recorded'] else 'NO'} |")
    failed = [b for b, base, big in rows if big["peak_rss"] >= 300 * mb or not big["recorded"] or big["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
