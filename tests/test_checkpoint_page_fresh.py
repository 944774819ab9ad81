"""A cached view of the checkpoint page is cheap and never stale (issue 14).

The page reads its checkpoint and references in statements of its own
(dashboard.page_rows) and permissions in one statement per request
(dashboard.authbackend). These tests hold them to what the ORM returned, and
a second (cached) view to everything that changes the page: a sync adding a
child, a reference check changing a state, a prune removing the checkpoint,
a permission revoked. Real graphs and savers, the real sync, a file store.
"""

import json
import os
import subprocess
import sys
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.forms.models import model_to_dict
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from checkpoints.models import Checkpoint, Source, Thread
from dashboard import page_rows
from dashboard.access import VIEW_PERM
from storage.models import DOWNLOAD_PERM
from storage.offload import FileStore
from storage.refcheck import check_references
from tests.mirror_data import operator, operator_client, static_settings, synced_source  # noqa: F401
from tests.mirror_data import viewer, viewer_client  # noqa: F401
from tests.test_previews import TEXT, blob_root, latest, write_thread  # noqa: F401

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def orm_rows(pk):
    """What the page ran before: two querysets with select_related."""
    cp = Checkpoint.objects.select_related("thread", "thread__source").get(pk=pk)
    return cp, list(cp.reference_uses.select_related("reference").order_by("location"))


def compare_rows():
    """Differences between page_rows and the ORM over every mirrored checkpoint (and a missing pk)."""
    diffs, count = [], 0
    for pk in Checkpoint.objects.values_list("pk", flat=True):
        cp, uses = orm_rows(pk)
        ours = page_rows.checkpoint(pk)
        got = (model_to_dict(ours), model_to_dict(ours.thread), model_to_dict(ours.thread.source),
               [(model_to_dict(u), model_to_dict(u.reference)) for u in page_rows.references(ours)])
        want = (model_to_dict(cp), model_to_dict(cp.thread), model_to_dict(cp.thread.source),
                [(model_to_dict(u), model_to_dict(u.reference)) for u in uses])
        count += 1 + len(uses)
        if got != want:
            diffs.append(repr((pk, got, want)))
    if page_rows.checkpoint(10**12) is not None or page_rows.checkpoint("x") is not None:
        diffs.append("a missing pk found a row")
    return count, diffs


def compare_sessions_and_users():
    """Differences between dashboard.sessions/authbackend and Django's own loads of sessions and users."""
    from django.contrib.auth.backends import ModelBackend
    from django.contrib.sessions.backends.db import SessionStore as DjangoStore
    from django.contrib.sessions.models import Session

    from dashboard.authbackend import PermissionsBackend
    from dashboard.sessions import SessionStore

    diffs = []
    live = SessionStore()
    live.update({"user": "someone", "n": 3})
    live.create()
    expired = SessionStore()
    expired["user"] = "late"
    expired.create()
    Session.objects.filter(session_key=expired.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))
    for key in (live.session_key, expired.session_key, "no-such-key", "x" * 40):
        ours, theirs = SessionStore(key), DjangoStore(key)
        if (ours.load(), ours.session_key) != (theirs.load(), theirs.session_key):
            diffs.append(f"session {key!r}")
    active = User.objects.create_user("loaded", email="l@example.org")
    active.groups.add(Group.objects.get(name="viewer"))
    inactive = User.objects.create_user("gone", is_active=False)
    for user_id in (str(active.pk), active.pk, str(inactive.pk), "999999"):
        ours, theirs = PermissionsBackend().get_user(user_id), ModelBackend().get_user(user_id)
        if (ours and model_to_dict(ours)) != (theirs and model_to_dict(theirs)):
            diffs.append(f"user {user_id!r}: {ours and model_to_dict(ours)} != {theirs and model_to_dict(theirs)}")
    return diffs


def write_documents(sqlite_source_url, root):
    """A thread whose latest checkpoint names four objects: its offloaded text, two files and one outside every store."""
    reports = root / "reports"
    reports.mkdir()
    (reports / "a.txt").write_text("alpha")
    (reports / "b.txt").write_text("beta")
    files = [(reports / "a.txt").as_uri(), (reports / "b.txt").as_uri(), "file:///etc/passwd"]
    write_thread(sqlite_source_url, FileStore(root), {"text": TEXT, "files": files})
    return reports


def test_rows_on_postgresql_match_the_orm(blob_root, sqlite_source_url):
    from django.db import connection

    assert connection.vendor == "postgresql"
    write_documents(sqlite_source_url, blob_root)
    synced_source(sqlite_source_url, "lite")
    check_references()  # sizes, ETags, dates and states filled in
    count, diffs = compare_rows()
    assert count > 5 and diffs == [] and compare_sessions_and_users() == []
    uses = page_rows.references(latest("doc"))
    assert sorted(u.reference.state for u in uses) == ["foreign", "present", "present", "present"]
    assert all(u.reference.checked_at.tzinfo is not None for u in uses if u.reference.store != "foreign")


SQLITE_SCRIPT = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.db import connection
assert connection.vendor == "sqlite"
from tests.mirror_data import synced_source
from storage.refcheck import check_references
from tests.test_checkpoint_page_fresh import compare_rows, write_documents
from pathlib import Path
import os
write_documents(os.environ["SOURCE_URL"], Path(os.environ["BLOB_ROOT"]))
synced_source(os.environ["SOURCE_URL"], "lite")
check_references()
count, diffs = compare_rows()
from tests.test_checkpoint_page_fresh import compare_sessions_and_users
diffs += compare_sessions_and_users()
print(json.dumps({"count": count, "diffs": diffs}))
"""


def test_rows_on_sqlite_match_the_orm(tmp_path):
    """The embedded default console database: dates come back as text and JSON as text, converted alike."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="dashboard.settings", CONSOLE_VAR_DIR=str(tmp_path), BLOB_ROOT=str(blobs),
               SOURCE_URL=f"sqlite:///{tmp_path}/source.sqlite", PREVIEW_LIMIT="10KB")
    done = subprocess.run([sys.executable, "-c", SQLITE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["count"] > 5 and result["diffs"] == []


def states(response):
    """{file name: state} of the page's references table."""
    return {u.reference.uri.rsplit("/", 1)[-1]: u.reference.state for u in response.context["references"]
            if "/sha256/" not in u.reference.uri}


def page(client, cp, status=200):
    response = client.get(reverse("checkpoint", args=[cp.pk]))
    assert response.status_code == status
    return response


def test_cached_view_shows_a_new_child_a_new_reference_state_and_a_removal(operator_client, sqlite_saver,
                                                                          sqlite_source_url, blob_root):
    reports = write_documents(sqlite_source_url, blob_root)
    source = synced_source(sqlite_source_url, "lite")
    check_references()
    cp = latest("doc")
    for _ in range(2):  # the second view is the cached one
        response = page(operator_client, cp)
        assert response.context["children"] == []
        assert states(response) == {"a.txt": "present", "b.txt": "present", "passwd": "foreign"}
    # A sync that mirrors a child: the next view links it.
    write_thread(sqlite_source_url, FileStore(blob_root), {"text": TEXT + "more"})
    from checkpoints.sync import sync_source

    assert sync_source(source)["error"] is None
    child = Checkpoint.objects.get(thread=cp.thread, checkpoint_ns="", parent_checkpoint_id=cp.checkpoint_id)
    response = page(operator_client, cp)
    assert [c.pk for c in response.context["children"]] == [child.pk]
    assert reverse("checkpoint", args=[child.pk]) in response.content.decode()
    # A reference check that finds an object gone: the next view says "missing" and offers no download of it.
    (reports / "b.txt").unlink()
    check_references()
    response = page(operator_client, cp)
    assert states(response) == {"a.txt": "present", "b.txt": "missing", "passwd": "foreign"}
    assert '<span class="state missing">missing</span>' in response.content.decode()
    rows = {row["target"].uri.rsplit("/", 1)[-1]: row for row in response.context["content"]}
    assert rows["b.txt"]["download"] is None and rows["a.txt"]["download"]
    # A prune that removes the checkpoint (keep the latest only): its page is gone at once.
    from checkpoints.prune import PrunePolicy, run_prune

    run = run_prune(source, PrunePolicy(timedelta(0), keep_last=1), dry_run=False, now=timezone.now() + timedelta(days=1))
    assert run.state == "done" and run.result["checkpoints"] >= 1, (run.error, run.result)
    assert not Checkpoint.objects.filter(pk=cp.pk).exists()
    page(operator_client, cp, status=404)
    newest = page(operator_client, latest("doc"))
    assert newest.context["parent"] is None and newest.context["cp"].parent_checkpoint_id == ""


def test_a_revoked_permission_applies_to_the_next_request(operator, blob_root, sqlite_source_url):
    write_documents(sqlite_source_url, blob_root)
    synced_source(sqlite_source_url, "lite")
    check_references()
    cp = latest("doc")
    client = Client()
    client.force_login(operator)
    for _ in range(2):
        response = page(client, cp)
        assert response.context["can_preview"] and "alpha" in response.content.decode()
    # Out of the operator group, into the viewer group: no content and no download on the very next view.
    operator.groups.set([Group.objects.get(name="viewer")])
    response = page(client, cp)
    text = unescape(response.content.decode())
    assert not response.context["can_preview"] and "alpha" not in text and "Download</a>" not in text
    # The download permission granted to the user directly: back.
    operator.user_permissions.add(Permission.objects.get(codename=DOWNLOAD_PERM.split(".")[1]))
    assert "alpha" in page(client, cp).content.decode()
    # Out of every group: the page is refused; deactivated: logged out.
    operator.user_permissions.clear()
    operator.groups.clear()
    page(client, cp, status=403)
    operator.groups.set([Group.objects.get(name="viewer")])
    page(client, cp)
    User.objects.filter(pk=operator.pk).update(is_active=False)
    assert client.get(reverse("checkpoint", args=[cp.pk])).status_code == 302


def test_permissions_are_modelbackends(operator, viewer):
    """The one-statement set is ModelBackend's, for own, group, both, none, inactive and superusers."""
    from django.contrib.auth.backends import ModelBackend

    from dashboard.authbackend import PermissionsBackend

    own = User.objects.create_user("own")
    own.user_permissions.add(Permission.objects.get(codename="view_thread"))
    both = User.objects.create_user("both")
    both.groups.add(Group.objects.get(name="viewer"))
    both.user_permissions.add(Permission.objects.get(codename=DOWNLOAD_PERM.split(".")[1]))
    nobody = User.objects.create_user("nobody")
    inactive = User.objects.create_user("inactive", is_active=False)
    inactive.groups.add(Group.objects.get(name="operator"))
    root = User.objects.create_superuser("root")
    for user in (operator, viewer, own, both, nobody, inactive, root):
        fresh = lambda: User.objects.get(pk=user.pk)  # noqa: E731  (no per-object cache carried over)
        assert PermissionsBackend().get_all_permissions(fresh()) == ModelBackend().get_all_permissions(fresh()), user
        assert PermissionsBackend().get_all_permissions(fresh(), obj=object()) == set()
    assert User.objects.get(pk=both.pk).has_perm(DOWNLOAD_PERM) and User.objects.get(pk=both.pk).has_perm(VIEW_PERM)
    assert not User.objects.get(pk=viewer.pk).has_perm(DOWNLOAD_PERM)
    assert not User.objects.get(pk=inactive.pk).has_perm(VIEW_PERM)
    assert User.objects.get(pk=viewer.pk).has_module_perms("checkpoints")
    assert not User.objects.get(pk=nobody.pk).has_module_perms("checkpoints")


def test_one_statement_per_request_for_permissions(viewer_client, viewer, sqlite_saver, sqlite_source_url):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.graphs import chat_graph, config

    chat_graph(sqlite_saver).invoke({"messages": ["hello"]}, config("hot", tenant="acme"))
    synced_source(sqlite_source_url, "lite")
    cp = Checkpoint.objects.get(thread=Thread.objects.get(thread_id="hot"),
                                checkpoint_id=Thread.objects.get(thread_id="hot").latest_checkpoint_id)
    page(viewer_client, cp)
    with CaptureQueriesContext(connection) as queries:
        page(viewer_client, cp)  # three permission checks: the page's, the download's and the menu's
    sql = [q["sql"] for q in queries.captured_queries]
    assert sum("auth_permission" in s for s in sql) == 1
    # Session, user, permissions, then the checkpoint, its lineage and its references: six in all.
    assert len(sql) == 6, sql


def test_a_logout_or_an_expiry_ends_the_session_at_once(viewer):
    from django.contrib.sessions.models import Session

    client, thief = Client(), Client()
    client.force_login(viewer)
    thief.cookies = client.cookies  # the same session cookie, used elsewhere
    assert thief.get("/threads/").status_code == 200
    client.post(reverse("logout"))
    assert thief.get("/threads/").status_code == 302
    client.force_login(viewer)
    assert client.get("/threads/").status_code == 200
    Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))
    assert client.get("/threads/").status_code == 302


def test_a_session_logged_in_through_modelbackend_still_loads(viewer, sqlite_saver, sqlite_source_url):
    """Sessions from before this backend name ModelBackend: they stay logged in, with the same permissions."""
    client = Client()
    client.force_login(viewer, backend="django.contrib.auth.backends.ModelBackend")
    response = client.get("/threads/")
    assert response.status_code == 200 and response.wsgi_request.user == viewer
    assert Source.objects.count() == 0
