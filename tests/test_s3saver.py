"""S3Saver: object layout, requests on the wire, faults, the breaker, metrics, real graphs.

Every test talks to a real S3 server over HTTP (moto's server, or SeaweedFS
where signatures matter) through the client checkpoints.s3client builds. Faults
are injected with botocore `before-send` hooks: the request never leaves and
the hook answers as the server would (503 SlowDown), nothing is patched.
"""

import asyncio
import base64
import gzip
import io
import json
import subprocess
import sys
import threading
import uuid

import pytest
from botocore.awsrequest import AWSResponse
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.types import ERROR
from langgraph.types import Command
from prometheus_client import CollectorRegistry

from storage.s3saver import (
    AsyncS3Saver,
    CircuitBreaker,
    CircuitOpenError,
    S3CheckpointError,
    S3Saver,
    decode_segment,
    encode_segment,
    invert_id,
)
from tests import graphs
from tests.seaweed import seaweed_s3  # noqa: F401

ODD_IDS = ["", "_", ".", "..", "a/b", "line\nbreak", "sp ace", "ünï çødé", "100%", "a:b|c:d", "x" * 200, "-", "%2F"]


def test_import_is_django_free():
    code = "import sys, storage.s3saver as m; m.S3Saver; m.AsyncS3Saver; assert 'django' not in sys.modules, 'django'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("value", ODD_IDS)
def test_segments_round_trip_and_never_hold_a_slash(value):
    segment = encode_segment(value)
    assert decode_segment(segment) == value
    assert segment and "/" not in segment and "\n" not in segment and segment not in (".", "..")


def test_inverted_ids_sort_newest_first():
    from langgraph.checkpoint.base.id import uuid6

    ids = [str(uuid6(clock_seq=i)) for i in range(50)]
    assert sorted(ids, key=invert_id) == sorted(ids, reverse=True)
    with pytest.raises(ValueError, match="not a lowercase hex uuid"):
        invert_id("../etc")


@pytest.fixture
def bucket(moto_s3):
    name = f"saver-{uuid.uuid4().hex[:10]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


def env(server, bucket, prefix="agents/lg"):
    """The server's settings as the process environment holds them (strings)."""
    return {k: str(v) for k, v in server.env(bucket, prefix=prefix).items()}


def make_saver(server, bucket, cls=S3Saver, **options):
    options.setdefault("registry", CollectorRegistry())
    return cls.from_env(env(server, bucket), **options)


def keys(server, bucket, prefix=""):
    paginator = server.client().get_paginator("list_objects_v2")
    return [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


class Wire:
    """Counts the requests the saver's client sends, by operation (botocore before-send)."""

    def __init__(self, saver):
        self.sent = []
        saver.client.meta.events.register("before-send.s3", self._hook, unique_id=f"wire-{id(self)}")

    def _hook(self, request, **kwargs):
        self.sent.append((request.method, request.url))

    def count(self):
        n = len(self.sent)
        self.sent.clear()
        return n

    def by_kind(self):
        listing = sum(1 for m, url in self.sent if m == "GET" and "list-type=2" in url)
        return {"list": listing, "other": len(self.sent) - listing}


def put_chain(saver, thread_id, n, ns="", values=None, parent=None):
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
    if parent:
        config["configurable"]["checkpoint_id"] = parent
    for i in range(n):
        cp = empty_checkpoint()
        cp["channel_values"] = dict(values or {"count": i})
        cp["channel_versions"] = {k: i + 1 for k in cp["channel_values"]}
        config = saver.put(config, cp, {"source": "loop", "step": i, "tenant": "acme"}, cp["channel_versions"])
    return config


# --- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "payload-object"])
def test_put_writes_payload_manifest_and_change_entry(moto_s3, bucket, inline):
    saver = make_saver(moto_s3, bucket, **({} if inline else {"inline_limit": 0}))
    cp = empty_checkpoint()
    cp["channel_values"] = {"doc": "d" * 5000, "count": 3}
    cp["channel_versions"] = {"doc": 1, "count": 1}
    config = {"configurable": {"thread_id": "a/b\nc", "checkpoint_ns": "", "tenant": "acme"}}
    stored = saver.put(config, cp, {"source": "input", "step": -1}, {"doc": 1, "count": 1})
    saver.put_writes(stored, [("messages", "hi"), (ERROR, "boom")], "task-1", "path")

    found = keys(moto_s3, bucket)
    inv = invert_id(cp["id"])
    base = f"agents/lg/threads/a%2Fb%0Ac/_/{inv}/"
    assert set(k for k in found if not k.startswith("agents/lg/changes/")) == {
        base + "manifest.json", base + "writes/task-1/0", base + "writes/task-1/-1",
    } | (set() if inline else {base + "payload"})
    changes = [k for k in found if k.startswith("agents/lg/changes/")]
    assert sorted(k.split("/", 4)[4] for k in changes) == sorted([
        f"put/a%2Fb%0Ac/_/{cp['id']}", f"writes/a%2Fb%0Ac/_/{cp['id']}",
    ])

    client = moto_s3.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=base + "manifest.json")["Body"].read())
    if inline:  # a small payload travels base64 in the manifest, which says so with format 2
        assert manifest["format"] == 2 and "key" not in manifest["payload"]
        body = base64.b64decode(manifest["payload"]["inline"])
        payload = {"ContentLength": len(body), "Body": io.BytesIO(body)}
    else:
        assert manifest["format"] == 1 and manifest["payload"]["key"] == "payload"
        payload = client.get_object(Bucket=bucket, Key=base + "payload")
    assert manifest["thread_id"] == "a/b\nc" and manifest["checkpoint_id"] == cp["id"]
    assert manifest["parent_checkpoint_id"] is None
    assert manifest["metadata"] == {"source": "input", "step": -1, "tenant": "acme"}
    assert manifest["channel_versions"] == {"doc": 1, "count": 1}
    assert manifest["payload"]["bytes"] == payload["ContentLength"]
    assert manifest["payload"]["encoding"] == "gzip"  # 5000 repeated bytes compress
    assert manifest["payload"]["raw_bytes"] == len(gzip.decompress(payload["Body"].read()))
    assert manifest["values"]["doc"]["type"] == "msgpack" and manifest["values"]["doc"]["bytes"] > 5000

    got = saver.get_tuple({"configurable": {"thread_id": "a/b\nc", "checkpoint_ns": ""}})
    assert got.checkpoint["channel_values"] == {"doc": "d" * 5000, "count": 3}
    assert got.pending_writes == [("task-1", ERROR, "boom"), ("task-1", "messages", "hi")]  # writes_sort_key order


@pytest.mark.parametrize("thread_id", ODD_IDS[:8])
def test_odd_thread_ids_and_namespaces_round_trip(moto_s3, bucket, thread_id):
    saver = make_saver(moto_s3, bucket)
    put_chain(saver, thread_id, 2, ns="")
    put_chain(saver, thread_id, 1, ns=f"sub/{thread_id}:1")
    put_chain(saver, thread_id + "/x", 1)  # a thread whose id extends this one's is another thread
    listed = list(saver.list({"configurable": {"thread_id": thread_id}}))
    assert len(listed) == 3
    assert {t.config["configurable"]["checkpoint_ns"] for t in listed} == {"", f"sub/{thread_id}:1"}
    assert saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}).metadata["step"] == 1
    saver.delete_thread(thread_id)
    assert list(saver.list({"configurable": {"thread_id": thread_id}})) == []
    assert len(list(saver.list({"configurable": {"thread_id": thread_id + "/x"}}))) == 1


def test_failed_payload_upload_leaves_no_manifest(moto_s3, bucket):
    # A payload above inline_limit is its own object, uploaded before the manifest.
    saver = make_saver(moto_s3, bucket, max_attempts=1, inline_limit=0)
    last = put_chain(saver, "t", 1)

    def refuse_payload(request, **kwargs):
        if request.url.split("?")[0].endswith("/payload"):
            body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        return None

    saver.client.meta.events.register("before-send.s3.PutObject", refuse_payload, unique_id="refuse-payload")
    with pytest.raises(Exception, match="SlowDown"):
        put_chain(saver, "t", 1, parent=last["configurable"]["checkpoint_id"])
    saver.client.meta.events.unregister("before-send.s3.PutObject", unique_id="refuse-payload")
    manifests = [k for k in keys(moto_s3, bucket, "agents/lg/threads/") if k.endswith("manifest.json")]
    assert len(manifests) == 1
    assert saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}).config == last


def test_failed_inline_put_leaves_no_checkpoint(moto_s3, bucket):
    """A payload inside its manifest cannot be missing: a refused manifest PUT leaves the previous latest."""
    saver = make_saver(moto_s3, bucket, max_attempts=1)
    last = put_chain(saver, "t", 1)

    def refuse_manifest(request, **kwargs):
        if request.url.split("?")[0].endswith("/manifest.json"):
            body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        return None

    saver.client.meta.events.register("before-send.s3.PutObject", refuse_manifest, unique_id="refuse-manifest")
    with pytest.raises(Exception, match="SlowDown"):
        put_chain(saver, "t", 1, parent=last["configurable"]["checkpoint_id"])
    saver.client.meta.events.unregister("before-send.s3.PutObject", unique_id="refuse-manifest")
    assert [k for k in keys(moto_s3, bucket, "agents/lg/threads/")] == [saver.manifest_key("t", "", last["configurable"]["checkpoint_id"])]
    assert saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}).config == last


def test_corrupt_inline_payload_is_a_clear_error_naming_the_manifest(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket)
    stored = put_chain(saver, "t", 1)
    key = saver.manifest_key("t", "", stored["configurable"]["checkpoint_id"])
    client = moto_s3.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest["payload"]["inline"] = base64.b64encode(b"\x1f\x8bnot gzip").decode()
    manifest["payload"]["bytes"] = 10
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    with pytest.raises(S3CheckpointError, match=f"{key} \\(inline payload\\) is corrupt"):
        saver.get_tuple(stored)
    manifest["payload"]["bytes"] = 11
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    with pytest.raises(S3CheckpointError, match=f"{key}: its inline payload is corrupt"):
        saver.get_tuple(stored)


def test_format_1_and_inline_checkpoints_read_alike_in_one_thread(moto_s3, bucket):
    """A thread begun by a saver that wrote payload objects (format 1) and continued with inline
    payloads (format 2) reads whole: get_tuple, list and a filtered list."""
    older = make_saver(moto_s3, bucket, inline_limit=0)
    newer = make_saver(moto_s3, bucket)
    first = put_chain(older, "t", 2, values={"doc": "old"})
    older.put_writes(first, [("messages", "from old")], "task-old")
    last = put_chain(newer, "t", 2, values={"doc": "new"}, parent=first["configurable"]["checkpoint_id"])
    newer.put_writes(last, [("messages", "from new")], "task-new")
    for saver in (older, newer):
        listed = list(saver.list({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}))
        assert [t.checkpoint["channel_values"]["doc"] for t in listed] == ["new", "new", "old", "old"]
        assert listed[0].pending_writes == [("task-new", "messages", "from new")]
        assert listed[2].pending_writes == [("task-old", "messages", "from old")]
        assert saver.get_tuple(first).checkpoint["channel_values"] == {"doc": "old"}
        assert [t.metadata["step"] for t in saver.list(None, filter={"step": 1})] == [1, 1]
    manifests = [json.loads(moto_s3.client().get_object(Bucket=bucket, Key=k)["Body"].read())
                 for k in keys(moto_s3, bucket, "agents/lg/threads/") if k.endswith("manifest.json")]
    assert sorted(m["format"] for m in manifests) == [1, 1, 2, 2]


def test_missing_or_corrupt_payload_is_a_clear_error_naming_the_object(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket, inline_limit=0)
    stored = put_chain(saver, "t", 1)
    key = saver.payload_key("t", "", stored["configurable"]["checkpoint_id"])
    moto_s3.client().put_object(Bucket=bucket, Key=key, Body=b"\x1f\x8bnot gzip")
    with pytest.raises(S3CheckpointError, match=key):
        saver.get_tuple(stored)
    moto_s3.client().delete_object(Bucket=bucket, Key=key)
    with pytest.raises(S3CheckpointError, match=f"{key} is missing"):
        saver.get_tuple(stored)


def test_objects_under_the_prefix_that_are_not_ours_are_skipped(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket)
    stored = put_chain(saver, "t", 2)
    client = moto_s3.client()
    for stray in ("agents/lg/threads/t/_/README", "agents/lg/threads/t/_/not-hex/payload", "agents/lg/threads/t/x"):
        client.put_object(Bucket=bucket, Key=stray, Body=b"x")
    assert saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}).config == stored
    assert len(list(saver.list({"configurable": {"thread_id": "t"}}))) == 2
    assert len(list(saver.list(None))) == 2


def test_concurrent_writers_to_one_thread_lose_nothing(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket)
    ids = []
    lock = threading.Lock()

    def writer(n):
        for _ in range(5):
            stored = put_chain(saver, "shared", 1, values={"w": n})
            saver.put_writes(stored, [("ch", n)], f"task-{n}")
            with lock:
                ids.append(stored["configurable"]["checkpoint_id"])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed = list(saver.list({"configurable": {"thread_id": "shared", "checkpoint_ns": ""}}))
    assert sorted(t.config["configurable"]["checkpoint_id"] for t in listed) == sorted(ids)
    assert [t.config["configurable"]["checkpoint_id"] for t in listed] == sorted(ids, reverse=True)
    assert all(len(t.pending_writes) == 1 for t in listed)


# --- requests on the wire ---------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "payload-object"])
def test_requests_do_not_grow_with_history(moto_s3, bucket, inline):
    saver = make_saver(moto_s3, bucket, **({} if inline else {"inline_limit": 0}))
    put_chain(saver, "short", 10)
    put_chain(saver, "long", 400)
    wire = Wire(saver)
    for thread in ("short", "long"):
        assert saver.get_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}).metadata["step"] in (9, 399)
        assert wire.count() == 2, thread
    put_chain(saver, "long", 1)
    assert wire.count() == (2 if inline else 3)  # manifest + change entry (payload object first when not inline)
    listed = list(saver.list({"configurable": {"thread_id": "long", "checkpoint_ns": ""}}, limit=10))
    assert len(listed) == 10 and listed[0].metadata["step"] == 0  # the extra put started a new chain
    assert wire.by_kind() == {"list": 1, "other": 10}
    wire.count()
    before = listed[4].config
    listed = list(saver.list({"configurable": {"thread_id": "long", "checkpoint_ns": ""}}, before=before, limit=3))
    assert [t.metadata["step"] for t in listed] == [395, 394, 393]  # listed[4] is step 396
    assert wire.by_kind() == {"list": 1, "other": 3}


def test_batch_delete_sends_at_most_1000_keys_a_request(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket)
    client = moto_s3.client()
    doomed = [f"agents/lg/threads/big/_/{i:04x}/payload" for i in range(2300)]
    list(saver._pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b""), doomed))
    wire = Wire(saver)
    assert saver.delete_keys(doomed) == 2300
    assert sorted(url.count("delete") for m, url in wire.sent) == [1, 1, 1]
    assert keys(moto_s3, bucket, "agents/lg/threads/big/") == []


# --- the breaker, retries, metrics -------------------------------------------------------------


class _Body:
    def __init__(self, data):
        self.data = data

    def stream(self, **kwargs):
        yield self.data


class FixedClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_consecutive_faults_and_closes_after_a_good_trial(moto_s3, bucket):
    clock = FixedClock()
    registry = CollectorRegistry()
    saver = make_saver(moto_s3, bucket, max_attempts=1, breaker_failures=3, breaker_reset=60, clock=clock, registry=registry)
    stored = put_chain(saver, "t", 1)
    down = {"on": True}
    sent = []

    def outage(request, **kwargs):
        sent.append(request.url)
        if down["on"]:
            body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        return None

    saver.client.meta.events.register("before-send.s3", outage, unique_id="outage")
    for _ in range(3):
        with pytest.raises(Exception, match="ServiceUnavailable"):
            saver.get_tuple(stored)
    assert saver.breaker.state == "open"
    assert registry.get_sample_value("s3saver_breaker_state") == 2
    sent.clear()
    with pytest.raises(CircuitOpenError):
        saver.get_tuple(stored)
    assert sent == []  # open: nothing leaves
    clock.now += 61
    assert saver.breaker.state == "half_open"
    with pytest.raises(Exception, match="ServiceUnavailable"):  # the trial fails: open again
        saver.get_tuple(stored)
    assert saver.breaker.state == "open"
    clock.now += 61
    down["on"] = False
    assert saver.get_tuple(stored).config == stored
    assert saver.breaker.state == "closed"
    assert registry.get_sample_value("s3saver_breaker_state") == 0


def test_a_missing_object_does_not_count_against_the_breaker():
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=FixedClock())
    breaker.before()
    breaker.neutral()
    assert breaker.state == "closed"


def test_retries_go_through_the_client_builder_and_are_counted(moto_s3, bucket):
    registry = CollectorRegistry()
    saver = make_saver(moto_s3, bucket, max_attempts=3, registry=registry)
    stored = put_chain(saver, "t", 1)
    attempts = []

    def slow_down_twice(request, **kwargs):
        attempts.append(1)
        if len(attempts) <= 2:
            body = b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        return None

    saver.client.meta.events.register("before-send.s3.GetObject", slow_down_twice, unique_id="slow")
    assert saver.get_tuple(stored).config == stored
    assert len(attempts) == 3
    assert registry.get_sample_value("s3saver_retries_total") == 2
    assert saver.breaker.state == "closed"


def test_metrics_count_operations_bytes_and_latency(moto_s3, bucket):
    registry = CollectorRegistry()
    saver = make_saver(moto_s3, bucket, registry=registry)
    stored = put_chain(saver, "t", 2)
    saver.get_tuple(stored)
    list(saver.list({"configurable": {"thread_id": "t"}}))
    assert registry.get_sample_value("s3saver_operations_total", {"operation": "put", "outcome": "ok"}) == 2
    assert registry.get_sample_value("s3saver_operations_total", {"operation": "get_tuple", "outcome": "ok"}) == 1
    assert registry.get_sample_value("s3saver_operations_total", {"operation": "list", "outcome": "ok"}) == 1
    assert registry.get_sample_value("s3saver_operation_seconds_count", {"operation": "put"}) == 2
    assert registry.get_sample_value("s3saver_bytes_total", {"direction": "out"}) > 0
    assert registry.get_sample_value("s3saver_bytes_total", {"direction": "in"}) > 0
    assert registry.get_sample_value("s3saver_requests_total", {"request": "put_object"}) == 4  # manifest + change entry each
    # A second saver on the same registry shares the metrics instead of failing to register them.
    make_saver(moto_s3, bucket, registry=registry)


def test_broken_metrics_never_fail_the_saver(moto_s3, bucket):
    class Broken:
        def register(self, collector):
            raise RuntimeError("registry is broken")

    saver = make_saver(moto_s3, bucket, registry=Broken())
    stored = put_chain(saver, "t", 1)
    assert saver.get_tuple(stored).config == stored


def test_from_env_reads_the_shared_settings(moto_s3, bucket):
    saver = S3Saver.from_env(env(moto_s3, bucket, prefix="p"), metrics=False)
    assert (saver.bucket, saver.prefix, saver.settings.endpoint_url) == (bucket, "p/", moto_s3.endpoint_url)
    with pytest.raises(ValueError, match="S3_BUCKET_NAME"):
        S3Saver.from_env({})
    with pytest.raises(ValueError, match="S3_FORCE_PATH_STYLE"):
        S3Saver.from_env({**env(moto_s3, bucket), "S3_FORCE_PATH_STYLE": "maybe"})


def test_encryption_is_asked_for_on_every_object(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket, sse="aws:kms", sse_kms_key_id="alias/checkpoints")
    stored = put_chain(saver, "t", 1)
    saver.put_writes(stored, [("ch", 1)], "task")
    client = moto_s3.client()
    for key in keys(moto_s3, bucket, "agents/lg/threads/"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
    with pytest.raises(ValueError):
        make_saver(moto_s3, bucket, sse="des")


def test_prune_keep_latest_refuses_delta_threads_and_prunes_others(moto_s3, bucket):
    saver = make_saver(moto_s3, bucket)
    delta = graphs.delta_graph(saver)
    for _ in range(3):
        delta.invoke({"n": 0}, graphs.config("delta"))
    put_chain(saver, "plain", 5)
    with pytest.raises(NotImplementedError, match="delta"):
        saver.prune(["plain", "delta"])
    assert len(list(saver.list({"configurable": {"thread_id": "plain"}}))) == 5
    saver.prune(["plain"])
    assert [t.metadata["step"] for t in saver.list({"configurable": {"thread_id": "plain"}})] == [4]
    deleted = [k for k in keys(moto_s3, bucket, "agents/lg/changes/") if "/delete/" in k]
    assert len(deleted) == 4
    saver.prune(["delta"], strategy="delete")
    assert list(saver.list({"configurable": {"thread_id": "delta"}})) == []
    saver.prune(["delta"])  # no longer a delta thread: nothing to refuse


# --- real graphs: the same states as on PostgresSaver ----------------------------------------------


def _states(saver, threads):
    chat = graphs.chat_graph(saver)
    out = {}
    for t in threads:
        cfg = graphs.config(t)
        state = chat.get_state(cfg, subgraphs=True)
        history = list(chat.get_state_history(cfg))
        out[t] = (state.values, state.next, [task.interrupts for task in state.tasks], len(history),
                  [h.metadata.get("source") for h in history])
    return out


def _big_value(saver):
    chat = graphs.chat_graph(saver)
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 7)  # a little over 5 MB: multipart
    chat.invoke({"payload": big, "messages": ["big"]}, graphs.config("t-big"))
    return "t-big"


def test_real_graphs_give_the_same_states_as_postgres(seaweed_s3, pg_saver):
    bucket = f"graphs-{uuid.uuid4().hex[:8]}"
    seaweed_s3.client().create_bucket(Bucket=bucket)
    saver = make_saver(seaweed_s3, bucket)
    threads = graphs.run_scenarios(saver) + [_big_value(saver)]
    assert graphs.run_scenarios(pg_saver) + [_big_value(pg_saver)] == threads
    assert _states(saver, threads) == _states(pg_saver, threads)
    big = saver.get_tuple(graphs.config("t-big") | {"configurable": {"thread_id": "t-big", "checkpoint_ns": ""}})
    assert len(big.checkpoint["channel_values"]["payload"]) > 5 * 1024 * 1024


def test_async_graphs_run_on_async_saver(seaweed_s3, pg_saver):
    bucket = f"agraphs-{uuid.uuid4().hex[:8]}"
    seaweed_s3.client().create_bucket(Bucket=bucket)
    saver = make_saver(seaweed_s3, bucket, cls=AsyncS3Saver)

    async def run():
        asking = graphs.interrupt_graph(saver)
        cfg = graphs.config("a-interrupt")
        await asking.ainvoke({"messages": ["please"]}, cfg)
        waiting = await asking.aget_state(cfg)
        await asking.ainvoke(Command(resume="yes"), cfg)
        done = await asking.aget_state(cfg)
        history = [s async for s in asking.aget_state_history(cfg)]
        return waiting, done, history

    waiting, done, history = asyncio.run(run())
    asking = graphs.interrupt_graph(pg_saver)
    cfg = graphs.config("a-interrupt")
    asking.invoke({"messages": ["please"]}, cfg)
    pg_waiting = asking.get_state(cfg)
    asking.invoke(Command(resume="yes"), cfg)
    assert (waiting.values, waiting.next) == (pg_waiting.values, pg_waiting.next)
    assert done.values == asking.get_state(cfg).values
    assert len(history) == len(list(asking.get_state_history(cfg)))
