"""Orphan sweeps of objects: real graphs write references, moto's S3 server and the file store hold objects.

"Old" objects without waiting: files get their age with os.utime; S3 objects
cannot (the server stamps LastModified, in whole seconds), so the sweeps count
their grace of an hour back from a clock two hours ahead (`now=later()`):
everything uploaded before is an hour past the grace. Where young and old S3
objects meet in one sweep, the cut is placed between the server's own stamps.
"""

import io
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
from botocore.awsrequest import AWSResponse
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from checkpoints.dburl import parse_database_url
from checkpoints.sources.registry import kind_of
from checkpoints.models import BlobReference, Run, Source
from checkpoints.sync import sync_source
from storage.stores import store_for
from storage.sweep import CONTRACT_KEYS, SweepBusy, SweepRefused, run_sweep, sweep
from tests.clock import HOUR, OLD
from tests.graphs import chat_graph, config, file_graph

pytestmark = pytest.mark.django_db

GRACE = HOUR


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    """(saver, url) of a fresh PostgreSQL or SQLite LangGraph database."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url")
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url")


@pytest.fixture
def blob_root(tmp_path, settings):
    root = tmp_path / "blobs"
    root.mkdir()
    settings.BLOB_ROOT = root
    return root


@pytest.fixture
def no_s3(settings):
    settings.S3_BUCKET_NAME = ""


def make_source(url, name="src"):
    return Source.objects.create(name=name, url=url, kind=kind_of(url))


def attach(saver, thread_id, uri):
    """A real graph run whose state (and writes) name `uri`."""
    file_graph(saver).invoke({"attachment": uri}, config(thread_id))


def mention(saver, thread_id, text):
    """A real graph run with `text` inside a chat message."""
    chat_graph(saver).invoke({"messages": [text]}, config(thread_id))


def put(client, bucket, keys, body=b"orphan?"):
    keys = list(keys)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=body), keys))


def bucket_keys(client, bucket) -> set:
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(o["Key"] for o in page.get("Contents", ()))
    return keys


def make_file(path, body=b"file", age=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if age is not None:
        t = time.time() - age.total_seconds()
        os.utime(path, (t, t))
    return path


def files_under(root) -> set:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def later():
    """A clock two hours ahead: what exists now is an hour older than GRACE."""
    return timezone.now() + OLD


def stamp(client, bucket, key):
    """The server's LastModified of an object."""
    return client.head_object(Bucket=bucket, Key=key)["LastModified"]


def put_stamped_after(client, bucket, key, moment):
    """Upload `key` until the server stamps it later than `moment` (its stamps are whole seconds); its stamp."""
    while True:
        put(client, bucket, [key])
        stamped = stamp(client, bucket, key)
        if stamped > moment:
            return stamped
        time.sleep(0.1)


def sweep_now(**kw):
    kw.setdefault("grace", GRACE)
    kw.setdefault("now", later())
    return sweep(**kw)


# --- What goes and what stays ----------------------------------------------------


def test_referenced_young_and_outside_objects_stay_old_orphans_go(backend, moto_s3, s3_bucket, blob_root, tmp_path):
    saver, url = backend
    c = moto_s3.client()
    referenced = ["uploads/ref/report.pdf", "uploads/ref/via-minio.bin", "uploads/ref/ünï-çødé.txt"]
    orphans = [f"uploads/old/{i}.bin" for i in range(5)] + ["uploads/deep/a/b/c.bin"]
    outside = ["elsewhere/old.bin", "uploads"]  # not under the prefix "uploads/"
    put(c, s3_bucket, referenced + orphans + outside)
    ref_file = make_file(blob_root / "ref" / "a.txt", age=timedelta(days=3))
    orphan_file = make_file(blob_root / "old" / "deep" / "b.txt", age=timedelta(days=3))
    outside_file = make_file(tmp_path / "outside" / "c.txt", age=timedelta(days=3))
    os.symlink(outside_file, blob_root / "link-to-outside.txt")  # a link is never followed nor deleted

    attach(saver, "t-s3", f"s3://{s3_bucket}/{referenced[0]}")
    attach(saver, "t-minio", f"minio://{s3_bucket}/{referenced[1]}")
    attach(saver, "t-unicode", f"s3://{s3_bucket}/{referenced[2]}")
    attach(saver, "t-file", f"file://{ref_file}")
    attach(saver, "t-gone", f"s3://{s3_bucket}/uploads/ref/never-uploaded.pdf")
    make_source(url)

    before = bucket_keys(c, s3_bucket)
    oldest = max(stamp(c, s3_bucket, k) for k in before)
    # Just uploaded, its checkpoint not written yet: stamped a second or more after the others.
    young = put_stamped_after(c, s3_bucket, "uploads/young/new.bin", oldest)
    young_file = make_file(blob_root / "young.txt")
    # The clock of both runs: the cut (now - GRACE) falls half a second before the young stamp.
    now = young + GRACE - timedelta(milliseconds=500)
    dry = sweep_now(dry_run=True, now=now)
    assert bucket_keys(c, s3_bucket) == before | {"uploads/young/new.bin"}
    link = str(blob_root / "link-to-outside.txt")
    assert files_under(blob_root) == {str(ref_file), str(orphan_file), str(young_file), link}

    real = sweep_now(dry_run=False, now=now)

    expected = {f"s3://{s3_bucket}/{k}" for k in orphans} | {f"file://{orphan_file}"}
    assert {o["uri"] for o in dry["sample"]} == {o["uri"] for o in real["sample"]} == expected
    assert dry["orphans"] == real["orphans"] == real["deleted"] == len(expected)
    assert dry["deleted"] == 0 and dry["dry_run"] and not real["dry_run"]
    assert real["orphan_bytes"] == 6 * len(b"orphan?") + len(b"file")
    assert bucket_keys(c, s3_bucket) == set(referenced) | set(outside) | {"uploads/young/new.bin"}
    assert files_under(blob_root) == {str(ref_file), str(young_file), link}
    assert outside_file.exists()
    assert real["dangling"] == [f"s3://{s3_bucket}/uploads/ref/never-uploaded.pdf"]
    assert BlobReference.objects.get(uri=real["dangling"][0]).exists is False
    assert real["sources"] == ["src"] and real["errors"] == [] and real["error"] is None
    # objects_scanned: everything listed inside the prefix and the blob root (links are not objects).
    assert real["objects_scanned"] == len(referenced) + len(orphans) + 1 + 3
    assert dry["objects_scanned"] == real["objects_scanned"]


def test_references_from_every_source_are_counted(pg_saver, pg_source_url, sqlite_saver, sqlite_source_url,
                                                   moto_s3, s3_bucket, blob_root):
    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/pg.bin", "uploads/lite.bin", "uploads/nobody.bin"])
    attach(pg_saver, "a", f"s3://{s3_bucket}/uploads/pg.bin")
    attach(sqlite_saver, "a", f"s3://{s3_bucket}/uploads/lite.bin")
    make_source(sqlite_source_url, "lite")
    make_source(pg_source_url, "big")

    result = sweep_now()
    assert result["sources"] == ["big", "lite"]
    assert bucket_keys(c, s3_bucket) == {"uploads/pg.bin", "uploads/lite.bin"}
    assert result["deleted"] == 1 and result["error"] is None


# --- When nothing may be deleted ------------------------------------------------


def test_a_source_with_unknown_references_blocks_deletion(sqlite_source_url, moto_s3, s3_bucket, blob_root):
    """An encrypted SQLite source without the key: its checkpoints cannot be searched for references."""
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
    from langgraph.checkpoint.sqlite import SqliteSaver

    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/secret.pdf", "uploads/orphan.bin"])
    conn = sqlite3.connect(parse_database_url(sqlite_source_url)["NAME"], check_same_thread=False)
    saver = SqliteSaver(conn, serde=EncryptedSerializer.from_pycryptodome_aes(key=b"0123456789abcdef"))
    attach(saver, "secret", f"s3://{s3_bucket}/uploads/secret.pdf")
    conn.close()
    make_source(sqlite_source_url)

    run = run_sweep(grace=GRACE, now=later())
    assert run.state == "failed"
    assert "could not decode" in run.error and "references are unknown" in run.error
    assert run.result["deleted"] == 0 and run.result["orphans"] == 2  # the referenced one cannot be told apart
    assert bucket_keys(c, s3_bucket) == {"uploads/secret.pdf", "uploads/orphan.bin"}
    assert Source.objects.get().references_unknown

    preview = run_sweep(grace=GRACE, now=later(), dry_run=True)  # a dry run reports, and is no failure
    assert preview.state == "done" and preview.result["refused"] and preview.result["orphans"] == 2


def test_a_failed_sync_blocks_deletion(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket, blob_root, tmp_path):
    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/ref.bin", "uploads/orphan.bin"])
    attach(sqlite_saver, "t", f"s3://{s3_bucket}/uploads/ref.bin")
    source = make_source(sqlite_source_url)
    assert sync_source(source)["error"] is None
    path = parse_database_url(sqlite_source_url)["NAME"]
    os.rename(path, tmp_path / "moved.sqlite")  # the source is gone: its sync fails

    run = run_sweep(grace=GRACE, now=later())
    assert run.state == "failed" and run.result["deleted"] == 0
    assert "before the listing began" in run.error and "no such SQLite file" in run.error
    assert bucket_keys(c, s3_bucket) == {"uploads/ref.bin", "uploads/orphan.bin"}


def test_a_sync_older_than_the_listing_blocks_deletion(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket, blob_root):
    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/orphan.bin"])
    attach(sqlite_saver, "t", f"s3://{s3_bucket}/uploads/ref.bin")
    source = make_source(sqlite_source_url)
    assert sync_source(source)["error"] is None

    result = sweep_now(sync=False)  # the mirror as it is: synced before this listing began
    assert result["deleted"] == 0 and result["orphans"] == 1
    assert any("before the listing began" in r for r in result["refused"])
    assert result["error"].startswith("refused to delete objects: source src was last synced successfully at")
    assert bucket_keys(c, s3_bucket) == {"uploads/orphan.bin"}


def test_no_registered_source_deletes_nothing(moto_s3, s3_bucket, blob_root, settings):
    settings.CHECKPOINT_DATABASE_URL = ""
    put(moto_s3.client(), s3_bucket, ["uploads/a.bin"])
    result = sweep_now()
    assert result["sources"] == [] and result["orphans"] == 1 and result["deleted"] == 0
    assert "no source is registered" in result["error"]


# --- The re-check before deleting ---------------------------------------------------


def test_recheck_finds_references_written_after_the_sync(backend, moto_s3, s3_bucket, blob_root):
    saver, url = backend
    c = moto_s3.client()
    late = ["uploads/late/s3.bin", "uploads/late/prose file.pdf", "uploads/late/orphan.bin"]
    put(c, s3_bucket, late)
    late_file = make_file(blob_root / "late" / "f.txt", age=timedelta(days=1))
    # Written before the sync, but the URI parser stops at the space: only the literal re-check sees it.
    mention(saver, "prose", f"see s3://{s3_bucket}/uploads/late/prose file.pdf for details")
    make_source(url)

    def write_after_the_sync(done, total):
        if not written:
            written.append(True)
            attach(saver, "late-s3", f"s3://{s3_bucket}/uploads/late/s3.bin")
            attach(saver, "late-file", f"file://{late_file}")

    written = []
    dry = sweep_now(dry_run=True, progress=write_after_the_sync)
    assert dry["kept_by_recheck"] == 3
    real = sweep_now()  # now synced: the mirror knows two of them, the prose one only the re-check
    assert real["kept_by_recheck"] == 1
    assert dry["orphans"] == real["orphans"] == real["deleted"] == 1
    assert bucket_keys(c, s3_bucket) == set(late) - {"uploads/late/orphan.bin"}
    assert late_file.exists()


def test_encrypted_rows_written_after_the_sync_stop_deletion(sqlite_source_url, moto_s3, s3_bucket, blob_root,
                                                             settings):
    """Ciphertext cannot be searched: an encrypted checkpoint newer than the sync may name any candidate."""
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
    from langgraph.checkpoint.sqlite import SqliteSaver

    key = "0123456789abcdef"
    settings.LANGGRAPH_AES_KEY = key  # the sync can read encrypted values; the re-check's SQL cannot
    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/secret.pdf"])
    conn = sqlite3.connect(parse_database_url(sqlite_source_url)["NAME"], check_same_thread=False)
    saver = SqliteSaver(conn, serde=EncryptedSerializer.from_pycryptodome_aes(key=key.encode()))
    attach(saver, "before", f"s3://{s3_bucket}/uploads/other.pdf")
    make_source(sqlite_source_url)

    def write_encrypted(done, total):
        if not written:
            written.append(True)
            attach(saver, "after", f"s3://{s3_bucket}/uploads/secret.pdf")

    written = []
    result = sweep_now(progress=write_encrypted)
    conn.close()
    assert not Source.objects.get().references_unknown, result["warnings"]
    assert result["deleted"] == 0 and "encrypted values were written since the sync" in result["error"]
    assert bucket_keys(c, s3_bucket) == {"uploads/secret.pdf"}

    # Once synced, the mirror knows the reference and the object stays for that reason.
    result = sweep_now()
    assert result["error"] is None and result["orphans"] == 0, result["warnings"]
    assert bucket_keys(c, s3_bucket) == {"uploads/secret.pdf"}


def test_recheck_runs_before_each_delete_batch(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket, blob_root):
    """A reference written between two delete batches saves its object."""
    c = moto_s3.client()
    keys = [f"uploads/many/{i:03}.bin" for i in range(150)]
    put(c, s3_bucket, keys)
    make_source(sqlite_source_url)
    store = store_for("s3")
    first_deleted = []

    def after_delete(http_response, parsed, **kwargs):
        if not first_deleted:
            first_deleted.append(True)
            left = sorted(bucket_keys(c, s3_bucket))
            # Name every object still there, in one message: none of them may go now.
            mention(sqlite_saver, "late", " ".join(f"s3://{s3_bucket}/{k}" for k in left))

    store.client.meta.events.register("after-call.s3.DeleteObjects", after_delete, unique_id="sweep-late-refs")
    try:
        result = sweep_now(batch_size=100, page_size=60)
    finally:
        store.client.meta.events.unregister("after-call.s3.DeleteObjects", unique_id="sweep-late-refs")
    assert result["deleted"] == 100 and result["kept_by_recheck"] == 50
    assert len(bucket_keys(c, s3_bucket)) == 50


# --- Failures of the store --------------------------------------------------------


class _Body:
    def __init__(self, data):
        self.data = data

    def stream(self, **kwargs):
        yield self.data


def fail_after(store, operation, ok):
    """Let `ok` sends of `operation` through, then answer 503 to every later one.

    Returns the list of requests sent, as the number of keys in each body.
    """
    sent = []

    def hook(request, **kwargs):
        sent.append(bytes(request.body or b"").count(b"<Key>"))
        if len(sent) <= ok:
            return None
        body = b"<Error><Code>ServiceUnavailable</Code><Message>S3 is down</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))

    store.client.meta.events.register(f"before-send.s3.{operation}", hook, unique_id=f"fail-after-{id(sent)}")
    return sent


def test_s3_failing_between_delete_batches_loses_nothing(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket,
                                                         blob_root, settings):
    """Full scale: 1000 keys a request, the second request fails, the rest stays."""
    settings.S3_MAX_ATTEMPTS = 1
    c = moto_s3.client()
    keys = [f"uploads/m/{i:04}.bin" for i in range(1004)]
    put(c, s3_bucket, keys)
    referenced = set(keys[::500])
    mention(sqlite_saver, "refs", " ".join(f"s3://{s3_bucket}/{k}" for k in sorted(referenced)))
    make_source(sqlite_source_url)
    sent = fail_after(store_for("s3"), "DeleteObjects", ok=1)

    run = run_sweep(grace=GRACE, now=later())
    left = bucket_keys(c, s3_bucket)
    # 1000 candidates in the first request; the last one in the second, which failed; no third.
    assert sent == [1000, 1]
    assert run.state == "failed" and "S3 is down" in run.error
    assert run.result["deleted"] == 1000 == len(keys) - len(left)
    assert left == referenced | {keys[-1]}
    assert [e["uri"] for e in run.result["errors"]] == [f"s3://{s3_bucket}/uploads/"]
    assert "not deleted" in run.result["errors"][0]["error"]


def test_s3_failing_mid_listing_loses_nothing(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket, blob_root, settings):
    settings.S3_MAX_ATTEMPTS = 1
    c = moto_s3.client()
    keys = [f"uploads/m/{i:03}.bin" for i in range(150)]
    put(c, s3_bucket, keys)
    referenced = set(keys[::10])
    mention(sqlite_saver, "refs", " ".join(f"s3://{s3_bucket}/{k}" for k in sorted(referenced)))
    make_source(sqlite_source_url)
    fail_after(store_for("s3"), "ListObjectsV2", ok=1)  # the second page never comes

    result = sweep_now(batch_size=50, page_size=100)
    left = bucket_keys(c, s3_bucket)
    assert "listing stopped" in result["error"] and "S3 is down" in result["error"]
    # The first page held 90 candidates: one batch of 50 went, the other 40 were counted but kept.
    assert result["deleted"] == 50 == len(keys) - len(left)
    assert result["orphans"] == 90 and result["dangling"] == []
    assert referenced <= left


def test_per_key_delete_errors_are_recorded(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket, blob_root):
    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/locked/a.bin", "uploads/free/b.bin"])
    c.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
                       "Resource": f"arn:aws:s3:::{s3_bucket}/uploads/locked/*"}],
    }))
    make_source(sqlite_source_url)

    out = io.StringIO()
    with pytest.raises(CommandError, match=r"1 object\(s\) could not be deleted"):
        # A grace of 0: everything the server stamped before the listing began is old.
        call_command("sweep_orphans", "--grace", "0s", "--force", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["deleted"] == 1 and result["orphans"] == 2
    errors = [(e["key"], e["error"].split(":")[0]) for e in result["errors"]]
    assert errors == [("uploads/locked/a.bin", "AccessDenied")]
    assert bucket_keys(c, s3_bucket) == {"uploads/locked/a.bin"}
    assert Run.objects.get(kind="sweep").state == "failed"


# --- The command and its rules ------------------------------------------------------


def test_grace_under_an_hour_needs_force(no_s3, blob_root, sqlite_source_url):
    make_source(sqlite_source_url)
    orphan = make_file(blob_root / "o.bin", age=timedelta(minutes=45))
    with pytest.raises(CommandError, match=r"grace of 30m is under 1h.*--force"):
        call_command("sweep_orphans", "--grace", "30m", stdout=io.StringIO())
    with pytest.raises(SweepRefused):
        sweep(grace=timedelta(minutes=59), dry_run=True)
    with pytest.raises(CommandError, match="is not a duration"):
        call_command("sweep_orphans", "--grace", "soon", stdout=io.StringIO())
    assert orphan.exists() and not Run.objects.exists()

    call_command("sweep_orphans", "--grace", "1h", "--json", stdout=io.StringIO())  # 1h needs no force
    assert orphan.exists()  # 45 minutes old: young
    call_command("sweep_orphans", "--grace", "30m", "--force", "--json", stdout=io.StringIO())
    assert not orphan.exists()


def test_command_json_contract_and_run(no_s3, blob_root, sqlite_saver, sqlite_source_url, settings):
    settings.SWEEP_GRACE = timedelta(hours=24)
    keep = make_file(blob_root / "keep.txt", age=timedelta(days=3))
    attach(sqlite_saver, "t", f"file://{keep}")
    old = make_file(blob_root / "old.txt", b"12345", age=timedelta(days=2))
    make_file(blob_root / "day.txt", age=timedelta(hours=23))
    make_source(sqlite_source_url)

    out = io.StringIO()
    call_command("sweep_orphans", "--dry-run", "--json", stdout=out)  # default grace: 24h
    result = json.loads(out.getvalue())
    assert list(result) == list(CONTRACT_KEYS)
    assert result == {
        "dry_run": True, "sources": ["src"], "objects_scanned": 3, "orphans": 1, "orphan_bytes": 5, "deleted": 0,
        "dangling": [], "db_orphans": 0, "errors": [],
    }
    assert old.exists()
    run = Run.objects.get(kind="sweep")
    assert (run.origin, run.dry_run, run.state) == ("command", True, "done")
    assert run.parameters == {"grace": "1d", "force": False}
    assert run.progress_done == 3

    out = io.StringIO()
    call_command("sweep_orphans", stdout=out)
    assert "1 orphans" in out.getvalue() and "deleted 1" in out.getvalue()
    assert not old.exists() and keep.exists()


def test_only_one_sweep_runs_at_a_time(no_s3, blob_root):
    Run.objects.create(kind="sweep", lock_key="sweep:*", state="running", started_at=timezone.now(),
                       heartbeat_at=timezone.now())
    with pytest.raises(CommandError, match="another sweep of all sources is running since"):
        call_command("sweep_orphans", "--dry-run", stdout=io.StringIO())
    with pytest.raises(SweepBusy):
        run_sweep(dry_run=True)


def test_recheck_failure_at_a_source_deletes_nothing(pg_saver, pg_source_url, moto_s3, s3_bucket, blob_root):
    """The source stops answering between the sync and the delete: nothing goes."""
    c = moto_s3.client()
    put(c, s3_bucket, ["uploads/a.bin", "uploads/b.bin"])
    make_source(pg_source_url)
    renamed = []

    def break_the_source(done, total):
        if not renamed:
            renamed.append(True)
            with psycopg.connect(pg_source_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE checkpoint_writes RENAME TO checkpoint_writes_gone")

    result = sweep_now(progress=break_the_source)
    assert result["deleted"] == 0 and result["orphans"] == 2
    assert "re-check at source src failed" in result["error"] and "checkpoint_writes" in result["error"]
    assert bucket_keys(c, s3_bucket) == {"uploads/a.bin", "uploads/b.bin"}


# --- An S3 checkpoint store (S3Saver) inside the swept prefix ----------------------


def test_s3_store_objects_are_never_orphans_and_its_references_count(moto_s3, s3_bucket, blob_root):
    from storage.s3saver import S3Saver

    c = moto_s3.client()
    # The saver writes under the very prefix the sweep lists (S3_PREFIX is uploads/).
    saver = S3Saver(s3_bucket, "uploads/checkpoints/", client=c, metrics=False)
    put(c, s3_bucket, ["uploads/f/kept.bin", "uploads/f/orphan.bin", "uploads/f/late.bin"])
    attach(saver, "with-file", f"s3://{s3_bucket}/uploads/f/kept.bin")
    make_source(f"s3://{s3_bucket}/uploads/checkpoints/")
    saver_keys = {k for k in bucket_keys(c, s3_bucket) if k.startswith("uploads/checkpoints/")}
    assert saver_keys

    def write_after_the_sync(done, total):
        if not written:
            written.append(True)
            attach(saver, "late", f"s3://{s3_bucket}/uploads/f/late.bin")

    written = []
    dry = sweep_now(dry_run=True, progress=write_after_the_sync)
    assert dry["error"] is None and dry["orphans"] == 1 and dry["kept_by_recheck"] == 1
    real = sweep_now()
    assert real["error"] is None and real["orphans"] == real["deleted"] == 1
    left = bucket_keys(c, s3_bucket)
    assert saver_keys <= left  # every manifest, payload, write and change entry stays
    assert {"uploads/f/kept.bin", "uploads/f/late.bin"} <= left and "uploads/f/orphan.bin" not in left
    saver.close()


def test_the_recheck_reads_payloads_not_the_manifests_refs(moto_s3, s3_bucket, blob_root):
    """The last look before deleting searches the stored values: a manifest whose refs were emptied by
    hand (the sync would trust it) does not hide the reference its payload holds."""
    from checkpoints.sources.s3 import settings_for
    from checkpoints.sources.s3.reader import S3Reader
    from storage.s3saver import S3Saver

    c = moto_s3.client()
    saver = S3Saver(s3_bucket, "uploads/checkpoints/", client=c, metrics=False)
    url = f"s3://{s3_bucket}/uploads/checkpoints/"
    put(c, s3_bucket, ["uploads/f/late.bin", "uploads/f/orphan.bin"])
    attach(saver, "early", f"s3://{s3_bucket}/uploads/f/none.bin")
    make_source(url)

    def empty_refs():
        for key in bucket_keys(c, s3_bucket):
            if key.startswith("uploads/checkpoints/threads/late/") and key.endswith("/manifest.json"):
                manifest = json.loads(c.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
                manifest["refs"] = {}
                c.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(manifest).encode())

    def write_after_the_sync(done, total):
        if not written:
            written.append(True)
            attach(saver, "late", f"s3://{s3_bucket}/uploads/f/late.bin")
            empty_refs()

    written = []
    dry = sweep_now(dry_run=True, progress=write_after_the_sync)
    assert dry["error"] is None and dry["orphans"] == 1 and dry["kept_by_recheck"] == 1
    # The sync's reader, by contrast, takes the (emptied) refs and never reads those payloads.
    with S3Reader(url, settings_for(url)) as reader:
        [rows] = reader.read_threads(["late"])
    assert rows.checkpoints and all(not (cp.inline_values or {}) for cp in rows.checkpoints)
    saver.close()
