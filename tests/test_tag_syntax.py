"""One tag syntax everywhere: `key:value` (documented) and `KEY=VALUE` on pages, API, prune form and command.

A filter is split at its first `:` or `=`, whichever comes first; the value
keeps every later separator.
"""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from checkpoints.models import Run
from tests.graphs import chat_graph, config
from tests.mirror_data import mirror, operator, operator_client, shared_mirror  # noqa: F401
from tests.mirror_data import static_settings, synced_source, viewer, viewer_client  # noqa: F401
from tests.test_maintenance_support import prune_post

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("sep", [":", "="])
def test_pages_and_api_take_both_spellings(viewer_client, mirror, sep):
    tenant, plan = mirror.threads[1].tags["tenant"], mirror.threads[1].tags["plan"]
    wanted = sorted(t.thread_id for t in mirror.matching([("tenant", tenant), ("plan", plan)]))
    tags = [f"tenant{sep}{tenant}", f"plan{sep}{plan}"]
    page = viewer_client.get("/threads/", {"tag": tags})
    assert page.context["errors"] == []
    assert sorted(t.thread_id for t, _, _ in page.context["rows"]) == wanted
    data = viewer_client.get("/api/threads/", {"tag": tags}).json()
    assert sorted(r["thread_id"] for r in data["results"]) == wanted


def test_a_value_keeps_later_separators(viewer_client, mirror):
    # "a:b:c" is one of the tenants the mirror carries
    for text in ["tenant:a:b:c", "tenant=a:b:c"]:
        data = viewer_client.get("/api/threads/", {"tag": text}).json()
        assert data["count"] == len(mirror.matching([("tenant", "a:b:c")])) > 0, text


def write_and_sync(saver, url):
    chat = chat_graph(saver)
    for i, tenant in enumerate(["acme", "acme", "globex"]):
        chat.invoke({"messages": ["hi"]}, config(f"t{i}", tenant=tenant, url="http://x:1/a=b"))
    return synced_source(url, "lite")


@override_settings(CHECKPOINT_DATABASE_URL="", PRUNE_ACTIVE_WINDOW=timedelta(0))
def test_the_command_takes_both_spellings(sqlite_saver, sqlite_source_url):
    write_and_sync(sqlite_saver, sqlite_source_url)

    def dry_run(*tags):
        out = StringIO()
        args = ["--older-than", "0s", "--source", "lite", "--dry-run", "--json"]
        call_command("prune_checkpoints", *args, *(x for t in tags for x in ("--tag", t)), stdout=out)
        return json.loads(out.getvalue())

    colon, equals = dry_run("tenant:acme"), dry_run("tenant=acme")
    assert colon == equals and colon["threads"] == 2
    assert dry_run("url:http://x:1/a=b", "tenant=acme") == colon
    assert dry_run("tenant:globex")["threads"] == 1


@override_settings(CHECKPOINT_DATABASE_URL="", PRUNE_ACTIVE_WINDOW=timedelta(0))
def test_the_prune_form_takes_both_spellings(operator_client, sqlite_saver, sqlite_source_url):
    source = write_and_sync(sqlite_saver, sqlite_source_url)
    operator_client.post(reverse("maintenance-prune-preview"),
                         prune_post(source, older_than="0s", tags="tenant:acme\nurl=http://x:1/a=b"))
    preview = Run.objects.get(kind="prune", dry_run=True)
    assert preview.result["threads"] == 2, preview.error
    response = operator_client.post(reverse("maintenance-prune-preview"), prune_post(source, tags="tenant"))
    assert response.status_code == 400 and "is not key:value" in response.content.decode()
