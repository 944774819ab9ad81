"""Helpers for the prune tests: source dumps, SQL byte totals, orphans, the mirror, an oracle.

Everything here reads the checkpoint databases with plain SQL, independently
of checkpoints.prune, so that the tests compare the prune against the rows
themselves and a separate statement of the rules (`expected`).
"""

import json
import sqlite3
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from checkpoints.dburl import parse_database_url
from checkpoints.ids import uuid6_time
from checkpoints.models import Source, Tag, Thread
from checkpoints.tags import extract_tags
from tests.graphs import chat_graph, config, interrupt_graph, subgraph_graph

TAG_EXCLUDE = ["*key*", "*token*", "*secret*", "*password*", "*auth*"]


# --- Reading a source with SQL -------------------------------------------------


@dataclass
class Dump:
    """Every row of a source, keyed by primary key (values compared byte for byte)."""

    checkpoints: dict = field(default_factory=dict)  # (tid, ns, id) -> (parent, *rest)
    blobs: dict = field(default_factory=dict)  # (tid, ns, channel, version) -> (type, blob)
    writes: dict = field(default_factory=dict)  # (tid, ns, id, task_id, idx) -> rest

    def thread(self, tid):
        return (
            {k: v for k, v in self.checkpoints.items() if k[0] == tid},
            {k: v for k, v in self.blobs.items() if k[0] == tid},
            {k: v for k, v in self.writes.items() if k[0] == tid},
        )

    def metadata(self, key):
        """Parsed metadata of a checkpoint row."""
        value = self.checkpoints[key][-1]
        if isinstance(value, (bytes, memoryview)):
            value = bytes(value).decode()
        return json.loads(value)

    def versions(self, key):
        """channel_versions of a PostgreSQL checkpoint row (SQLite has no blob table)."""
        text = self.checkpoints[key][1]
        cv = json.loads(text).get("channel_versions")
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in cv.items()} if isinstance(cv, dict) else {}


class SourceDB:
    """Plain SQL on a LangGraph PostgreSQL or SQLite checkpoint database."""

    def __init__(self, url):
        self.url = url
        self.kind = "postgres" if url.startswith("postgres") else "sqlite"

    @contextmanager
    def connect(self):
        if self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as conn:
                yield conn
        else:
            conn = sqlite3.connect(parse_database_url(self.url)["NAME"], timeout=30, isolation_level=None)
            try:
                yield conn
            finally:
                conn.close()

    def query(self, sql, params=()):
        with self.connect() as conn:
            return list(conn.execute(sql, params).fetchall())

    def dump(self) -> Dump:
        d = Dump()
        if self.kind == "postgres":
            for tid, ns, cid, parent, ckpt, meta in self.query(
                "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint::text, metadata::text"
                " FROM checkpoints"
            ):
                d.checkpoints[(tid, ns, cid)] = (parent, ckpt, meta)
            for tid, ns, ch, ver, type_, blob in self.query(
                "SELECT thread_id, checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs"
            ):
                d.blobs[(tid, ns, ch, ver)] = (type_, bytes(blob) if blob is not None else None)
            for tid, ns, cid, task, idx, ch, type_, blob, path in self.query(
                "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path"
                " FROM checkpoint_writes"
            ):
                d.writes[(tid, ns, cid, task, idx)] = (ch, type_, bytes(blob), path)
        else:
            for tid, ns, cid, parent, type_, ckpt, meta in self.query(
                "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
                " FROM checkpoints"
            ):
                d.checkpoints[(tid, ns, cid)] = (parent, type_, ckpt, meta)
            for tid, ns, cid, task, idx, path, ch, type_, value in self.query(
                "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, type, value FROM writes"
            ):
                d.writes[(tid, ns, cid, task, idx)] = (path, ch, type_, value)
        return d

    def stored_bytes(self) -> int:
        """docs/architecture.md §3 byte accounting summed over every row, in SQL."""
        if self.kind == "postgres":
            sql = """
            SELECT (SELECT coalesce(sum(octet_length(checkpoint::text) + octet_length(metadata::text)), 0) FROM checkpoints)
                 + (SELECT coalesce(sum(coalesce(octet_length(blob), 0)), 0) FROM checkpoint_blobs)
                 + (SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_writes)
            """
        else:
            sql = """
            SELECT (SELECT coalesce(sum(coalesce(length(CAST(checkpoint AS BLOB)), 0)
                                      + coalesce(length(CAST(metadata AS BLOB)), 0)), 0) FROM checkpoints)
                 + (SELECT coalesce(sum(coalesce(length(CAST(value AS BLOB)), 0)), 0) FROM writes)
            """
        return int(self.query(sql)[0][0])

    def orphan_blobs(self) -> set:
        """Blob rows no checkpoint of their thread and namespace names (the sweep's query)."""
        if self.kind != "postgres":
            return set()
        rows = self.query(
            """
            SELECT b.thread_id, b.checkpoint_ns, b.channel, b.version FROM checkpoint_blobs b
            WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
              WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
                AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)
            """
        )
        return {tuple(r) for r in rows}

    def orphan_writes(self) -> set:
        table = "checkpoint_writes" if self.kind == "postgres" else "writes"
        rows = self.query(
            f"""
            SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx FROM {table} w
            WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id
              AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)
            """
        )
        return {tuple(r) for r in rows}

    def clear(self):
        tables = ("checkpoints", "checkpoint_blobs", "checkpoint_writes") if self.kind == "postgres" else (
            "checkpoints", "writes")
        with self.connect() as conn:
            for t in tables:
                conn.execute(f"DELETE FROM {t}")


def make_source(url, name="src") -> Source:
    kind = "postgres" if url.startswith("postgres") else "sqlite"
    return Source.objects.create(name=name, url=url, kind=kind)


def build_mirror(source, dump: Dump):
    """Thread and Tag rows as a sync would write them (tags of the latest root checkpoint)."""
    Thread.objects.filter(source=source).delete()
    latest = {}
    for tid, ns, cid in dump.checkpoints:
        if ns == "" and cid > latest.get(tid, ""):
            latest[tid] = cid
    for tid, cid in latest.items():
        tags = extract_tags(dump.metadata((tid, "", cid)), TAG_EXCLUDE)
        thread = Thread.objects.create(source=source, thread_id=tid, latest_checkpoint_id=cid, tags=tags)
        Tag.objects.bulk_create(Tag(source=source, thread=thread, key=k, value=v) for k, v in tags.items())


# --- The rules, stated again for the tests --------------------------------------


@dataclass
class Expected:
    checkpoints: set = field(default_factory=set)
    blobs: set = field(default_factory=set)
    writes: set = field(default_factory=set)
    skipped: dict = field(default_factory=dict)  # tid -> reason
    whole: set = field(default_factory=set)


def expected(dump: Dump, *, keep_last, tags, whole_threads, cut, active_after, delta=frozenset()) -> Expected:
    """What docs/architecture.md §4 says goes, computed straight from the rows."""
    out = Expected()
    threads = defaultdict(list)
    for key in dump.checkpoints:
        threads[key[0]].append(key)
    writes_by_ckpt = defaultdict(list)
    for wkey in dump.writes:
        writes_by_ckpt[wkey[:3]].append(wkey)
    for tid, keys in threads.items():
        roots = sorted((k for k in keys if k[1] == ""), key=lambda k: k[2])
        if tags:
            meta = dump.metadata(roots[-1]) if roots else {}
            if not all(_tag_text(meta.get(k)) == v for k, v in tags):
                continue
        write_keys = [w for w in dump.writes if w[0] == tid]
        times = [uuid6_time(k[2]) for k in keys] + [uuid6_time(w[2]) for w in write_keys]
        gone = set()
        if whole_threads and all(t < cut for t in times):
            gone = set(keys)
            gone_writes = set(write_keys)
            gone_blobs = {b for b in dump.blobs if b[0] == tid}
            whole = True
        else:
            whole = False
            by_ns = defaultdict(list)
            for k in keys:
                if ":" not in k[1]:
                    by_ns[k[1]].append(k)
            for rows in by_ns.values():
                rows.sort(key=lambda k: k[2], reverse=True)
                gone |= {k for k in rows[max(keep_last, 1):] if uuid6_time(k[2]) < cut}
            gone_roots = {k[2] for k in gone if k[1] == ""}
            for k in keys:
                if ":" in k[1] and dump.metadata(k).get("parents", {}).get("") in gone_roots:
                    gone.add(k)
            gone_writes = {w for k in gone for w in writes_by_ckpt.get(k, ())}
            gone_blobs = set()
            if dump.blobs:
                freed, used = set(), set()
                for k in keys:
                    target = freed if k in gone else used
                    target |= {(tid, k[1], ch, v) for ch, v in dump.versions(k).items()}
                gone_blobs = (freed - used) & dump.blobs.keys()
        if not gone:
            continue
        reason = None
        if tid in delta or any("counters_since_delta_snapshot" in dump.metadata(k) for k in keys):
            reason = "delta_channel"
        elif roots and writes_by_ckpt.get(roots[-1]):
            reason = "pending_writes"
        elif max(times) > active_after:
            reason = "active"
        if reason:
            out.skipped[tid] = reason
            continue
        out.checkpoints |= gone
        out.writes |= gone_writes
        out.blobs |= gone_blobs
        if whole:
            out.whole.add(tid)
    return out


def _tag_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return value if isinstance(value, str) else None


# --- Real graphs writing thread histories ---------------------------------------


class Histories:
    """Drives the real graphs of tests/graphs.py into a saver, remembering which graph owns which thread."""

    def __init__(self, saver):
        self.saver = saver
        self.graphs = {"chat": chat_graph(saver), "sub": subgraph_graph(saver), "interrupt": interrupt_graph(saver)}
        self.owner = {}  # thread id -> graph kind
        self.tags = {}

    def config(self, tid):
        return config(tid, **self.tags[tid])

    def run(self, tid, kind, ops, **tags):
        from langgraph.types import Command

        self.owner[tid], self.tags[tid] = kind, {"kind": kind, **tags}
        graph, cfg = self.graphs[kind], self.config(tid)
        for op in ops:
            if op == "invoke":
                graph.invoke({"messages": [f"hello {tid}"]}, cfg)
            elif op == "resume":
                if graph.get_state(cfg).next:
                    graph.invoke(Command(resume="yes"), cfg)
            elif op == "update":
                if graph.get_state(cfg).values:
                    graph.update_state(cfg, {"messages": ["an edit"], "label": "edited"})
            elif op == "fork":
                history = list(graph.get_state_history(cfg))
                if len(history) > 2:
                    graph.update_state(history[len(history) // 2].config, {"label": "forked"})
            else:
                raise ValueError(op)

    def state(self, tid):
        """What LangGraph loads for the thread: (checkpoint id, channel values, values, next, interrupts)."""
        cfg = {"configurable": {"thread_id": tid}}
        tup = self.saver.get_tuple(cfg)
        if tup is None:
            return None
        snap = self.graphs[self.owner[tid]].get_state(cfg)
        interrupts = [i.value for task in snap.tasks for i in task.interrupts]
        return tup.checkpoint["id"], tup.checkpoint["channel_values"], snap.values, snap.next, interrupts
