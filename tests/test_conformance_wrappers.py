"""The saver wrappers pass langgraph-checkpoint-conformance wherever the wrapped saver does.

The suite calls the async methods and counts a capability as present when
the saver's class overrides BaseCheckpointSaver's method (capabilities.py in
the package). So each wrapper, over each saver we support, must be detected
with exactly the bare saver's capabilities and pass every test the bare
saver passes. Offloading runs with a 1-byte threshold, so every value the
suite writes really goes to the (file) store.
"""

import asyncio
import sqlite3
import uuid

import psycopg
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities
from langgraph.checkpoint.conformance.initializer import RegisteredCheckpointer
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.conformance.validate import validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from psycopg.rows import dict_row

from storage.offload import FileStore, OffloadingSaver, is_reference, offload
from storage.size_limit import SizeLimitedSaver, limit_size
from tests.pg import server_url, url_for_database

KINDS = ["memory", "sqlite", "async_sqlite", "postgres", "async_postgres", "sqlite_via_threads", "postgres_via_threads"]

# What the bare savers are detected with (langgraph-checkpoint 4.3, -sqlite 3.1,
# -postgres 3.2). Written out so that a capability appearing or vanishing
# upstream shows here instead of being skipped quietly.
BASE = {"put", "put_writes", "get_tuple", "list", "delete_thread"}
EXPECTED_DETECTED = {
    "memory": BASE,
    # SqliteSaver defines aget_tuple, alist and aput only to raise "use AsyncSqliteSaver".
    "sqlite": {"put", "get_tuple", "list"},
    "async_sqlite": BASE,
    "postgres": set(),  # no async methods at all
    "async_postgres": BASE | {"prune"},
    # The sync savers' own methods, driven by the suite through ThreadedAsync.
    "sqlite_via_threads": BASE,
    "postgres_via_threads": BASE | {"prune"},
}


class ThreadedAsync(BaseCheckpointSaver):
    """Test-only: the async API over a sync saver, each call in a worker thread.

    The suite only calls async methods, so this is how it reaches the sync
    methods of SqliteSaver and PostgresSaver, bare and wrapped alike. The
    adapter's class has an async method exactly where the inner saver's
    class has the sync one, so it claims what the inner object claims.
    """

    def __new__(cls, saver):
        sync = {
            "aput": "put", "aput_writes": "put_writes", "aget_tuple": "get_tuple", "adelete_thread": "delete_thread",
            "adelete_for_runs": "delete_for_runs", "acopy_thread": "copy_thread", "aprune": "prune",
        }
        attrs = {}
        for amethod, method in sync.items():
            if getattr(type(saver), method) is not getattr(BaseCheckpointSaver, method):
                attrs[amethod] = _threaded(method)
        if type(saver).list is not BaseCheckpointSaver.list:
            attrs["alist"] = _threaded_list
        return super().__new__(type("ThreadedAsync", (cls,), attrs))

    def __init__(self, saver):
        super().__init__(serde=saver.serde)
        self.saver = saver

    def get_next_version(self, current, channel):
        return self.saver.get_next_version(current, channel)


def _threaded(method):
    async def call(self, *args, **kwargs):
        return await asyncio.to_thread(getattr(self.saver, method), *args, **kwargs)

    call.__name__ = "a" + method
    return call


async def _threaded_list(self, config, *, filter=None, before=None, limit=None):
    items = await asyncio.to_thread(lambda: list(self.saver.list(config, filter=filter, before=before, limit=limit)))
    for item in items:
        yield item


def wrap_offload(saver, root):
    return offload(saver, store=FileStore(root), threshold=1)


def wrap_limit(saver, root):
    return limit_size(saver, "10MB")


def wrap_both(saver, root):
    return offload(limit_size(saver, "10MB"), store=FileStore(root), threshold=1)


WRAPPERS = {"offload": wrap_offload, "limit_size": wrap_limit, "offload(limit_size)": wrap_both}


@pytest.fixture(scope="module")
def pg_database():
    """One database for the module; every saver instance gets its own schema in it."""
    name = f"conf_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url_for_database(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema_options(schema):
    return {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row, "options": f"-c search_path={schema}"}


def bare_factory(kind, pg_url):
    """An async generator factory of fresh bare savers of `kind` (one per capability suite).

    The PostgreSQL savers of one factory share a schema: the suite's tests
    each use their own thread ids, and setting up a schema eight times
    would double the module's run time.
    """
    schema = f"s_{uuid.uuid4().hex[:12]}"

    async def factory():
        if kind == "memory":
            yield InMemorySaver()
        elif kind.endswith("_via_threads"):
            raise AssertionError("built by threaded_factory")
        elif kind == "sqlite":
            from langgraph.checkpoint.sqlite import SqliteSaver

            conn = sqlite3.connect(":memory:", check_same_thread=False)
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
            conn.close()
        elif kind == "async_sqlite":
            import aiosqlite
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            async with aiosqlite.connect(":memory:") as conn:
                saver = AsyncSqliteSaver(conn)
                await saver.setup()
                yield saver
        else:
            # Dropped with the module's database.
            if kind == "postgres":
                from langgraph.checkpoint.postgres import PostgresSaver

                with psycopg.connect(pg_url, **_schema_options(schema)) as conn:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    saver = PostgresSaver(conn)
                    saver.setup()
                    yield saver
            else:
                from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

                async with await psycopg.AsyncConnection.connect(pg_url, **_schema_options(schema)) as conn:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    saver = AsyncPostgresSaver(conn)
                    await saver.setup()
                    yield saver

    return factory


def threaded_factory(kind, pg_url, wrap=lambda saver: saver):
    """Fresh ThreadedAsync(wrap(sync saver)) for the *_via_threads kinds."""
    inner = bare_factory(kind.removesuffix("_via_threads"), pg_url)

    async def factory():
        gen = inner()
        saver = await gen.__anext__()
        yield ThreadedAsync(wrap(saver))
        try:
            await gen.__anext__()
        except StopAsyncIteration:
            pass

    return factory


def run_suite(name, factory):
    """(detected capabilities, {(capability, test): error or None}) of one conformance run."""
    results = {}
    detected = []

    def on_test(capability, test, passed, error):
        results[(capability, test)] = None if passed else (error or "failed")

    async def wrapped_factory():
        gen = factory()
        saver = await gen.__anext__()
        detected.append(frozenset(c.value for c in DetectedCapabilities.from_instance(saver).detected))
        yield saver
        try:
            await gen.__anext__()
        except StopAsyncIteration:
            pass

    registered = RegisteredCheckpointer(name=name, factory=wrapped_factory)
    asyncio.run(validate(registered, progress=ProgressCallbacks(on_test_result=on_test)))
    assert len(set(detected)) == 1, detected
    return set(detected[0]), results


_bare_results = {}


def bare_results(kind, pg_url):
    if kind not in _bare_results:
        make = threaded_factory(kind, pg_url) if kind.endswith("_via_threads") else bare_factory(kind, pg_url)
        _bare_results[kind] = run_suite(kind, make)
    return _bare_results[kind]


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("kind", KINDS)
def test_wrapper_passes_what_the_bare_saver_passes(kind, wrapper, pg_database, tmp_path):
    bare_detected, bare = bare_results(kind, pg_database)
    assert bare_detected == EXPECTED_DETECTED[kind]
    passed = {key for key, error in bare.items() if error is None}
    if EXPECTED_DETECTED[kind] - {"put", "get_tuple", "list"}:
        assert passed, f"the bare {kind} saver passed nothing: the suite did not run"

    def wrap(saver):
        return WRAPPERS[wrapper](saver, tmp_path / "blobs")

    if kind.endswith("_via_threads"):
        factory = threaded_factory(kind, pg_database, wrap)
    else:
        bare_make = bare_factory(kind, pg_database)

        async def factory():
            gen = bare_make()
            saver = await gen.__anext__()
            yield wrap(saver)
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                pass

    detected, results = run_suite(f"{wrapper}({kind})", factory)
    assert detected == bare_detected
    regressions = {key: results.get(key, "not run") for key in passed if results.get(key, "not run") is not None}
    assert not regressions, "\n".join(f"{cap}/{test}: {error}" for (cap, test), error in sorted(regressions.items()))
    assert set(results) == set(bare)  # the same tests ran
    if "offload" in wrapper and passed:
        stored = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        assert len(stored) > 10, "values were not offloaded"


def test_wrapper_classes_define_only_what_the_saver_has():
    """The capability check is on the class: each wrapped class gets its own wrapper class."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(":memory:", check_same_thread=False)
    for saver in (InMemorySaver(), SqliteSaver(conn)):
        for wrapped in (limit_size(saver), offload(saver, store=FileStore("/tmp/unused-offload-root"))):
            cls = type(wrapped)
            assert isinstance(wrapped, (SizeLimitedSaver, OffloadingSaver))
            for method in ("prune", "aprune", "copy_thread", "acopy_thread", "delete_for_runs", "adelete_for_runs"):
                assert getattr(cls, method) is getattr(BaseCheckpointSaver, method)
            assert getattr(cls, "aput_writes") is not getattr(BaseCheckpointSaver, "aput_writes") or isinstance(
                saver, SqliteSaver
            )
    conn.close()


# --- what stays readable in the row -------------------------------------------------------


def _checkpoint(n):
    from langgraph.checkpoint.base import empty_checkpoint

    cp = empty_checkpoint()
    cp["channel_values"] = {"doc": "d" * n, "count": n}
    cp["channel_versions"] = {"doc": 1, "count": 1}
    return cp


def test_offload_keeps_ids_and_metadata_in_the_row(tmp_path, pg_database):
    """With a 1-byte threshold the checkpoint's own id, ts and versions and its metadata stay plain."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.sqlite import SqliteSaver

    plain = JsonPlusSerializer()
    metadata = {"source": "input", "step": 1, "tenant": "acme", "parents": {}}
    config = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}

    # InMemorySaver serializes the checkpoint (without values) and the metadata with the serde.
    memory = InMemorySaver()
    cp = _checkpoint(50)
    wrap_offload(memory, tmp_path).put(config, cp, metadata, {"doc": 1, "count": 1})
    ((stored_cp, stored_md, _),) = memory.storage["t1"][""].values()
    row = plain.loads_typed(stored_cp)
    assert (row["id"], row["ts"], row["channel_versions"]) == (cp["id"], cp["ts"], cp["channel_versions"])
    assert plain.loads_typed(stored_md) == metadata
    blobs = [plain.loads_typed(v) for (t, ns, ch, ver), v in memory.blobs.items() if ch == "doc"]
    assert blobs and all(is_reference(b) for b in blobs)

    # SqliteSaver serializes the whole checkpoint with the serde.
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    sqlite = SqliteSaver(conn)
    sqlite.setup()
    cp = _checkpoint(50)
    wrap_offload(sqlite, tmp_path).put(config, cp, metadata, {"doc": 1, "count": 1})
    type_, blob, md = conn.execute("select type, checkpoint, metadata from checkpoints").fetchone()
    row = plain.loads_typed((type_, blob))
    assert (row["id"], row["ts"], row["channel_versions"]) == (cp["id"], cp["ts"], cp["channel_versions"])
    assert is_reference(row["channel_values"]["doc"]) and row["channel_values"]["count"] == 50
    assert b"acme" in md
    conn.close()

    # PostgresSaver keeps the checkpoint and metadata as JSONB.
    schema = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    with psycopg.connect(pg_database, **_schema_options(schema)) as conn:
        pg = PostgresSaver(conn)
        pg.setup()
        cp = _checkpoint(50)
        wrapped = wrap_offload(pg, tmp_path)
        wrapped.put(config, cp, metadata, {"doc": 1, "count": 1})
        row = conn.execute("select checkpoint, metadata from checkpoints").fetchone()
        assert (row["checkpoint"]["id"], row["checkpoint"]["ts"]) == (cp["id"], cp["ts"])
        assert row["metadata"]["tenant"] == "acme"
        assert wrapped.get_tuple(config).checkpoint["channel_values"]["doc"] == "d" * 50
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
