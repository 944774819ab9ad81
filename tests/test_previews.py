"""Offloaded and external content shown inline (issue 14.3) and its faults (14.5).

Real graphs write through our offload() wrapper into real stores (a file
store under BLOB_ROOT, moto's S3 server); the real sync mirrors them; the
checkpoint page and storage.previews read the objects back with a cap.
"""

import gzip
import hashlib
import json
import os
import sqlite3
import tracemalloc
from html import unescape
from typing import TypedDict

import pytest
from django.urls import reverse
from langgraph.graph import END, START, StateGraph

from checkpoints.decode import safe_loads
from checkpoints.models import Checkpoint, Thread
from dashboard.cachemetrics import LOOKUPS
from storage import previews
from storage.refcheck import check_references
from storage.offload import FileStore, OffloadSerializer, S3Store, offload
from tests.mirror_data import operator, operator_client, static_settings, synced_source  # noqa: F401
from tests.mirror_data import viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db

TEXT = "".join(f"line {i}: the agent read the contract, clause {i % 17}\n" for i in range(3000))  # ~150 KB
NOTES = [{"id": i, "text": f"note {i}", "tags": ["a", "b"]} for i in range(150)]  # msgpack ~ 5 KB


class DocState(TypedDict, total=False):
    text: str
    notes: list
    pdf: bytes
    files: list


def doc_graph(saver, update):
    g = StateGraph(DocState)
    g.add_node("write", lambda state: update)
    g.add_edge(START, "write")
    g.add_edge("write", END)
    return g.compile(checkpointer=saver)


@pytest.fixture
def blob_root(tmp_path, settings):
    root = (tmp_path / "blobs").resolve()
    root.mkdir()
    settings.BLOB_ROOT = root
    settings.PREVIEW_LIMIT = 10_000
    return root


def write_thread(sqlite_source_url, store, update, thread_id="doc", compression=None, threshold="1KB"):
    path = sqlite_source_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        saver = offload(__import__("langgraph.checkpoint.sqlite", fromlist=["SqliteSaver"]).SqliteSaver(conn),
                        store=store, threshold=threshold, compression=compression)
        doc_graph(saver, update).invoke({}, {"configurable": {"thread_id": thread_id}})
    finally:
        conn.close()


def latest(thread_id):
    thread = Thread.objects.get(thread_id=thread_id)
    return Checkpoint.objects.get(thread=thread, checkpoint_ns="", checkpoint_id=thread.latest_checkpoint_id)


def content(client, thread_id, **params):
    response = client.get(reverse("checkpoint", args=[latest(thread_id).pk]), params)
    assert response.status_code == 200
    return response, {row["target"].where: row for row in response.context["content"]}


@pytest.mark.parametrize("compression", ["identity", "gzip", "zstd"])
def test_offloaded_values_shown_verified_and_capped(compression, operator_client, blob_root, sqlite_source_url):
    write_thread(sqlite_source_url, FileStore(blob_root), {"text": TEXT, "notes": NOTES, "pdf": b"%PDF-1.7\n" + os.urandom(5000)},
                 compression=compression)
    synced_source(sqlite_source_url, "lite")
    response, rows = content(operator_client, "doc")
    text, notes, pdf = rows["text"]["preview"], rows["notes"]["preview"], rows["pdf"]["preview"]
    assert (text.status, text.verified, text.complete, text.size) == ("text", True, False, len(TEXT.encode()))
    assert text.shown == TEXT[:10_000]
    assert rows["text"]["more_url"] is not None
    assert (notes.status, notes.verified) == ("decoded", True) and json.loads(notes.shown) == NOTES
    assert (pdf.status, pdf.content_type, pdf.shown) == ("binary", "application/pdf", "")
    page = unescape(response.content.decode())
    assert "line 12: the agent read the contract" in page and "sha256 checked" in page
    # Show more: sixteen times the limit for that one object.
    assert rows["text"]["more_url"].startswith("?more=")
    more = operator_client.get(reverse("checkpoint", args=[latest("doc").pk]) + rows["text"]["more_url"].split("#")[0])
    bigger = {row["target"].where: row["preview"] for row in more.context["content"]}["text"]
    assert bigger.shown == TEXT[:160_000] and bigger.limit == 160_000 and bigger.complete is (len(TEXT.encode()) <= 160_000)


def test_corrupt_and_missing_objects_say_so(operator_client, blob_root, sqlite_source_url):
    write_thread(sqlite_source_url, FileStore(blob_root), {"text": TEXT, "notes": NOTES})
    synced_source(sqlite_source_url, "lite")
    _, rows = content(operator_client, "doc")
    text_path = [p for p in (blob_root / "sha256").iterdir() if p.read_bytes() == TEXT.encode()][0]
    notes_path = [p for p in (blob_root / "sha256").iterdir() if p != text_path][0]
    wrong = TEXT.replace("contract", "CONTRACT").encode()
    text_path.write_bytes(wrong)  # same size, other bytes: a new ETag
    notes_path.unlink()
    # Until the reference check sees the new ETag, the page keeps the verified preview it has...
    assert content(operator_client, "doc")[1]["text"]["preview"].shown == TEXT[:10_000]
    check_references()  # ...which runs after every sync
    response, rows = content(operator_client, "doc")
    text, notes = rows["text"]["preview"], rows["notes"]["preview"]
    assert (text.status, text.shown, text.verified) == ("corrupt", "", False)
    assert "does not match" in text.note
    assert (notes.status, notes.shown) == ("missing", "")
    page = unescape(response.content.decode())
    assert "CONTRACT" not in page and "line 12: the agent" not in page


def test_external_references_previewed(operator_client, blob_root, sqlite_source_url):
    doc = blob_root / "reports" / "summary.json"
    doc.parent.mkdir()
    doc.write_text(json.dumps({"pages": 3, "title": "Q3 ünï"}))
    log = blob_root / "reports" / "run.log"
    log.write_text("event\n" * 50_000)  # 300 KB
    scan = blob_root / "reports" / "scan.png"
    scan.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    outside = "file:///etc/passwd"
    files = [doc.as_uri(), log.as_uri(), scan.as_uri(), outside]
    write_thread(sqlite_source_url, FileStore(blob_root), {"files": files}, threshold="1MB")
    synced_source(sqlite_source_url, "lite")
    response = operator_client.get(reverse("checkpoint", args=[latest("doc").pk]))
    shown = {row["target"].uri: row for row in response.context["content"]}
    assert json.loads(shown[doc.as_uri()]["preview"].shown) == {"pages": 3, "title": "Q3 ünï"}
    assert shown[doc.as_uri()]["preview"].status == "json"
    assert shown[doc.as_uri()]["download"]  # a known reference: the presigned/signed download
    log_preview = shown[log.as_uri()]["preview"]
    assert (log_preview.status, log_preview.complete, log_preview.shown) == ("text", False, ("event\n" * 50_000)[:10_000])
    assert shown[scan.as_uri()]["preview"].status == "binary"
    assert shown[outside]["preview"].status == "foreign"
    assert "root:" not in response.content.decode()


def test_viewers_see_references_but_not_content(viewer_client, blob_root, sqlite_source_url):
    write_thread(sqlite_source_url, FileStore(blob_root), {"text": TEXT})
    synced_source(sqlite_source_url, "lite")
    response, rows = content(viewer_client, "doc")
    assert rows["text"]["preview"] is None and rows["text"]["download"] is None
    page = unescape(response.content.decode())
    assert "shown to those who may download them" in page and "line 12: the agent" not in page


def immutable_part(response):
    """The part of the page kept as HTML in the cache: diff, channel values, content."""
    page = response.content.decode()
    return page[page.index("<h2>Changes since the parent</h2>"):page.index("<h2>Pending writes")]


def test_cached_rendering_keeps_the_content_to_operators(operator_client, viewer, blob_root, sqlite_source_url):
    """The kept HTML is the first view's, and it is kept per permission: a viewer never gets an operator's."""
    from django.test import Client

    write_thread(sqlite_source_url, FileStore(blob_root), {"text": TEXT, "notes": NOTES})
    synced_source(sqlite_source_url, "lite")
    hits = LOOKUPS.labels("html", "hit")._value.get()
    first, _ = content(operator_client, "doc")
    second, rows = content(operator_client, "doc")
    assert LOOKUPS.labels("html", "hit")._value.get() == hits + 2  # values and content, both kept
    assert immutable_part(second) == immutable_part(first)
    assert "line 12: the agent read the contract" in unescape(immutable_part(second))
    assert rows["text"]["preview"].status == "text"  # the page's context is whole on a cached view too
    viewer_client = Client()
    viewer_client.force_login(viewer)
    for _ in range(2):
        response, rows = content(viewer_client, "doc")
        page = unescape(response.content.decode())
        assert rows["text"]["preview"] is None and rows["text"]["download"] is None
        assert "shown to those who may download them" in page and "line 12: the agent" not in page
        assert "Download</a>" not in page
    assert "line 12: the agent" in unescape(content(operator_client, "doc")[0].content.decode())


def test_previews_are_cached_by_uri_and_etag(operator_client, blob_root, sqlite_source_url):
    doc = blob_root / "live.txt"
    doc.write_text("first version")
    write_thread(sqlite_source_url, FileStore(blob_root), {"files": [doc.as_uri()]}, threshold="1MB")
    synced_source(sqlite_source_url, "lite")
    hits = LOOKUPS.labels("previews", "hit")._value.get()
    assert content(operator_client, "doc")[1]["files"]["preview"].shown == "first version"
    assert content(operator_client, "doc")[1]["files"]["preview"].shown == "first version"
    assert LOOKUPS.labels("previews", "hit")._value.get() == hits + 1
    doc.write_text("second version, longer")  # a new size and mtime: a new ETag
    check_references()
    assert content(operator_client, "doc")[1]["files"]["preview"].shown == "second version, longer"


def test_s3_offloaded_and_external_on_moto(operator_client, moto_s3, s3_bucket, sqlite_source_url, settings):
    settings.PREVIEW_LIMIT = 10_000
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="uploads/notes/a.md", Body=b"# Notes\n\nplain text", ContentType="text/markdown")
    store = S3Store(s3_bucket, "uploads/", endpoint_url=moto_s3.endpoint_url, region=moto_s3.region, path_style=True,
                    access_key=moto_s3.access_key, secret_key=moto_s3.secret_key)
    write_thread(sqlite_source_url, store, {"text": TEXT, "files": [f"s3://{s3_bucket}/uploads/notes/a.md"]},
                 compression="gzip")
    synced_source(sqlite_source_url, "lite")
    _, rows = content(operator_client, "doc")
    assert rows["text"]["preview"].status == "text" and rows["text"]["preview"].verified
    assert rows["files"]["preview"].shown == "# Notes\n\nplain text"
    # The object vanishes from the bucket: "missing", never a 500.
    key = rows["text"]["target"].uri.split(f"{s3_bucket}/", 1)[1]
    client.delete_object(Bucket=s3_bucket, Key=key)
    check_references()
    _, rows = content(operator_client, "doc")
    assert rows["text"]["preview"].status == "missing"


def test_store_down_leaves_the_page_working(operator_client, moto_s3, s3_bucket, sqlite_source_url, settings):
    store = S3Store(s3_bucket, "uploads/", endpoint_url=moto_s3.endpoint_url, region=moto_s3.region, path_style=True,
                    access_key=moto_s3.access_key, secret_key=moto_s3.secret_key)
    write_thread(sqlite_source_url, store, {"text": TEXT})
    synced_source(sqlite_source_url, "lite")
    from tests.s3server import free_port

    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    settings.S3_MAX_ATTEMPTS = 1
    settings.S3_CONNECT_TIMEOUT = 1
    _, rows = content(operator_client, "doc")
    assert rows["text"]["preview"].status == "unavailable" and rows["text"]["preview"].shown == ""


# --- storage.previews on its own --------------------------------------------------------


def envelope_for(root, value, compression="gzip", inner=None):
    serde = OffloadSerializer(inner=inner, store=FileStore(root), threshold="1KB", compression=compression)
    return serde, serde.dumps_typed(value)


def test_memory_stays_under_the_cap_whatever_the_size(blob_root, settings):
    big = blob_root / "big.log"
    with big.open("wb") as f:
        for _ in range(80):
            f.write(os.urandom(125_000).hex().encode()[:250_000])  # 20 MB of text
    payload = os.urandom(2_500_000).hex()  # 5 MB str, offloaded compressed
    serde, (type_, data) = envelope_for(blob_root, payload, compression="gzip")
    env = safe_loads(type_, data)
    assert previews.is_envelope(env)
    for target in (previews.Target(big.as_uri(), "f"), previews.Target(env["uri"], "v", env)):
        tracemalloc.start()
        try:
            p = previews.preview(target, limit=10_000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert p.status == "text" and len(p.shown) == 10_000 and not p.complete
        assert peak < 1_000_000, (target.kind, peak)
    assert p.verified and p.size == 5_000_000


def test_encrypted_object_stays_encrypted_without_the_key(blob_root):
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    key = "0123456789abcdef"
    inner = EncryptedSerializer.from_pycryptodome_aes(key=key.encode())
    _, (type_, data) = envelope_for(blob_root, NOTES * 3, inner=inner)
    env = safe_loads(type_, data, aes_key=key)
    assert env["type"] == "serde:msgpack+aes"
    target = previews.Target(env["uri"], "notes", env)
    locked = previews.preview(target, limit=100_000)
    assert (locked.status, locked.shown, locked.verified) == ("encrypted", "", True)
    opened = previews.preview(target, limit=100_000, aes_key=key)
    assert opened.status == "decoded" and json.loads(opened.shown) == NOTES * 3


def test_bomb_and_bad_compression_are_corrupt(blob_root):
    raw = gzip.compress(b"\x00" * 80_000_000)  # 80 MB of zeros in ~80 KB
    path = blob_root / "sha256" / "bomb.gz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(raw)
    env = {"__offloaded__": 1, "uri": path.as_uri(), "sha256": hashlib.sha256(b"x").hexdigest(), "size": 10,
           "type": "bytes", "encoding": "gzip"}
    tracemalloc.start()
    try:
        p = previews.preview(previews.Target(env["uri"], "v", env), limit=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert p.status == "corrupt" and p.shown == "" and peak < 2_000_000
    path.write_bytes(b"not gzip at all")
    p = previews.preview(previews.Target(env["uri"], "v", env), limit=1000)
    assert p.status == "corrupt" and "decompress" in p.note


def test_pickle_is_never_loaded(blob_root):
    data = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."
    path = blob_root / "sha256" / "p"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    env = {"__offloaded__": 1, "uri": path.as_uri(), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
           "type": "serde:pickle", "encoding": "identity"}
    p = previews.preview(previews.Target(env["uri"], "v", env), limit=1000)
    assert (p.status, p.shown) == ("undecodable", "")


def test_kept_content_costs_one_cache_request_and_no_preview_read(operator_client, blob_root, sqlite_source_url,
                                                                  monkeypatch, settings):
    """With Redis, a cached view fetches the values and both kept HTML parts in one request, and reads no
    preview (the kept content was rendered from the ETags the reference check saw); an object whose ETag
    changed is read again, never shown from the entry kept for its old version."""
    import redis

    from dashboard import cachebackend
    from dashboard.settings import cache_config
    from django.core.cache import caches
    from tests.test_snapshot_cache import redis_url_of_own

    doc = blob_root / "live.txt"
    doc.write_text("first version")
    write_thread(sqlite_source_url, FileStore(blob_root), {"text": TEXT, "files": [doc.as_uri()]})
    synced_source(sqlite_source_url, "lite")
    check_references()
    url = redis_url_of_own()
    settings.CACHES = {"default": cache_config(url)}
    cachebackend.reset()
    backend = caches["default"]
    assert isinstance(backend, cachebackend.ResilientRedisCache)
    redis.from_url(url).flushdb()
    requests = []
    for name in ("get", "get_many"):
        original = getattr(backend, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            requests.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(backend, name, spy)
    path = reverse("checkpoint", args=[latest("doc").pk])
    first = operator_client.get(path)
    requests.clear()
    previews_before = LOOKUPS.labels("previews", "hit")._value.get() + LOOKUPS.labels("previews", "miss")._value.get()
    second = operator_client.get(path)
    assert requests == ["get_many"]
    assert LOOKUPS.labels("previews", "hit")._value.get() + LOOKUPS.labels("previews", "miss")._value.get() == previews_before
    assert immutable_part(second) == immutable_part(first)
    page = unescape(second.content.decode())
    assert "line 12: the agent read the contract" in page and "first version" in page
    rows = {row["target"].where: row for row in second.context["content"]}  # read when asked for
    assert rows["text"]["preview"].status == "text" and rows["files"]["preview"].shown == "first version"
    # The object changes; once the reference check sees its new ETag, the page shows the new content.
    doc.write_text("second version, longer")
    check_references()
    third = unescape(operator_client.get(path).content.decode())
    assert "second version, longer" in third and "first version" not in third
    assert "line 12: the agent read the contract" in third
    redis.from_url(url).flushdb()
    cachebackend.reset()
