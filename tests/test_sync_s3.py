"""The console mirrors an S3 checkpoint store written by S3Saver (real graphs, moto's S3 server).

After each step the mirror is compared with what the bucket holds: a listing
of the prefix and its manifests (tests/truth.py, written from
docs/s3-layout.md, not with the reader's code).
"""

import base64
import json
import uuid

import ormsgpack
import pytest

from checkpoints.s3layout import unpack
from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Run, Source, Thread
from checkpoints.sources.s3 import reader as s3_reader
from checkpoints.sync import sync_source
from storage.s3saver import S3Saver
from tests.graphs import chat_graph, config, run_scenarios
from tests.mirror_data import operator, operator_client, static_settings, viewer, viewer_client  # noqa: F401
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db

PREFIX = "agents/prod/"


# Payloads inside their manifests (format 2, the saver's default), as objects of their own (format 1: what
# older savers wrote, and payloads above inline_limit still are), and both in one store.
LAYOUTS = {"inline": {}, "payload-object": {"inline_limit": 0}, "mixed": {"inline_limit": 500}}


@pytest.fixture
def store(moto_s3, s3_bucket, request):
    """(saver, url): an S3Saver under PREFIX in the test bucket, and its source URL.
    Parametrize indirectly with a LAYOUTS name (default: inline)."""
    saver = S3Saver(s3_bucket, PREFIX, client=moto_s3.client(), metrics=False,
                    **LAYOUTS[getattr(request, "param", "inline")])
    yield saver, f"s3://{s3_bucket}/{PREFIX}"
    saver.close()


def make_source(url, name="s3src"):
    return Source.objects.create(name=name, url=url, kind="s3")


@pytest.mark.parametrize("store", list(LAYOUTS), indirect=True)
def test_first_sync_mirrors_threads_checkpoints_tags_references_and_sizes(store):
    saver, url = store
    threads = run_scenarios(saver, file_uri=f"s3://{saver.bucket}/uploads/u1/report.pdf")
    payloads = sum(o["Key"].endswith("/payload") for o in _objects(saver, "threads/"))
    manifests = sum(o["Key"].endswith("/manifest.json") for o in _objects(saver, "threads/"))
    layout = {32 * 1024: "inline", 0: "payload-object", 500: "mixed"}[saver.inline_limit]
    assert {"inline": payloads == 0, "payload-object": payloads == manifests, "mixed": 0 < payloads < manifests}[layout]
    source = make_source(url)

    result = sync_source(source)

    assert result["error"] is None
    truth = assert_mirror_matches(source, url)
    assert result["added"] == len(truth["checkpoints"]) == result["checkpoints"]
    assert result["threads"] == len(threads)
    assert Checkpoint.objects.filter(source=source, checkpoint_ns__contains=":").exists()
    assert Thread.objects.get(source=source, thread_id="t-chat2").tags == {"tenant": "globex", "user_id": "u2", "project": "demo"}
    assert Thread.objects.get(source=source, thread_id="t-waiting").tags["urgent"] == "true"
    # The file named in state is a reference of the thread that holds it, in the configured bucket.
    ref = BlobReference.objects.get(uri=f"s3://{saver.bucket}/uploads/u1/report.pdf")
    assert ref.store == "s3"
    assert ReferenceUse.objects.filter(reference=ref, thread__thread_id="t-file").exists()
    source.refresh_from_db()
    assert source.layout == "s3-format-1" and not source.references_unknown
    assert "problems" not in source.sync_state
    # Stored bytes are the objects' sizes: the whole prefix's threads/ listing, summed.
    listed = sum(o["Size"] for o in _objects(saver, "threads/"))
    assert sum(Thread.objects.filter(source=source).values_list("stored_bytes", flat=True)) == listed


def test_incremental_sync_lists_after_the_watermark_and_rereads_only_changed_threads(store, monkeypatch):
    saver, url = store
    run_scenarios(saver)
    source = make_source(url)
    assert sync_source(source)["error"] is None
    # Entries stamped before the watermark are not listed again (the overlap covers late entries;
    # none here, so none is needed for the test).
    monkeypatch.setattr(s3_reader, "OVERLAP_SECONDS", 0)

    chat = chat_graph(saver)
    chat.invoke({"messages": ["again"]}, config("t-chat0", tenant="acme", user_id="u0", project="demo"))
    chat.invoke({"messages": ["new"]}, config("t-new", tenant="hooli"))
    result = sync_source(source)

    assert result["error"] is None and result["added"] > 0
    assert_mirror_matches(source, url)
    run = Run.objects.filter(kind="sync", source=source).latest("pk")
    assert run.progress_total == 2  # the two threads the change index names, not the store
    assert Thread.objects.get(source=source, thread_id="t-new").tags == {"tenant": "hooli"}

    quiet = sync_source(source)
    assert quiet["error"] is None and (quiet["added"], quiet["updated"], quiet["removed"]) == (0, 0, 0)
    assert Run.objects.filter(kind="sync", source=source).latest("pk").progress_total == 0


def test_deleted_thread_and_pruned_checkpoints_leave_the_mirror(store):
    saver, url = store
    run_scenarios(saver)
    source = make_source(url)
    assert sync_source(source)["error"] is None
    before = Checkpoint.objects.filter(source=source, thread__thread_id="t-chat1").count()

    saver.delete_thread("t-chat1")
    saver.prune(["t-chat2"], strategy="keep_latest")
    result = sync_source(source)

    assert result["error"] is None
    assert result["removed"] >= before
    assert not Thread.objects.filter(source=source, thread_id="t-chat1").exists()
    assert Checkpoint.objects.filter(source=source, thread__thread_id="t-chat2").count() == 1
    assert_mirror_matches(source, url)


def test_odd_thread_ids_round_trip(store):
    saver, url = store
    chat = chat_graph(saver)
    odd = ["a/b c", "100%", "_", "line\nbreak", "ünï çødé", "x:y"]
    for t in odd:
        chat.invoke({"messages": ["hi"]}, config(t, tenant="odd"))
    source = make_source(url)

    assert sync_source(source)["error"] is None
    assert set(Thread.objects.filter(source=source).values_list("thread_id", flat=True)) == set(odd)
    assert_mirror_matches(source, url)


def test_foreign_objects_are_reported_and_the_rest_mirrored(store):
    saver, url = store
    run_scenarios(saver)
    client = saver.client
    for key in ("threads/notes.txt", "threads/t-chat0/_/not-an-id/payload", "threads/t-chat0/readme",
                "changes/garbage"):
        client.put_object(Bucket=saver.bucket, Key=PREFIX + key, Body=b"not ours")
    cp_dir = next(o["Key"] for o in _objects(saver, "threads/t-chat1/_/") if o["Key"].endswith("/manifest.json"))
    client.put_object(Bucket=saver.bucket, Key=cp_dir.replace("manifest.json", "stray.bin"), Body=b"x")
    source = make_source(url)

    result = sync_source(source)

    assert result["error"] is None
    source.refresh_from_db()
    reported = {p["key"] for p in source.sync_state["problems"]["first"]}
    assert f"s3://{saver.bucket}/{PREFIX}threads/notes.txt" in reported
    assert f"s3://{saver.bucket}/{PREFIX}threads/t-chat0/_/not-an-id/payload" in reported
    assert f"s3://{saver.bucket}/{cp_dir.replace('manifest.json', 'stray.bin')}" in reported
    assert all("not written by S3Saver" in p["error"] for p in source.sync_state["problems"]["first"])
    # The stray object sits in a checkpoint directory: the truth counts it, the mirror does not
    # own it; compare the rest.
    client.delete_object(Bucket=saver.bucket, Key=cp_dir.replace("manifest.json", "stray.bin"))
    assert_mirror_matches(source, url)


@pytest.mark.parametrize("store", ["payload-object"], indirect=True)
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_manifest_whose_payload_is_missing_or_corrupt_is_marked_and_the_rest_mirrored(store, damage):
    _damaged(store, damage)


def _damaged(store, damage):
    saver, url = store
    run_scenarios(saver)
    payload = next(o["Key"] for o in _objects(saver, "threads/t-chat0/_/") if o["Key"].endswith("/payload"))
    if damage == "missing":
        saver.client.delete_object(Bucket=saver.bucket, Key=payload)
    else:
        saver.client.put_object(Bucket=saver.bucket, Key=payload, Body=b"\x1f\x8bnot gzip at all")
    source = make_source(url)

    result = sync_source(source)

    assert result["error"] is None
    assert_mirror_matches(source, url)  # the checkpoint is mirrored from its manifest, sizes as listed
    source.refresh_from_db()
    assert source.references_unknown  # its values could not be searched
    problems = source.sync_state["problems"]
    assert problems["count"] >= 1
    named = [p for p in problems["first"] if payload in p["error"]]
    assert named and ("missing" if damage == "missing" else "corrupt") in named[0]["error"]
    marked = Checkpoint.objects.filter(source=source).exclude(problem="")
    assert marked.count() == 1 and payload in marked.get().problem  # the console marks that checkpoint

    return source, payload


@pytest.mark.parametrize("store", ["payload-object"], indirect=True)
def test_sources_page_says_what_could_not_be_read(store, operator_client):
    saver, url = store
    source, payload = _damaged(store, "missing")
    page = operator_client.get("/sources/").content.decode()
    assert "could not be read by the last sync" in page and payload in page
    maintenance = operator_client.get("/maintenance/").content.decode()
    assert "s3://" in maintenance and "Versioning" in maintenance


def test_bucket_panel_shows_versioning_lifecycle_and_encryption(store, operator_client):
    saver, url = store
    run_scenarios(saver)
    client = saver.client
    client.put_bucket_versioning(Bucket=saver.bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_bucket_encryption(Bucket=saver.bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    client.put_bucket_lifecycle_configuration(Bucket=saver.bucket, LifecycleConfiguration={"Rules": [
        {"ID": f"s3saver:{PREFIX}:expire", "Status": "Enabled", "Filter": {"Prefix": PREFIX + "threads/"},
         "Expiration": {"Days": 30}},
        {"ID": "someone-else", "Status": "Enabled", "Filter": {"Prefix": "other/"}, "Expiration": {"Days": 1}}]})
    source = make_source(url)
    assert sync_source(source)["error"] is None
    source.refresh_from_db()
    space = source.sync_state["space"]
    assert (space["versioning"], space["encryption"]) == ("Enabled", "AES256")
    assert [r["id"] for r in space["lifecycle"]] == [f"s3saver:{PREFIX}:expire"]
    page = operator_client.get("/maintenance/").content.decode()
    assert f"s3saver:{PREFIX}:expire" in page and "expire after 30 days" in page and "AES256" in page


def test_empty_prefix_and_missing_bucket_are_errors_not_an_empty_source(store):
    saver, url = store
    empty = sync_source(make_source(f"s3://{saver.bucket}/nothing-here/", name="empty"))
    assert "holds no S3Saver objects" in empty["error"]
    missing = sync_source(make_source(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/p/", name="nobucket"))
    assert "NoSuchBucket" in missing["error"] and "no-such-bucket" in missing["error"]


def _objects(saver, rel):
    out = []
    for page in saver.client.get_paginator("list_objects_v2").paginate(Bucket=saver.bucket, Prefix=PREFIX + rel):
        out.extend(page.get("Contents", []))
    return out


def test_pages_api_and_state_api_read_the_s3_store(store, viewer_client):
    from tests.test_state_api import check_plain_graphs, state

    saver, url = store
    run_scenarios(saver)
    source = make_source(url, name="s3")
    assert sync_source(source)["error"] is None

    # /api/state/ gives get_state's values for every checkpoint of the shared scenarios.
    check_plain_graphs(viewer_client, "s3", saver)
    waiting = state(viewer_client, "s3", "t-waiting").json()
    assert any(w["channel"] == "__interrupt__" for w in waiting["pending_writes"])
    assert viewer_client.get("/api/threads/", {"tag": "tenant:acme"}).json()["count"] >= 1
    summary = {s["name"]: s for s in viewer_client.get("/api/summary/").json()["sources"]}
    assert summary["s3"]["checkpoints"] == Checkpoint.objects.filter(source=source).count()
    for path in ("/", "/threads/", "/threads/s3/t-chat0/", "/maintenance/", "/metrics"):
        assert viewer_client.get(path).status_code == 200, path
    page = viewer_client.get(f"/checkpoints/{Checkpoint.objects.filter(source=source, thread__thread_id='t-file').latest('checkpoint_id').pk}/")
    assert page.status_code == 200 and "report.pdf" in page.content.decode()


@pytest.mark.parametrize("store", ["payload-object"], indirect=True)
def test_checkpoint_page_names_a_missing_payload(store, viewer_client):
    saver, url = store
    run_scenarios(saver)
    source = make_source(url, name="s3")
    assert sync_source(source)["error"] is None
    latest = Checkpoint.objects.filter(source=source, thread__thread_id="t-chat0", checkpoint_ns="").latest("checkpoint_id")
    payload = saver.payload_key("t-chat0", "", latest.checkpoint_id)
    saver.client.delete_object(Bucket=saver.bucket, Key=payload)

    page = viewer_client.get(f"/checkpoints/{latest.pk}/").content.decode()
    assert f"{PREFIX}threads/t-chat0/_/" in page and "is missing" in page
    # The next full sync marks it in the mirror too, and the page says so.
    assert sync_source(source, full=True)["error"] is None
    latest.refresh_from_db()
    assert payload in latest.problem
    assert "could not read all of this checkpoint" in viewer_client.get(f"/checkpoints/{latest.pk}/").content.decode()


@pytest.mark.parametrize("store", ["inline", "payload-object"], indirect=True)
def test_checkpoint_page_keeps_s3_values_and_reads_writes_fresh(store, viewer_client):
    """An S3 checkpoint is immutable like the others: values from the cache, writes and presence from the bucket."""
    from dashboard.cachemetrics import LOOKUPS

    saver, url = store
    chat = chat_graph(saver)
    cfg = config("hot", tenant="acme")
    chat.invoke({"messages": ["hello"]}, cfg)
    source = make_source(url, name="s3")
    assert sync_source(source)["error"] is None
    latest = Checkpoint.objects.filter(source=source, thread__thread_id="hot", checkpoint_ns="").latest("checkpoint_id")
    path = f"/checkpoints/{latest.pk}/"

    def shown(response):
        return {v.name: v.value for v in response.context["values"].channels}

    hits = LOOKUPS.labels("values", "hit")._value.get()
    first = viewer_client.get(path)
    write_config = saver.get_tuple(cfg).config
    # The payload changes under the console (no saver does this: it proves the next view does not read it).
    inline = saver.inline_limit > 0
    payload = saver.manifest_key("hot", "", latest.checkpoint_id) if inline else saver.payload_key("hot", "", latest.checkpoint_id)
    body = saver.client.get_object(Bucket=saver.bucket, Key=payload)["Body"].read()
    if inline:  # another payload inside the manifest, well formed: the view would show "swapped" if it read it
        manifest = json.loads(body)
        frame = unpack("inline", base64.b64decode(manifest["payload"]["inline"]), {"encoding": manifest["payload"]["encoding"]})
        frame["values"] = {"messages": list(saver.serde.dumps_typed(["swapped"]))}
        swapped = ormsgpack.packb(frame)
        manifest["payload"].update(inline=base64.b64encode(swapped).decode(), bytes=len(swapped), encoding="identity")
        saver.client.put_object(Bucket=saver.bucket, Key=payload, Body=json.dumps(manifest).encode())
    else:
        saver.client.put_object(Bucket=saver.bucket, Key=payload, Body=b"not a payload")
    saver.put_writes(write_config, [("label", "arrived later")], task_id="task-late")
    second = viewer_client.get(path)
    assert LOOKUPS.labels("values", "hit")._value.get() == hits + 1
    assert shown(second) == shown(first) and "hello" in str(shown(second)["messages"])
    assert [(w["task_id"], w["value"].value) for w in second.context["values"].writes] == [("task-late", "arrived later")]
    saver.client.put_object(Bucket=saver.bucket, Key=payload, Body=body)
    if not inline:  # a payload object gone says so, cached or not (one inside its manifest cannot go apart)
        saver.client.delete_object(Bucket=saver.bucket, Key=payload)
        assert "is missing" in viewer_client.get(path).content.decode()
        saver.client.put_object(Bucket=saver.bucket, Key=payload, Body=body)
    # A checkpoint gone (no manifest) says so too, and its entry is dropped.
    saver.client.delete_object(Bucket=saver.bucket, Key=saver.manifest_key("hot", "", latest.checkpoint_id))
    hits = LOOKUPS.labels("values", "hit")._value.get()
    assert "no longer in the source" in viewer_client.get(path).content.decode()
    misses = LOOKUPS.labels("values", "miss")._value.get()
    assert "no longer in the source" in viewer_client.get(path).content.decode()
    assert LOOKUPS.labels("values", "miss")._value.get() == misses + 1 and LOOKUPS.labels("values", "hit")._value.get() == hits + 1


@pytest.mark.parametrize("store", ["inline", "payload-object"], indirect=True)
def test_cached_s3_view_is_one_listing_and_reads_new_or_changed_writes(store, viewer_client, settings):
    """Write objects and a manifest's inline payload are kept by key and ETag: a cached view lists the
    checkpoint's directory and reads nothing else; a write added, or one overwritten (its ETag changes),
    is read at the next view; with the cache server down the page still shows them."""
    from checkpoints.sources.s3 import settings_for
    from checkpoints.sources.s3.values import _client
    from dashboard import cachebackend
    from dashboard.settings import cache_config
    from tests.test_snapshot_cache import closed_port

    saver, url = store
    cfg = config("hot", tenant="acme")
    chat_graph(saver).invoke({"messages": ["hello"]}, cfg)
    write_config = saver.get_tuple(cfg).config
    saver.put_writes(write_config, [("label", "before")], task_id="task-a")
    source = make_source(url, name="s3")
    assert sync_source(source)["error"] is None
    latest = Checkpoint.objects.filter(source=source, thread__thread_id="hot", checkpoint_ns="").latest("checkpoint_id")
    path = f"/checkpoints/{latest.pk}/"

    def writes(response):
        assert response.status_code == 200
        return sorted((w["task_id"], w["value"].name, w["value"].value) for w in response.context["values"].writes)

    calls = []

    def called(model, **kwargs):
        calls.append(model.name)

    client = _client(settings_for(url))  # the page's own client: requests counted, nothing changed
    client.meta.events.register("before-call.s3", called)
    try:
        assert writes(viewer_client.get(path)) == [("task-a", "label", "before")]
        calls.clear()
        assert writes(viewer_client.get(path)) == [("task-a", "label", "before")]
        assert calls == ["ListObjectsV2"]
        # A write added after the first view: on the next view, the only object read.
        saver.put_writes(write_config, [("label", "added")], task_id="task-b")
        calls.clear()
        assert writes(viewer_client.get(path)) == [("task-a", "label", "before"), ("task-b", "label", "added")]
        assert calls == ["ListObjectsV2", "GetObject"]
        # A special channel's write is overwritten by the next one of its task (docs/s3-layout.md §3):
        # same key, new ETag, never served from the entry kept for the old one.
        saver.put_writes(write_config, [("__interrupt__", "first")], task_id="task-c")
        assert ("task-c", "__interrupt__", "first") in writes(viewer_client.get(path))
        saver.put_writes(write_config, [("__interrupt__", "second")], task_id="task-c")
        calls.clear()
        shown = writes(viewer_client.get(path))
        assert ("task-c", "__interrupt__", "second") in shown and ("task-c", "__interrupt__", "first") not in shown
        assert calls == ["ListObjectsV2", "GetObject"]
        # The cache server down: nothing kept, everything read, the same page.
        settings.CACHES = {"default": cache_config(f"redis://127.0.0.1:{closed_port()}/0")}
        cachebackend.reset()
        calls.clear()
        assert writes(viewer_client.get(path)) == shown
        assert calls.count("GetObject") >= 4  # the manifest (or payload) and the three writes, at least
    finally:
        client.meta.events.unregister("before-call.s3", called)
        cachebackend.reset()


def test_prune_dry_run_selects_what_the_real_run_deletes_by_the_savers_rules(store):
    from datetime import timedelta

    from django.test import override_settings
    from django.utils import timezone

    from checkpoints.prune import PrunePolicy, prune

    saver, url = store
    threads = run_scenarios(saver)
    source = make_source(url)
    assert sync_source(source)["error"] is None
    states = {t: chat_graph(saver).get_state(config(t)).values for t in threads}
    now = timezone.now() + timedelta(days=1)
    policy = PrunePolicy(timedelta(hours=1), keep_last=1)
    dry, real = [], []
    with override_settings(PRUNE_ACTIVE_WINDOW=timedelta(0)):
        dry_result = prune(source, policy, dry_run=True, now=now, on_selection=dry.append)
        assert _objects(saver, "threads/") and not [o for o in _objects(saver, "changes/") if "/delete/" in o["Key"]]
        real_result = prune(source, policy, dry_run=False, now=now, on_selection=real.append)

    assert [vars(s) for s in dry] == [vars(s) for s in real]
    assert dry_result["checkpoints"] == real_result["checkpoints"] > 0
    assert {s["reason"] for s in real_result["skipped"]} == {"pending_writes"}
    # The saver's rules: a delete entry per checkpoint, every object of it gone, the latest state unchanged.
    deleted = {(s.thread_id, ns, cid) for s in real if s.skip is None for ns, cid in s.checkpoints}
    entries = {o["Key"] for o in _objects(saver, "changes/") if "/delete/" in o["Key"]}
    assert len(entries) == len(deleted)
    for thread_id, ns, cid in deleted:
        assert saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}) is None
    assert {t: chat_graph(saver).get_state(config(t)).values for t in threads} == states
    # The next sync follows the change index to the same mirror the bucket describes.
    assert sync_source(source)["error"] is None
    assert_mirror_matches(source, url)


class FlakyProxy:
    """An HTTP proxy in front of moto that answers 503 SlowDown once `budget` requests went through.

    A real server on loopback: the reader's own botocore client talks to it, nothing is patched.
    """

    def __init__(self, upstream):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        self.budget = None  # None: forward everything
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fail = proxy.budget is not None and proxy.budget <= 0
                    if proxy.budget is not None:
                        proxy.budget -= 1
                if fail:
                    message = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_s3_throttling_mid_sync_is_a_clear_error_and_loses_nothing(store, settings, moto_s3):
    saver, url = store
    run_scenarios(saver)
    source = make_source(url)
    assert sync_source(source)["error"] is None
    mirrored = sorted(Checkpoint.objects.filter(source=source).values_list("checkpoint_id", "row_bytes"))
    watermark = Source.objects.get(pk=source.pk).sync_state["watermark"]
    chat_graph(saver).invoke({"messages": ["more"]}, config("t-chat0", tenant="acme", user_id="u0", project="demo"))

    proxy = FlakyProxy(moto_s3.endpoint_url)
    try:
        settings.S3_ENDPOINT_URL = proxy.url
        settings.S3_MAX_ATTEMPTS = 1
        proxy.budget = 3  # the layout check and the change listing pass, the thread reads hit SlowDown
        failed = sync_source(source)
        assert failed["error"] and "SlowDown" in failed["error"] and f"s3://{saver.bucket}/{PREFIX}" in failed["error"]
        source.refresh_from_db()
        assert source.sync_state["watermark"] == watermark  # the next sync repeats this one's work
        assert sorted(Checkpoint.objects.filter(source=source).values_list("checkpoint_id", "row_bytes")) == mirrored

        proxy.budget = None
        assert sync_source(source)["error"] is None
        assert_mirror_matches(source, url)
    finally:
        proxy.close()


# --- references from the manifest's refs: no payload GET (docs/s3-layout.md §2) -----------------------------


def _reader_gets(monkeypatch):
    """The keys of the GET requests the console's S3 reader sends, counted on the wire (botocore before-send)."""
    from urllib.parse import unquote, urlsplit

    from checkpoints import s3client

    build = s3client.build_client
    sent = []

    def counted(*args, **kwargs):
        client = build(*args, **kwargs)
        client.meta.events.register("before-send.s3.GetObject",
                                    lambda request, **_: sent.append(unquote(urlsplit(request.url).path)),
                                    unique_id="test-reader-gets")
        return client

    monkeypatch.setattr(s3client, "build_client", counted)
    return sent


def _reference_uses(source):
    return sorted(ReferenceUse.objects.filter(thread__source=source).values_list(
        "thread__thread_id", "checkpoint__checkpoint_ns", "checkpoint__checkpoint_id", "location", "reference__uri"))


def _rewrite_manifests(saver, change):
    for obj in _objects(saver, "threads/"):
        if obj["Key"].endswith("/manifest.json"):
            manifest = json.loads(saver.client.get_object(Bucket=saver.bucket, Key=obj["Key"])["Body"].read())
            change(manifest)
            saver.client.put_object(Bucket=saver.bucket, Key=obj["Key"], Body=json.dumps(manifest).encode())


@pytest.mark.parametrize("store", ["inline", "payload-object"], indirect=True)
def test_manifest_refs_spare_the_payload_get_and_the_mirror_is_the_same_without_them(store, monkeypatch, tmp_path):
    saver, url = store
    report = f"file://{tmp_path}/u1/report.pdf"
    run_scenarios(saver, file_uri=report)
    gets = _reader_gets(monkeypatch)

    source = make_source(url)
    assert sync_source(source)["error"] is None
    truth = assert_mirror_matches(source, url)
    with_refs = _reference_uses(source)
    assert any(use[-1] == report for use in with_refs)
    payload_gets = [k for k in gets if k.endswith("/payload")]
    manifest_gets = [k for k in gets if k.endswith("/manifest.json")]
    assert payload_gets == [] and len(manifest_gets) == len(truth["checkpoints"])

    # The same store with the field removed by hand (as an older saver wrote it): every payload is
    # read, and the mirror is the same, references included.
    source.delete()
    _rewrite_manifests(saver, lambda m: m.pop("refs"))
    gets.clear()
    again = make_source(url, name="again")
    assert sync_source(again)["error"] is None
    assert_mirror_matches(again, url)
    assert _reference_uses(again) == with_refs
    # Without refs the payload is read: its own object, or the manifest that holds it (read anyway).
    inline = saver.inline_limit > 0
    assert len([k for k in gets if k.endswith("/payload")]) == (0 if inline else len(truth["checkpoints"]))
    assert len([k for k in gets if k.endswith("/manifest.json")]) == len(truth["checkpoints"])


@pytest.mark.parametrize("store", ["payload-object"], indirect=True)
def test_a_payload_that_is_not_the_one_its_manifest_names_is_read(store, monkeypatch):
    """refs are trusted only beside the payload they were written with (its size and ETag)."""
    saver, url = store
    first = chat_graph(saver)
    cfg = config("t-swapped", tenant="acme")
    first.invoke({"messages": ["no file here"]}, cfg)
    latest = saver.get_tuple(cfg)
    # Another payload, written by hand under the latest checkpoint: its values name a file.
    key = saver.payload_key("t-swapped", "", latest.checkpoint["id"])
    body, meta = saver._get_object(key)
    frame = saver._unpack(key, body, meta)
    frame["values"]["messages"] = list(saver.serde.dumps_typed(["s3://elsewhere/swapped.pdf"]))
    saver.client.put_object(Bucket=saver.bucket, Key=key, Body=ormsgpack.packb(frame),
                            Metadata={"format": "1", "encoding": "identity"})
    gets = _reader_gets(monkeypatch)

    source = make_source(url)
    assert sync_source(source)["error"] is None
    assert f"/{saver.bucket}/{key}" in gets
    assert BlobReference.objects.filter(uri="s3://elsewhere/swapped.pdf").exists()


@pytest.mark.parametrize("layout", ["inline", "payload-object"])
def test_an_encrypted_store_has_no_refs_and_its_payloads_are_read(moto_s3, s3_bucket, settings, monkeypatch, tmp_path, layout):
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    key = "0123456789abcdef"
    settings.LANGGRAPH_AES_KEY = key  # the sync decrypts values to find references
    saver = S3Saver(s3_bucket, PREFIX, client=moto_s3.client(), metrics=False,
                    serde=EncryptedSerializer.from_pycryptodome_aes(key=key.encode()), **LAYOUTS[layout])
    secret = f"file://{tmp_path}/secret/plan.pdf"
    run_scenarios(saver, file_uri=secret)
    manifests = [saver.client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
                 for o in _objects(saver, "threads/") if o["Key"].endswith("/manifest.json")]
    assert manifests and not any(b'"refs"' in m or b"secret/plan.pdf" in m for m in manifests)
    gets = _reader_gets(monkeypatch)

    source = make_source(f"s3://{s3_bucket}/{PREFIX}")
    assert sync_source(source)["error"] is None
    truth = assert_mirror_matches(source, f"s3://{s3_bucket}/{PREFIX}")
    assert len([k for k in gets if k.endswith("/payload")]) == (0 if layout == "inline" else len(truth["checkpoints"]))
    assert BlobReference.objects.filter(uri=secret).exists()
    saver.close()
