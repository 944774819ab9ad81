"""Demo data: real LangGraph graphs writing into a local SQLite checkpoint DB.

The graphs stand in for a support agent: multi-turn chats per tenant and user,
a research step run as a subgraph, an approval that waits at an interrupt,
and uploaded files externalized to the local blob store (the state keeps a
file:// reference). Checkpoint ids are uuid6 and encode their creation time,
so the demo spreads its runs over past weeks by running them under a shifted
clock; that gives the growth charts a history to show.
"""

import random
import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import id as lg_id
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from checkpoints.sources import open_reader

TENANTS = ["acme", "globex", "initech", "umbrella"]
PLANS = ["free", "pro", "enterprise"]
QUESTIONS = [
    "Where is my invoice for October?",
    "The export to CSV fails with a timeout.",
    "Can you summarise the attached contract?",
    "How do I rotate my API credentials?",
    "Our dashboard shows stale data since Monday.",
]


class SupportState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    turns: int
    topic: str
    attachment: str
    research: dict
    approved: bool


class ResearchState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    research: dict


def _answer(state: SupportState):
    turns = state.get("turns", 0) + 1
    question = state["messages"][-1].content
    reply = f"(turn {turns}) Thanks, I looked into: {question} " + "Here is what I found. " * (3 + turns)
    return {"messages": [AIMessage(reply)], "turns": turns, "topic": question.split()[0].lower()}


def _research(state: ResearchState):
    return {"research": {"sources": ["kb/article-12", "kb/article-40"], "confidence": 0.82},
            "messages": [AIMessage("Research notes attached.")]}


def _approve(state: SupportState):
    decision = interrupt({"question": "Send a refund to the customer?"})
    return {"approved": decision == "yes", "messages": [AIMessage(f"Refund decision: {decision}")]}


def support_graph(saver):
    research = StateGraph(ResearchState)
    research.add_node("lookup", _research)
    research.add_edge(START, "lookup")
    research.add_edge("lookup", END)

    g = StateGraph(SupportState)
    g.add_node("answer", _answer)
    g.add_node("research", research.compile())
    g.add_edge(START, "answer")
    g.add_edge("answer", "research")
    g.add_edge("research", END)
    return g.compile(checkpointer=saver)


def approval_graph(saver):
    g = StateGraph(SupportState)
    g.add_node("answer", _answer)
    g.add_node("approve", _approve)
    g.add_edge(START, "answer")
    g.add_edge("answer", "approve")
    g.add_edge("approve", END)
    return g.compile(checkpointer=saver)


@contextmanager
def _clock_at(moment: datetime):
    """Run LangGraph's uuid6 generator as if it were `moment`."""
    real = lg_id.time

    class _Shifted:
        @staticmethod
        def time_ns():
            return int(moment.timestamp() * 1e9) + (real.time_ns() % 1_000_000)

    lg_id.time = _Shifted
    try:
        yield
    finally:
        lg_id.time = real


def _write_file(blob_root: Path, user: str, name: str, size: int, rng) -> str:
    path = blob_root / "uploads" / user / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF-1.4\n" + rng.randbytes(size))
    return path.resolve().as_uri()


def build(db_path: Path, blob_root: Path, *, threads: int = 40, days: int = 45, seed: int = 7) -> dict:
    """Write the demo checkpoint DB; returns counts. Replaces an existing file."""
    rng = random.Random(seed)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(db_path, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    support, approval = support_graph(saver), approval_graph(saver)
    now = datetime.now(UTC)
    lg_id._last_v6_timestamp = None
    starts = sorted(now - timedelta(days=days * rng.random() ** 1.5, minutes=30) for _ in range(threads))
    files = 0
    for i, start in enumerate(starts):
        tenant = rng.choices(TENANTS, weights=[6, 3, 2, 1])[0]
        user = f"u{rng.randint(1, 12)}"
        thread_id = f"{tenant}/{user}/conv-{i:03d}"
        cfg = {"configurable": {"thread_id": thread_id, "tenant": tenant, "user_id": user,
                                "plan": rng.choice(PLANS), "channel": rng.choice(["web", "email", "slack"])}}
        graph = approval if i % 9 == 4 else support
        first = {"messages": [HumanMessage(rng.choice(QUESTIONS))]}
        if i % 5 == 2:
            uri = _write_file(blob_root, user, f"report-{i:03d}.pdf", rng.randint(20_000, 400_000), rng)
            first["attachment"] = uri
            files += 1
        for turn in range(rng.randint(1, 6)):
            with _clock_at(start + timedelta(minutes=7 * turn)):
                message = first if turn == 0 else {"messages": [HumanMessage(rng.choice(QUESTIONS))]}
                graph.invoke(message, cfg)
                if graph is approval and turn < 2:
                    graph.invoke(Command(resume=rng.choice(["yes", "no"])), cfg)
                if graph is approval and turn >= 2:
                    break  # left waiting at the interrupt: pending writes
    # A file referenced in state whose object was lost: shown as missing.
    cfg = {"configurable": {"thread_id": "acme/u1/lost-file", "tenant": "acme", "user_id": "u1", "plan": "pro"}}
    support.invoke({"messages": [HumanMessage("See the attached scan.")],
                    "attachment": (blob_root / "uploads" / "u1" / "deleted-scan.pdf").resolve().as_uri()}, cfg)
    conn.close()
    with open_reader(f"sqlite:///{Path(db_path).resolve()}") as reader:
        count = reader.totals()["checkpoints"]
    return {"threads": threads + 1, "checkpoints": count, "files": files}
