"""A thread id holding NUL (SQLite stores it; the console's PostgreSQL text cannot) is an ordinary thread.

The mirror keeps it under checkpoints.ids.thread_key() ("a␀b"): the sync
succeeds, its pages answer, a prune reaches exactly its rows at the source
(by the original id), and sweeps are not refused because of it.
"""

import sqlite3
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from checkpoints.dburl import parse_database_url
from checkpoints.models import Checkpoint, Source, Thread
from checkpoints.prune import PrunePolicy, run_prune
from checkpoints.sync import sync_source
from dashboard.links import thread_path
from storage.sweep import sweep
from tests.graphs import chat_graph, config
from tests.mirror_data import static_settings, viewer, viewer_client  # noqa: F401
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db

NUL_ID = "a\x00b"
# Neighbours an id cut at its NUL, or a NUL dropped, would be confused with;
# and one holding the sign that shows NUL, which must stay apart from NUL_ID.
OTHERS = ["a", "ab", "a\u2400b", "a\u241bb"]


def source_rows(path):
    with sqlite3.connect(path) as conn:
        return {
            table: sorted(conn.execute(f"SELECT thread_id, checkpoint_ns, checkpoint_id FROM {table}"))
            for table in ("checkpoints", "writes")
        }


def test_a_nul_thread_id_syncs_shows_prunes_and_sweeps(sqlite_saver, sqlite_source_url, viewer_client, settings,
                                                         tmp_path):
    assert connection.vendor == "postgresql", "the console database that cannot store NUL in text"
    chat = chat_graph(sqlite_saver)
    for _ in range(3):
        chat.invoke({"messages": ["hello"]}, config(NUL_ID, tenant="nul"))
        for other in OTHERS:
            chat.invoke({"messages": ["hello"]}, config(other, tenant="other"))
    source = Source.objects.create(name="nul", url=sqlite_source_url, kind="sqlite")

    result = sync_source(source)
    source.refresh_from_db()
    assert result["error"] is None and source.last_sync_ok and "retry" not in source.sync_state
    assert set(Thread.objects.filter(source=source).values_list("thread_id", flat=True)) == {
        "a\u2400b", "a", "ab", "a\u241b\u2400b", "a\u241b\u241bb"
    }
    assert_mirror_matches(source, sqlite_source_url)
    assert sync_source(source)["error"] is None  # and again, incrementally

    # Its pages: the thread page, and a checkpoint page whose values are read from the source by the original id.
    thread = Thread.objects.get(source=source, thread_id="a\u2400b")
    page = viewer_client.get(thread_path("nul", thread.thread_id))
    assert page.status_code == 200 and "a\u2400b" in page.content.decode()
    latest = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    page = viewer_client.get(f"/checkpoints/{latest.pk}/")
    assert page.status_code == 200 and "turn-6" in page.content.decode()

    # A prune by its tag reaches its rows, and only those.
    path = parse_database_url(sqlite_source_url)["NAME"]
    before = source_rows(path)
    later = timezone.now() + timedelta(hours=1)  # past the active window
    run = run_prune(source, PrunePolicy(timedelta(0), tags=(("tenant", "nul"),)), dry_run=False, now=later)
    assert run.state == "done", run.error
    assert run.result["threads"] == 1 and run.result["sample"][0]["thread_id"] == "a\u2400b"
    after = source_rows(path)
    for table in ("checkpoints", "writes"):
        assert [r for r in after[table] if r[0] != NUL_ID] == [r for r in before[table] if r[0] != NUL_ID]
    kept = [r for r in after["checkpoints"] if r[0] == NUL_ID]
    assert kept == [(NUL_ID, "", thread.latest_checkpoint_id)]
    assert run.result["checkpoints"] == len([r for r in before["checkpoints"] if r[0] == NUL_ID]) - 1
    assert_mirror_matches(source, sqlite_source_url)  # the prune refreshed the mirror

    # A sweep syncs every source first: this one succeeds, so nothing is refused.
    settings.S3_BUCKET_NAME = ""
    settings.BLOB_ROOT = tmp_path / "blobs"
    settings.BLOB_ROOT.mkdir()
    swept = sweep(grace=timedelta(seconds=1), force=True)
    assert swept["refused"] == [] and swept["error"] is None, swept


def test_ids_mirrored_before_holding_the_signs_are_rekeyed(db):
    """Before thread_key() the mirror held ids as they are; the migration gives those holding ␀ or ␛ their key."""
    import importlib

    from django.apps import apps

    from checkpoints.ids import source_thread_id

    migration = importlib.import_module("checkpoints.migrations.0007_thread_keys")
    source = Source.objects.create(name="old", url="sqlite:////nowhere.db", kind="sqlite")
    # The key of the first is the second's id as stored before: rewritten in the wrong order, they would collide.
    raw = ["x\u2400y", "x\u241b\u2400y", "\u241b", "plain"]
    for thread_id in raw:
        Thread.objects.create(source=source, thread_id=thread_id)
    migration.rekey(apps, None)
    keys = list(Thread.objects.filter(source=source).order_by("pk").values_list("thread_id", flat=True))
    assert keys == ["x\u241b\u2400y", "x\u241b\u241b\u241b\u2400y", "\u241b\u241b", "plain"]
    assert [source_thread_id(k) for k in keys] == raw
