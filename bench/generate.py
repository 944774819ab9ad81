"""Build a large LangGraph checkpoint source from real LangGraph rows.

    python3 bench/generate.py --url postgresql://postgres@127.0.0.1:5432/bench_src \\
        --threads 100000 --checkpoints 1000000 [--seed 1] [--recreate]
    python3 bench/generate.py --url sqlite:////tmp/bench.sqlite            # 10,000 / 100,000
    python3 bench/generate.py --url ... --append 1000                       # incremental-sync input
    python3 bench/generate.py --url ... --check [--sample 300]              # load through the savers

How: a handful of real graphs (a tool-calling chat whose messages grow each
turn, a graph with a subgraph, an approval flow left waiting at an interrupt,
a chat edited with update_state and forked, a graph that stores S3 URIs and a
bytes value) run once through PostgresSaver / SqliteSaver into the target
itself, as the threads `bench-template/<name>`. Their rows are read back as
templates and replicated with COPY (PostgreSQL) or executemany (SQLite): each
generated thread is a time-ordered prefix of one template under a new thread
id, with new uuid6 ids at new times (spread over the last `days` days),
parents and `metadata.parents` remapped, the checkpoint's `id` and `ts`
rewritten, blob rows and versions kept as they are (so every checkpoint's
channel_versions names the same blob rows its template did) and the tags
(tenant, user_id, project, plan, region, beta) written where LangGraph writes
them, as scalars copied from `configurable` into the metadata.

A prefix ends where a run ended (or at an interrupt, pending writes kept), so
generated threads look like finished turns; a handful end mid-run to hit the
exact checkpoint count. A write row of the cut checkpoint only survives when
it is an `__interrupt__` (a thread waiting for a human).

Not replicated: task ids (in writes and in subgraph namespaces) are the
template's, so resuming a generated thread's graph is not supported; reading
it (get_tuple, list, get_state) is. Seeds fix the plan (thread ids, tags,
counts, times, ids); the template rows themselves come from fresh runs.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import operator
import os
import queue
import random
import re
import sqlite3
import sys
import time
import uuid
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypedDict

if __package__ in (None, ""):
    # Run as a script: make the project importable (checkpoints.dburl, .ids).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ormsgpack
import psycopg
from psycopg.copy import QueuedLibpqWriter
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from checkpoints.dburl import parse_database_url, redact
from checkpoints.sources.registry import kind_of
from checkpoints.ids import uuid6_time

TEMPLATE_PREFIX = "bench-template/"
TAG_KEYS = ("tenant", "user_id", "project", "plan", "region", "beta")
# Written into the files template's S3 URIs; each generated thread gets its own
# value of the same length, so the URIs differ per thread and msgpack headers
# stay valid.
TOKEN = "TPLTOKEN0000"
S3_BUCKET = "bench-bucket"
S3_PREFIX = "uploads/"

DEFAULT_SIZES = {"postgres": (100_000, 1_000_000), "sqlite": (10_000, 100_000)}

_GREGORIAN_OFFSET = 0x01B21DD213814000  # 100 ns ticks from 1582-10-15 to 1970-01-01
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000


# --------------------------------------------------------------------------
# The graphs: real LangGraph, deterministic text, realistic shapes.

_WORDS = (
    "the agent checked invoice order refund shipping account customer ticket policy "
    "warehouse report quarter forecast revenue churn pipeline deploy cluster latency "
    "database index query cache region replica backup restore schema migration token "
    "contract renewal discount pricing tier usage quota alert incident postmortem owner "
    "summary draft reply approve review escalate follow up meeting notes action items "
    "a an of to in for with on by from and or but not is was will can should"
).split()


def _text(seed: int, words: int) -> str:
    r = random.Random(seed)
    return " ".join(r.choice(_WORDS) for _ in range(words)).capitalize() + "."


class ChatState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    turns: int
    summary: str


class ResearchState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    query: str
    notes: list


class FilesState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    attachments: Annotated[list, operator.add]
    latest_file: str
    thumbnail: bytes


def _human_turns(messages) -> int:
    return sum(isinstance(m, HumanMessage) for m in messages)


def chat_graph(saver):
    """A tool-calling assistant: every other turn calls a tool first."""

    def agent(state):
        msgs = state["messages"]
        turn = _human_turns(msgs)
        if isinstance(msgs[-1], HumanMessage) and turn % 2 == 0:
            call = {"name": "search_docs", "args": {"query": _text(turn, 6)},
                    "id": f"call_{turn:04d}", "type": "tool_call"}
            return {"messages": [AIMessage(content="", tool_calls=[call])]}
        usage = {"input_tokens": 120 * turn, "output_tokens": 90, "total_tokens": 120 * turn + 90}
        reply = AIMessage(content=_text(turn * 7, 25 + 15 * (turn % 4)),
                          response_metadata={"model_name": "bench-model", "finish_reason": "stop"},
                          usage_metadata=usage)
        return {"messages": [reply], "turns": turn}

    def tools(state):
        call = state["messages"][-1].tool_calls[0]
        result = _text(len(state["messages"]) * 13, 35)
        return {"messages": [ToolMessage(content=result, tool_call_id=call["id"], name=call["name"])]}

    def route(state):
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else END

    g = StateGraph(ChatState)
    g.add_node("agent", agent)
    g.add_node("tools", tools)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", route, ["tools", END])
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=saver)


def research_graph(saver):
    """A planner with a research subgraph: namespace `research:<task id>`."""

    def search(state):
        n = len(state["messages"])
        return {"notes": [_text(n * 31 + i, 12) for i in range(3)]}

    def summarize(state):
        return {"messages": [AIMessage(content="Findings: " + " ".join(state["notes"]))]}

    inner = StateGraph(ResearchState)
    inner.add_node("search", search)
    inner.add_node("summarize", summarize)
    inner.add_edge(START, "search")
    inner.add_edge("search", "summarize")
    inner.add_edge("summarize", END)

    def plan(state):
        return {"query": _text(len(state["messages"]) * 17, 8)}

    def answer(state):
        return {"messages": [AIMessage(content=_text(len(state["messages"]) * 19, 30))]}

    outer = StateGraph(ResearchState)
    outer.add_node("plan", plan)
    outer.add_node("research", inner.compile())
    outer.add_node("answer", answer)
    outer.add_edge(START, "plan")
    outer.add_edge("plan", "research")
    outer.add_edge("research", "answer")
    outer.add_edge("answer", END)
    return outer.compile(checkpointer=saver)


def approval_graph(saver):
    """Drafts a reply and waits for a human at an interrupt before sending."""

    def draft(state):
        return {"messages": [AIMessage(content=_text(len(state["messages"]) * 23, 30))]}

    def review(state):
        decision = interrupt({"question": "Send this reply?", "draft": state["messages"][-1].content})
        return {"summary": "approved" if decision.get("approved") else "rejected"}

    def send(state):
        return {"messages": [AIMessage(content=f"Sent ({state['summary']}).")]}

    g = StateGraph(ChatState)
    g.add_node("draft", draft)
    g.add_node("review", review)
    g.add_node("send", send)
    g.add_edge(START, "draft")
    g.add_edge("draft", "review")
    g.add_edge("review", "send")
    g.add_edge("send", END)
    return g.compile(checkpointer=saver)


def files_graph(saver):
    """Stores S3 URIs (in a list blob and an inline string) and a bytes value."""

    def upload(state):
        k = len(state.get("attachments") or [])
        uri = f"s3://{S3_BUCKET}/{S3_PREFIX}{TOKEN}/report-{k:03d}.pdf"
        thumb = bytes(random.Random(k).getrandbits(8) for _ in range(600))
        return {"attachments": [uri], "latest_file": uri, "thumbnail": thumb}

    def reply(state):
        k = len(state["messages"])
        return {"messages": [AIMessage(content=f"Stored {state['latest_file']}. " + _text(k, 12 + k))]}

    g = StateGraph(FilesState)
    g.add_node("upload", upload)
    g.add_node("reply", reply)
    g.add_edge(START, "upload")
    g.add_edge("upload", "reply")
    g.add_edge("reply", END)
    return g.compile(checkpointer=saver)


def _run_chat(saver, cfg, turns=25):

    graph = chat_graph(saver)
    for t in range(turns):
        graph.invoke({"messages": [HumanMessage(content=_text(1000 + t, 10 + t % 7))]}, cfg)


def _run_research(saver, cfg, turns=8):

    graph = research_graph(saver)
    for t in range(turns):
        graph.invoke({"messages": [HumanMessage(content=_text(2000 + t, 12))]}, cfg)


def _run_approval(saver, cfg, turns=6):

    graph = approval_graph(saver)
    for t in range(turns):
        graph.invoke({"messages": [HumanMessage(content=_text(3000 + t, 10))]}, cfg)
        if t < turns - 1:  # the last one stays waiting at the interrupt
            graph.invoke(Command(resume={"approved": t % 3 != 2}), cfg)


def _run_editor(saver, cfg, turns=10):

    graph = chat_graph(saver)
    fork_from = None
    for t in range(turns):
        graph.invoke({"messages": [HumanMessage(content=_text(4000 + t, 9))]}, cfg)
        if t == 4:  # keep the tags: update_state copies them from this config
            fork_from = {"configurable": {**cfg["configurable"], **graph.get_state(cfg).config["configurable"]}}
        if t in (2, 5):
            graph.update_state(cfg, {"summary": _text(4100 + t, 15)})
        if t == 7:  # a fork: a new branch from an older checkpoint
            graph.update_state(fork_from, {"messages": [HumanMessage(content="(edited) " + _text(4200, 9))]},
                               as_node="tools")


def _run_files(saver, cfg, turns=6):

    graph = files_graph(saver)
    for t in range(turns):
        graph.invoke({"messages": [HumanMessage(content=_text(5000 + t, 8))]}, cfg)


# name, runner, weight among generated threads
TEMPLATES = (
    ("chat", _run_chat, 0.40),
    ("research", _run_research, 0.15),
    ("approval", _run_approval, 0.15),
    ("editor", _run_editor, 0.15),
    ("files", _run_files, 0.15),
)


# --------------------------------------------------------------------------
# Tags: what users put in `configurable`.

_TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
            "tyrell", "cyberdyne", "soylent", "aperture", "oscorp", "monarch", "vandelay",
            "pied-piper", "dunder-mifflin", "gringotts", "nakatomi", "müller-gmbh")
_PROJECTS = ("support-bot", "sales-assistant", "code-review", "onboarding", "research",
             "billing-helper", "hr-faq", "ops-copilot", "legal-intake", "marketing-writer")
_PLANS = (("free", 60), ("pro", 30), ("enterprise", 10))
_REGIONS = (("us-east-1", 40), ("eu-west-1", 25), ("us-west-2", 15), ("eu-central-1", 12),
            ("ap-southeast-1", 8))
USERS = 5000


class TagPicker:
    """Tags per thread. A user belongs to one tenant (the same one in every
    generated source, appends included); tenants are Zipf-skewed."""

    def __init__(self):
        r = random.Random(7936)
        tenant_w = [1 / (k + 1) ** 1.1 for k in range(len(_TENANTS))]
        self.user_tenant = r.choices(_TENANTS, weights=tenant_w, k=USERS)
        self.user_cum = _cum([1 / (k + 1) ** 0.5 for k in range(USERS)])
        self.project_cum = _cum([1 / (k + 1) ** 0.7 for k in range(len(_PROJECTS))])
        self.plan_cum = _cum([w for _, w in _PLANS])
        self.region_cum = _cum([w for _, w in _REGIONS])

    def pick(self, rng: random.Random) -> dict:
        u = rng.choices(range(USERS), cum_weights=self.user_cum)[0]
        return {
            "tenant": self.user_tenant[u],
            "user_id": f"user-{u:04d}",
            "project": rng.choices(_PROJECTS, cum_weights=self.project_cum)[0],
            "plan": rng.choices(_PLANS, cum_weights=self.plan_cum)[0][0],
            "region": rng.choices(_REGIONS, cum_weights=self.region_cum)[0][0],
            "beta": rng.random() < 0.15,
        }


def _cum(weights):
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def thread_name(i: int) -> str:
    """The id of generated thread number `i`: mostly plain, one in 500 odd.

    >>> thread_name(123), thread_name(7), thread_name(507), thread_name(1007)
    ('bench-000123', 'bench odd/000007 with spaces', 'bench-ünï/çødé/000507', 'bench 日本語 #001007')
    """
    if i % 500 != 7:
        return f"bench-{i:06d}"
    kind = (i // 500) % 3
    if kind == 0:
        return f"bench odd/{i:06d} with spaces"
    if kind == 1:
        return f"bench-ünï/çødé/{i:06d}"
    return f"bench 日本語 #{i:06d}"


def token_for(i: int) -> str:
    """The per-thread replacement of TOKEN (same length).

    >>> token_for(42), len(token_for(42)) == len(TOKEN)
    ('T00000000042', True)
    """
    return f"T{i:011d}"


# --------------------------------------------------------------------------
# uuid6 ids and timestamps.


def uuid6_at(us: int, clock16: int, node: int) -> str:
    """A uuid6 id at `us` microseconds since the epoch; `clock16` is the 4th group.

    >>> i = uuid6_at(1_764_000_000_123_456, 0x8003, 0xabcdef)
    >>> i, uuid6_time(i) == _EPOCH + timedelta(microseconds=1_764_000_000_123_456)
    ('1f0c94ea-16a9-6685-8003-000000abcdef', True)
    """
    ticks = us * 10 + _GREGORIAN_OFFSET + node % 10
    value = ((ticks >> 12) << 80) | ((0x6000 | (ticks & 0xFFF)) << 64) | (clock16 << 48) | node
    h = "%032x" % value
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_ts(us: int) -> str:
    """`checkpoint["ts"]` as LangGraph writes it (datetime.isoformat in UTC).

    >>> iso_ts(1_764_000_000_123_456), iso_ts(1_764_000_000_000_000)
    ('2025-11-24T16:00:00.123456+00:00', '2025-11-24T16:00:00+00:00')
    """
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------
# Templates: a template thread's rows, with ids turned into positions.

# COPY text format: backslash, tab, newline and CR are escaped.
_COPY_ESC = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_SLOT = re.compile(r"@@(id|ts|tags|p\d+)@@|" + TOKEN + "|" + TOKEN.encode().hex())
_PH_ID = "@@id@@".ljust(36, "_")  # same length as an id: msgpack headers unchanged
_PH_TS = "@@ts@@".ljust(32, "_")  # same length as a ts with microseconds
_PH_ID_B, _PH_TS_B, _TOKEN_B = _PH_ID.encode(), _PH_TS.encode(), TOKEN.encode()
_TOKEN_HEX = _TOKEN_B.hex()
NULL = "\\N"  # COPY text's NULL


def esc(text: str) -> str:
    r"""Escape a value for COPY's text format.

    >>> esc("a\tb\\c\nd")
    'a\\tb\\\\c\\nd'
    """
    return text.translate(_COPY_ESC)


def _pattern(text: str):
    """Compile text with slots into a function f(vals, ids) -> str.

    Slots: "@@id@@", "@@ts@@", "@@tags@@" (the thread's tag entries), "@@pN@@"
    (the new id of template position N), TOKEN ("tok") and its hex ("htok").

    >>> f = _pattern('{"id":"@@id@@","parents":{"":"@@p0@@"}@@tags@@}')
    >>> f({"id": "X", "tags": ', "a": 1'}, ["P0"])
    '{"id":"X","parents":{"":"P0"}, "a": 1}'
    """
    terms, literals, pos = [], [], 0

    def literal(chunk):
        if chunk:
            terms.append(f"L[{len(literals)}]")
            literals.append(chunk)

    for m in _SLOT.finditer(text):
        literal(text[pos:m.start()])
        g = m.group(1)
        if g is None:
            terms.append('v["tok"]' if m.group(0) == TOKEN else 'v["htok"]')
        elif g[0] == "p":
            terms.append(f"i[{int(g[1:])}]")
        else:
            terms.append(f'v["{g}"]')
        pos = m.end()
    literal(text[pos:])
    # A generated lambda: this runs a few million times per source.
    return eval("lambda v, i: " + (" + ".join(terms) or "''"), {"L": tuple(literals)})  # noqa: S307


@dataclass
class Write:
    task_id: str
    task_path: str
    idx: int
    channel: str
    type: str | None
    value: bytes


@dataclass
class Template:
    """One template thread, ids replaced by positions in time order."""

    name: str
    thread_id: str
    layout: str  # "postgres" or "sqlite"
    ns: list = field(default_factory=list)
    ids: list = field(default_factory=list)  # the template thread's own ids
    parent: list = field(default_factory=list)  # position of the parent, or None
    clock: list = field(default_factory=list)  # each id's 4th group (variant + step)
    offset_us: list = field(default_factory=list)  # time since the first checkpoint
    metadata: list = field(default_factory=list)  # parents as positions
    versions: list = field(default_factory=list)  # channel_versions
    writes: list = field(default_factory=list)  # per position: [Write]
    checkpoint: list = field(default_factory=list)  # PG: JSON dict; SQLite: packed bytes
    blobs: list = field(default_factory=list)  # PG: (first use, ns, channel, version, type, blob)
    run_end: list = field(default_factory=list)
    child_min: list = field(default_factory=list)
    boundaries: list = field(default_factory=list)  # prefix lengths that end a run
    has_token: bool = False

    def __len__(self):
        return len(self.ids)

    def finish(self):
        n = len(self.ids)
        self.child_min = [n] * n
        for k, p in enumerate(self.parent):
            if p is not None:
                self.child_min[p] = min(self.child_min[p], k)
        # A run ends at a root checkpoint that no task ran from, or at an interrupt.
        self.run_end = [
            self.ns[k] == "" and (not self.writes[k] or any(w.channel == "__interrupt__" for w in self.writes[k]))
            for k in range(n)
        ]
        self.boundaries = [k + 1 for k in range(n) if self.run_end[k]]
        if not self.boundaries or self.boundaries[-1] != n:
            self.boundaries.append(n)
        self.blob_count = [0] * (n + 1)
        for first, *_ in self.blobs:
            self.blob_count[first + 1] += 1
        for k in range(n):
            self.blob_count[k + 1] += self.blob_count[k]
        self.keys = {(self.ns[k], _cv_key(self.versions[k])): k for k in range(n)}
        if len(self.keys) != n:
            raise RuntimeError(f"template {self.name}: two checkpoints share channel_versions")
        return self

    def writes_for(self, k: int, n: int) -> list:
        """The write rows of position k in a prefix of n checkpoints: all once
        the child exists (or the template ends there), else only a pending
        interrupt."""
        if n == len(self.ids) or self.child_min[k] < n:
            return self.writes[k]
        return [w for w in self.writes[k] if w.channel == "__interrupt__"]

    def new_writes(self, k: int, lo: int, hi: int) -> list:
        """Indexes into writes[k] due in a prefix of hi and not yet in one of lo."""
        due = self.writes_for(k, hi)
        have = self.writes_for(k, lo) if k < lo else []
        if len(due) == len(have):
            return []
        have_ids = {id(w) for w in have}
        due_ids = {id(w) for w in due}
        return [x for x, w in enumerate(self.writes[k]) if id(w) in due_ids and id(w) not in have_ids]

    def prepare(self):
        """Pre-render row patterns for this layout."""
        n = len(self.ids)
        self.ns_esc = [esc(s) for s in self.ns]
        if self.layout == "postgres":
            self.ck_pat, self.meta_pat = [], []
            for k in range(n):
                c = dict(self.checkpoint[k], id="@@id@@", ts="@@ts@@")
                self.ck_pat.append(_pattern(esc(json.dumps(c, ensure_ascii=False, separators=(",", ":")))))
                self.meta_pat.append(_pattern(esc(self._meta_text(k))))
            self.blob_pat = []
            for first, ns, ch, ver, typ, blob in self.blobs:
                data = NULL if blob is None else "\\\\x" + _checked_hex(blob)
                line = f"\t{esc(ns)}\t{esc(ch)}\t{esc(ver)}\t{esc(typ)}\t{data}\n"
                self.blob_pat.append(_pattern(line))
            self.write_pat = [[(w, _pattern(_write_tail(w))) for w in ws] for ws in self.writes]
        else:
            self.meta_pat = [_pattern(self._meta_text(k)) for k in range(n)]
        return self

    def _meta_text(self, k: int) -> str:
        """The metadata as SqliteSaver's json.dumps writes it; the tags last, as
        get_checkpoint_metadata appends them after the loop's own keys."""
        meta, tagged = {}, False
        for key, value in self.metadata[k].items():
            if key == "parents":
                value = {ns: f"@@p{pos}@@" for ns, pos in value.items()}
            elif key in TAG_KEYS:
                tagged = True
                continue
            meta[key] = value
        text = json.dumps(meta, ensure_ascii=False)
        return text[:-1] + "@@tags@@}" if tagged else text


def _write_tail(w: Write) -> str:
    typ = NULL if w.type is None else esc(w.type)
    return (f"\t{esc(w.task_id)}\t{w.idx}\t{esc(w.channel)}\t{typ}\t\\\\x{_checked_hex(w.value)}"
            f"\t{esc(w.task_path)}\n")


def _checked_hex(blob: bytes) -> str:
    """The hex of a blob, checked so that replacing the token's hex in it is
    the same as replacing the token in the bytes (no match across bytes)."""
    blob = bytes(blob)
    h = blob.hex()
    if _TOKEN_HEX in h:
        probe = token_for(99)
        if blob.replace(_TOKEN_B, probe.encode()).hex() != h.replace(_TOKEN_HEX, probe.encode().hex()):
            raise RuntimeError("the token's hex appears across byte boundaries")
    return h


def _cv_key(versions) -> str:
    return json.dumps(versions, sort_keys=True, separators=(",", ":"))


def _index(rows, name, thread_id, layout) -> Template:
    """rows: (ns, id, parent id, checkpoint (dict or bytes), versions, metadata dict)."""
    rows = sorted(rows, key=lambda r: r[1])
    t = Template(name=name, thread_id=thread_id, layout=layout)
    pos = {(r[0], r[1]): k for k, r in enumerate(rows)}
    by_id = {r[1]: k for k, r in enumerate(rows)}
    t0 = uuid6_time(rows[0][1])
    for k, (ns, cid, parent, ck, versions, meta) in enumerate(rows):
        t.ns.append(ns)
        t.ids.append(cid)
        t.parent.append(pos[(ns, parent)] if parent else None)
        t.clock.append((uuid.UUID(cid).int >> 48) & 0xFFFF)
        t.offset_us.append((uuid6_time(cid) - t0) // timedelta(microseconds=1))
        meta = dict(meta)
        meta["parents"] = {pns: by_id[pid] for pns, pid in (meta.get("parents") or {}).items()}
        t.metadata.append(meta)
        t.versions.append(versions)
        t.checkpoint.append(ck)
        t.writes.append([])
    return t, pos


def capture_pg(conn, thread_id: str, name: str) -> Template:
    """Read a template thread's rows from a PostgresSaver database."""
    cur = conn.cursor()
    rows = cur.execute(
        "SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata"
        " FROM checkpoints WHERE thread_id = %s", (thread_id,)).fetchall()
    if not rows:
        raise RuntimeError(f"template thread {thread_id!r} has no checkpoints")
    rows = [(ns, cid, par, {k: v for k, v in ck.items() if k not in ("id", "ts")},
             ck.get("channel_versions") or {}, meta) for ns, cid, par, ck, meta in rows]
    t, pos = _index(rows, name, thread_id, "postgres")
    for ns, cid, task_id, task_path, idx, channel, typ, blob in cur.execute(
        "SELECT checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob"
        " FROM checkpoint_writes WHERE thread_id = %s ORDER BY checkpoint_id, task_id, idx",
        (thread_id,),
    ):
        t.writes[pos[(ns, cid)]].append(Write(task_id, task_path, idx, channel, typ, bytes(blob)))
    first = {}
    for k in range(len(t)):
        for ch, ver in t.versions[k].items():
            first.setdefault((t.ns[k], ch, ver), k)
    for ns, ch, ver, typ, blob in cur.execute(
        "SELECT checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs WHERE thread_id = %s",
        (thread_id,),
    ):
        if (ns, ch, ver) in first:  # a blob no checkpoint names is not copied
            t.blobs.append((first[(ns, ch, ver)], ns, ch, ver, typ, None if blob is None else bytes(blob)))
    t.blobs.sort(key=lambda b: (b[0], b[1], b[2], b[3]))
    t.has_token = (TOKEN in json.dumps(t.checkpoint) or any(b[5] and TOKEN.encode() in b[5] for b in t.blobs)
                   or any(TOKEN.encode() in w.value for ws in t.writes for w in ws))
    return t.finish().prepare()


def _ext(code, data):
    return ormsgpack.Ext(code, data)


_MSGPACK_OPT = ormsgpack.OPT_NON_STR_KEYS


def capture_sqlite(conn, thread_id: str, name: str) -> Template:
    """Read a template thread's rows from a SqliteSaver database."""
    rows = []
    for ns, cid, par, typ, blob, meta in conn.execute(
        "SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
        " FROM checkpoints WHERE thread_id = ?", (thread_id,)
    ):
        if typ != "msgpack":
            raise RuntimeError(f"template thread {thread_id!r}: checkpoint type {typ!r}, expected msgpack")
        blob = bytes(blob)
        ck = ormsgpack.unpackb(blob, ext_hook=_ext, option=_MSGPACK_OPT)
        if ormsgpack.packb(ck, option=_MSGPACK_OPT) != blob:
            raise RuntimeError("msgpack does not round-trip; cannot template it")
        if len(ck["id"]) != len(_PH_ID) or len(ck["ts"]) != len(_PH_TS):
            raise RuntimeError(f"template thread {thread_id!r}: unexpected id/ts {ck['id']!r} {ck['ts']!r}")
        ck["id"], ck["ts"] = _PH_ID, _PH_TS
        packed = ormsgpack.packb(ck, option=_MSGPACK_OPT)
        rows.append((ns, cid, par, packed, ck.get("channel_versions") or {}, json.loads(meta)))
    if not rows:
        raise RuntimeError(f"template thread {thread_id!r} has no checkpoints")
    t, pos = _index(rows, name, thread_id, "sqlite")
    for ns, cid, task_id, task_path, idx, channel, typ, value in conn.execute(
        "SELECT checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value"
        " FROM writes WHERE thread_id = ? ORDER BY checkpoint_id, task_id, idx", (thread_id,)
    ):
        t.writes[pos[(ns, cid)]].append(Write(task_id, task_path, idx, channel, typ, bytes(value or b"")))
    t.has_token = any(TOKEN.encode() in c for c in t.checkpoint) or any(
        TOKEN.encode() in w.value for ws in t.writes for w in ws)
    return t.finish().prepare()


# --------------------------------------------------------------------------
# Targets.


class _Target:
    """Layout-specific plumbing: open, prepare, template capture, row sinks."""

    def __init__(self, url: str):
        self.url = url
        self.kind = kind_of(url)
        self.parts = parse_database_url(url)

    # -- preparation --
    def prepare(self, recreate: bool):
        if self.kind == "postgres":
            self._prepare_pg(recreate)
        else:
            self._prepare_sqlite(recreate)

    def _server_url(self):
        from urllib.parse import urlsplit

        return urlsplit(self.url)._replace(path="/postgres").geturl()

    def _prepare_pg(self, recreate):
        name = self.parts["NAME"]
        with psycopg.connect(self._server_url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            with psycopg.connect(self.url) as conn:
                state, why = _pg_state(conn)
            if state == "foreign" or (state == "generated" and not recreate):
                raise SystemExit(f"{redact(self.url)}: {why}")
            if state == "generated":
                with psycopg.connect(self._server_url(), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                exists = False
        if not exists:
            with psycopg.connect(self._server_url(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(self.url) as saver:
            saver.setup()

    def _prepare_sqlite(self, recreate):
        path = Path(self.parts["NAME"])
        if path.exists():
            with closing(sqlite3.connect(path)) as conn:
                state, why = _sqlite_state(conn)
            if state == "foreign" or (state == "generated" and not recreate):
                raise SystemExit(f"{path}: {why}")
            if state == "generated":
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        from langgraph.checkpoint.sqlite import SqliteSaver

        with closing(sqlite3.connect(path, check_same_thread=False)) as conn:
            SqliteSaver(conn).setup()

    def state(self) -> tuple[str, str]:
        with closing(self.connect()) as conn:
            return _pg_state(conn) if self.kind == "postgres" else _sqlite_state(conn)

    # -- savers and templates --
    def saver(self):
        """A context manager yielding the LangGraph saver for this target."""
        if self.kind == "postgres":
            from langgraph.checkpoint.postgres import PostgresSaver

            return PostgresSaver.from_conn_string(self.url)
        from langgraph.checkpoint.sqlite import SqliteSaver

        return SqliteSaver.from_conn_string(self.parts["NAME"])

    def connect(self):
        if self.kind == "postgres":
            return psycopg.connect(self.url)
        return sqlite3.connect(self.parts["NAME"])

    def templates(self, conn) -> list[Template]:
        """The template threads stored in the target, in TEMPLATES order."""
        out = []
        for name, _, _ in TEMPLATES:
            tid = TEMPLATE_PREFIX + name
            if self.kind == "postgres":
                out.append(capture_pg(conn, tid, name))
            else:
                out.append(capture_sqlite(conn, tid, name))
        return out


_LANGGRAPH_TABLES = {
    "postgres": {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"},
    "sqlite": {"checkpoints", "writes"},
}
_HAS_ROWS = "has checkpoints already: use --recreate to start over or --append N to add"
# Range scans on the thread_id index: is any thread not one of ours?
_FOREIGN_SQL = "SELECT thread_id FROM checkpoints WHERE thread_id < 'bench' OR thread_id >= 'benci' LIMIT 1"


def _pg_state(conn) -> tuple[str, str]:
    """("empty" | "generated" | "foreign", why): may we write here, or recreate it?"""
    tables = {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")}
    return _state(conn, tables, "postgres")


def _sqlite_state(conn) -> tuple[str, str]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return _state(conn, tables, "sqlite")


def _state(conn, tables, kind):
    others = {t for t in tables - _LANGGRAPH_TABLES[kind] if not t.startswith("sqlite_stat")}
    if others:
        return "foreign", f"holds other tables ({', '.join(sorted(others))}); refusing to touch it"
    if "checkpoints" not in tables or not conn.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone():
        return "empty", "no checkpoints"
    foreign = conn.execute(_FOREIGN_SQL).fetchone()
    if foreign:
        return "foreign", f"holds threads that are not generated (e.g. {foreign[0]!r}); refusing to touch it"
    return "generated", _HAS_ROWS


class _Writer(QueuedLibpqWriter):
    """psycopg's queued COPY writer (a thread per stream, so a busy table never
    stalls the other two) with a short queue: at most ~8 MB in flight each."""

    def __init__(self, cursor):
        super().__init__(cursor)
        self._queue = queue.Queue(maxsize=64)


class _PgSink:
    """COPY text rows into the three tables.

    Bulk: three connections, one COPY each, streaming, so PostgreSQL loads the
    tables in parallel. `single`: one connection, one transaction, blobs, then
    checkpoints, then writes (the order of LangGraph's own commits).
    """

    TABLES = {
        "blobs": "COPY checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) FROM STDIN",
        "checkpoints": "COPY checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,"
                       " checkpoint, metadata) FROM STDIN",
        "writes": "COPY checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel,"
                  " type, blob, task_path) FROM STDIN",
    }
    FLUSH = 4000

    def __init__(self, url, stack: ExitStack, single: bool = False):
        self.single = single
        self.bufs = {name: [] for name in self.TABLES}
        self.counts = dict.fromkeys(self.TABLES, 0)
        if single:
            self.conn = stack.enter_context(psycopg.connect(url))
            return
        self.copies = {}
        for name, sql in self.TABLES.items():
            conn = stack.enter_context(psycopg.connect(url))
            cur = conn.cursor()
            self.copies[name] = stack.enter_context(cur.copy(sql, writer=_Writer(cur)))

    def add(self, table, line):
        buf = self.bufs[table]
        buf.append(line)
        if len(buf) >= self.FLUSH and not self.single:
            self._flush(table)

    def _flush(self, table):
        buf = self.bufs[table]
        self.copies[table].write("".join(buf))
        self.counts[table] += len(buf)
        buf.clear()

    def close(self):
        if not self.single:
            for table in self.TABLES:
                self._flush(table)
            return
        cur = self.conn.cursor()
        for table, sql in self.TABLES.items():
            with cur.copy(sql) as cp:
                cp.write("".join(self.bufs[table]))
            self.counts[table] += len(self.bufs[table])
        self.conn.commit()


class _SqliteSink:
    FLUSH = 5000

    def __init__(self, path, stack: ExitStack):
        self.conn = stack.enter_context(closing(sqlite3.connect(path)))
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN")
        self.bufs = {"checkpoints": [], "writes": []}
        self.counts = {"checkpoints": 0, "blobs": 0, "writes": 0}

    SQL = {
        "checkpoints": "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,"
                       " type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
        "writes": "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx,"
                  " channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    }

    def add(self, table, row):
        buf = self.bufs[table]
        buf.append(row)
        if len(buf) >= self.FLUSH:
            self._flush(table)

    def _flush(self, table):
        self.conn.executemany(self.SQL[table], self.bufs[table])
        self.counts[table] += len(self.bufs[table])
        self.bufs[table].clear()

    def close(self):
        for table in self.bufs:
            self._flush(table)
        self.conn.commit()


# --------------------------------------------------------------------------
# Row emission: one thread (or the continuation of one).


def _thread_vals(tags: dict, i: int) -> tuple[dict, dict]:
    """Slot values for COPY text (PG) and for plain JSON (SQLite)."""
    tok = token_for(i)
    entries = "".join(f", {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in tags.items())
    plain = {"tags": entries, "tok": tok, "htok": tok.encode().hex()}
    copy = {k: esc(v) for k, v in plain.items()}
    return copy, plain


def _emit(t: Template, sink, thread_id: str, i: int, tags: dict, ids: list, times: list, lo: int, hi: int):
    """Rows of positions lo..hi-1 of `t` for thread `thread_id` (number i), whose
    positions 0..lo-1 exist already; ids/times cover 0..hi-1.

    Also emits the write rows of older positions that become due now that their
    child exists (LangGraph writes them after their checkpoint, too).
    """
    copy_vals, plain_vals = _thread_vals(tags, i)
    if t.layout == "postgres":
        th = esc(thread_id)
        vals = copy_vals
        for b in range(t.blob_count[lo], t.blob_count[hi]):
            sink.add("blobs", th + t.blob_pat[b](vals, ids))
        for k in range(lo, hi):
            vals["id"], vals["ts"] = ids[k], iso_ts(times[k])
            p = t.parent[k]
            sink.add("checkpoints", f"{th}\t{t.ns_esc[k]}\t{ids[k]}\t{NULL if p is None else ids[p]}\t"
                                    f"{t.ck_pat[k](vals, ids)}\t{t.meta_pat[k](vals, ids)}\n")
        full = hi == len(t.ids)
        for k in range(hi):
            pats = t.write_pat[k]
            if not pats:
                continue
            if lo == 0 and (full or t.child_min[k] < hi):
                chosen = pats
            else:
                chosen = [pats[x] for x in t.new_writes(k, lo, hi)]
            head = f"{th}\t{t.ns_esc[k]}\t{ids[k]}"
            for _, pat in chosen:
                sink.add("writes", head + pat(vals, ids))
    else:
        vals = plain_vals
        tok = vals["tok"].encode() if t.has_token else None
        for k in range(lo, hi):
            blob = t.checkpoint[k].replace(_PH_ID_B, ids[k].encode()).replace(_PH_TS_B, iso_ts(times[k]).encode())
            if tok:
                blob = blob.replace(_TOKEN_B, tok)
            p = t.parent[k]
            meta = t.meta_pat[k](vals, ids).encode()
            sink.add("checkpoints", (thread_id, t.ns[k], ids[k], None if p is None else ids[p],
                                     "msgpack", blob, meta))
        for k in range(hi):
            for x in t.new_writes(k, lo, hi):
                w = t.writes[k][x]
                value = w.value.replace(_TOKEN_B, tok) if tok else w.value
                sink.add("writes", (thread_id, t.ns[k], ids[k], w.task_id, w.task_path, w.idx,
                                    w.channel, w.type, value))


def _gaps(t: Template, lo: int, hi: int, rng: random.Random, hurry: bool = False) -> list:
    """Microseconds between positions lo-1..hi-1: model latency inside a run,
    human think time between runs (and before a resume); seconds if `hurry`."""
    out = []
    for k in range(max(lo, 1), hi):
        if t.run_end[k - 1]:
            if hurry:
                gap = rng.uniform(1, 20)
            elif rng.random() < 0.12:
                gap = rng.uniform(3600, 10 * 86400)
            else:
                gap = rng.expovariate(1 / 900)
            out.append(int(gap * _US) + 1)
        else:
            out.append(max(1, t.offset_us[k] - t.offset_us[k - 1]) + rng.randint(200_000, 4_000_000))
    return out


def _times(start: int, gaps: list) -> list:
    out, t = [], start
    if t % _US == 0:
        t += 1  # keeps ts at 32 characters (isoformat drops .000000)
    out.append(t)
    for g in gaps:
        t += g
        if t % _US == 0:
            t += 1
        out.append(t)
    return out


def _new_ids(t: Template, times: list, lo: int, rng: random.Random) -> list:
    return [uuid6_at(times[k - lo], t.clock[k], rng.getrandbits(48)) for k in range(lo, lo + len(times))]


# --------------------------------------------------------------------------
# The plan: which template and how many checkpoints per thread.


def plan_counts(templates: list, n_threads: int, total: int, rng: random.Random) -> list:
    """[(template index, prefix length)] for n_threads summing exactly to total."""
    if n_threads <= 0:
        if total:
            raise ValueError("checkpoints without threads")
        return []
    biggest = max(len(t) for t in templates)
    if total < n_threads or total > n_threads * biggest:
        raise ValueError(f"cannot spread {total} checkpoints over {n_threads} threads "
                         f"(between 1 and {biggest} per thread)")
    weights = [w for _, _, w in TEMPLATES]
    sigma = 0.75
    mu = math.log(total / n_threads) - sigma * sigma / 2
    plan, s = [], 0
    for _ in range(n_threads):
        ti = rng.choices(range(len(templates)), weights=weights)[0]
        t = templates[ti]
        want = max(1.0, rng.lognormvariate(mu, sigma))
        b = t.boundaries
        x = bisect.bisect_left(b, want)
        n = b[x] if x == 0 or (x < len(b) and b[x] - want < want - b[x - 1]) else b[x - 1]
        plan.append([ti, n])
        s += n
    # Move whole runs (boundary to boundary) while the difference is large...
    diff, tries = total - s, 0
    while abs(diff) > 8 and tries < 50 * n_threads:
        tries += 1
        j = rng.randrange(n_threads)
        ti, n = plan[j]
        b = templates[ti].boundaries
        if diff > 0:
            nxt = next((x for x in b if x > n), None)
            if nxt is not None and nxt - n <= diff:
                plan[j][1], diff = nxt, diff - (nxt - n)
        else:
            prv = next((x for x in reversed(b) if x < n), None)
            if prv is not None and n - prv <= -diff:
                plan[j][1], diff = prv, diff + (n - prv)
    # ...then single checkpoints (a few threads end mid-run).
    while diff:
        j = rng.randrange(n_threads)
        ti, n = plan[j]
        if diff > 0 and n < len(templates[ti]):
            plan[j][1] += 1
            diff -= 1
        elif diff < 0 and n > 1:
            plan[j][1] -= 1
            diff += 1
    return [tuple(p) for p in plan]


# --------------------------------------------------------------------------
# Entry points.


def _log_default(msg):
    print(msg, flush=True)


def generate(url: str, threads: int | None = None, checkpoints: int | None = None, seed: int = 1,
             recreate: bool = False, days: int = 120, now: datetime | None = None,
             vacuum: bool = True, log=_log_default) -> dict:
    """Fill `url` with `threads` threads and exactly `checkpoints` checkpoints.

    The first len(TEMPLATES) threads are the templates, run through LangGraph.
    Returns counts and seconds.
    """
    started = time.monotonic()
    target = _Target(url)
    d_threads, d_checkpoints = DEFAULT_SIZES[target.kind]
    threads = d_threads if threads is None else threads
    checkpoints = d_checkpoints if checkpoints is None else checkpoints
    if threads < len(TEMPLATES) or not threads + 300 <= checkpoints <= threads * 40:
        # Checked before anything is written (the templates hold about 270 checkpoints).
        raise ValueError(f"need at least {len(TEMPLATES)} threads (one per template) and between "
                         f"threads + 300 and 40 x threads checkpoints; got {threads} and {checkpoints}")
    target.prepare(recreate)
    rng = random.Random(seed)
    picker = TagPicker()
    now = now or datetime.now(UTC)
    tags = [picker.pick(rng) for _ in range(len(TEMPLATES))]

    with target.saver() as saver:
        for (name, runner, _), tg in zip(TEMPLATES, tags):
            runner(saver, {"configurable": {"thread_id": TEMPLATE_PREFIX + name, **tg}})
    with closing(target.connect()) as conn:
        templates = target.templates(conn)
        if target.kind == "postgres":
            conn.rollback()
    t_templates = time.monotonic() - started
    in_templates = sum(len(t) for t in templates)
    log(f"templates: {', '.join(f'{t.name} ({len(t)})' for t in templates)} in {t_templates:.1f}s")

    rest = checkpoints - in_templates
    plan = plan_counts(templates, threads - len(TEMPLATES), rest, rng)
    counts = _fill(target, templates, plan, picker, rng, first=len(TEMPLATES),
                   lo_us=_us(now - timedelta(days=days)), hi_us=_us(now), log=log)
    if vacuum:
        _vacuum(target)
    result = {**source_counts(url), "seconds": round(time.monotonic() - started, 1),
              "copy_seconds": counts["seconds"], "database_bytes": database_bytes(url)}
    log(json.dumps(result))
    return result


def _fill(target, templates, plan, picker, rng, first, lo_us, hi_us, log):
    """Write the threads of `plan`, numbered from `first`."""
    t0 = time.monotonic()
    with ExitStack() as stack:
        if target.kind == "postgres":
            sink = _PgSink(target.url, stack)
        else:
            sink = _SqliteSink(target.parts["NAME"], stack)
        window = hi_us - lo_us
        for j, (ti, n) in enumerate(plan):
            i = first + j
            t = templates[ti]
            tags = picker.pick(rng)
            gaps = _gaps(t, 0, n, rng)
            span = sum(gaps)
            if span > window * 0.8:  # squeeze very long histories into the window
                f = window * 0.8 / span
                gaps = [max(1, int(g * f)) for g in gaps]
                span = sum(gaps)
            # Linearly rising density: usage grows, so the daily chart climbs.
            start = lo_us + int((hi_us - span - _US - lo_us) * math.sqrt(rng.random()))
            times = _times(start, gaps)
            ids = _new_ids(t, times, 0, rng)
            _emit(t, sink, thread_name(i), i, tags, ids, times, 0, n)
            if log and j and j % 20000 == 0:
                el = time.monotonic() - t0
                log(f"  {j:,} threads, {sink.counts['checkpoints']:,}+ checkpoints, {el:.0f}s")
        sink.close()
    # Leaving the ExitStack ended the COPYs and committed each connection.
    return {**sink.counts, "seconds": round(time.monotonic() - t0, 1)}


def _vacuum(target):
    if target.kind == "postgres":
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    else:
        with closing(sqlite3.connect(target.parts["NAME"])) as conn:
            conn.execute("ANALYZE")


def source_counts(url: str) -> dict:
    """Rows in the source, by SQL: threads, checkpoints, blobs, writes."""
    target = _Target(url)
    with closing(target.connect()) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        out = {"threads": one("SELECT count(DISTINCT thread_id) FROM checkpoints"),
               "checkpoints": one("SELECT count(*) FROM checkpoints")}
        if target.kind == "postgres":
            out["blobs"] = one("SELECT count(*) FROM checkpoint_blobs")
            out["writes"] = one("SELECT count(*) FROM checkpoint_writes")
        else:
            out["blobs"] = 0
            out["writes"] = one("SELECT count(*) FROM writes")
    return out


def database_bytes(url: str) -> int:
    """pg_database_size, or the SQLite file size (with its WAL)."""
    target = _Target(url)
    if target.kind == "postgres":
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    path = target.parts["NAME"]
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _locate(target, conn, templates, thread_ids) -> dict:
    """thread_id -> (template, prefix length, ids in time order, latest tags), for
    threads that are prefixes of a template (others are left out)."""
    keys = {}
    for t in templates:
        for key, k in t.keys.items():
            keys[key] = (t, k)
    rows = {}
    if target.kind == "postgres":
        q = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, checkpoint->'channel_versions', metadata"
            " FROM checkpoints WHERE thread_id = ANY(%s) ORDER BY thread_id, checkpoint_id",
            (list(thread_ids),))
        for tid, ns, cid, cv, meta in q:
            rows.setdefault(tid, []).append((ns, cid, cv, meta))
    else:
        for tid in thread_ids:
            for ns, cid, blob, meta in conn.execute(
                "SELECT checkpoint_ns, checkpoint_id, checkpoint, metadata FROM checkpoints"
                " WHERE thread_id = ? ORDER BY checkpoint_id", (tid,)
            ):
                cv = ormsgpack.unpackb(blob, ext_hook=_ext, option=_MSGPACK_OPT).get("channel_versions")
                rows.setdefault(tid, []).append((ns, cid, cv, json.loads(meta)))
    out = {}
    for tid, rs in rows.items():
        ns, cid, cv, meta = rs[-1]
        hit = keys.get((ns, _cv_key(cv or {})))
        if hit is None or hit[1] + 1 != len(rs):
            continue
        out[tid] = (hit[0], len(rs), [r[1] for r in rs], {k: meta[k] for k in TAG_KEYS if k in meta})
    return out


def append(url: str, n: int, seed: int | None = None, now: datetime | None = None, log=_log_default) -> dict:
    """Add exactly `n` checkpoints, all at "now" (the last minute or so).

    Half continue existing threads with their templates' next run (plus the
    write rows now due on their former latest checkpoint), half start new
    threads. One transaction, as if many agents had just written.
    """
    started = time.monotonic()
    if n <= 0:
        raise ValueError("append needs a positive number of checkpoints")
    target = _Target(url)
    state, why = target.state()
    if state != "generated":
        raise SystemExit(f"{redact(url)}: {why if state == 'foreign' else 'no generated source here'}")
    rng = random.Random(seed if seed is not None else time.time_ns())
    picker = TagPicker()
    now_us = _us(now or datetime.now(UTC))
    want_old = n // 2
    with closing(target.connect()) as conn:
        templates = target.templates(conn)
        last = _last_number(target, conn)
        # Random existing threads until their templates have room for the half.
        chosen, room = {}, 0
        for _ in range(50):
            if room >= want_old:
                break
            batch = {thread_name(rng.randrange(len(TEMPLATES), last + 1)) for _ in range(max(64, want_old // 3))}
            for tid, info in _locate(target, conn, templates, batch - set(chosen)).items():
                t, have = info[0], info[1]
                if have < len(t) and room < want_old:
                    chosen[tid] = info
                    room += next(b for b in t.boundaries if b > have) - have  # its next run
        if target.kind == "postgres":
            conn.rollback()
    if room < want_old:
        raise SystemExit(f"existing threads have room for only {room} more checkpoints")

    added_old, touched = 0, []
    with ExitStack() as stack:
        if target.kind == "postgres":
            sink = _PgSink(url, stack, single=True)
        else:
            sink = _SqliteSink(target.parts["NAME"], stack)
        for tid, (t, have, ids, tags) in chosen.items():
            if added_old >= want_old:
                break
            nxt = next(b for b in t.boundaries if b > have)  # the end of the next run
            hi = min(nxt, have + want_old - added_old)
            gaps = _gaps(t, have, hi, rng)  # gaps[0] follows the current latest checkpoint
            latest = _us(uuid6_time(ids[-1]))
            start = max(latest + 1, now_us - sum(gaps[1:]) - rng.randint(1000, 30 * _US))
            times = [0] * have + _times(start, gaps[1:])
            new_ids = ids + _new_ids(t, times[have:], have, rng)
            _emit(t, sink, tid, _number_of(tid), tags, new_ids, times, have, hi)
            added_old += hi - have
            touched.append(tid)
        new_total = n - added_old
        new_threads = min(new_total, max(1, round(new_total / 10)))
        plan = plan_counts(templates, new_threads, new_total, rng) if new_total else []
        for j, (ti, k) in enumerate(plan):
            t, i = templates[ti], last + 1 + j
            gaps = _gaps(t, 0, k, rng, hurry=True)
            times = _times(now_us - sum(gaps) - rng.randint(1000, 60 * _US), gaps)
            _emit(t, sink, thread_name(i), i, picker.pick(rng), _new_ids(t, times, 0, rng), times, 0, k)
        sink.close()
    result = {
        "added": sink.counts["checkpoints"],
        "continued_threads": len(touched),
        "checkpoints_on_existing_threads": added_old,
        "new_threads": len(plan),
        "blobs": sink.counts["blobs"],
        "writes": sink.counts["writes"],
        "seconds": round(time.monotonic() - started, 2),
    }
    log(json.dumps(result))
    result["thread_ids"] = touched + [thread_name(last + 1 + j) for j in range(len(plan))]
    return result


def _number_of(thread_id: str) -> int:
    m = re.search(r"(\d{6,})", thread_id)
    return int(m.group(1)) if m else 0


def _last_number(target, conn) -> int:
    """The highest thread number generated so far (plain ids)."""
    sql = "SELECT max(thread_id) FROM checkpoints WHERE thread_id >= 'bench-0' AND thread_id < 'bench-:'"
    row = conn.execute(sql).fetchone()
    return _number_of(row[0]) if row and row[0] else len(TEMPLATES)


# --------------------------------------------------------------------------
# Check: load generated threads through LangGraph's own savers.


def _retoken(value, tok):
    if isinstance(value, str):
        return value.replace(TOKEN, tok)
    if isinstance(value, list):
        return [_retoken(v, tok) for v in value]
    if isinstance(value, dict):
        return {k: _retoken(v, tok) for k, v in value.items()}
    if hasattr(value, "model_copy") and hasattr(value, "content"):  # a message
        return value.model_copy(update={"content": _retoken(value.content, tok)})
    return value


def check(url: str, sample: int = 200, seed: int = 1, thread_ids=None, log=_log_default) -> list[str]:
    """Load threads through PostgresSaver/SqliteSaver and compare them with their
    templates: `thread_ids`, or a random sample plus some odd ids. Returns the
    problems found (empty: all good)."""
    target = _Target(url)
    rng = random.Random(seed)
    problems = []
    with closing(target.connect()) as conn:
        templates = target.templates(conn)
        if thread_ids is None:
            last = _last_number(target, conn)
            wanted = {thread_name(rng.randrange(len(TEMPLATES), last + 1)) for _ in range(sample)}
            wanted |= {thread_name(i) for i in range(7, min(last, 5000), 500)}  # odd ids
        else:
            wanted = set(thread_ids)
        located = _locate(target, conn, templates, wanted)
        if target.kind == "postgres":
            conn.rollback()
    problems += [f"{tid}: not a prefix of any template" for tid in sorted(wanted - set(located))
                 if thread_ids is not None]
    if not located:
        return problems or [f"none of {len(wanted)} sampled threads is a prefix of a template"]
    with target.saver() as saver:
        for tid, (t, n, ids, tags) in sorted(located.items()):
            problems += _check_thread(saver, t, tid, n, ids, tags)
    log(f"checked {len(located)} threads: {len(problems)} problems")
    return problems


def _check_thread(saver, t: Template, tid: str, n: int, ids: list, tags: dict) -> list[str]:
    out = []
    tok = token_for(_number_of(tid))
    root = [k for k in range(n) if t.ns[k] == ""]
    if not root:
        return out
    j = root[-1]
    got = saver.get_tuple({"configurable": {"thread_id": tid}})
    if got is None:
        return [f"{tid}: get_tuple returned nothing"]
    want = saver.get_tuple({"configurable": {"thread_id": t.thread_id, "checkpoint_ns": "",
                                             "checkpoint_id": t.ids[j]}})
    if got.config["configurable"]["checkpoint_id"] != ids[j]:
        out.append(f"{tid}: latest is {got.config['configurable']['checkpoint_id']}, expected {ids[j]}")
    if got.checkpoint["channel_values"] != _retoken(want.checkpoint["channel_values"], tok):
        out.append(f"{tid}: channel values differ from template {t.name} at position {j}")
    if got.checkpoint["ts"] != uuid6_time(ids[j]).isoformat():
        out.append(f"{tid}: ts {got.checkpoint['ts']} is not the id's time")
    due = {(w.task_id, w.channel) for w in t.writes_for(j, n)}
    if {(w[0], w[1]) for w in got.pending_writes or []} != due:
        out.append(f"{tid}: pending writes differ")
    for key in TAG_KEYS:
        if key not in got.metadata:
            out.append(f"{tid}: tag {key} missing from metadata")
    listed = list(saver.list({"configurable": {"thread_id": tid, "checkpoint_ns": ""}}))
    listed_ids = [c.config["configurable"]["checkpoint_id"] for c in listed]
    if listed_ids != sorted((ids[k] for k in root), reverse=True):
        out.append(f"{tid}: list returned {len(listed_ids)} checkpoints, expected {len(root)}")
    known = set(listed_ids)
    for c in listed:
        parent = c.parent_config and c.parent_config["configurable"]["checkpoint_id"]
        if parent and parent not in known:
            out.append(f"{tid}: parent {parent} of {c.config['configurable']['checkpoint_id']} not listed")
    return out


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="postgresql://... or sqlite:////absolute/path")
    p.add_argument("--threads", type=int, help="threads (default 100000; SQLite 10000)")
    p.add_argument("--checkpoints", type=int, help="checkpoints (default 1000000; SQLite 100000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--days", type=int, default=120, help="history spread over this many days")
    p.add_argument("--recreate", action="store_true", help="drop a previously generated source first")
    p.add_argument("--append", type=int, metavar="N", help="add N checkpoints at now to an existing source")
    p.add_argument("--check", action="store_true", help="load sample threads through LangGraph's saver")
    p.add_argument("--sample", type=int, default=200, help="threads to check")
    args = p.parse_args(argv)
    try:
        kind_of(args.url)
    except ValueError as exc:
        p.error(str(exc))
    try:
        return _run(p, args)
    except (psycopg.OperationalError, sqlite3.OperationalError) as exc:
        print(f"{redact(args.url)}: {exc}", file=sys.stderr)
        return 1


def _run(p, args) -> int:
    if args.append is not None:
        if args.append <= 0:
            p.error("--append needs a positive count")
        append(args.url, args.append, seed=None)
    elif not args.check:
        try:
            generate(args.url, args.threads, args.checkpoints, seed=args.seed, recreate=args.recreate,
                     days=args.days)
        except ValueError as exc:
            p.error(str(exc))
    if args.check:
        problems = check(args.url, sample=args.sample, seed=args.seed)
        for line in problems[:50]:
            print("PROBLEM", line)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
