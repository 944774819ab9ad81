"""Real graphs with DeltaChannels (langgraph >= 1.2, beta) for the reconstruction tests (issue 14.1).

`items` is `DeltaChannel(operator.add)` on a list (each write one item) and
`messages` uses LangGraph's own `_messages_delta_reducer`; snapshots every
two updates, so threads cross several of them. The scenarios mix plain
runs, a RemoveMessage, REMOVE_ALL_MESSAGES, an edit by id, update_state, a
fork from an old checkpoint and an interrupt left pending.
"""

import operator
from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES, _messages_delta_reducer
from langgraph.types import Command, interrupt


class DeltaState(TypedDict, total=False):
    items: Annotated[list, DeltaChannel(operator.add, snapshot_frequency=2)]
    messages: Annotated[list, DeltaChannel(_messages_delta_reducer, snapshot_frequency=2)]
    n: int
    payload: bytes


def _reply(state):
    n = state.get("n", 0) + 1
    out = {"items": f"item {n}", "messages": [AIMessage(content=f"reply {n}", id=f"ai-{n}")], "n": n}
    if n == 3:
        out["messages"].append(RemoveMessage(id="ai-1"))
    if n == 6:
        out["messages"] = [RemoveMessage(id=REMOVE_ALL_MESSAGES), AIMessage(content="a fresh start", id="ai-6")]
    return out


def _tool(state):
    return {"items": {"tool": state.get("n", 0)}, "messages": [AIMessage(content=[{"type": "text", "text": "tool said"}], id=f"tool-{state.get('n', 0)}")]}


def delta_chat(saver):
    g = StateGraph(DeltaState)
    g.add_node("reply", _reply)
    g.add_node("tool", _tool)
    g.add_edge(START, "reply")
    g.add_edge("reply", "tool")
    g.add_edge("tool", END)
    return g.compile(checkpointer=saver)


def _ask(state):
    answer = interrupt("continue?")
    return {"messages": [HumanMessage(content=f"answer {answer}", id=f"answer-{state.get('n', 0)}")], "items": answer}


def delta_interrupt(saver):
    g = StateGraph(DeltaState)
    g.add_node("reply", _reply)
    g.add_node("ask", _ask)
    g.add_edge(START, "reply")
    g.add_edge("reply", "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver)


def run_delta_scenarios(saver, prefix="d"):
    """Write the scenarios; return [(graph, thread_id)]."""
    out = []
    chat = delta_chat(saver)
    cfg = {"configurable": {"thread_id": f"{prefix}-chat", "tenant": "acme", "api_key": "sk-secret"}}
    for turn in range(4):
        chat.invoke({"messages": [HumanMessage(content=f"question {turn}", id=f"h-{turn}")], "items": f"in {turn}"}, cfg)
    chat.update_state(cfg, {"messages": [AIMessage(content="edited by hand", id="ai-2"), RemoveMessage(id="h-0")],
                            "items": "edited"})
    chat.invoke({"messages": [HumanMessage(content="after the edit", id="h-9")], "payload": b"\x00\x01bin"}, cfg)
    out.append((chat, f"{prefix}-chat"))

    cfg = {"configurable": {"thread_id": f"{prefix}-fork"}}
    for turn in range(3):
        chat.invoke({"messages": [HumanMessage(content=f"q{turn}", id=f"q-{turn}")]}, cfg)
    history = list(chat.get_state_history(cfg))
    chat.update_state(history[len(history) // 2].config, {"messages": [HumanMessage(content="forked", id="fork-1")]})
    chat.invoke(None, {"configurable": {"thread_id": f"{prefix}-fork"}})
    out.append((chat, f"{prefix}-fork"))

    asking = delta_interrupt(saver)
    cfg = {"configurable": {"thread_id": f"{prefix}-ask"}}
    asking.invoke({"messages": [HumanMessage(content="go", id="go-1")]}, cfg)
    asking.invoke(Command(resume="yes"), cfg)
    asking.invoke({"messages": [HumanMessage(content="again", id="go-2")]}, cfg)  # left waiting
    out.append((asking, f"{prefix}-ask"))
    return out


def _inner(state):
    n = len(state.get("items", []))
    return {"items": f"inner {n}", "messages": [AIMessage(content=f"inner {n}", id=f"in-{n}")]}


def delta_subgraph(saver):
    """(outer graph, inner graph) where the inner one keeps its own history (namespace "sub").

    The outer graph passes its whole state in, so the subgraph's `items`
    receives lists as writes: `operator.add` keeps them as items, and the
    stored value mixes lists and strings.
    """
    inner = StateGraph(DeltaState)
    inner.add_node("a", _inner)
    inner.add_node("b", _inner)
    inner.add_edge(START, "a")
    inner.add_edge("a", "b")
    inner.add_edge("b", END)
    outer = StateGraph(DeltaState)
    outer.add_node("sub", inner.compile(checkpointer=True))
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    return outer.compile(checkpointer=saver), inner.compile(checkpointer=saver)
