import io
import re

import pytest
from django.core.management import call_command
from django.http import HttpRequest
from django.test import Client

from checkpoints.models import BlobReference, Source, Thread

pytestmark = pytest.mark.django_db


def test_demo_builds_syncs_and_prints_a_working_login(settings, tmp_path):
    settings.STATIC_ROOT = tmp_path / "static"
    # What the demo serves with: hashed, compressed files from collectstatic.
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}
    out = io.StringIO()
    call_command("demo", "--no-serve", "--threads", "8", stdout=out)
    text = out.getvalue()

    source = Source.objects.get(name="demo")
    assert source.last_sync_ok and source.kind == "sqlite"
    assert Thread.objects.filter(source=source).count() == 9
    assert Thread.objects.filter(source=source, tags__has_key="tenant").exists()
    files = BlobReference.objects.filter(store="file")
    assert files.filter(exists=True).exists(), "demo files are in the local blob store"
    assert files.filter(exists=False).exists(), "one reference is dangling on purpose"

    user, password = re.search(r"operator login: (\S+) / (\S+)", text).groups()
    client = Client()
    # django-axes checks every login against its lockouts, so it needs the request.
    assert client.login(request=HttpRequest(), username=user, password=password)
    assert client.get("/").status_code == 200
