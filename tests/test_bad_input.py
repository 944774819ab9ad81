"""Bad request input answers 4xx, never 500; the API says what was wrong in JSON.

A NUL character cannot be stored in PostgreSQL text, so a `%00` anywhere in a
request once reached the database and came back as a 500. Pages quietly
correct a bad page number, sort or range; the API refuses them with 400.
"""

import json
from html import unescape
from urllib.parse import quote

import pytest

from checkpoints.models import Checkpoint, Run
from tests.mirror_data import mirror, operator, operator_client, shared_mirror, static_settings  # noqa: F401

pytestmark = pytest.mark.django_db

PAGES = [
    "/", "/threads/", "/threads/alpha/alpha-thread-001/", "/threads/alpha/?thread_id=x", "/checkpoints/{cp}/",
    "/maintenance/", "/maintenance/runs/{run}/", "/maintenance/runs/{run}/progress", "/storage/bucket/",
]
API = ["/api/threads/", "/api/threads/alpha/alpha-thread-001/", "/api/threads/alpha/?thread_id=alpha-thread-001",
       "/api/summary/", "/metrics"]
PARAMETERS = ["q", "tag", "source", "range", "page", "sort", "thread_id", "kind", "format", "x\x00"]
NUL_VALUES = ["\x00", "a\x00b", "tenant:\x00", "\x00:acme"]
NUL_PATHS = [
    "/threads/alpha/%00/", "/threads/alpha/a%00b/", "/threads/al%00pha/x/", "/checkpoints/%00/",
    "/maintenance/runs/%00/", "/api/threads/alpha/%00/", "/api/threads/alpha/x%00/", "/api/threads/%00/x/",
    "/blobs/%00/download", "/%00", "/api/%00", "/metrics%00",
]


def fill(url, mirror):
    cp = Checkpoint.objects.order_by("pk").first()
    run = Run.objects.order_by("pk").first() or Run.objects.create(kind="sync", state="done")
    return url.format(cp=cp.pk, run=run.pk)


def is_api(url):
    return url.startswith("/api/") or url.startswith("/metrics")


@pytest.mark.parametrize("url", PAGES + API)
@pytest.mark.parametrize("name", PARAMETERS)
def test_nul_in_any_parameter_is_a_400(operator_client, mirror, url, name):
    url = fill(url, mirror)
    for value in NUL_VALUES:
        sep = "&" if "?" in url else "?"
        response = operator_client.get(f"{url}{sep}{quote(name)}={quote(value)}")
        assert response.status_code == 400, (url, name, value)
        if is_api(url):
            assert response["Content-Type"] == "application/json"
            assert "NUL" in response.json()["error"]


@pytest.mark.parametrize("path", NUL_PATHS)
def test_nul_in_a_path_is_a_400(operator_client, mirror, path):
    response = operator_client.get(path)
    assert response.status_code == 400, path
    if is_api(path):
        assert response["Content-Type"] == "application/json"
        assert "error" in response.json()


def test_nul_is_refused_before_login(client, mirror):
    # no database lookup of the session or the token on the way to the refusal
    assert client.get("/api/threads/?q=%00").status_code == 400
    assert client.get("/threads/?q=%00").status_code == 400


def test_nul_in_a_posted_form_is_a_form_error(operator_client, mirror):
    response = operator_client.post("/maintenance/prune/preview", {
        "prune-source": "1", "prune-older_than": "30d\x00", "prune-keep_last": "1", "prune-tags": "tenant=\x00",
    })
    assert response.status_code < 500


@pytest.mark.parametrize("query", [
    {"page": "abc"}, {"page": "1.5"}, {"page": "0"}, {"page": "-1"}, {"page": ""},
    {"tag": "no-separator"}, {"tag": ":value"}, {"sort": "name"}, {"range": "7x"}, {"range": ""},
])
def test_the_api_refuses_malformed_parameters(operator_client, mirror, query):
    response = operator_client.get("/api/threads/", query)
    assert response.status_code == 400, query
    assert response["Content-Type"] == "application/json" and response.json()["error"]


def test_the_api_refuses_an_unknown_range_on_the_summary(operator_client, mirror):
    assert operator_client.get("/api/summary/", {"range": "forever"}).status_code == 400
    assert operator_client.get("/api/summary/").status_code == 200


@pytest.mark.parametrize("query", [
    {"page": "abc"}, {"page": "0"}, {"page": "99999"}, {"tag": "no-separator"}, {"sort": "name"}, {"range": "7x"},
    {"source": "nope"}, {"q": "x" * 5000}, {"tag": "k:" + "v" * 5000},
])
@pytest.mark.parametrize("url", ["/", "/threads/", "/threads/alpha/alpha-thread-001/", "/maintenance/"])
def test_the_pages_quietly_correct_them(operator_client, mirror, url, query):
    assert operator_client.get(url, query).status_code == 200, (url, query)


# --- very large user data on the checkpoint page ---------------------------------------


def test_the_checkpoint_page_cuts_very_large_metadata(client, sqlite_saver, sqlite_source_url):
    from checkpoints.decode import MAX_STRING
    from checkpoints.models import Thread
    from tests.graphs import chat_graph
    from tests.mirror_data import make_user, synced_source

    big = "m" * 1_000_000
    chat_graph(sqlite_saver).invoke(
        {"messages": ["hi"]}, {"configurable": {"thread_id": "big-meta"}, "metadata": {"note": big, "tenant": "acme"}}
    )
    synced_source(sqlite_source_url, "lite")
    thread = Thread.objects.get(thread_id="big-meta")
    cp = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    assert cp.metadata["note"] == big  # the mirror keeps it whole

    client.force_login(make_user("vera", "viewer"))
    response = client.get(f"/checkpoints/{cp.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert len(html) < 200_000 and "m" * MAX_STRING in html and "m" * (MAX_STRING + 1) not in html
    # the cut says how large the value is, and the card the size of the whole metadata
    assert f"[cut, {len(big):,} bytes in all]".replace(",", "") in html.replace(",", "")
    assert response.context["metadata_bytes"] == len(json.dumps(cp.metadata, ensure_ascii=False).encode())
    assert '"tenant": "acme"' in unescape(html)
