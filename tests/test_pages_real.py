"""Pages and API on real LangGraph data: real graphs, the real sync, SQL on the source."""

import sqlite3
from collections import defaultdict
from html import unescape

import psycopg
import pytest
from django.conf import settings
from django.urls import reverse

from checkpoints.ids import uuid6_time
from checkpoints.models import Checkpoint, Thread
from checkpoints.tags import extract_tags
from tests.graphs import chat_graph, config, run_scenarios
from tests.mirror_data import static_settings, synced_source  # noqa: F401
from tests.mirror_data import viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db

PG_TRUTH = {
    "checkpoints": "SELECT thread_id, count(*) FROM checkpoints GROUP BY 1",
    "rows": "SELECT thread_id, sum(octet_length(checkpoint::text) + octet_length(metadata::text)) FROM checkpoints GROUP BY 1",
    "blobs": "SELECT thread_id, sum(coalesce(octet_length(blob), 0)) FROM checkpoint_blobs GROUP BY 1",
    "writes": "SELECT thread_id, sum(octet_length(blob)) FROM checkpoint_writes GROUP BY 1",
    "last": "SELECT thread_id, max(checkpoint_id) FROM checkpoints GROUP BY 1",
    "latest": """
        SELECT DISTINCT ON (c.thread_id) c.thread_id, c.metadata,
          octet_length(c.checkpoint::text) + octet_length(c.metadata::text)
          + coalesce((SELECT sum(coalesce(octet_length(b.blob), 0)) FROM jsonb_each_text(c.checkpoint->'channel_versions') v
                      JOIN checkpoint_blobs b ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
                       AND b.channel = v.key AND b.version = v.value), 0)
          + coalesce((SELECT sum(octet_length(w.blob)) FROM checkpoint_writes w WHERE w.thread_id = c.thread_id
                       AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id), 0)
        FROM checkpoints c WHERE c.checkpoint_ns = '' ORDER BY c.thread_id, c.checkpoint_id DESC
    """,
}
SQLITE_TRUTH = {
    "checkpoints": "SELECT thread_id, count(*) FROM checkpoints GROUP BY 1",
    "rows": "SELECT thread_id, sum(coalesce(length(CAST(checkpoint AS BLOB)), 0) + coalesce(length(CAST(metadata AS BLOB)), 0)) FROM checkpoints GROUP BY 1",
    "writes": "SELECT thread_id, sum(coalesce(length(CAST(value AS BLOB)), 0)) FROM writes GROUP BY 1",
    "last": "SELECT thread_id, max(checkpoint_id) FROM checkpoints GROUP BY 1",
    "latest": """
        SELECT c.thread_id, CAST(c.metadata AS TEXT),
          coalesce(length(CAST(c.checkpoint AS BLOB)), 0) + coalesce(length(CAST(c.metadata AS BLOB)), 0)
          + coalesce((SELECT sum(length(CAST(w.value AS BLOB))) FROM writes w WHERE w.thread_id = c.thread_id
                      AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id), 0)
        FROM checkpoints c WHERE c.checkpoint_ns = '' AND c.checkpoint_id =
          (SELECT max(checkpoint_id) FROM checkpoints m WHERE m.thread_id = c.thread_id AND m.checkpoint_ns = '')
    """,
}


def truth(rows_by_query):
    """Expected API fields per thread, from SQL results on the source."""
    import json

    out = defaultdict(dict)
    for thread_id, n in rows_by_query["checkpoints"]:
        out[thread_id]["checkpoints"] = n
    stored = defaultdict(int)
    for key in ("rows", "blobs", "writes"):
        for thread_id, n in rows_by_query.get(key, []):
            stored[thread_id] += int(n or 0)
    for thread_id, last in rows_by_query["last"]:
        out[thread_id]["stored_bytes"] = stored[thread_id]
        out[thread_id]["last_checkpoint_at"] = uuid6_time(last)
    for thread_id, metadata, logical in rows_by_query["latest"]:
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        out[thread_id]["logical_bytes"] = int(logical)
        out[thread_id]["tags"] = extract_tags(metadata, settings.TAG_EXCLUDE)
    return dict(out)


def pg_truth(url):
    with psycopg.connect(url) as conn:
        return truth({k: conn.execute(sql).fetchall() for k, sql in PG_TRUTH.items()})


def sqlite_truth(url):
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return truth({k: conn.execute(sql).fetchall() for k, sql in SQLITE_TRUTH.items()})
    finally:
        conn.close()


def check_api_against(client, source, expected):
    from datetime import datetime

    data = client.get("/api/threads/", {"source": source.name}).json()
    assert data["count"] == len(expected) and data["next"] is None
    for item in data["results"]:
        want = expected[item["thread_id"]]
        assert item["checkpoints"] == want["checkpoints"], item["thread_id"]
        assert item["stored_bytes"] == want["stored_bytes"], item["thread_id"]
        assert item["logical_bytes"] == want["logical_bytes"], item["thread_id"]
        assert item["tags"] == want["tags"], item["thread_id"]
        assert datetime.fromisoformat(item["last_checkpoint_at"]) == want["last_checkpoint_at"]
    summary = {s["name"]: s for s in client.get("/api/summary/").json()["sources"]}[source.name]
    assert summary["threads"] == len(expected)
    assert summary["checkpoints"] == sum(w["checkpoints"] for w in expected.values())
    assert summary["stored_bytes"] == sum(w["stored_bytes"] for w in expected.values())
    assert summary["last_sync_ok"] is True


def test_api_matches_sql_on_a_postgres_source(viewer_client, pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    source = synced_source(pg_source_url, "pg")
    check_api_against(viewer_client, source, pg_truth(pg_source_url))
    # the file reference, outside any configured store, is listed (never checked)
    data = viewer_client.get(reverse("api-thread", args=["pg", "t-file"])).json()
    assert [(b["uri"], b["state"]) for b in data["blobs"]] == [("s3://bucket/uploads/u1/report.pdf", "unchecked")]


def test_api_matches_sql_on_a_sqlite_source(viewer_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver, prefix="s")
    source = synced_source(sqlite_source_url, "lite")
    check_api_against(viewer_client, source, sqlite_truth(sqlite_source_url))


def test_tag_filters_on_real_metadata(viewer_client, pg_source_url):
    from langgraph.checkpoint.postgres import PostgresSaver

    odd = ["x' OR 1=1 --", 'quote " and \\ back', "ünï çødé 東京"]
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        chat = chat_graph(saver)
        for i, value in enumerate(odd):
            chat.invoke({"messages": ["hi"]}, config(f"odd-{i}", tenant=value, tier="gold"))
        chat.invoke({"messages": ["hi"]}, config("plain", tenant="acme", tier="gold"))
    synced_source(pg_source_url, "pg")
    for i, value in enumerate(odd):
        page = viewer_client.get("/threads/", {"tag": [f"tenant:{value}", "tier:gold"]})
        assert [t.thread_id for t, _, _ in page.context["rows"]] == [f"odd-{i}"]
        data = viewer_client.get("/api/threads/", {"tag": [f"tenant:{value}", "tier:gold"]}).json()
        assert [r["thread_id"] for r in data["results"]] == [f"odd-{i}"]
        assert data["results"][0]["tags"]["tenant"] == value
    assert viewer_client.get("/api/threads/", {"tag": "tier:gold"}).json()["count"] == 4


def channel_sizes_pg(url, thread_id, checkpoint_id):
    with psycopg.connect(url) as conn:
        blobs = dict(conn.execute(
            """SELECT b.channel, coalesce(octet_length(b.blob), 0) FROM checkpoints c,
               jsonb_each_text(c.checkpoint->'channel_versions') v
               JOIN checkpoint_blobs b ON b.channel = v.key AND b.version = v.value
               WHERE c.thread_id = %s AND c.checkpoint_ns = '' AND c.checkpoint_id = %s
                 AND b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns""",
            (thread_id, checkpoint_id),
        ).fetchall())
        writes = conn.execute(
            "SELECT channel, octet_length(blob) FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_id = %s ORDER BY task_id, idx",
            (thread_id, checkpoint_id),
        ).fetchall()
    return blobs, writes


def test_checkpoint_page_decodes_values_from_postgres(viewer_client, pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    synced_source(pg_source_url, "pg")
    thread = Thread.objects.get(thread_id="t-waiting")
    cp = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    response = viewer_client.get(reverse("checkpoint", args=[cp.pk]))
    assert response.status_code == 200 and response.context["error"] == ""
    values = response.context["values"]
    by_name = {v.name: v for v in values.channels}
    blobs, writes = channel_sizes_pg(pg_source_url, "t-waiting", cp.checkpoint_id)
    assert "messages" in blobs and writes
    for channel, size in blobs.items():
        assert by_name[channel].size == size
    assert "later" in str(by_name["messages"].value)
    # waiting at the interrupt: its pending writes are shown, sizes from the source
    assert [(w["value"].name, w["value"].size) for w in values.writes] == writes
    assert any(w["value"].name == "__interrupt__" for w in values.writes)
    html = unescape(response.content.decode())
    assert "<details" in html and "approve?" in html
    # the diff against the parent says what changed, by value (issue 14.2)
    changes = {c.channel: c for c in response.context["diff"]}
    assert changes["messages"].kind == "changed"
    assert [(d.op, d.text) for d in changes["messages"].details] == [("appended", "'step 1: " + "x" * 20 + "'")]
    assert changes["counter"].kind == "added" and changes["label"].kind == "added"
    assert changes["messages"].after_size == blobs["messages"]
    assert "step 1: xx" in html and "appended" in html
    # LangGraph's own channels are named apart, not detailed
    assert response.context["internal_changes"] and not any(c.startswith("branch:") for c in changes)
    assert all(c.startswith(("__", "branch:to:")) for c in response.context["internal_changes"])


def test_checkpoint_page_diff_labels_a_removed_channel(viewer_client, sqlite_saver, sqlite_source_url):
    from langgraph.checkpoint.base import empty_checkpoint

    graph = chat_graph(sqlite_saver)
    cfg = config("removal", tenant="acme")
    graph.invoke({"messages": ["hello"], "attachment": "doc"}, cfg)
    # A checkpoint that no longer holds a channel its parent held (a graph whose
    # schema dropped it, a tool that edited the thread), put through the saver itself.
    latest = sqlite_saver.get_tuple(cfg)
    checkpoint = dict(latest.checkpoint)
    checkpoint["channel_values"] = {k: v for k, v in checkpoint["channel_values"].items() if k != "attachment"}
    checkpoint["channel_versions"] = {k: v for k, v in checkpoint["channel_versions"].items() if k != "attachment"}
    checkpoint["id"] = empty_checkpoint()["id"]
    sqlite_saver.put(latest.config, checkpoint, {"source": "update", "step": 99, "parents": {}}, {})
    synced_source(sqlite_source_url, "lite")
    thread = Thread.objects.get(thread_id="removal")
    cp = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    response = viewer_client.get(reverse("checkpoint", args=[cp.pk]))
    (change,) = response.context["diff"]
    assert (change.channel, change.kind, change.after_size) == ("attachment", "removed", None)
    assert change.before_size and [(d.op, d.text) for d in change.details] == [("removed", "'doc'")]
    assert '<span class="change removed">removed</span>' in response.content.decode()


def test_checkpoint_page_bytes_and_subgraphs(viewer_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    synced_source(sqlite_source_url, "lite")
    thread = Thread.objects.get(thread_id="t-bytes")
    cp = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    values = viewer_client.get(reverse("checkpoint", args=[cp.pk])).context["values"]
    payload = {v.name: v for v in values.channels}["payload"]
    assert payload.value["__bytes__"] == len(b"\x00\x01binary" * 10)
    assert payload.summary.startswith("bytes")

    sub = Thread.objects.get(thread_id="t-sub")
    subgraph_rows = Checkpoint.objects.filter(thread=sub).exclude(checkpoint_ns="")
    assert subgraph_rows.exists()
    roots = {c.metadata["parents"][""] for c in subgraph_rows}
    for root in Checkpoint.objects.filter(thread=sub, checkpoint_ns="", checkpoint_id__in=roots):
        shown = viewer_client.get(reverse("checkpoint", args=[root.pk])).context["subgraphs"]
        assert {c.pk for c in shown} == {c.pk for c in subgraph_rows if c.metadata["parents"][""] == root.checkpoint_id}
    one = subgraph_rows.first()
    page = viewer_client.get(reverse("checkpoint", args=[one.pk]))
    assert [(ns, target.checkpoint_id) for ns, _, target in page.context["graph_parents"]] == [("", one.metadata["parents"][""])]


def test_encrypted_values_need_the_key(viewer_client, pg_source_url, settings):
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    key = "0123456789abcdef0123456789abcdef"
    serde = EncryptedSerializer.from_pycryptodome_aes(key=key.encode())
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        saver.serde = serde
        chat_graph(saver).invoke({"messages": ["top secret"]}, config("enc", tenant="acme"))
    settings.LANGGRAPH_AES_KEY = ""
    synced_source(pg_source_url, "pg")
    thread = Thread.objects.get(thread_id="enc")
    cp = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    values = viewer_client.get(reverse("checkpoint", args=[cp.pk])).context["values"]
    messages = {v.name: v for v in values.channels}["messages"]
    assert messages.value["__encrypted__"] == "msgpack+aes" and "top secret" not in messages.pretty
    settings.LANGGRAPH_AES_KEY = key
    values = viewer_client.get(reverse("checkpoint", args=[cp.pk])).context["values"]
    assert "top secret" in str({v.name: v for v in values.channels}["messages"].value)


def test_checkpoint_gone_from_the_source(viewer_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    synced_source(sqlite_source_url, "lite")
    cp = Checkpoint.objects.filter(thread__thread_id="t-chat0").order_by("checkpoint_id").first()
    sqlite_saver.conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = ?", (cp.checkpoint_id,))
    sqlite_saver.conn.commit()
    response = viewer_client.get(reverse("checkpoint", args=[cp.pk]))
    assert response.status_code == 200
    assert "no longer in the source" in unescape(response.content.decode())
