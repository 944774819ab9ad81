"""Real LangGraph graphs that write real checkpoints for the tests.

`run_scenarios(saver)` drives a mix of what production threads look like:
plain multi-step runs, a subgraph, an interrupt and its resume, update_state,
a fork from an old checkpoint, a file reference in state and a bytes value.
"""

import operator
import uuid
from typing import Annotated, TypedDict

from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt


class ChatState(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    counter: int
    label: str
    attachment: str
    payload: bytes
    doc: dict


def _step(state: ChatState):
    n = state.get("counter", 0) + 1
    return {"messages": [f"step {n}: " + "x" * (20 * n)], "counter": n, "label": f"turn-{n}"}


def chat_graph(saver):
    g = StateGraph(ChatState)
    g.add_node("a", _step)
    g.add_node("b", _step)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    return g.compile(checkpointer=saver)


class SubState(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    counter: int


def _inner(state: SubState):
    return {"messages": ["from the subgraph"], "counter": state.get("counter", 0) + 10}


def subgraph_graph(saver):
    inner = StateGraph(SubState)
    inner.add_node("inner", _inner)
    inner.add_edge(START, "inner")
    inner.add_edge("inner", END)
    inner_compiled = inner.compile()  # inherits the parent checkpointer: namespace "sub:<task id>"

    outer = StateGraph(SubState)
    outer.add_node("before", lambda s: {"messages": ["before"]})
    outer.add_node("sub", inner_compiled)
    outer.add_edge(START, "before")
    outer.add_edge("before", "sub")
    outer.add_edge("sub", END)
    return outer.compile(checkpointer=saver)


def _ask(state: ChatState):
    answer = interrupt({"question": "approve?"})
    return {"messages": [f"answer: {answer}"], "label": "approved" if answer == "yes" else "rejected"}


def interrupt_graph(saver):
    g = StateGraph(ChatState)
    g.add_node("prepare", _step)
    g.add_node("ask", _ask)
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver)


def _attach(state: ChatState):
    return {
        "attachment": state.get("attachment") or "",
        "doc": {"file": state.get("attachment"), "pages": 3},
        "messages": [f"stored {state.get('attachment')}"],
    }


def file_graph(saver):
    g = StateGraph(ChatState)
    g.add_node("attach", _attach)
    g.add_edge(START, "attach")
    g.add_edge("attach", END)
    return g.compile(checkpointer=saver)


def delta_graph(saver):
    """A graph whose `log` channel is a (beta) DeltaChannel: prune and sweeps must leave it alone."""

    def extend(state, writes):
        out = list(state or [])
        for w in writes:
            out.extend(w)
        return out

    class DeltaState(TypedDict, total=False):
        log: Annotated[list, DeltaChannel(extend, snapshot_frequency=2)]
        n: int

    g = StateGraph(DeltaState)
    g.add_node("step", lambda s: {"log": ["step"], "n": s.get("n", 0) + 1})
    g.add_edge(START, "step")
    g.add_edge("step", END)
    return g.compile(checkpointer=saver)


def config(thread_id, **tags):
    return {"configurable": {"thread_id": thread_id, **tags}}


def run_scenarios(saver, prefix="t", file_uri="s3://bucket/uploads/u1/report.pdf"):
    """Write every scenario into `saver`; return the thread ids written."""
    threads = []

    def tid(name):
        t = f"{prefix}-{name}"
        threads.append(t)
        return t

    chat = chat_graph(saver)
    for i in range(3):
        cfg = config(tid(f"chat{i}"), tenant="acme" if i < 2 else "globex", user_id=f"u{i}", project="demo")
        for _ in range(2):
            chat.invoke({"messages": ["hello"]}, cfg)

    sub = subgraph_graph(saver)
    sub.invoke({"messages": ["go"]}, config(tid("sub"), tenant="acme"))

    asking = interrupt_graph(saver)
    cfg = config(tid("interrupt"), tenant="initech", priority=2)
    asking.invoke({"messages": ["please"]}, cfg)
    asking.invoke(Command(resume="yes"), cfg)
    waiting = config(tid("waiting"), tenant="initech", urgent=True)
    asking.invoke({"messages": ["later"]}, waiting)  # left at the interrupt: pending writes

    cfg = config(tid("update"), tenant="acme")
    chat.invoke({"messages": ["hi"]}, cfg)
    chat.update_state(cfg, {"label": "edited by hand", "messages": ["an edit"]})

    cfg = config(tid("fork"), tenant="acme")
    chat.invoke({"messages": ["one"]}, cfg)
    chat.invoke({"messages": ["two"]}, cfg)
    history = list(chat.get_state_history(cfg))
    old = history[len(history) // 2].config
    chat.update_state(old, {"label": "forked"})  # a fork: a new branch from an old checkpoint

    files = file_graph(saver)
    files.invoke({"attachment": file_uri}, config(tid("file"), tenant="acme", user_id="u1"))

    chat.invoke({"payload": b"\x00\x01binary" * 10, "messages": ["bytes"]}, config(tid("bytes")))
    return threads


def random_thread_id():
    return f"odd id/{uuid.uuid4().hex[:6]} ünï çødé"
