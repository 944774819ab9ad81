"""/metrics: Prometheus text, login or bearer token, numbers from the mirror."""

import re
from io import StringIO

import pytest
from django.core.management import call_command

from checkpoints.models import Run, Source
from tests.mirror_data import static_settings  # noqa: F401
from tests.mirror_data import mirror, shared_mirror, viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db
SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (-?[0-9.e+]+)$')


def parse(text):
    """{(name, labels): value}; checks every line is a comment or a sample."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = tuple(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def test_metrics_need_auth(client, mirror):
    response = client.get("/metrics")
    assert response.status_code == 401 and response.json()["error"]


def test_metrics_with_a_token(client, mirror, viewer, settings):
    out = StringIO()
    call_command("create_api_token", "vera", stdout=out)
    Run.objects.create(kind="sync", source=mirror.sources[0], lock_key="sync:alpha", state="running")
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {out.getvalue().strip()}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.content.decode())

    def value(name, **labels):
        return samples[("checkpoint_console_" + name, tuple(labels.items()))]

    for source in mirror.sources:
        planned = [t for t in mirror.threads if t.source == source.name]
        assert value("threads", source=source.name) == len(planned)
        assert value("checkpoints", source=source.name) == sum(len(t.checkpoints) for t in planned)
        assert value("stored_bytes", source=source.name) == sum(t.stored_bytes for t in planned)
        over = sum(1 for t in planned for c in t.checkpoints if c["logical_bytes"] > settings.CHECKPOINT_SIZE_LIMIT)
        assert value("checkpoints_over_limit", source=source.name) == over
        assert value("last_sync_success", source=source.name) == (1 if source.last_sync_ok else 0)
        assert value("last_sync_timestamp_seconds", source=source.name) == pytest.approx(source.last_sync_at.timestamp())
        assert 0 < value("last_sync_age_seconds", source=source.name) < 3600
    states = [r.state for r, _ in mirror.references]
    for state in ("present", "missing", "unchecked"):
        assert value("blob_references", state=state) == states.count(state)
    assert value("runs", kind="sync", state="running") == 1
    assert value("checkpoint_size_limit_bytes") == settings.CHECKPOINT_SIZE_LIMIT


def test_metrics_for_a_logged_in_user_and_odd_names(viewer_client, db):
    Source.objects.all().delete()  # rolled back with the test
    Source.objects.create(name="never-synced", url="sqlite:////nope.db", kind="sqlite")
    samples = parse(viewer_client.get("/metrics").content.decode())
    assert samples[("checkpoint_console_threads", (("source", "never-synced"),))] == 0
    # a source that never synced has no timestamp sample rather than a fake 0
    assert not any(name == "checkpoint_console_last_sync_timestamp_seconds" for name, _ in samples)
