"""storage.size_limit through real graphs on PostgresSaver and SqliteSaver, sync and async."""

import asyncio
import sqlite3
import uuid

import psycopg
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from storage.offload import FileStore, offload
from storage.size_limit import CheckpointTooLarge, SizeLimitedSaver, limit_size
from tests.test_offload import (
    bucket,  # noqa: F401  (fixture)
    cfg,
    expected_checkpoints,
    make_pdf,
    objects,
    pdf_graph,
    pg_checkpoint_bytes,
    pg_rows,
    s3_store,
    sqlite_checkpoint_bytes,
)

DOC = 15_000_000
INPUT_MESSAGE = r"^checkpoint for thread 't1' is 15\.0 MB, exceeds limit 10 MB; largest channels: doc 15\.0 MB$"
NODE_MESSAGE = (
    r"^checkpoint for thread 't1' is 15\.0 MB, exceeds limit 10 MB; largest channels: doc 15\.0 MB, "
    r"notes \d+ B \(pending writes from node 'write'\)$"
)


def doc_graph(saver, doc=None):
    """The document arrives as input (doc=None) or is produced by a node."""
    from typing import Annotated, TypedDict
    import operator

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        doc: bytes
        notes: Annotated[list, operator.add]

    def write(state):
        return {"doc": doc, "notes": ["written"]} if doc is not None else {"notes": ["kept"]}

    g = StateGraph(State)
    g.add_node("write", write)
    g.add_edge(START, "write")
    g.add_edge("write", END)
    return g.compile(checkpointer=saver)


def pg_count(url, thread_id="t1"):
    return sum(pg_rows(url, thread_id).values())


def test_15mb_input_is_refused_on_postgres(pg_source_url):
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        graph = doc_graph(limit_size(saver))
        with pytest.raises(CheckpointTooLarge, match=INPUT_MESSAGE) as caught:
            graph.invoke({"doc": b"d" * DOC}, cfg("t1"))
    assert isinstance(caught.value, ValueError)
    assert caught.value.size == DOC and caught.value.limit == 10_000_000
    assert caught.value.channels[0] == ("doc", DOC)
    assert pg_count(pg_source_url) == 0  # nothing written


def test_15mb_from_a_node_is_refused_and_the_step_not_written(pg_source_url):
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        doc_graph(limit_size(saver)).invoke({"notes": ["start"]}, cfg("t1"))
        before = pg_rows(pg_source_url, "t1")
        steps_before = [s for _, s, _ in pg_checkpoint_bytes(pg_source_url, "t1")]
        with pytest.raises(CheckpointTooLarge, match=NODE_MESSAGE) as caught:
            doc_graph(limit_size(saver), doc=b"d" * DOC).invoke({"notes": ["again"]}, cfg("t1"))
    assert caught.value.task_id
    after = pg_rows(pg_source_url, "t1")
    steps = [s for _, s, _ in pg_checkpoint_bytes(pg_source_url, "t1")]
    # The run's input checkpoints exist; the node's writes and the checkpoint
    # after it do not, and no row holds the document.
    assert steps[: len(steps_before)] == steps_before and steps[len(steps_before) :] == [2, 3]
    assert after["checkpoints"] == before["checkpoints"] + 2
    assert max(n for _, _, n in pg_checkpoint_bytes(pg_source_url, "t1")) < 5_000
    with psycopg.connect(pg_source_url) as conn:
        assert conn.execute("SELECT count(*) FROM checkpoint_writes WHERE channel = 'doc'").fetchone()[0] == 0


def test_under_the_limit_passes_and_sqlite_refuses_too(tmp_path):
    db = tmp_path / "c.sqlite"
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        graph = doc_graph(limit_size(SqliteSaver(conn)))
        graph.invoke({"doc": b"s" * 9_000_000}, cfg("small"))
        assert graph.get_state(cfg("small")).values["doc"] == b"s" * 9_000_000
        with pytest.raises(CheckpointTooLarge, match=INPUT_MESSAGE):
            graph.invoke({"doc": b"d" * DOC}, cfg("t1"))
    finally:
        conn.close()
    assert sqlite_checkpoint_bytes(db, "t1") == []
    assert len(sqlite_checkpoint_bytes(db, "small")) == expected_checkpoints(doc_graph)


def test_limit_from_environment_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("CHECKPOINT_SIZE_LIMIT", "1MB")
    conn = sqlite3.connect(tmp_path / "c.sqlite", check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        assert limit_size(saver).limit == 1_000_000
        with pytest.raises(CheckpointTooLarge, match=r"is 1\.5 MB, exceeds limit 1 MB; largest channels: doc 1\.5 MB"):
            doc_graph(limit_size(saver)).invoke({"doc": b"x" * 1_500_000}, cfg("t2"))
        doc_graph(limit_size(saver, "2MB")).invoke({"doc": b"x" * 1_500_000}, cfg("t3"))  # argument wins
        monkeypatch.setenv("CHECKPOINT_SIZE_LIMIT", "big")
        with pytest.raises(ValueError, match="CHECKPOINT_SIZE_LIMIT='big' is invalid"):
            limit_size(saver)
    finally:
        conn.close()


def test_composes_with_offload_in_either_order(pg_source_url, moto_s3, bucket):  # noqa: F811
    pdf = make_pdf(DOC)
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        for thread, checkpointer in (
            ("a", offload(limit_size(saver), store=s3_store(moto_s3, bucket))),
            ("b", limit_size(offload(saver, store=s3_store(moto_s3, bucket)))),
        ):
            graph = pdf_graph(checkpointer, pdf=pdf)
            graph.invoke({"name": thread}, cfg(thread))  # 15 MB, offloaded: passes
            assert graph.get_state(cfg(thread)).values["pdf"] == pdf
            assert max(n for _, _, n in pg_checkpoint_bytes(pg_source_url, thread)) < 5_000
    assert len(objects(moto_s3, bucket)) == 1


def test_refused_checkpoint_uploads_nothing(pg_source_url, moto_s3, bucket):  # noqa: F811
    """With a threshold above the limit the value stays inline and is refused:
    measuring must not upload it either (no orphan objects)."""
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        for checkpointer in (
            limit_size(offload(saver, store=s3_store(moto_s3, bucket), threshold="20MB")),
            offload(limit_size(saver), store=s3_store(moto_s3, bucket), threshold="20MB"),
        ):
            with pytest.raises(CheckpointTooLarge, match=INPUT_MESSAGE):
                doc_graph(checkpointer).invoke({"doc": b"d" * DOC}, cfg("t1"))
    assert objects(moto_s3, bucket) == {}
    assert pg_count(pg_source_url) == 0


def test_async_savers_refuse(pg_source_url, tmp_path):
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async def main():
        async with AsyncPostgresSaver.from_conn_string(pg_source_url) as pg:
            with pytest.raises(CheckpointTooLarge, match=INPUT_MESSAGE):
                await doc_graph(limit_size(pg)).ainvoke({"doc": b"d" * DOC}, cfg("t1"))
            await doc_graph(limit_size(pg)).ainvoke({"doc": b"ok"}, cfg("ok"))
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.sqlite")) as lite:
            with pytest.raises(CheckpointTooLarge, match=NODE_MESSAGE.replace("'t1'", "'t1'")):
                await doc_graph(limit_size(lite), doc=b"d" * DOC).ainvoke({"notes": ["n"]}, cfg("t1"))

    asyncio.run(main())
    assert pg_count(pg_source_url) == 0
    assert len(pg_checkpoint_bytes(pg_source_url, "ok")) == expected_checkpoints(doc_graph)
    steps = [s for _, s in sqlite_checkpoint_bytes(tmp_path / "a.sqlite", "t1")]
    assert len(steps) == 2  # input checkpoints only: the node's step was refused


def test_wrapper_is_a_checkpointer_and_delegates(tmp_path):
    conn = sqlite3.connect(tmp_path / "c.sqlite", check_same_thread=False)
    try:
        inner = SqliteSaver(conn)
        saver = limit_size(inner)
        assert isinstance(saver, BaseCheckpointSaver) and isinstance(saver, SizeLimitedSaver)
        assert saver.serde is inner.serde and saver.conn is conn and saver.lock is inner.lock
        saver.setup()  # the wrapped saver's own method
        graph = doc_graph(saver)
        graph.invoke({"doc": b"1"}, cfg("d"))
        assert len(list(saver.list(cfg("d")))) == expected_checkpoints(doc_graph)
        saver.delete_thread("d")
        assert list(saver.list(cfg("d"))) == []
        with pytest.raises(TypeError, match="expected a LangGraph checkpoint saver"):
            limit_size(object())
    finally:
        conn.close()


def test_file_store_offload_keeps_a_15mb_document_under_the_limit(tmp_path):
    db = tmp_path / "c.sqlite"
    conn = sqlite3.connect(db, check_same_thread=False)
    doc = b"%PDF-1.7\n" + uuid.uuid4().bytes * (DOC // 16)
    try:
        graph = doc_graph(offload(limit_size(SqliteSaver(conn)), store=FileStore(tmp_path / "blobs")), doc=doc)
        graph.invoke({"notes": ["n"]}, cfg("t1"))
        assert graph.get_state(cfg("t1")).values["doc"] == doc
    finally:
        conn.close()
    assert max(n for _, n in sqlite_checkpoint_bytes(db, "t1")) < 5_000
