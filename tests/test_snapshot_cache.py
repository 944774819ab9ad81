"""The cache of hot checkpoints (issue 14.4) and its faults (14.5).

Real graphs write real checkpoints (PostgresSaver, SqliteSaver), the real
sync mirrors them; the cache is Django's local-memory cache or the Redis
server at 127.0.0.1:6379 (TEST_REDIS_URL), and the faults are real: a closed
port, and a server that accepts connections and never answers.
"""

import logging
import os
import random
import socket
import subprocess
import sys
import threading
from html import unescape
from pathlib import Path

import pytest
from django.core.cache import cache, caches
from django.urls import reverse

from checkpoints.models import Checkpoint, Thread
from dashboard import cachebackend, snapshot_cache
from dashboard.cachemetrics import CACHE_ERRORS, LOOKUPS
from dashboard.settings import cache_config
from tests.graphs import chat_graph, config, run_scenarios
from tests.mirror_data import static_settings, synced_source  # noqa: F401
from tests.mirror_data import viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def lookups(kind, result):
    return LOOKUPS.labels(kind, result)._value.get()


def errors(outcome):
    return CACHE_ERRORS.labels(outcome)._value.get()


def page(client, cp):
    response = client.get(reverse("checkpoint", args=[cp.pk]))
    assert response.status_code == 200
    return response


def latest(thread_id):
    thread = Thread.objects.get(thread_id=thread_id)
    return Checkpoint.objects.select_related("thread", "thread__source").get(
        thread=thread, checkpoint_ns="", checkpoint_id=thread.latest_checkpoint_id)


def shown(response):
    return {v.name: v.value for v in response.context["values"].channels}


@pytest.fixture
def use_cache(settings):
    """Point the default cache at CACHE_URL-style config `url` for the test."""

    def use(url):
        settings.CACHES = {"default": cache_config(url)}
        cachebackend.reset()
        return caches["default"]

    yield use
    cachebackend.reset()


@pytest.fixture
def redis_db():
    """A Redis database of its own on the test server (it fails, never skips, without one)."""
    return redis_url_of_own()


def redis_url_of_own():
    import redis

    base = REDIS_URL.rstrip("/").rsplit("/", 1)[0] if REDIS_URL.count("/") == 3 else REDIS_URL
    url = f"{base}/{random.randint(4, 15)}"
    try:
        redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:
        pytest.fail(f"Redis at {url} is not reachable ({e}): start redis-server or set TEST_REDIS_URL")
    return url


def test_second_view_comes_from_the_cache_and_writes_stay_fresh(viewer_client, pg_saver, pg_source_url):
    """A hit serves the values decoded at the first view (the source's rows are not decoded again),
    while pending writes that arrived since are shown."""
    import psycopg

    chat = chat_graph(pg_saver)
    cfg = config("hot", tenant="acme")
    chat.invoke({"messages": ["hello"]}, cfg)
    synced_source(pg_source_url, "pg")
    cp = latest("hot")
    hits, misses = lookups("values", "hit"), lookups("values", "miss")
    first = page(viewer_client, cp)
    assert (lookups("values", "hit"), lookups("values", "miss")) == (hits, misses + 1)
    assert first.context["values"].writes == []
    # The source's blob rows change under the console (no LangGraph writer does this: it proves
    # the second view does not decode them again), and a pending write arrives.
    with psycopg.connect(pg_source_url, autocommit=True) as conn:
        conn.execute("UPDATE checkpoint_blobs SET blob = NULL, type = 'empty' WHERE thread_id = 'hot'")
    tuple_ = pg_saver.get_tuple(cfg)
    pg_saver.put_writes(tuple_.config, [("label", "arrived later")], task_id="task-late")
    second = page(viewer_client, cp)
    assert (lookups("values", "hit"), lookups("values", "miss")) == (hits + 1, misses + 1)
    assert shown(second) == shown(first)
    assert [(w["task_id"], w["value"].name, w["value"].value) for w in second.context["values"].writes] == [
        ("task-late", "label", "arrived later")]
    # The state API decodes with other options (sha256 of bytes): its own key, its own miss.
    api = viewer_client.get("/api/state/", {"source": "pg", "thread_id": "hot"})
    assert api.status_code == 200 and lookups("values", "miss") == misses + 2


def test_pending_writes_reuse_a_connection_and_survive_its_loss(viewer_client, pg_saver, pg_source_url):
    """Cached views read the writes on one kept connection; killed by the server, it is replaced."""
    import psycopg

    from checkpoints.sources.postgres import idle

    chat = chat_graph(pg_saver)
    cfg = config("kept", tenant="acme")
    chat.invoke({"messages": ["hello"]}, cfg)
    synced_source(pg_source_url, "pg")
    cp = latest("kept")
    page(viewer_client, cp)
    page(viewer_client, cp)
    (kept,) = idle._idle[pg_source_url]
    backend = kept[0].info.backend_pid
    page(viewer_client, cp)
    assert [c.info.backend_pid for c, _ in idle._idle[pg_source_url]] == [backend]  # the same session again
    with psycopg.connect(pg_source_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    pg_saver.put_writes(pg_saver.get_tuple(cfg).config, [("label", "after the loss")], task_id="task-late")
    after = page(viewer_client, cp)
    assert "could not be read" not in after.content.decode()
    assert [(w["value"].name, w["value"].value) for w in after.context["values"].writes] == [("label", "after the loss")]
    (replaced,) = idle._idle[pg_source_url]
    assert replaced[0].info.backend_pid != backend
    with replaced[0].cursor() as cur:  # what every kept connection is: read only, with the timeout
        cur.execute("SHOW default_transaction_read_only")
        assert cur.fetchone() == ("on",)
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == ("10s",)


def test_removed_checkpoint_is_never_served_from_the_cache(viewer_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    source = synced_source(sqlite_source_url, "lite")
    cp = latest("t-chat0")
    page(viewer_client, cp)
    from django.conf import settings

    key = snapshot_cache.values_key(source, cp, limit=settings.DISPLAY_DECODE_LIMIT)
    assert cache.get(key) is not None
    sqlite_saver.conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = ?", (cp.checkpoint_id,))
    sqlite_saver.conn.commit()
    response = page(viewer_client, cp)
    assert "no longer in the source" in unescape(response.content.decode())
    assert cache.get(key) is None  # dropped at once, before any sync
    # The sync removes the mirror row; were the same id written again, its row (and key) would be new.
    from checkpoints.sync import sync_source

    assert sync_source(source)["error"] is None
    assert not Checkpoint.objects.filter(pk=cp.pk).exists()


def test_key_names_every_part_exactly(sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    source = synced_source(sqlite_source_url, "lite")
    cp = latest("t-chat0")
    base = snapshot_cache.values_key(source, cp, limit=100)
    assert base != snapshot_cache.values_key(source, cp, limit=101)
    assert base != snapshot_cache.values_key(source, cp, limit=100, digest=True)
    assert base != snapshot_cache.values_key(source, cp, limit=100, aes_key="k" * 16)
    cp.thread.thread_id += "\x00"
    assert base != snapshot_cache.values_key(source, cp, limit=100)


def test_encrypted_values_stay_encrypted_without_the_key(viewer_client, pg_source_url, settings):
    """A value cached while no key was configured is not served once the key is, nor the reverse."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    key = "0123456789abcdef0123456789abcdef"
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        saver.serde = EncryptedSerializer.from_pycryptodome_aes(key=key.encode())
        chat_graph(saver).invoke({"messages": ["top secret"]}, config("enc"))
    settings.LANGGRAPH_AES_KEY = ""
    synced_source(pg_source_url, "pg")
    cp = latest("enc")
    for _ in range(2):
        messages = shown(page(viewer_client, cp))["messages"]
        assert messages["__encrypted__"] == "msgpack+aes" and "top secret" not in str(messages)
    settings.LANGGRAPH_AES_KEY = key
    assert "top secret" in str(shown(page(viewer_client, cp))["messages"])
    settings.LANGGRAPH_AES_KEY = ""
    assert "top secret" not in str(shown(page(viewer_client, cp))["messages"])


def test_redis_holds_the_values(viewer_client, sqlite_saver, sqlite_source_url, use_cache, redis_db):
    import redis

    run_scenarios(sqlite_saver)
    synced_source(sqlite_source_url, "lite")
    cp = latest("t-bytes")
    use_cache(redis_db.replace("redis://", "valkey://"))
    server = redis.from_url(redis_db)
    server.flushdb()
    hits = lookups("values", "hit")
    first = page(viewer_client, cp)
    stored = [k for k in server.keys("*") if b"console:values:" in k]
    assert len(stored) == 1
    second = page(viewer_client, cp)
    assert lookups("values", "hit") == hits + 1 and shown(second) == shown(first)
    server.flushdb()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """Accepts TCP connections and never answers: a hung cache server."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("fault", ["closed port", "never answers"])
def test_cache_server_down_or_slow_leaves_the_page_working(fault, viewer_client, sqlite_saver, sqlite_source_url,
                                                           use_cache, caplog):
    run_scenarios(sqlite_saver)
    synced_source(sqlite_source_url, "lite")
    cp = latest("t-chat1")
    expected = shown(page(viewer_client, cp))  # with the local-memory cache
    server = SilentServer() if fault == "never answers" else None
    port = server.port if server else closed_port()
    try:
        use_cache(f"redis://127.0.0.1:{port}/0")
        failed, skipped = errors("failed"), errors("skipped")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dashboard.cachebackend"):
            for _ in range(3):
                assert shown(page(viewer_client, cp)) == expected
            threads = viewer_client.get("/threads/")  # the tag browser's counts use the cache too
            assert threads.status_code == 200
        lines = [r for r in caplog.records if r.name == "dashboard.cachebackend"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert f"127.0.0.1:{port}" in lines[0].getMessage() and "uncached" in lines[0].getMessage()
        # One request waited for the timeouts; every later one skipped the server.
        assert errors("failed") == failed + 1
        assert errors("skipped") > skipped
    finally:
        if server:
            server.stop()


def run_settings(env):
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.CACHES['default']['BACKEND'], settings.SNAPSHOT_CACHE_TTL.total_seconds())"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env},
    )


def test_settings_default_and_bad_values():
    env = {"CACHE_URL": "", "SNAPSHOT_CACHE_TTL": ""}
    ok = run_settings(env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["django.core.cache.backends.locmem.LocMemCache", "3600.0"]
    redis_ok = run_settings({"CACHE_URL": "valkey://:pw@127.0.0.1:1/0", "SNAPSHOT_CACHE_TTL": "10m"})
    assert redis_ok.stdout.split() == ["dashboard.cachebackend.ResilientRedisCache", "600.0"], redis_ok.stderr
    bad = run_settings({"CACHE_URL": "memcached://:hunter2@h:11211"})
    assert bad.returncode != 0 and "CACHE_URL=" in bad.stderr and "hunter2" not in bad.stderr
    bad_ttl = run_settings({"SNAPSHOT_CACHE_TTL": "3600"})
    assert bad_ttl.returncode != 0 and "SNAPSHOT_CACHE_TTL" in bad_ttl.stderr


def test_hits_misses_and_errors_in_metrics(viewer_client, sqlite_saver, sqlite_source_url, use_cache):
    from tests.test_metrics import parse

    run_scenarios(sqlite_saver)
    synced_source(sqlite_source_url, "lite")
    cp = latest("t-chat2")
    before = parse(viewer_client.get("/metrics").content.decode())

    def delta(after, name, **labels):
        key = ("checkpoint_console_" + name, tuple(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    page(viewer_client, cp)
    page(viewer_client, cp)
    use_cache(f"redis://127.0.0.1:{closed_port()}/0")
    page(viewer_client, cp)
    after = parse(viewer_client.get("/metrics").content.decode())
    assert delta(after, "snapshot_cache_lookups_total", cache="values", result="miss") == 2
    assert delta(after, "snapshot_cache_lookups_total", cache="values", result="hit") == 1
    assert delta(after, "cache_errors_total", outcome="failed") == 1
