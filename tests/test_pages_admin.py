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
