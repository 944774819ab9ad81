"""Memory and time of an orphan sweep over a million objects.

    python3 bench/bench_sweep.py [--objects 1000000] [--references 3000] [--dir DIR]

Target (issue 5): sweeping 1,000,000 objects grows peak memory by at most
100 MB.

How: the objects are tiny files in the file:// store under a temporary
BLOB_ROOT (faster to make than a million S3 PUTs, and the sweep runs the same
code: stream the listing, look each key up in the referenced set, re-check
each batch of 1000 candidates at the source, delete). The source is a real
SqliteSaver database written by real LangGraph graphs: `--references` files
are named by checkpoints (one per `file_graph` thread for a sixth of them,
the rest a hundred to a chat message), and synced into a throwaway SQLite
console database. Every phase runs in a fresh subprocess, so its peak RSS
growth (its peak RSS, VmHWM reset just before it, minus the RSS right
before it) is its own:

- `list`: the baseline, a plain walk of the store's listing (FileStore.list)
  counting objects, with none of the sweep's logic;
- `dry`: sweep(dry_run=True): sync, references, listing, re-check of every
  batch at the source, nothing deleted;
- `dry+tracemalloc` (with --tracemalloc): the same under tracemalloc, for
  the Python heap's peak (several times slower, not timed);
- `real`: the sweep that deletes the orphans.

After the real sweep every referenced file must still exist and nothing
else may be left.
"""

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRACE = timedelta(seconds=1)


def configure(work: Path):
    os.environ.update({
        "CONSOLE_VAR_DIR": str(work / "var"),
        "DATABASE_URL": f"sqlite:///{work / 'console.sqlite3'}",
        "BLOB_ROOT": str(work / "blobs"),
        "S3_BUCKET_NAME": "",
        "CHECKPOINT_DATABASE_URL": "",
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    })
    (work / "var").mkdir(exist_ok=True)
    import django

    django.setup()


def object_path(root: Path, i: int) -> Path:
    return root / f"d{i // 1000:04}" / f"{i % 1000:04}.bin"


def make_objects(root: Path, n: int):
    for d in range((n + 999) // 1000):
        (root / f"d{d:04}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fd = os.open(object_path(root, i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"x" * (1 + i % 32))
        os.close(fd)


def make_source(path: Path, uris):
    """Real graph runs through SqliteSaver naming every URI in `uris`."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from tests.graphs import chat_graph, config, file_graph

    conn = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    single = len(uris) // 6
    files = file_graph(saver)
    for i, uri in enumerate(uris[:single]):
        files.invoke({"attachment": uri}, config(f"file-{i:05}"))
    chat = chat_graph(saver)
    rest = uris[single:]
    for i in range(0, len(rest), 100):
        chat.invoke({"messages": ["attached: " + " ".join(rest[i : i + 100])]}, config(f"chat-{i // 100:05}"))
    conn.close()


def setup(work: Path, objects: int, references: int):
    configure(work)
    from django.core.management import call_command

    from checkpoints.models import Source
    from checkpoints.sync import sync_source

    call_command("migrate", verbosity=0)
    root = Path(os.environ["BLOB_ROOT"])
    t = time.perf_counter()
    make_objects(root, objects)
    made = time.perf_counter() - t
    referenced = sorted(random.Random(5).sample(range(objects), references))
    uris = [f"file://{object_path(root, i)}" for i in referenced]
    t = time.perf_counter()
    make_source(work / "source.sqlite", uris)
    graphs = time.perf_counter() - t
    source = Source.objects.create(name="bench", url=f"sqlite:///{work / 'source.sqlite'}", kind="sqlite")
    assert sync_source(source)["error"] is None
    (work / "referenced.json").write_text(json.dumps(referenced))
    return {"make_objects_s": round(made, 1), "graphs_s": round(graphs, 1)}


def status_kb(field: str) -> int:
    """VmRSS or VmHWM (peak RSS) of this process, from /proc (Linux), in KB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss():
    """Make VmHWM the current RSS (Linux >= 4.0), so the peak measured is the phase's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def phase(work: Path, name: str):
    """One measured phase, in this (fresh) process; prints one JSON line."""
    configure(work)
    import tracemalloc

    from storage.stores import FileStore
    from storage.sweep import sweep

    root = os.path.realpath(os.environ["BLOB_ROOT"])
    traced = name.endswith("+tracemalloc")
    # Growth = the peak RSS during the phase minus the RSS right before it.
    # ru_maxrss would not do: Linux carries the parent's peak over to a
    # fork+exec'd child, so it starts at the parent's size.
    reset_peak_rss()
    before = status_kb("VmRSS")
    if traced:
        tracemalloc.start()
    t = time.perf_counter()
    if name == "list":
        n = sum(1 for _ in FileStore(root).list(root + "/"))
        result = {"objects_scanned": n}
    else:
        result = sweep(grace=GRACE, force=True, dry_run=name.startswith("dry"))
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] if traced else None
    after = status_kb("VmHWM")
    keep = ("objects_scanned", "orphans", "orphan_bytes", "deleted", "kept_by_recheck", "error", "dangling",
            "db_orphans")
    print(json.dumps({
        "phase": name,
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before / 1024, 1),
        "peak_rss_mb": round(after / 1024, 1),
        "rss_growth_mb": round((after - before) / 1024, 1),
        "traced_peak_mb": round(peak / 2**20, 1) if peak is not None else None,
        "result": {k: result[k] for k in keep if k in result},
    }))


def run_phase(work: Path, name: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--dir", str(work)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--references", type=int, default=3000)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--tracemalloc", action="store_true", help="also measure a dry run under tracemalloc")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return phase(Path(args.dir), args.phase)

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-sweep-"))
    made = setup(work, args.objects, args.references)
    time.sleep(GRACE.total_seconds() + 0.1)
    names = ("list", "dry", "dry+tracemalloc", "real") if args.tracemalloc else ("list", "dry", "real")
    phases = [run_phase(work, name) for name in names]

    root = Path(os.environ["BLOB_ROOT"])
    referenced = json.loads((work / "referenced.json").read_text())
    left = sum(len(files) for _, _, files in os.walk(root))
    ok = left == len(referenced) and all(object_path(root, i).exists() for i in referenced)
    by = {p["phase"]: p for p in phases}
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
                   f"Python {platform.python_version()}",
        "store": "file:// (tiny files under a temporary BLOB_ROOT)",
        "objects": args.objects,
        "references": len(referenced),
        "setup": made,
        "phases": phases,
        "sweep_vs_listing_time": round(by["dry"]["seconds"] / by["list"]["seconds"], 2),
        "peak_growth_mb": max(by["dry"]["rss_growth_mb"], by["real"]["rss_growth_mb"]),
        "baseline_growth_mb": by["list"]["rss_growth_mb"],
        "target_mb": 100,
        "referenced_kept_and_orphans_gone": ok,
    }
    print(json.dumps(report, indent=2))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    if not ok or report["peak_growth_mb"] > 100:
        sys.exit(1)


if __name__ == "__main__":
    main()
