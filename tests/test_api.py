"""The JSON API: authentication, tokens, and numbers checked against the mirror."""

import json
from datetime import datetime
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from dashboard.models import ApiToken
from tests.mirror_data import TRICKY_VALUES, make_user, static_settings  # noqa: F401
from tests.mirror_data import mirror, shared_mirror, viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db
ENDPOINTS = ["/api/threads/", "/api/threads/alpha/alpha-thread-001/", "/api/summary/", "/metrics"]


def create_token(username):
    out = StringIO()
    call_command("create_api_token", username, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_anonymous_gets_401_json_not_a_redirect(client, mirror):
    for url in ENDPOINTS:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response["Content-Type"] == "application/json"
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "error" in response.json()


def test_token_from_the_command_authenticates(client, mirror, viewer):
    token = create_token("vera")
    assert token.startswith("cc_") and len(token) > 30
    row = ApiToken.objects.get(user=viewer)
    assert row.digest != token and token not in (row.digest, row.prefix) and row.prefix == token[:12]
    assert row.last_used_at is None
    for url in ENDPOINTS:
        assert client.get(url, **bearer(token)).status_code == 200, url
    row.refresh_from_db()
    assert row.last_used_at is not None
    # a second token for the same user works too; each is distinct
    assert create_token("vera") != token


def test_bad_tokens_are_refused(client, mirror, viewer):
    token = create_token("vera")
    for header in [f"Bearer {token}x", "Bearer ", f"Basic {token}", f"Token {token}", "Bearer x' OR 1=1 --"]:
        response = client.get("/api/summary/", HTTP_AUTHORIZATION=header)
        assert response.status_code == 401, header
        assert "error" in response.json()
    viewer.is_active = False
    viewer.save()
    assert client.get("/api/summary/", **bearer(token)).status_code == 401


def test_token_of_a_user_without_group_is_forbidden(client, mirror):
    make_user("nobody")
    err = StringIO()
    out = StringIO()
    call_command("create_api_token", "nobody", stdout=out, stderr=err)
    assert "neither the viewer nor the operator" in err.getvalue()
    response = client.get("/api/threads/", **bearer(out.getvalue().strip()))
    assert response.status_code == 403 and "error" in response.json()


def test_command_refuses_unknown_users(db):
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("create_api_token", "ghost")


def test_command_json_output(db, viewer):
    out = StringIO()
    call_command("create_api_token", "vera", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["username"] == "vera" and ApiToken.objects.filter(digest=ApiToken.digest_of(data["token"])).exists()


def test_session_login_works_for_the_api(viewer_client, mirror):
    assert viewer_client.get("/api/summary/").status_code == 200


def thread_json_matches(item, planned):
    assert item["source"] == planned.source
    assert item["thread_id"] == planned.thread_id
    assert item["checkpoints"] == len(planned.checkpoints)
    assert item["logical_bytes"] == planned.latest_root["logical_bytes"]
    assert item["stored_bytes"] == planned.stored_bytes
    assert datetime.fromisoformat(item["last_checkpoint_at"]) == planned.last_checkpoint_at
    assert item["last_checkpoint_at"].endswith("+00:00")
    assert item["tags"] == planned.tags


def fetch_all(client, params, **headers):
    url, results, count = "/api/threads/", [], None
    while url:
        response = client.get(url, params, **headers)
        assert response.status_code == 200, response.content
        data = response.json()
        count = data["count"] if count is None else count
        assert data["count"] == count
        results += data["results"]
        if data["next"]:
            parts = urlsplit(data["next"])
            assert parts.scheme == "http" and parts.netloc == "testserver"
            url, params = parts.path + "?" + parts.query, {}
        else:
            url = None
    return count, results


def test_threads_list_matches_the_mirror(viewer_client, mirror):
    count, results = fetch_all(viewer_client, {})
    assert count == len(mirror.threads) == len(results)
    by_key = {(t.source, t.thread_id): t for t in mirror.threads}
    for item in results:
        thread_json_matches(item, by_key[(item["source"], item["thread_id"])])
    times = [item["last_checkpoint_at"] for item in results]
    assert times == sorted(times, reverse=True)


def test_threads_list_pages_by_100(viewer_client, db):
    from tests.mirror_data import build_mirror

    from tests.mirror_data import clear_mirror

    clear_mirror()  # rolled back with the test
    plan = build_mirror(sources=("big",), threads_per_source=230)
    first = viewer_client.get("/api/threads/", {"tag": "urgent:false"}).json()
    expected = plan.matching([("urgent", "false")])
    assert first["count"] == len(expected) and len(first["results"]) == 100
    assert "tag=urgent%3Afalse" in first["next"] and "page=2" in first["next"]
    count, results = fetch_all(viewer_client, {"tag": "urgent:false"})
    assert sorted(r["thread_id"] for r in results) == sorted(t.thread_id for t in expected)
    assert viewer_client.get("/api/threads/", {"page": 99}).status_code == 404
    assert viewer_client.get("/api/threads/", {"page": "two"}).status_code == 400


def test_threads_filtered_by_two_tags(viewer_client, mirror):
    pairs = [("tenant", "acme"), ("region", "eu")]
    count, results = fetch_all(viewer_client, {"tag": [f"{k}:{v}" for k, v in pairs]})
    expected = mirror.matching(pairs)
    assert expected and count == len(expected)
    assert sorted((r["source"], r["thread_id"]) for r in results) == sorted((t.source, t.thread_id) for t in expected)
    assert all(r["tags"]["tenant"] == "acme" and r["tags"]["region"] == "eu" for r in results)


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_tag_values_are_matched_exactly(viewer_client, mirror, value):
    count, results = fetch_all(viewer_client, {"tag": f"tenant:{value}"})
    expected = mirror.matching([("tenant", value)])
    assert count == len(expected) > 0
    assert {r["thread_id"] for r in results} == {t.thread_id for t in expected}


def test_injection_attempts_match_nothing(viewer_client, mirror):
    for text in ["tenant:acme' OR '1'='1", "tenant:acme\" OR \"1\"=\"1", "tenant:%", "x' OR 1=1 --:acme"]:
        data = viewer_client.get("/api/threads/", {"tag": text}).json()
        assert data == {"count": 0, "next": None, "results": []}, text


def test_bad_filters_answer_400(viewer_client, mirror):
    response = viewer_client.get("/api/threads/", {"tag": "no-colon"})
    assert response.status_code == 400 and "key:value" in response.json()["error"]
    response = viewer_client.get("/api/threads/", {"sort": "name"})
    assert response.status_code == 400
    assert viewer_client.get("/api/threads/", {"source": "nope"}).status_code == 404


def test_thread_detail_with_blobs(viewer_client, mirror):
    for ref, users in mirror.references:
        planned = next(t for t in mirror.threads if t.thread_id == users[0])
        response = viewer_client.get(reverse("api-thread", args=[planned.source, planned.thread_id]))
        assert response.status_code == 200
        data = response.json()
        thread_json_matches(data, planned)
        blobs = {b["uri"]: b for b in data["blobs"]}
        assert blobs[ref.uri] == {"id": ref.pk, "uri": ref.uri, "size": ref.size, "state": ref.state}
        expected = {r.uri for r, u in mirror.references if planned.thread_id in u}
        assert set(blobs) == expected


def test_thread_detail_with_an_awkward_id(viewer_client, mirror):
    planned = mirror.threads[7]
    assert "/" in planned.thread_id and "?" in planned.thread_id
    url = reverse("api-thread", args=[planned.source, planned.thread_id])
    data = viewer_client.get(url).json()
    thread_json_matches(data, planned)
    assert data["blobs"] == []
    assert viewer_client.get("/api/threads/alpha/nope/").status_code == 404


def test_summary_matches_the_mirror(viewer_client, mirror):
    data = viewer_client.get("/api/summary/").json()
    assert [s["name"] for s in data["sources"]] == sorted(s.name for s in mirror.sources)
    for item in data["sources"]:
        source = next(s for s in mirror.sources if s.name == item["name"])
        planned = [t for t in mirror.threads if t.source == source.name]
        assert item["threads"] == len(planned)
        assert item["checkpoints"] == sum(len(t.checkpoints) for t in planned)
        assert item["stored_bytes"] == sum(t.stored_bytes for t in planned)
        present = {r.pk: r.size for r, users in mirror.references if r.exists and any(t.thread_id in users for t in planned)}
        assert item["external_bytes"] == sum(present.values())
        assert datetime.fromisoformat(item["last_sync_at"]) == source.last_sync_at
        assert item["last_sync_ok"] is source.last_sync_ok
