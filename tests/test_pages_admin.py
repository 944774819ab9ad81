"""Every admin page loads (the django-q2 way: admin_client over the whole registry)."""

import pytest
from django.contrib import admin
from django.urls import reverse

from dashboard.tokens import create_token
from tests.mirror_data import build_mirror, make_user, static_settings  # noqa: F401

pytestmark = pytest.mark.django_db


def test_every_admin_page_loads(admin_client, admin_user):
    build_mirror(sources=("alpha",), threads_per_source=12)
    create_token(make_user("scripts", "viewer"))
    assert admin_client.get("/admin/").status_code == 200
    checked = 0
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        info = (meta.app_label, meta.model_name)
        assert admin_client.get(reverse("admin:app_list", args=[meta.app_label])).status_code == 200
        changelist = reverse("admin:%s_%s_changelist" % info)
        assert admin_client.get(changelist).status_code == 200, changelist
        search = admin_client.get(changelist, {"q": "x' OR 1=1 --"})
        assert search.status_code == 200, changelist
        if model_admin.has_add_permission(_request(admin_user)):
            assert admin_client.get(reverse("admin:%s_%s_add" % info)).status_code == 200
        obj = model.objects.first()
        if obj is not None:
            for view in ("change", "history", "delete"):
                url = reverse(f"admin:%s_%s_{view}" % info, args=[obj.pk])
                assert admin_client.get(url).status_code in (200, 403), url
        checked += 1
    assert checked >= 1


def test_api_tokens_are_read_only_in_the_admin(admin_client):
    token, row = create_token(make_user("scripts", "viewer"))
    page = admin_client.get(reverse("admin:dashboard_apitoken_change", args=[row.pk])).content.decode()
    assert token not in page and row.prefix in page
    assert admin_client.get(reverse("admin:dashboard_apitoken_add")).status_code == 403


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_sync_now_in_the_admin_queues_a_sync_and_does_not_run_it(admin_client, admin_user, sqlite_saver,
                                                                   sqlite_source_url, monkeypatch, settings):
    from django_q.conf import Conf
    from django_q.models import OrmQ

    from checkpoints.models import Checkpoint, Run, Source
    from checkpoints.tasks import sync_one
    from tests.graphs import chat_graph, config

    settings.CHECKPOINT_DATABASE_URL = ""
    chat_graph(sqlite_saver).invoke({"messages": ["hello"]}, config("t-admin"))
    source = Source.objects.create(name="local", url=sqlite_source_url, kind="sqlite")
    monkeypatch.setattr(Conf, "SYNC", False)  # the tests run tasks inline; here the queue is the point
    response = admin_client.post(
        reverse("admin:checkpoints_source_changelist"),
        {"action": "sync_now", "_selected_action": [source.pk]}, follow=True,
    )
    assert [m.message for m in response.context["messages"]] == ["local: sync queued; the run history shows its outcome."]
    # Nothing ran in the request: no run, nothing mirrored, the source never synced.
    source.refresh_from_db()
    assert not Run.objects.exists() and not Checkpoint.objects.exists() and source.last_sync_at is None
    (queued,) = OrmQ.objects.all()
    task = queued.task
    assert task["func"] == "checkpoints.tasks.sync_one" and tuple(task["args"]) == ("local", admin_user.pk)
    # What a worker runs from it syncs that source, on the admin's behalf.
    result = sync_one(*task["args"])
    run = Run.objects.get(kind="sync")
    assert not result["error"] and result["added"] == Checkpoint.objects.count() > 0
    assert (run.kind, run.state, run.requested_by, run.origin) == ("sync", "done", admin_user, "admin")
    assert sync_one("removed since", admin_user.pk) is None
