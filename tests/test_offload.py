"""storage.offload through real LangGraph graphs, real databases and a real S3 server.

PostgresSaver and SqliteSaver (sync and async) write the checkpoints; S3 is
moto's server over HTTP (the fixture moto_s3), the file store a tmp dir.
Row sizes are measured with SQL, as the console measures them.
"""

import asyncio
import json
import operator
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, TypedDict

import ormsgpack
import psycopg
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from checkpoints.uris import find_uris
from storage.offload import (
    FileStore,
    OffloadedRef,
    OffloadError,
    OffloadingSaver,
    OffloadSerializer,
    S3Store,
    lazy_refs,
    offload,
)
from storage.size_limit import SizeLimitedSaver, limit_size
from tests.s3server import free_port

REPO = Path(__file__).resolve().parent.parent
PDF_SIZE = 5_000_000


def make_pdf(size=PDF_SIZE, seed=None):
    """PDF-like bytes: the magic, then incompressible content (as real PDFs are)."""
    body = os.urandom(size - 9) if seed is None else (seed * (size // len(seed) + 1))[: size - 9]
    return b"%PDF-1.7\n" + body


class DocState(TypedDict, total=False):
    name: str
    pdf: bytes
    text: str
    notes: Annotated[list, operator.add]


def pdf_graph(saver, pdf=None, text=None):
    """START -> attach (puts the document into state) -> review -> END."""

    def attach(state):
        update = {"notes": [f"attached {state.get('name')}"]}
        if pdf is not None:
            update["pdf"] = pdf
        if text is not None:
            update["text"] = text
        return update

    def review(state):
        # The node sees the real value, whatever the store did with it.
        if pdf is not None:
            assert state["pdf"] == pdf
        return {"notes": [f"reviewed {len(state.get('pdf') or b'')} bytes"]}

    g = StateGraph(DocState)
    g.add_node("attach", attach)
    g.add_node("review", review)
    g.add_edge(START, "attach")
    g.add_edge("attach", "review")
    g.add_edge("review", END)
    return g.compile(checkpointer=saver)


def cfg(thread_id):
    return {"configurable": {"thread_id": thread_id}}


def expected_checkpoints(build, runs=1):
    """How many checkpoints the graph writes per thread, from an in-memory run."""
    saver = InMemorySaver()
    graph = build(saver)
    for _ in range(runs):
        graph.invoke({"name": "x"}, cfg("count"))
    return len(list(saver.list(cfg("count"))))


# --- S3 on moto's server ---------------------------------------------------------------


@pytest.fixture
def bucket(moto_s3):
    name = f"offload-{uuid.uuid4().hex[:10]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


def s3_store(moto_s3, bucket, **options):
    return S3Store(
        bucket,
        "agents/",
        endpoint_url=moto_s3.endpoint_url,
        region=moto_s3.region,
        path_style=True,
        access_key=moto_s3.access_key,
        secret_key=moto_s3.secret_key,
        **options,
    )


def objects(moto_s3, bucket):
    listing = moto_s3.client().list_objects_v2(Bucket=bucket)
    return {o["Key"]: o for o in listing.get("Contents", [])}


def count_calls(store, *operations):
    """Count the S3 requests the store's client makes (botocore event hooks)."""
    counts = {op: 0 for op in operations}
    for op in operations:
        store.client.meta.events.register(
            f"before-call.s3.{op}", lambda op=op, **_: counts.__setitem__(op, counts[op] + 1)
        )
    return counts


# --- SQL measurements --------------------------------------------------------------------

PG_CHECKPOINT_BYTES = """
SELECT c.checkpoint_id, (c.metadata->>'step')::int,
       octet_length(c.checkpoint::text) + octet_length(c.metadata::text)
       + coalesce((SELECT sum(coalesce(octet_length(b.blob), 0)) FROM checkpoint_blobs b
                   WHERE b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
                     AND c.checkpoint->'channel_versions'->>b.channel = b.version), 0)
       + coalesce((SELECT sum(octet_length(w.blob)) FROM checkpoint_writes w
                   WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
                     AND w.checkpoint_id = c.checkpoint_id), 0)
FROM checkpoints c WHERE c.thread_id = %s ORDER BY c.checkpoint_id
"""


def pg_checkpoint_bytes(url, thread_id):
    """[(checkpoint_id, step, logical bytes)] per docs/architecture.md §3, by SQL."""
    with psycopg.connect(url) as conn:
        return [(cid, step, int(n)) for cid, step, n in conn.execute(PG_CHECKPOINT_BYTES, (thread_id,))]


def pg_rows(url, thread_id):
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table} WHERE thread_id = %s", (thread_id,)).fetchone()[0]
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
        }


def pg_raw_bytes(url, thread_id):
    """Every stored byte of a thread, concatenated."""
    return b"\n".join(data for _, data in pg_typed_rows(url, thread_id))


def pg_typed_rows(url, thread_id):
    with psycopg.connect(url) as conn:
        query = "SELECT checkpoint::text FROM checkpoints WHERE thread_id = %s"
        rows = [("json", r[0].encode()) for r in conn.execute(query, (thread_id,))]
        for table in ("checkpoint_blobs", "checkpoint_writes"):
            query = f"SELECT type, blob FROM {table} WHERE thread_id = %s"
            rows += [(t, bytes(b or b"")) for t, b in conn.execute(query, (thread_id,))]
    return rows


def _ext_hook(code, data):
    # The console's safe decoding (docs/architecture.md §1): no import, no call.
    inner = ormsgpack.unpackb(data, ext_hook=_ext_hook, option=ormsgpack.OPT_NON_STR_KEYS)
    return {"__ext__": code, "value": inner if code in (6, 7) else inner[2:]}


def decoded_uris(rows):
    """URIs in the decoded values of (type, bytes) rows, as the console scans them."""
    found = set()
    for type_, data in rows:
        if type_ == "msgpack":
            value = ormsgpack.unpackb(data, ext_hook=_ext_hook, option=ormsgpack.OPT_NON_STR_KEYS)
        elif type_ == "json":
            value = json.loads(data)
        else:
            continue
        found |= set(find_uris(json.dumps(value, default=repr)))
    return found


def sqlite_checkpoint_bytes(path, thread_id):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            """SELECT c.checkpoint_id,
                      coalesce(length(CAST(c.checkpoint AS BLOB)), 0) + coalesce(length(CAST(c.metadata AS BLOB)), 0)
                      + coalesce((SELECT sum(coalesce(length(CAST(w.value AS BLOB)), 0)) FROM writes w
                                  WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
                                    AND w.checkpoint_id = c.checkpoint_id), 0)
               FROM checkpoints c WHERE c.thread_id = ? ORDER BY c.checkpoint_id""",
            (thread_id,),
        ).fetchall()
    finally:
        conn.close()


# --- the module stands alone -------------------------------------------------------------


def test_imports_and_works_without_django(tmp_path):
    """Agent processes have no Django: import and round-trip with Django unimportable."""
    code = f"""
import sys
sys.modules["django"] = None  # any import of Django fails
import os, sqlite3
os.environ["BLOB_ROOT"] = {str(tmp_path)!r}
os.environ["OFFLOAD_THRESHOLD"] = "1KB"
os.environ["CHECKPOINT_SIZE_LIMIT"] = "10MB"
from storage.offload import offload, OffloadSerializer
from storage.size_limit import limit_size, SizeLimitedSaver
from langgraph.checkpoint.sqlite import SqliteSaver
saver = offload(limit_size(SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False))))
serde = saver.serde
assert serde.threshold == 1000 and saver.saver.limit == 10_000_000
typed = serde.dumps_typed(b"x" * 5000)
assert b"file://" in typed[1] and len(typed[1]) < 500, typed
assert serde.loads_typed(typed) == b"x" * 5000
assert not any(m == "django" or m.startswith("django.") for m in sys.modules if sys.modules[m] is not None)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- PostgresSaver + S3 ------------------------------------------------------------------


def test_pdf_on_postgres_and_s3_leaves_small_rows(pg_source_url, moto_s3, bucket):
    pdf = make_pdf()
    store = s3_store(moto_s3, bucket)
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        checkpointer = offload(saver, store=store)
        assert isinstance(checkpointer, OffloadingSaver)
        graph = pdf_graph(checkpointer, pdf=pdf)
        graph.invoke({"name": "report.pdf"}, cfg("t1"))
        state = graph.get_state(cfg("t1"))
        assert state.values["pdf"] == pdf  # identical bytes back
        assert type(state.values["pdf"]) is bytes

        # Baseline in the same database: the same graph storing the PDF inline.
        pdf_graph(saver.__class__(saver.conn), pdf=pdf).invoke({"name": "inline"}, cfg("inline"))

    sizes = pg_checkpoint_bytes(pg_source_url, "t1")
    inline = pg_checkpoint_bytes(pg_source_url, "inline")
    assert len(sizes) == len(inline) == expected_checkpoints(lambda s: pdf_graph(s, pdf=b"x"))
    # The checkpoint of the step that put the PDF into state (step 1: after
    # attach), with its blob and write rows, is small; inline it is > 5 MB.
    step = {s: n for _, s, n in sizes}
    assert step[1] < 5_000, sizes
    assert max(n for _, _, n in sizes) < 5_000, sizes
    assert {s: n for _, s, n in inline}[1] > PDF_SIZE, inline

    keys = objects(moto_s3, bucket)
    assert len(keys) == 1
    (key,) = keys
    assert re.fullmatch(r"agents/sha256/[0-9a-f]{64}", key)
    head = moto_s3.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == PDF_SIZE
    assert head["ContentType"] == "application/pdf"
    assert head["Metadata"]["sha256"] == key.rsplit("/", 1)[1]

    # The console finds the reference by scanning raw row bytes for URIs.
    raw = pg_raw_bytes(pg_source_url, "t1")
    assert f"s3://{bucket}/{key}".encode() in raw
    assert decoded_uris(pg_typed_rows(pg_source_url, "t1")) == {f"s3://{bucket}/{key}"}


def test_same_content_is_stored_once(pg_source_url, moto_s3, bucket):
    pdf = make_pdf()
    store = s3_store(moto_s3, bucket)
    calls = count_calls(store, "PutObject", "HeadObject", "CopyObject")
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        graph = pdf_graph(offload(saver, store=store), pdf=pdf)
        graph.invoke({"name": "a"}, cfg("a"))  # the PDF is in two checkpoints of a
        graph.invoke({"name": "b"}, cfg("b"))
        graph.invoke({"name": "a again"}, cfg("a"))
    assert calls["PutObject"] == 1
    assert calls["HeadObject"] == 1  # later uses are known present in this process
    assert len(objects(moto_s3, bucket)) == 1

    # Another process (fresh serializer, cold caches): HEAD finds it, no upload.
    fresh = s3_store(moto_s3, bucket)
    fresh_calls = count_calls(fresh, "PutObject", "HeadObject", "CopyObject")
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        graph = pdf_graph(offload(saver, store=fresh), pdf=pdf)
        graph.invoke({"name": "c"}, cfg("c"))
        assert graph.get_state(cfg("c")).values["pdf"] == pdf
    assert fresh_calls == {"PutObject": 0, "HeadObject": 1, "CopyObject": 0}
    assert len(objects(moto_s3, bucket)) == 1
    uris = {u for t in "abc" for u in decoded_uris(pg_typed_rows(pg_source_url, t))}
    assert len(uris) == 1


def test_reused_object_older_than_half_the_grace_is_refreshed(moto_s3, bucket):
    store = s3_store(moto_s3, bucket)
    value = make_pdf(1_500_000)
    OffloadSerializer(store=store, sweep_grace="2s").dumps_typed(value)
    (key,) = objects(moto_s3, bucket)
    before = objects(moto_s3, bucket)[key]["LastModified"]
    time.sleep(1.1)

    fresh = s3_store(moto_s3, bucket)
    calls = count_calls(fresh, "PutObject", "CopyObject")
    typed = OffloadSerializer(store=fresh, sweep_grace="2s").dumps_typed(value)
    assert calls == {"PutObject": 0, "CopyObject": 1}
    after = objects(moto_s3, bucket)[key]
    assert after["LastModified"] > before  # a sweep's grace starts again
    head = moto_s3.client().head_object(Bucket=bucket, Key=key)
    assert head["Metadata"]["sha256"] in key and head["ContentType"] == "application/pdf"
    assert OffloadSerializer(store=fresh).loads_typed(typed) == value

    # Young objects are not refreshed.
    calls = count_calls(fresh2 := s3_store(moto_s3, bucket), "CopyObject", "PutObject")
    OffloadSerializer(store=fresh2, sweep_grace="24h").dumps_typed(value)
    assert calls == {"CopyObject": 0, "PutObject": 0}


def test_failed_upload_raises_and_writes_no_checkpoint(pg_source_url, moto_s3, bucket):
    closed = S3Store(
        bucket,
        "agents/",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        path_style=True,
        access_key="testing",
        secret_key="testing",
        max_attempts=1,
        connect_timeout=1,
    )
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        # First a run without the document: these rows must stay as they are.
        pdf_graph(offload(saver, store=closed)).invoke({"name": "no pdf"}, cfg("t1"))
        before = pg_rows(pg_source_url, "t1")
        steps_before = [s for _, s, _ in pg_checkpoint_bytes(pg_source_url, "t1")]

        graph = pdf_graph(offload(saver, store=closed), pdf=make_pdf())
        with pytest.raises(OffloadError) as caught:
            graph.invoke({"name": "report.pdf"}, cfg("t1"))
    message = str(caught.value)
    assert re.match(
        rf"could not upload 5\.0 MB value to s3://{bucket}/agents/sha256/[0-9a-f]{{64}}: .*127\.0\.0\.1", message
    ), message

    after = pg_rows(pg_source_url, "t1")
    steps_after = [s for _, s, _ in pg_checkpoint_bytes(pg_source_url, "t1")]
    # The new run's input checkpoints were written (no document yet), but no
    # checkpoint, blob or write for the step that held the document.
    with psycopg.connect(pg_source_url) as conn:
        pdf_rows = conn.execute(
            "SELECT (SELECT count(*) FROM checkpoint_blobs WHERE channel='pdf') + "
            "(SELECT count(*) FROM checkpoint_writes WHERE channel='pdf') + "
            "(SELECT count(*) FROM checkpoints WHERE checkpoint->'channel_versions' ? 'pdf')"
        ).fetchone()[0]
    assert pdf_rows == 0
    # Without the failure this run writes 4 checkpoints (input, after input,
    # after attach, after review); only the two before attach exist.
    assert steps_after[: len(steps_before)] == steps_before == [-1, 0, 1, 2]
    assert steps_after[len(steps_before) :] == [3, 4]
    assert after["checkpoints"] - before["checkpoints"] == 2
    assert objects(moto_s3, bucket) == {}


def test_large_str_is_offloaded_on_postgres(pg_source_url, moto_s3, bucket):
    """PostgresSaver keeps str channels inline in JSONB, out of the serializer's
    reach; offload() still moves them, in this step and the following ones."""
    text = "base64:" + "QUJD" * 600_000  # 2.4 MB
    store = s3_store(moto_s3, bucket)
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        graph = pdf_graph(offload(saver, store=store), text=text)
        graph.invoke({"name": "a"}, cfg("t1"))
        graph.invoke({"name": "b"}, cfg("t1"))  # text unchanged: carried by later checkpoints
        assert graph.get_state(cfg("t1")).values["text"] == text
        history = list(graph.get_state_history(cfg("t1")))
        assert sum(1 for h in history if h.values.get("text") == text) >= 4
    sizes = pg_checkpoint_bytes(pg_source_url, "t1")
    assert max(n for _, _, n in sizes) < 5_000, sizes
    (key,) = objects(moto_s3, bucket)
    assert moto_s3.client().head_object(Bucket=bucket, Key=key)["ContentType"].startswith("text/plain")
    assert decoded_uris(pg_typed_rows(pg_source_url, "t1")) == {f"s3://{bucket}/{key}"}


def test_lazy_references(pg_source_url, moto_s3, bucket):
    pdf = make_pdf(2_000_000)
    store = s3_store(moto_s3, bucket)
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        checkpointer = offload(saver, store=store)
        graph = pdf_graph(checkpointer, pdf=pdf)
        graph.invoke({"name": "a"}, cfg("t1"))
        gets = count_calls(store, "GetObject")
        with lazy_refs():
            ref = graph.get_state(cfg("t1")).values["pdf"]
        assert gets["GetObject"] == 0  # nothing fetched yet
        assert isinstance(ref, OffloadedRef)
        assert ref.uri.startswith(f"s3://{bucket}/agents/sha256/") and ref.size == len(pdf)
        assert ref.content_type == "application/pdf" and ref.type == "bytes"
        assert ref.read() == pdf and gets["GetObject"] == 1

        # A lazy reference written back into state is the same reference:
        # nothing is fetched or uploaded, and loading gives the value again.
        puts = count_calls(store, "PutObject")
        graph.update_state(cfg("t1"), {"pdf": ref})
        assert puts["PutObject"] == 0 and gets["GetObject"] == 1
        assert graph.get_state(cfg("t1")).values["pdf"] == pdf

    # The flag on the serializer itself.
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        lazy = offload(saver, store=s3_store(moto_s3, bucket), lazy=True)
        assert isinstance(lazy.get_tuple(cfg("t1")).checkpoint["channel_values"]["pdf"], OffloadedRef)
        with lazy_refs(False):
            assert lazy.get_tuple(cfg("t1")).checkpoint["channel_values"]["pdf"] == pdf


@pytest.mark.parametrize(
    "compression, sse",
    [("gzip", "AES256"), ("zstd", "aws:kms")],
)
def test_encryption_and_compression_round_trip(pg_source_url, moto_s3, bucket, compression, sse):
    kms_key = None
    if sse == "aws:kms":
        import boto3

        kms = boto3.client(
            "kms",
            endpoint_url=moto_s3.endpoint_url,
            region_name=moto_s3.region,
            aws_access_key_id=moto_s3.access_key,
            aws_secret_access_key=moto_s3.secret_key,
        )
        kms_key = kms.create_key()["KeyMetadata"]["KeyId"]
    pdf = make_pdf(3_000_000, seed=b"compressible page text ")
    store = s3_store(moto_s3, bucket, sse=sse, kms_key_id=kms_key)
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        graph = pdf_graph(offload(saver, store=store, compression=compression), pdf=pdf)
        graph.invoke({"name": "a"}, cfg("t1"))
        assert graph.get_state(cfg("t1")).values["pdf"] == pdf
    (key,) = objects(moto_s3, bucket)
    assert key.endswith({"gzip": ".gz", "zstd": ".zst"}[compression])
    head = moto_s3.client().head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == sse
    if kms_key:
        assert kms_key in head["SSEKMSKeyId"]
    assert head["ContentEncoding"] == compression
    assert head["ContentLength"] < len(pdf) // 10  # stored compressed
    raw = pg_raw_bytes(pg_source_url, "t1")
    assert f"s3://{bucket}/{key}".encode() in raw
    assert decoded_uris(pg_typed_rows(pg_source_url, "t1")) == {f"s3://{bucket}/{key}"}
    assert f'"encoding": "{compression}"'.encode() not in raw  # msgpack, not JSON
    assert compression.encode() in raw  # the reference records the encoding


def test_encrypted_serializer_composes(pg_source_url, moto_s3, bucket):
    pdf = make_pdf(1_500_000)
    serde = EncryptedSerializer.from_pycryptodome_aes(key=b"0123456789abcdef")
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        saver.serde = serde
        graph = pdf_graph(offload(saver, store=s3_store(moto_s3, bucket)), pdf=pdf)
        graph.invoke({"name": "a"}, cfg("t1"))
        assert graph.get_state(cfg("t1")).values["pdf"] == pdf
    with psycopg.connect(pg_source_url) as conn:
        types = {r[0] for r in conn.execute("SELECT type FROM checkpoint_blobs WHERE channel = 'pdf'")}
    assert types == {"msgpack+aes"}  # the reference itself is encrypted in the row
    assert max(n for _, _, n in pg_checkpoint_bytes(pg_source_url, "t1")) < 5_000


def test_multipart_upload_for_large_values(moto_s3, bucket):
    store = s3_store(moto_s3, bucket, multipart_threshold="5242880", multipart_chunksize="5242880")
    serde = OffloadSerializer(store=store)
    value = make_pdf(12_000_000)
    typed = serde.dumps_typed(value)
    (key,) = objects(moto_s3, bucket)
    etag = moto_s3.client().head_object(Bucket=bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts
    assert OffloadSerializer(store=s3_store(moto_s3, bucket)).loads_typed(typed) == value


def test_corrupt_or_missing_object_is_a_clear_error(moto_s3, bucket):
    store = s3_store(moto_s3, bucket)
    value = make_pdf(1_200_000)
    typed = OffloadSerializer(store=store).dumps_typed(value)
    (key,) = objects(moto_s3, bucket)
    moto_s3.client().put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.raises(OffloadError, match=r"is corrupt: sha256 [0-9a-f]{64} does not match"):
        OffloadSerializer(store=s3_store(moto_s3, bucket)).loads_typed(typed)
    moto_s3.client().delete_object(Bucket=bucket, Key=key)
    missing = rf"could not read offloaded value s3://{bucket}/{key}: .*(NoSuchKey|Not Found)"
    with pytest.raises(OffloadError, match=missing):
        OffloadSerializer(store=s3_store(moto_s3, bucket)).loads_typed(typed)


# --- SqliteSaver + file store ------------------------------------------------------------------


def test_file_store_on_sqlite(tmp_path):
    root = tmp_path / "blobs"
    db = tmp_path / "checkpoints.sqlite"
    pdf = make_pdf()
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        graph = pdf_graph(offload(SqliteSaver(conn), store=FileStore(root)), pdf=pdf)
        graph.invoke({"name": "a"}, cfg("a"))
        graph.invoke({"name": "b"}, cfg("b"))
        assert graph.get_state(cfg("b")).values["pdf"] == pdf
    finally:
        conn.close()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert [p.relative_to(root).parts[0] for p in files] == ["sha256"]  # one object, no temp files
    assert files[0].read_bytes() == pdf
    sizes = sqlite_checkpoint_bytes(db, "a")
    assert len(sizes) == expected_checkpoints(lambda s: pdf_graph(s, pdf=b"x"))
    assert max(n for _, n in sizes) < 5_000, sizes
    rows = [(t, bytes(c)) for t, c in sqlite3.connect(db).execute("SELECT type, checkpoint FROM checkpoints")]
    assert all(files[0].as_uri().encode() in c for _, c in rows[-2:])
    assert decoded_uris(rows) == {files[0].as_uri()}


def test_large_containers_and_messages_are_offloaded(tmp_path):
    """Many small items adding up, and a large nested value inside a list."""
    serde = OffloadSerializer(store=FileStore(tmp_path), threshold="100KB")
    notes = [f"note {i} " + "x" * 100 for i in range(2000)]  # 220 KB of small strings
    image = {"name": "scan.png", "data": b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)}
    value = {"notes": notes, "pages": [image, {"name": "small", "data": b"tiny"}]}
    typed = serde.dumps_typed(value)
    assert len(typed[1]) < 2_000
    assert serde.loads_typed(typed) == value
    assert OffloadSerializer(store=FileStore(tmp_path), threshold="100KB").loads_typed(typed) == value
    # the image is its own object (shared by every step that keeps it), the
    # notes list another
    assert len(list((tmp_path / "sha256").iterdir())) == 2
    # Bytes under the threshold stay in the row.
    small = serde.dumps_typed(b"y" * 1000)
    assert small == ("bytes", b"y" * 1000)


def test_settings_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("S3_BUCKET_NAME", raising=False)
    monkeypatch.setenv("BLOB_ROOT", str(tmp_path))
    monkeypatch.setenv("OFFLOAD_THRESHOLD", "2MB")
    serde = OffloadSerializer()
    assert isinstance(serde.store, FileStore) and serde.store.root == tmp_path.resolve()
    assert serde.threshold == 2_000_000
    assert serde.dumps_typed(b"a" * 1_500_000)[0] == "bytes"  # stays inline
    assert OffloadSerializer(threshold=1000).threshold == 1000  # arguments win
    monkeypatch.setenv("OFFLOAD_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="OFFLOAD_THRESHOLD='lots' is invalid"):
        OffloadSerializer()
    monkeypatch.delenv("OFFLOAD_THRESHOLD")
    monkeypatch.delenv("BLOB_ROOT")
    with pytest.raises(OffloadError, match="no blob store configured"):
        OffloadSerializer()


def test_s3_settings_from_environment(moto_s3, bucket, monkeypatch):
    for key, value in moto_s3.env(bucket, prefix="env/").items():
        monkeypatch.setenv(key, str(value))
    serde = OffloadSerializer()
    assert isinstance(serde.store, S3Store) and serde.store.path_style is True
    typed = serde.dumps_typed(b"e" * 1_100_000)
    (key,) = objects(moto_s3, bucket)
    assert key.startswith("env/sha256/")
    assert OffloadSerializer().loads_typed(typed) == b"e" * 1_100_000
    minio = S3Store(scheme="minio")
    assert minio.uri("k") == f"minio://{bucket}/k"


def test_with_allowlist_keeps_the_wrappers():
    """Strict msgpack mode clones the checkpointer with an allowlist."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    saver = InMemorySaver(serde=JsonPlusSerializer(allowed_msgpack_modules=None))  # strict
    checkpointer = offload(limit_size(saver), store=FileStore("/tmp/unused-offload-root"))
    clone = checkpointer.with_allowlist({("tests.test_offload", "DocState")})
    assert isinstance(clone, OffloadingSaver) and isinstance(clone.saver, SizeLimitedSaver)
    inner = clone.saver.saver
    assert inner is not saver and isinstance(inner.serde, OffloadSerializer)
    assert inner.serde.inner is not saver.serde.inner
    assert ("tests.test_offload", "DocState") in inner.serde.inner._allowed_msgpack_modules
    assert checkpointer.with_allowlist(set()) is checkpointer  # nothing to add: no clone


# --- concurrency on the async savers ------------------------------------------------------------


async def _concurrent_runs(checkpointer, pdf, n=10):
    graph = pdf_graph(checkpointer, pdf=pdf)
    threads = [f"c{i}" for i in range(n)]
    await asyncio.gather(*(graph.ainvoke({"name": t}, cfg(t)) for t in threads))
    # Second round: each run loads the previous state (the PDF comes back
    # through the deferred fetch) and the review node checks its bytes.
    await asyncio.gather(*(graph.ainvoke({"name": t + " again"}, cfg(t)) for t in threads))
    for t in threads:
        state = await graph.aget_state(cfg(t))
        assert state.values["pdf"] == pdf
        assert len(state.values["notes"]) == 4
    return threads


def test_concurrent_ainvoke_async_postgres(pg_source_url, moto_s3, bucket):
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    pdf = make_pdf(2_000_000)
    expected = expected_checkpoints(lambda s: pdf_graph(s, pdf=b"x"), runs=2)

    async def main():
        async with AsyncPostgresSaver.from_conn_string(pg_source_url) as saver:
            checkpointer = offload(limit_size(saver), store=s3_store(moto_s3, bucket))
            return await _concurrent_runs(checkpointer, pdf)

    threads = asyncio.run(main())
    with psycopg.connect(pg_source_url) as conn:
        counts = dict(conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id").fetchall())
    assert counts == {t: expected for t in threads}
    assert len(objects(moto_s3, bucket)) == 1
    assert max(n for t in threads for _, _, n in pg_checkpoint_bytes(pg_source_url, t)) < 5_000


def test_concurrent_ainvoke_async_sqlite(tmp_path, moto_s3, bucket):
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    pdf = make_pdf(2_000_000)
    db = tmp_path / "async.sqlite"
    expected = expected_checkpoints(lambda s: pdf_graph(s, pdf=b"x"), runs=2)

    async def main():
        async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
            checkpointer = limit_size(offload(saver, store=s3_store(moto_s3, bucket)))
            return await _concurrent_runs(checkpointer, pdf)

    threads = asyncio.run(main())  # a "database is locked" error would raise here
    conn = sqlite3.connect(db)
    counts = dict(conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id").fetchall())
    conn.close()
    assert counts == {t: expected for t in threads}
    assert len(objects(moto_s3, bucket)) == 1
    assert max(n for t in threads for _, n in sqlite_checkpoint_bytes(db, t)) < 5_000


def test_async_sqlite_with_file_store_and_history(tmp_path):
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    pdf = make_pdf(1_500_000)

    async def main():
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "a.sqlite")) as saver:
            graph = pdf_graph(offload(saver, store=FileStore(tmp_path / "blobs")), pdf=pdf)
            await graph.ainvoke({"name": "a"}, cfg("t"))
            history = [h async for h in graph.aget_state_history(cfg("t"))]
            return [h.values.get("pdf") for h in history]

    values = asyncio.run(main())
    assert values.count(pdf) == 2 and all(v in (None, pdf) for v in values)


def test_reference_is_plain_msgpack(tmp_path):
    """No custom class is needed to read a row: it is a plain map."""
    import ormsgpack

    serde = OffloadSerializer(store=FileStore(tmp_path))
    type_, data = serde.dumps_typed(make_pdf(1_100_000))
    assert type_ == "msgpack"
    reference = ormsgpack.unpackb(data)
    assert set(reference) == {"__offloaded__", "uri", "sha256", "size", "type", "content_type", "encoding"}
    assert reference["uri"].startswith("file://") and reference["size"] == 1_100_000
    assert json.dumps(reference)  # and JSON-able


# --- every scenario of tests/graphs.py, with almost everything offloaded -------------------------


def _latest(saver, thread_id):
    tup = saver.get_tuple(cfg(thread_id))
    values = tup.checkpoint["channel_values"]
    writes = sorted((channel, repr(value)) for _, channel, value in tup.pending_writes if channel != "__interrupt__")
    return values, writes, tup.metadata.get("step")


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_scenarios_load_the_same_with_a_tiny_threshold(kind, request, tmp_path):
    """Subgraphs, interrupts and resume, update_state, forks, bytes: with a
    100-byte threshold most values go to the store, and every thread still
    loads exactly as it does without the wrappers."""
    from tests.graphs import run_scenarios

    def check(saver):
        plain_threads = run_scenarios(saver, prefix="plain")
        expected = {t: (_latest(saver, t), len(list(saver.list(cfg(t))))) for t in plain_threads}
        wrapped = offload(limit_size(saver), store=FileStore(tmp_path / "blobs"), threshold="100B")
        # The wrapper, and the serializer alone (offload() installed it on saver).
        offloaded_threads = run_scenarios(wrapped, prefix="off")
        serde_threads = run_scenarios(saver, prefix="serde")
        for plain, off, serde in zip(plain_threads, offloaded_threads, serde_threads):
            for checkpointer, thread in ((wrapped, off), (saver, serde)):
                assert (_latest(checkpointer, thread), len(list(checkpointer.list(cfg(thread))))) == expected[plain]
        return offloaded_threads

    if kind == "postgres":
        pg_source_url = request.getfixturevalue("pg_source_url")
        with PostgresSaver.from_conn_string(pg_source_url) as saver:
            threads = check(saver)
        with psycopg.connect(pg_source_url) as conn:
            offloaded = conn.execute(
                "SELECT count(*) FROM checkpoint_blobs WHERE thread_id LIKE 'off-%%'"
                " AND position('__offloaded__'::bytea in blob) > 0"
            ).fetchone()[0]
    else:
        conn = sqlite3.connect(tmp_path / "s.sqlite", check_same_thread=False)
        try:
            threads = check(SqliteSaver(conn))
            offloaded = conn.execute(
                "SELECT count(*) FROM checkpoints WHERE thread_id LIKE 'off-%'"
                " AND instr(checkpoint, '__offloaded__') > 0"
            ).fetchone()[0]
        finally:
            conn.close()
    assert threads and offloaded >= 5
    assert len(list((tmp_path / "blobs" / "sha256").iterdir())) > 5
