"""The sources page and the jobs around it (issue 11.1): add with a read-only check, edit, disable, remove.

Sources are real LangGraph databases (SqliteSaver and PostgresSaver writing
real graphs); the mirror is built by the real sync.
"""

import json
import sqlite3
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from checkpoints.models import Checkpoint, DailyUsage, ReferenceUse, Run, Source, Tag, Thread
from checkpoints.removal import removal_preview
from checkpoints.sync import ENV_UNSET_REASON, sync_sources
from dashboard.models import SavedPolicy
from tests.graphs import chat_graph, config, run_scenarios
from tests.mirror_data import operator, operator_client, viewer, viewer_client  # noqa: F401
from tests.test_sync_capture import logical_url, saver  # noqa: F401
from tests.test_maintenance_support import make_source, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_env_source(settings):
    settings.CHECKPOINT_DATABASE_URL = ""


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    """(saver, url) of a fresh LangGraph database of either kind."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


def mirror_rows(source):
    return {
        "threads": Thread.objects.filter(source=source).count(),
        "checkpoints": Checkpoint.objects.filter(source=source).count(),
        "tags": Tag.objects.filter(source=source).count(),
        "uses": ReferenceUse.objects.filter(thread__source=source).count(),
        "usage": DailyUsage.objects.filter(source=source).count(),
    }


# --- Access -----------------------------------------------------------------------


def test_viewer_gets_403_everywhere_and_no_nav_link(viewer_client, sqlite_source_url):
    source = Source.objects.create(name="s", url=sqlite_source_url, kind="sqlite")
    for url in ["/sources/", "/sources/new", f"/sources/{source.pk}/edit", f"/sources/{source.pk}/remove"]:
        response = viewer_client.get(url)
        assert response.status_code == 403, url
        assert "operator" in response.content.decode()
    posts = [("/sources/new", {"name": "x", "url": sqlite_source_url}), (f"/sources/{source.pk}/toggle", {}),
             (f"/sources/{source.pk}/edit", {"name": "renamed", "url": sqlite_source_url}),
             (f"/sources/{source.pk}/remove", {})]
    for url, data in posts:
        assert viewer_client.post(url, data).status_code == 403, url
    assert list(Source.objects.values_list("name", "enabled")) == [("s", True)]
    assert not Run.objects.exists()
    assert 'href="/sources/"' not in viewer_client.get("/").content.decode()


def test_anonymous_goes_to_login(client):
    response = client.get("/sources/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_operator_sees_health_and_nav_link(operator_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    make_source(sqlite_source_url, name="good")
    Source.objects.create(name="broken", url="sqlite:////nonexistent/x.db", kind="sqlite", enabled=False,
                          disabled_reason="disabled by otto", last_sync_ok=False, last_error="no such SQLite file",
                          last_sync_at=Thread.objects.first().last_checkpoint_at)
    response = operator_client.get("/sources/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="/sources/"' in html  # the nav link
    for text in ["good", "broken", "SQLite · standard", "disabled", "disabled by otto", "no such SQLite file",
                 reverse("source-remove", args=[Source.objects.get(name="good").pk])]:
        assert text in html, text


# --- Add and edit -------------------------------------------------------------------


def test_add_with_bad_urls_shows_the_readers_error_and_saves_nothing(operator_client, tmp_path):
    not_langgraph = tmp_path / "other.db"
    sqlite3.connect(not_langgraph).execute("CREATE TABLE t (x)").connection.close()
    cases = [
        (f"sqlite:///{tmp_path}/missing.db", "no such SQLite file"),
        (f"sqlite:///{not_langgraph}", "has no LangGraph table"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_database_here", "cannot connect to"),
        ("mysql://x/y", "unsupported database URL scheme"),
    ]
    for url, message in cases:
        response = operator_client.post("/sources/new", {"name": "new", "url": url})
        assert response.status_code == 400, url
        html = response.content.decode()
        assert message in html, (url, html[:3000])
    assert not Source.objects.exists()
    assert not (tmp_path / "missing.db").exists()  # read-only: never created


def test_add_a_real_source_then_sync_mirrors_it(operator_client, backend):
    saver, url = backend
    run_scenarios(saver)
    response = operator_client.post("/sources/new", {"name": "agents", "url": url})
    assert response.status_code == 302 and response["Location"] == "/sources/"
    source = Source.objects.get(name="agents")
    assert (source.url, source.kind, source.layout, source.enabled, source.registered_by_env) == (
        url, "postgres" if url.startswith("postgres") else "sqlite", "standard", True, False)
    (result,) = sync_sources()["sources"]
    assert result["error"] is None and result["threads"] > 0
    assert Thread.objects.filter(source=source).count() == result["threads"] > 0


def test_add_refuses_a_taken_name(operator_client, sqlite_source_url):
    Source.objects.create(name="taken", url=sqlite_source_url, kind="sqlite")
    response = operator_client.post("/sources/new", {"name": "taken", "url": sqlite_source_url})
    assert response.status_code == 400 and "exists already" in response.content.decode()
    assert Source.objects.count() == 1


def test_edit_checks_a_new_url_and_starts_its_sync_over(operator_client, sqlite_saver, sqlite_source_url, tmp_path):
    run_scenarios(sqlite_saver)
    source = Source.objects.create(name="typo", url=f"sqlite:///{tmp_path}/typo.db", kind="sqlite")
    (result,) = sync_sources()["sources"]
    assert "no such SQLite file" in result["error"]

    response = operator_client.post(f"/sources/{source.pk}/edit", {"name": "typo", "url": f"sqlite:///{tmp_path}/still.db"})
    assert response.status_code == 400 and "no such SQLite file" in response.content.decode()
    source.refresh_from_db()
    assert source.url.endswith("typo.db")

    response = operator_client.post(f"/sources/{source.pk}/edit", {"name": "fixed", "url": sqlite_source_url})
    assert response.status_code == 302
    source.refresh_from_db()
    assert (source.name, source.url, source.last_sync_ok, source.last_error, source.sync_state) == (
        "fixed", sqlite_source_url, None, "", {})
    (result,) = sync_sources()["sources"]
    assert result["error"] is None and result["threads"] > 0


# --- Disable ------------------------------------------------------------------------


def test_disabled_source_is_skipped_by_sync_and_keeps_its_mirror(operator_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url, name="s")
    before = mirror_rows(source)
    runs = Run.objects.count()

    response = operator_client.post(f"/sources/{source.pk}/toggle")
    assert response.status_code == 302
    source.refresh_from_db()
    assert not source.enabled and "otto" in source.disabled_reason

    chat_graph(sqlite_saver).invoke({"messages": ["later"]}, config("later-thread"))
    assert sync_sources() == {"sources": []}
    assert Run.objects.count() == runs  # not even a skipped run
    assert mirror_rows(source) == before
    (named,) = sync_sources("s")["sources"]
    assert "disabled" in named["error"] and "otto" in named["error"]
    with pytest.raises(CommandError):
        call_command("sync_checkpoints", "--source", "s")
    call_command("sync_checkpoints")  # every (enabled) source: none, not a failure
    assert mirror_rows(source) == before

    # The overview counts it neither as failed nor as never synced; the prune form does not offer it.
    Source.objects.filter(pk=source.pk).update(last_sync_ok=False, last_error="x")
    other = Source.objects.create(name="other", url=sqlite_source_url, kind="sqlite", last_sync_ok=False)
    html = operator_client.get("/").content.decode()
    assert "1 of 1 failed" in html
    html = operator_client.get("/maintenance/").content.decode()
    assert f'<option value="{other.pk}" selected>' in html and f'value="{source.pk}"' not in html

    operator_client.post(f"/sources/{source.pk}/toggle")
    source.refresh_from_db()
    assert source.enabled and source.disabled_reason == ""
    (result,) = sync_sources("s")["sources"]
    assert result["error"] is None and result["added"] > 0
    assert Thread.objects.filter(source=source, thread_id="later-thread").exists()


def test_prune_policy_of_a_disabled_source_waits(sqlite_saver, sqlite_source_url):
    from django.utils import timezone

    from dashboard.tasks import run_due_policies

    run_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url, name="s")
    source.enabled = False
    source.save()
    SavedPolicy.objects.create(name="nightly", kind="prune", source=source, interval=timedelta(hours=1),
                               parameters={"older_than": "30d", "keep_last": 1, "tags": [], "threads": False},
                               next_run_at=timezone.now() - timedelta(minutes=1))
    assert run_due_policies() == {"queued": [], "waiting": [], "failed": []}
    assert not Run.objects.filter(kind="prune").exists()


# --- Remove -------------------------------------------------------------------------


def test_remove_preview_counts_equal_the_removal(operator_client, operator, backend, sqlite_source_url, tmp_path):
    saver, url = backend
    run_scenarios(saver)
    source = make_source(url, name="gone")
    # A second source that stays, sharing nothing with the first.
    from langgraph.checkpoint.sqlite import SqliteSaver

    keep_path = tmp_path / "keep.sqlite"
    conn = sqlite3.connect(keep_path, check_same_thread=False)
    keeper = SqliteSaver(conn)
    keeper.setup()
    chat_graph(keeper).invoke({"messages": ["hi"]}, config("kept"))
    conn.close()
    kept = make_source(f"sqlite:///{keep_path}", name="kept")
    kept_rows = mirror_rows(kept)
    SavedPolicy.objects.create(name="p", kind="prune", source=source, parameters={}, interval=timedelta(hours=1))

    rows = mirror_rows(source)
    assert rows["checkpoints"] > 0 and rows["tags"] > 0 and rows["uses"] > 0
    preview = removal_preview(source)
    assert preview["threads"] == rows["threads"] and preview["checkpoints"] == rows["checkpoints"]
    assert preview["references"] == rows["uses"] and preview["usage_days"] == rows["usage"]

    response = operator_client.get(f"/sources/{source.pk}/remove")
    assert response.status_code == 200
    html = response.content.decode()
    assert f"<td class=\"num\">{preview['checkpoints']}</td>" in html and "Remove gone" in html
    assert Source.objects.filter(pk=source.pk).exists()  # a GET changes nothing

    response = operator_client.post(f"/sources/{source.pk}/remove")
    run = Run.objects.get(kind="remove")
    assert response.status_code == 302 and response["Location"] == reverse("maintenance-run", args=[run.pk])
    assert run.state == "done", run.error
    assert run.requested_by == operator and run.origin == "page" and run.parameters["source"] == "gone"
    assert {k: run.result[k] for k in preview} == preview == run.result["preview"]
    assert not Source.objects.filter(name="gone").exists()
    assert mirror_rows(source) == {"threads": 0, "checkpoints": 0, "tags": 0, "uses": 0, "usage": 0}
    assert not SavedPolicy.objects.filter(name="p").exists()
    assert Run.objects.filter(parameters__source="gone").exists()  # the audit stays
    assert mirror_rows(kept) == kept_rows

    page = operator_client.get(reverse("maintenance-run", args=[run.pk])).content.decode()
    assert "Source removal" in page and "gone" in page and "Removed from the mirror" in page
    history = operator_client.get("/maintenance/").content.decode()
    assert reverse("maintenance-run", args=[run.pk]) in history
    # The checkpoint database itself is untouched: it syncs again as a new source.
    assert make_source(url, name="back").threads.count() == preview["threads"]


def test_remove_source_command(sqlite_saver, sqlite_source_url, capsys):
    run_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url, name="s")
    preview = removal_preview(source)
    call_command("remove_source", "s", "--dry-run", "--json")
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True and dry["error"] is None and dry["checkpoints"] == preview["checkpoints"]
    assert Source.objects.filter(name="s").exists()
    call_command("remove_source", "s", "--json")
    done = json.loads(capsys.readouterr().out)
    assert {k: done[k] for k in preview} == preview and done["run"] == Run.objects.get(kind="remove").pk
    assert not Source.objects.filter(name="s").exists() and not Thread.objects.exists()
    with pytest.raises(CommandError, match="no source named"):
        call_command("remove_source", "s")


# --- CHECKPOINT_DATABASE_URL ----------------------------------------------------------


def test_env_source_follows_the_variable(settings, operator_client, sqlite_saver, sqlite_source_url, tmp_path):
    run_scenarios(sqlite_saver)
    # A typo: every sync of it fails...
    settings.CHECKPOINT_DATABASE_URL = f"sqlite:///{tmp_path}/typo.sqlite"
    (result,) = sync_sources()["sources"]
    assert "no such SQLite file" in result["error"]
    source = Source.objects.get(name="default")
    assert source.registered_by_env and source.enabled
    html = operator_client.get("/sources/").content.decode()
    assert "set by CHECKPOINT_DATABASE_URL" in html
    assert operator_client.get(f"/sources/{source.pk}/remove").content.decode().count("Unset the variable") == 1
    assert operator_client.post(f"/sources/{source.pk}/remove").status_code == 409
    assert Source.objects.filter(name="default").exists()

    # ...until the variable is unset: then the source is disabled, and syncing every source succeeds.
    settings.CHECKPOINT_DATABASE_URL = ""
    assert sync_sources() == {"sources": []}
    call_command("sync_checkpoints")
    source.refresh_from_db()
    assert (source.enabled, source.registered_by_env, source.disabled_reason) == (False, False, ENV_UNSET_REASON)
    assert "failed" not in operator_client.get("/").content.decode().split("Last sync")[1][:400]

    # Set again (fixed): enabled and synced.
    settings.CHECKPOINT_DATABASE_URL = sqlite_source_url
    (result,) = sync_sources()["sources"]
    assert result["error"] is None and result["threads"] > 0
    source.refresh_from_db()
    assert source.enabled and source.registered_by_env and source.url == sqlite_source_url

    # Disabled by an operator while the variable is set: it stays disabled.
    operator_client.post(f"/sources/{source.pk}/toggle")
    assert sync_sources() == {"sources": []}
    source.refresh_from_db()
    assert not source.enabled and source.registered_by_env

    # Unset, it can be removed.
    settings.CHECKPOINT_DATABASE_URL = ""
    sync_sources()
    response = operator_client.post(f"/sources/{source.pk}/remove")
    assert response.status_code == 302
    assert not Source.objects.filter(name="default").exists()


def test_env_source_is_not_editable_while_the_variable_is_set(settings, operator_client, sqlite_source_url):
    settings.CHECKPOINT_DATABASE_URL = sqlite_source_url
    sync_sources()
    source = Source.objects.get(name="default")
    html = operator_client.get(f"/sources/{source.pk}/edit").content.decode()
    assert "change the variable" in html
    operator_client.post(f"/sources/{source.pk}/edit", {"name": "other", "url": "sqlite:////x.db"})
    source.refresh_from_db()
    assert (source.name, source.url) == ("default", sqlite_source_url)


def test_operator_group_has_the_permission_after_flush(db):
    user = make_user("olga", "operator")
    assert user.has_perm("checkpoints.manage_sources")
    assert not make_user("vic", "viewer").has_perm("checkpoints.manage_sources")


# --- Logical capture: no slot outlives its sync ------------------------------------------


def test_disable_and_remove_drop_the_replication_slot(operator_client, logical_url, saver):
    from checkpoints.sources.capture import Capture

    run_scenarios(saver)
    source = Source.objects.create(name="cap", url=logical_url, kind="postgres", capture="logical")
    assert sync_sources()["sources"][0]["error"] is None
    source.refresh_from_db()
    slot = source.sync_state["slot"]
    with Capture(logical_url, slot) as capture:
        assert capture.status().exists

    operator_client.post(f"/sources/{source.pk}/toggle")  # disable: the slot would only retain WAL
    source.refresh_from_db()
    assert not source.enabled and "slot" not in source.sync_state
    with Capture(logical_url, slot) as capture:
        assert not capture.status().exists

    operator_client.post(f"/sources/{source.pk}/toggle")  # enable: a new slot, one scan, nothing missed
    chat_graph(saver).invoke({"messages": ["while disabled"]}, config("t-new"))
    assert sync_sources()["sources"][0]["error"] is None
    assert Thread.objects.filter(source=source, thread_id="t-new").exists()
    source.refresh_from_db()
    new_slot = source.sync_state["slot"]
    assert new_slot != slot

    operator_client.post(f"/sources/{source.pk}/remove")
    run = Run.objects.get(kind="remove")
    assert run.state == "done" and new_slot in run.result["slot"]
    with Capture(logical_url, new_slot) as capture:
        assert not capture.status().exists
