"""DeltaChannel values rebuilt without user code (issue 14.1) and the state API (issue 14.6).

Real graphs write real checkpoints through PostgresSaver and SqliteSaver; the
console's `/api/state/` must give, for every checkpoint of every thread, the
`values` LangGraph's own `graph.get_state(config)` returns, after the JSON
conversion the README documents.
"""

import hashlib
from html import unescape

import pytest
from django.urls import reverse
from langchain_core.messages import BaseMessage, HumanMessage

from checkpoints.models import Checkpoint, Thread
from tests.delta_graphs import run_delta_scenarios
from tests.graphs import run_scenarios
from tests.mirror_data import static_settings, synced_source  # noqa: F401
from tests.mirror_data import viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db


def as_json(value):
    """get_state's values in the state API's documented JSON form."""
    if isinstance(value, BaseMessage):
        return as_json(value.model_dump())
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    assert value is None or isinstance(value, (str, int, float, bool)), type(value)
    return value


def state(client, source, thread_id, **params):
    return client.get("/api/state/", {"source": source, "thread_id": thread_id, **params})


def check_every_checkpoint(client, source_name, runs):
    reconstructed = 0
    for graph, thread_id in runs:
        history = list(graph.get_state_history({"configurable": {"thread_id": thread_id}}))
        assert len(history) > 6
        for snapshot in history:
            cid = snapshot.config["configurable"]["checkpoint_id"]
            response = state(client, source_name, thread_id, checkpoint_id=cid)
            assert response.status_code == 200, response.content
            data = response.json()
            assert data["values"] == as_json(snapshot.values), (thread_id, cid, snapshot.metadata)
            parent = snapshot.parent_config["configurable"]["checkpoint_id"] if snapshot.parent_config else None
            assert (data["checkpoint_id"], data["parent_checkpoint_id"]) == (cid, parent)
            assert data["metadata"]["step"] == snapshot.metadata["step"]
            pending = graph.checkpointer.get_tuple(snapshot.config).pending_writes
            assert sorted((w["task_id"], w["channel"]) for w in data["pending_writes"]) == sorted((w[0], w[1]) for w in pending)
            reconstructed += len(data["reconstructed"])
            assert set(data["reconstructed"]) <= {"items", "messages"}
    assert reconstructed > 20  # most checkpoints hold no value for a delta channel


@pytest.fixture
def delta_pg(pg_saver, pg_source_url):
    runs = run_delta_scenarios(pg_saver)
    run_scenarios(pg_saver)
    synced_source(pg_source_url, "pg")
    return runs


@pytest.fixture
def delta_lite(sqlite_saver, sqlite_source_url):
    runs = run_delta_scenarios(sqlite_saver)
    run_scenarios(sqlite_saver)
    synced_source(sqlite_source_url, "lite")
    return runs


def test_values_equal_get_state_on_postgres(viewer_client, delta_pg, pg_saver):
    check_every_checkpoint(viewer_client, "pg", delta_pg)
    check_plain_graphs(viewer_client, "pg", pg_saver)


def test_values_equal_get_state_on_sqlite(viewer_client, delta_lite, sqlite_saver):
    check_every_checkpoint(viewer_client, "lite", delta_lite)
    check_plain_graphs(viewer_client, "lite", sqlite_saver)


def check_plain_graphs(client, source_name, saver):
    """The shared scenarios (no DeltaChannel): bytes, interrupts, update_state, forks, as get_state says."""
    from tests.graphs import chat_graph, interrupt_graph, subgraph_graph

    graphs = {"t-bytes": chat_graph(saver), "t-waiting": interrupt_graph(saver), "t-fork": chat_graph(saver),
              "t-sub": subgraph_graph(saver), "t-update": chat_graph(saver)}
    for thread_id, graph in graphs.items():
        for snapshot in graph.get_state_history({"configurable": {"thread_id": thread_id}}):
            cid = snapshot.config["configurable"]["checkpoint_id"]
            data = state(client, source_name, thread_id, checkpoint_id=cid).json()
            # A reducer channel never written on this branch has nothing in storage:
            # LangGraph shows its empty start ([]), the console leaves it out (README).
            expected = {k: v for k, v in snapshot.values.items() if not (v == [] and k not in data["values"])}
            assert data["values"] == as_json(expected), (thread_id, cid)
            assert data["reconstructed"] == []


def test_latest_root_checkpoint_by_default_and_pending_writes(viewer_client, delta_lite, sqlite_saver):
    graph, thread_id = delta_lite[2]  # left waiting at an interrupt
    latest = graph.get_state({"configurable": {"thread_id": thread_id}})
    data = state(viewer_client, "lite", thread_id).json()
    assert data["checkpoint_id"] == latest.config["configurable"]["checkpoint_id"]
    assert data["checkpoint_ns"] == "" and data["source"] == "lite" and data["thread_id"] == thread_id
    assert data["values"] == as_json(latest.values)
    assert data["created_at"].endswith("+00:00")
    rows = sqlite_saver.conn.execute(
        "SELECT task_id, channel FROM writes WHERE thread_id = ? AND checkpoint_id = ? ORDER BY task_id, idx",
        (thread_id, data["checkpoint_id"]),
    ).fetchall()
    assert [(w["task_id"], w["channel"]) for w in data["pending_writes"]] == [tuple(r) for r in rows]
    assert any(w["channel"] == "__interrupt__" for w in data["pending_writes"])


def test_secrets_in_metadata_are_redacted(viewer_client, delta_pg):
    data = state(viewer_client, "pg", "d-chat").json()
    assert data["metadata"]["api_key"] == "[redacted]" and data["metadata"]["tenant"] == "acme"
    assert "sk-secret" not in str(data)


def test_subgraph_namespace(viewer_client, delta_lite):
    sub = Thread.objects.get(thread_id="t-sub")
    inner = Checkpoint.objects.filter(thread=sub).exclude(checkpoint_ns="").order_by("checkpoint_id").last()
    data = state(viewer_client, "lite", "t-sub", checkpoint_ns=inner.checkpoint_ns, checkpoint_id=inner.checkpoint_id).json()
    assert data["checkpoint_ns"] == inner.checkpoint_ns and "from the subgraph" in data["values"]["messages"]
    latest = state(viewer_client, "lite", "t-sub", checkpoint_ns=inner.checkpoint_ns).json()
    assert latest["checkpoint_id"] == inner.checkpoint_id


def test_unknown_ids_answer_404_json(viewer_client, delta_lite):
    for params in [{"source": "nope", "thread_id": "d-chat"}, {"source": "lite", "thread_id": "nope"},
                   {"source": "lite", "thread_id": "d-chat", "checkpoint_id": "1f0-nope"},
                   {"source": "lite", "thread_id": "d-chat", "checkpoint_ns": "no:such"}]:
        response = viewer_client.get("/api/state/", params)
        assert response.status_code == 404 and "error" in response.json(), params
    response = viewer_client.get("/api/state/", {"source": "lite"})
    assert response.status_code == 400 and "thread_id" in response.json()["error"]


def test_same_auth_as_the_api(client, delta_lite):
    response = client.get("/api/state/", {"source": "lite", "thread_id": "d-chat"})
    assert response.status_code == 401 and response["Content-Type"] == "application/json"


def test_checkpoint_page_labels_reconstructed_values(viewer_client, delta_pg):
    thread = Thread.objects.get(thread_id="d-chat")
    seen = set()
    for cp in Checkpoint.objects.filter(thread=thread, checkpoint_ns="").order_by("checkpoint_id"):
        response = viewer_client.get(reverse("checkpoint", args=[cp.pk]))
        assert response.status_code == 200 and response.context["error"] == ""
        by_name = {v.name: v for v in response.context["values"].channels}
        for name in ("items", "messages"):
            if name in by_name and by_name[name].delta:
                seen.add(by_name[name].delta.status)
        html = unescape(response.content.decode())
        if by_name.get("messages") and by_name["messages"].delta.status == "reconstructed" and by_name["messages"].delta.writes:
            assert "reconstructed" in html and "LangChain messages merged by id" in html
            assert "LangGraph's replay order" in html
            source = by_name["messages"].delta
            if source.seed_checkpoint_id:
                seed = Checkpoint.objects.get(thread=thread, checkpoint_id=source.seed_checkpoint_id)
                assert reverse("checkpoint", args=[seed.pk]) in html
    assert seen == {"snapshot", "reconstructed"}


def test_diff_of_a_delta_channel_shows_the_messages_that_changed(viewer_client, delta_lite):
    """The diff compares rebuilt values: the update_state edit replaced ai-2 and removed h-0."""
    graph, thread_id = delta_lite[0]
    edit = next(s for s in graph.get_state_history({"configurable": {"thread_id": thread_id}}) if s.metadata["source"] == "update")
    cp = Checkpoint.objects.get(thread__thread_id=thread_id, checkpoint_id=edit.config["configurable"]["checkpoint_id"])
    diff = {c.channel: c for c in viewer_client.get(reverse("checkpoint", args=[cp.pk])).context["diff"]}
    got = [(d.path, d.op, d.text) for d in diff["messages"].details]
    assert ("message h-0", "removed", "human: question 0") in got
    assert ("message ai-2", "changed", "ai: edited by hand") in got
    assert [(d.op, d.text) for d in diff["items"].details] == [("appended", "'edited'")]


def test_writes_that_fit_no_shape_are_shown_as_they_are(viewer_client, sqlite_saver, sqlite_source_url):
    """A DeltaChannel with a reducer that extends the list: the console says it cannot replay it."""
    from tests.graphs import delta_graph

    graph = delta_graph(sqlite_saver)
    cfg = {"configurable": {"thread_id": "extend"}}
    for _ in range(5):
        graph.invoke({"n": 0}, cfg)
    synced_source(sqlite_source_url, "lite")
    raw = 0
    for snapshot in graph.get_state_history(cfg):
        data = state(viewer_client, "lite", "extend", checkpoint_id=snapshot.config["configurable"]["checkpoint_id"]).json()
        log = data["values"].get("log")
        if isinstance(log, dict) and "__delta__" in log:
            raw += 1
            assert "log" not in data["reconstructed"]
            assert log["__delta__"]["writes"]
            assert all(w["value"] == ["step"] for w in log["__delta__"]["writes"])
        elif "log" in data["reconstructed"]:
            assert log == snapshot.values["log"]
    assert raw > 0


@pytest.mark.parametrize("backend", ["pg", "lite"])
def test_subgraph_namespace_with_delta_channels(viewer_client, backend, request):
    from tests.delta_graphs import delta_subgraph

    saver = request.getfixturevalue("pg_saver" if backend == "pg" else "sqlite_saver")
    url = request.getfixturevalue("pg_source_url" if backend == "pg" else "sqlite_source_url")
    outer, inner = delta_subgraph(saver)
    cfg = {"configurable": {"thread_id": "nested"}}
    for i in range(3):
        outer.invoke({"messages": [HumanMessage(content=f"q{i}", id=f"q{i}")], "items": f"x{i}"}, cfg)
    synced_source(url, backend)
    checked = 0
    for ns in {c.checkpoint_ns for c in Checkpoint.objects.filter(thread__thread_id="nested")}:
        graph = inner if ns else outer
        for snapshot in graph.get_state_history({"configurable": {"thread_id": "nested", "checkpoint_ns": ns}}):
            cid = snapshot.config["configurable"]["checkpoint_id"]
            data = state(viewer_client, backend, "nested", checkpoint_ns=ns, checkpoint_id=cid).json()
            assert data["values"] == as_json(snapshot.values), (ns, cid)
            checked += 1
    assert checked > 12
