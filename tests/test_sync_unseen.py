"""Graphs unlike those of tests/graphs.py, synced and compared with SQL on the source."""

import operator
from typing import Annotated, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, Send, interrupt

from checkpoints.models import BlobReference, ReferenceUse, Source, Thread
from checkpoints.sync import sync_source
from django.db.models import Sum
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db


class MapState(TypedDict, total=False):
    items: list
    results: Annotated[list, operator.add]
    files: Annotated[list, operator.add]


def _fan_out(state):
    return [Send("work", {"items": [item]}) for item in state["items"]]


def _work(state):
    item = state["items"][0]
    if item == "boom":
        raise ValueError("a failing branch")
    return {"results": [item.upper()], "files": [f"s3://bucket/uploads/{item}.pdf"]}


def map_graph(saver):
    g = StateGraph(MapState)
    g.add_node("work", _work)
    g.add_conditional_edges(START, _fan_out, ["work"])
    g.add_edge("work", END)
    return g.compile(checkpointer=saver)


def _agent(state: MessagesState):
    last = state["messages"][-1]
    if isinstance(last, HumanMessage):
        return {"messages": [AIMessage(content="", tool_calls=[{"name": "fetch", "args": {"uri": "minio://docs/scans/ü.png"}, "id": "c1"}])]}
    return {"messages": [AIMessage(content="done: see file:///srv/blobs/out.txt")]}


def _tool(state: MessagesState):
    approved = interrupt({"question": "fetch?", "uri": "s3://bucket/uploads/asked.pdf"})
    return Command(goto="agent", update={"messages": [ToolMessage(content=f"approved={approved}", tool_call_id="c1")]})


def messages_graph(saver):
    g = StateGraph(MessagesState)
    g.add_node("agent", _agent)
    g.add_node("tool", _tool)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", lambda s: "tool" if s["messages"][-1].tool_calls else END, ["tool", END])
    return g.compile(checkpointer=saver)


@pytest.fixture(params=["postgres", "sqlite"])
def saver_and_url(request):
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url"), "postgres"
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url"), "sqlite"


def test_send_fan_out_messages_interrupts_and_a_failing_branch(saver_and_url):
    saver, url, kind = saver_and_url
    mapper = map_graph(saver)
    mapper.invoke({"items": ["a", "b", "c"]}, {"configurable": {"thread_id": "map/1", "tenant": "acme"}})
    with pytest.raises(ValueError):
        mapper.invoke({"items": ["d", "boom"]}, {"configurable": {"thread_id": "map 2"}})
    chat = messages_graph(saver)
    cfg = {"configurable": {"thread_id": "msg-ü"}, "metadata": {"user": "u1", "score": 1.5, "big": 2**40}}
    chat.invoke({"messages": [HumanMessage(content="get it")]}, cfg)
    chat.invoke(Command(resume=True), cfg, durability="exit")
    chat.update_state(cfg, {"messages": [HumanMessage(content="again s3://bucket/uploads/later.pdf")]}, as_node="tool")

    source = Source.objects.create(name="unseen", url=url, kind=kind)
    result = sync_source(source)
    assert result["error"] is None
    assert_mirror_matches(source, url)
    uris = set(BlobReference.objects.values_list("uri", flat=True))
    assert {"s3://bucket/uploads/a.pdf", "s3://bucket/uploads/d.pdf", "minio://docs/scans/ü.png", "file:///srv/blobs/out.txt",
            "s3://bucket/uploads/asked.pdf", "s3://bucket/uploads/later.pdf"} <= uris, uris
    failed = Thread.objects.get(source=source, thread_id="map 2")
    assert ReferenceUse.objects.filter(thread=failed, location__startswith="write:").exists()

    # Again after more work: the incremental sync agrees with the source too.
    mapper.invoke({"items": ["e"]}, {"configurable": {"thread_id": "map/1"}})
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, url)


def test_numbers_beyond_64_bits_in_metadata(saver_and_url):
    saver, url, kind = saver_and_url
    from tests.graphs import chat_graph

    class Big(TypedDict, total=False):
        n: int
        note: str

    g = StateGraph(Big)
    # LangGraph's msgpack refuses integers beyond 64 bits in state; metadata is JSON and keeps them.
    g.add_node("grow", lambda s: {"n": s["n"] * 2, "note": "kept at s3://bucket/uploads/big.bin"})
    g.add_edge(START, "grow")
    g.add_edge("grow", END)
    big = g.compile(checkpointer=saver)
    big.invoke({"n": 2**40}, {"configurable": {"thread_id": "big"}, "metadata": {"huge": 10**400, "wide": 2**70}})
    chat_graph(saver).invoke({"messages": []}, {"configurable": {"thread_id": "plain"}})

    source = Source.objects.create(name="big", url=url, kind=kind)
    result = sync_source(source)
    assert result["error"] is None, result["error"]
    assert_mirror_matches(source, url)
    thread = Thread.objects.get(source=source, thread_id="big")
    assert thread.tags["wide"] == str(2**70) and thread.tags["huge"] == str(10**400)
    assert BlobReference.objects.filter(uri="s3://bucket/uploads/big.bin").exists()


def test_nul_characters_in_metadata_and_a_thread_id_postgresql_cannot_store(sqlite_saver, sqlite_source_url):
    """SQLite holds NUL characters that the mirror's PostgreSQL cannot: metadata shows them as U+FFFD,
    a key or value holding one is no tag, and a thread whose id holds one is mirrored under its
    escaped key (checkpoints.ids.thread_key) like any other; once gone from the source, it goes."""
    import sqlite3

    from tests.graphs import chat_graph

    chat = chat_graph(sqlite_saver)
    chat.invoke({"messages": []}, {"configurable": {"thread_id": "nul-meta"},
                                   "metadata": {"note": "a\x00b", "k\x00": 1, "tenant": "acme"}})
    chat.invoke({"messages": []}, {"configurable": {"thread_id": "bad\x00id"}})
    for thread_id in ("fine", "fine2"):  # so that removing two threads is no more than half of the mirror
        chat.invoke({"messages": []}, {"configurable": {"thread_id": thread_id}})
    source = Source.objects.create(name="nul", url=sqlite_source_url, kind="sqlite")

    result = sync_source(source)
    assert result["error"] is None, result["error"]
    source.refresh_from_db()
    assert "retry" not in source.sync_state and source.last_sync_ok
    assert set(Thread.objects.filter(source=source).values_list("thread_id", flat=True)) == {"nul-meta", "fine", "fine2", "bad\u2400id"}
    nul = Thread.objects.get(source=source, thread_id="nul-meta")
    # LangGraph itself drops NUL from metadata values ("ab"), not from keys.
    tags = {"tenant": "acme", "note": "ab"}
    assert nul.tags == tags and dict(nul.tag_rows.values_list("key", "value")) == tags
    latest = nul.checkpoint_rows.get(checkpoint_id=nul.latest_checkpoint_id)
    assert latest.metadata["k\ufffd"] == 1 and "k\x00" not in latest.metadata
    assert result["added"] == Thread.objects.filter(source=source).aggregate(n=Sum("checkpoints"))["n"]

    # Gone from the source: gone from the mirror.
    path = sqlite_source_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        for table in ("writes", "checkpoints"):  # nul-meta too: its metadata key is shown with U+FFFD
            conn.execute(f"DELETE FROM {table} WHERE thread_id IN (?, ?)", ("bad\x00id", "nul-meta"))
    result = sync_source(source)
    source.refresh_from_db()
    assert result["error"] is None and "retry" not in source.sync_state and source.last_sync_ok
    assert set(Thread.objects.filter(source=source).values_list("thread_id", flat=True)) == {"fine", "fine2"}
    assert_mirror_matches(source, sqlite_source_url)


def test_a_thread_that_failed_is_read_whole_when_retried(saver_and_url):
    """Its rows from before the watermark were never seen: their references must not be missed."""
    saver, url, kind = saver_and_url
    from checkpoints import sync
    from tests.graphs import chat_graph, file_graph

    file_graph(saver).invoke({"attachment": "s3://bucket/uploads/retry.pdf"}, {"configurable": {"thread_id": "flaky"}})
    chat_graph(saver).invoke({"messages": []}, {"configurable": {"thread_id": "steady"}})
    source = Source.objects.create(name="retry", url=url, kind=kind)
    real = sync._apply_batch

    def failing_for_flaky(context, thread_rows):
        if any(rows.thread_id == "flaky" for rows in thread_rows):
            raise ValueError("odd data")
        return real(context, thread_rows)

    sync._apply_batch = failing_for_flaky
    try:
        assert "'flaky': ValueError: odd data" in sync_source(source)["error"]
    finally:
        sync._apply_batch = real
    chat_graph(saver).invoke({"messages": []}, {"configurable": {"thread_id": "steady"}})  # the watermark moves on
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, url)
    flaky = Thread.objects.get(source=source, thread_id="flaky")
    assert ReferenceUse.objects.filter(thread=flaky, reference__uri="s3://bucket/uploads/retry.pdf").exists()


def test_sqlite_metadata_that_is_a_json_string(sqlite_saver, sqlite_source_url):
    import sqlite3

    from tests.graphs import chat_graph

    chat_graph(sqlite_saver).invoke({"messages": []}, {"configurable": {"thread_id": "odd-meta"}})
    with sqlite3.connect(sqlite_source_url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE checkpoints SET metadata = ? WHERE rowid = (SELECT min(rowid) FROM checkpoints)",
                     (b'"hello"',))
    source = Source.objects.create(name="odd", url=sqlite_source_url, kind="sqlite")
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, sqlite_source_url)


def test_tags_of_a_re_read_thread_change_row_by_row(saver_and_url):
    saver, url, kind = saver_and_url
    from checkpoints.models import Tag
    from tests.graphs import chat_graph

    chat = chat_graph(saver)
    chat.invoke({"messages": []}, {"configurable": {"thread_id": "tagged", "tenant": "acme", "user_id": "u1",
                                                    "plan": "free"}})
    source = Source.objects.create(name="tags", url=url, kind=kind)
    assert sync_source(source)["error"] is None
    thread = Thread.objects.get(source=source, thread_id="tagged")
    kept = Tag.objects.get(thread=thread, key="plan").pk

    chat.invoke({"messages": []}, {"configurable": {"thread_id": "tagged", "tenant": "globex", "plan": "free",
                                                    "project": "demo"}})
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, url)
    thread.refresh_from_db()
    assert thread.tags == {"tenant": "globex", "plan": "free", "project": "demo"}
    assert Tag.objects.get(thread=thread, key="plan").pk == kept  # unchanged: not rewritten


def test_a_full_sync_repairs_tag_rows_that_drifted(saver_and_url):
    from checkpoints.models import Tag
    from tests.graphs import chat_graph

    chat_graph(saver_and_url[0]).invoke({"messages": []}, {"configurable": {"thread_id": "drift", "tenant": "acme"}})
    source = Source.objects.create(name="drift", url=saver_and_url[1], kind=saver_and_url[2])
    assert sync_source(source)["error"] is None
    Tag.objects.filter(thread__thread_id="drift").update(value="wrong")  # rows no longer what Thread.tags says
    assert sync_source(source, full=True)["error"] is None
    assert_mirror_matches(source, saver_and_url[1])
