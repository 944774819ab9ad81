"""Reference checks: HEAD what real graphs reference, record it, sum external bytes."""

import io
import json
import os

import pytest
from django.core.management import call_command
from django.utils import timezone

from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Run, Source, Thread
from checkpoints.uris import classify, find_uris
from storage.refcheck import check_references
from tests.graphs import config, file_graph
from tests.test_download import client_for, fetch, make_user, mirrored_thread, plain_static_storage, reference  # noqa: F401

pytestmark = pytest.mark.django_db


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings_in(v)


def mirror_state(saver, source, thread_id):
    """What the sync records for a thread's latest state, read through LangGraph's own API."""
    from django.conf import settings

    state = file_graph(saver).get_state(config(thread_id))
    thread = Thread.objects.create(source=source, thread_id=thread_id)
    ckpt = Checkpoint.objects.create(
        source=source, thread=thread, checkpoint_id=state.config["configurable"]["checkpoint_id"], created_at=timezone.now()
    )
    uris = {u for s in strings_in(state.values) for u in find_uris(s)}
    for uri in uris:
        ref, _ = BlobReference.objects.get_or_create(
            uri=uri,
            defaults={"store": classify(uri, bucket=settings.S3_BUCKET_NAME, prefix=settings.S3_PREFIX, blob_root=settings.BLOB_ROOT)},
        )
        ReferenceUse.objects.create(reference=ref, thread=thread, checkpoint=ckpt, location="value:attachment")
    return thread, uris


def test_references_written_by_a_real_graph_through_postgres(pg_saver, pg_source_url, moto_s3, s3_bucket):
    body = os.urandom(5000)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/u1/report.pdf", Body=body, ContentType="application/pdf")
    present = f"s3://{s3_bucket}/uploads/u1/report.pdf"
    missing = f"s3://{s3_bucket}/uploads/u2/never-uploaded.pdf"
    foreign = "s3://someone-elses-bucket/uploads/x.pdf"
    graph = file_graph(pg_saver)
    for tid, uri in (("t-present", present), ("t-missing", missing), ("t-foreign", foreign)):
        graph.invoke({"attachment": uri}, config(tid, tenant="acme"))

    source = Source.objects.create(name="pg", url=pg_source_url, kind="postgres")
    threads = {tid: mirror_state(pg_saver, source, tid) for tid in ("t-present", "t-missing", "t-foreign")}
    assert threads["t-present"][1] == {present}

    result = check_references()

    assert result["error"] is None
    assert (result["checked"], result["present"], result["missing"], result["unchecked"]) == (2, 1, 1, 0)
    ok = BlobReference.objects.get(uri=present)
    assert (ok.state, ok.size, ok.content_type, ok.check_error) == ("present", 5000, "application/pdf", "")
    assert ok.etag and ok.last_modified and ok.checked_at
    gone = BlobReference.objects.get(uri=missing)
    assert (gone.state, gone.size) == ("missing", None)
    other = BlobReference.objects.get(uri=foreign)
    assert (other.state, other.checked_at) == ("foreign", None)  # never HEADed
    assert {t.thread_id: t.external_bytes for t in Thread.objects.all()} == {"t-present": 5000, "t-missing": 0, "t-foreign": 0}

    # And an operator downloads exactly those bytes.
    r = client_for(make_user("operator")).get(f"/blobs/{ok.pk}/download")
    assert r.status_code == 302
    assert fetch(r["Location"])[2] == body


def test_the_sync_checks_references_when_it_finishes(sqlite_saver, sqlite_source_url, moto_s3, s3_bucket):
    from checkpoints.sync import sync_source

    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/u1/a.bin", Body=b"x" * 123)
    uri = f"s3://{s3_bucket}/uploads/u1/a.bin"
    file_graph(sqlite_saver).invoke({"attachment": uri}, config("t-file", tenant="acme"))
    source = Source.objects.create(name="lite", url=sqlite_source_url, kind="sqlite")

    assert sync_source(source)["error"] is None

    ref = BlobReference.objects.get(uri=uri)
    assert (ref.state, ref.size) == ("present", 123)
    assert Thread.objects.get(thread_id="t-file").external_bytes == 123
    run = Run.objects.get(kind="refcheck")
    assert (run.state, run.origin, run.source_id, run.result["present"]) == ("done", "sync", source.pk, 1)

    # The object disappears: the next check (the command) sees it missing.
    moto_s3.client().delete_object(Bucket=s3_bucket, Key="uploads/u1/a.bin")
    out = io.StringIO()
    call_command("check_references", stdout=out)
    assert out.getvalue().startswith("Checked 1 references: 0 present, 1 missing, 0 unchecked")
    assert BlobReference.objects.get(uri=uri).state == "missing"
    assert Thread.objects.get(thread_id="t-file").external_bytes == 0


def test_external_bytes_count_each_present_object_once_per_thread(moto_s3, s3_bucket):
    c = moto_s3.client()
    c.put_object(Bucket=s3_bucket, Key="uploads/shared", Body=b"s" * 100)
    c.put_object(Bucket=s3_bucket, Key="uploads/own", Body=b"o" * 7)
    a, b, idle = mirrored_thread(), mirrored_thread(), mirrored_thread()
    shared = f"s3://{s3_bucket}/uploads/shared"
    for _ in range(3):  # three checkpoints of `a` name the same object
        reference(shared, thread=a)
    reference(shared, thread=b)
    reference(f"s3://{s3_bucket}/uploads/own", thread=b)
    reference(f"s3://{s3_bucket}/uploads/absent", thread=b)
    Thread.objects.filter(pk=idle.pk).update(external_bytes=999)  # its references went away

    result = check_references()

    assert result["threads_updated"] == 3
    got = dict(Thread.objects.values_list("pk", "external_bytes"))
    assert (got[a.pk], got[b.pk], got[idle.pk]) == (100, 107, 0)


def test_a_check_after_a_sync_recomputes_only_the_rewritten_threads_and_the_users_of_changed_objects(moto_s3, s3_bucket):
    c = moto_s3.client()
    c.put_object(Bucket=s3_bucket, Key="uploads/stable", Body=b"s" * 10)
    c.put_object(Bucket=s3_bucket, Key="uploads/grown", Body=b"g" * 20)
    rewritten, user_of_grown, bystander = mirrored_thread(), mirrored_thread(), mirrored_thread()
    reference(f"s3://{s3_bucket}/uploads/stable", thread=rewritten)
    reference(f"s3://{s3_bucket}/uploads/stable", thread=bystander)
    reference(f"s3://{s3_bucket}/uploads/grown", thread=user_of_grown)
    check_references()
    assert dict(Thread.objects.values_list("pk", "external_bytes")) == {
        rewritten.pk: 10, user_of_grown.pk: 20, bystander.pk: 10}

    # Stale figures planted on all three; the object `grown` changes size.
    Thread.objects.update(external_bytes=1)
    c.put_object(Bucket=s3_bucket, Key="uploads/grown", Body=b"g" * 25)
    result = check_references(threads={rewritten.pk})

    got = dict(Thread.objects.values_list("pk", "external_bytes"))
    assert (got[rewritten.pk], got[user_of_grown.pk], got[bystander.pk]) == (10, 25, 1)
    assert result["threads_updated"] == 2
    assert check_references(threads=set())["threads_updated"] == 0  # nothing rewritten, nothing moved
    assert check_references()["threads_updated"] == 1  # the full check fixes the bystander too
    assert Thread.objects.get(pk=bystander.pk).external_bytes == 10


def test_limit_checks_unchecked_first_then_the_stalest(moto_s3, s3_bucket):
    refs = [reference(f"s3://{s3_bucket}/uploads/{i}") for i in range(5)]
    BlobReference.objects.filter(pk=refs[0].pk).update(exists=False, checked_at=timezone.now() - timezone.timedelta(days=3))
    BlobReference.objects.filter(pk=refs[1].pk).update(exists=False, checked_at=timezone.now() - timezone.timedelta(days=1))

    def checked_now(since):
        return set(BlobReference.objects.filter(checked_at__gte=since).values_list("pk", flat=True))

    t0 = timezone.now()
    assert check_references(limit=3)["checked"] == 3
    assert checked_now(t0) == {refs[2].pk, refs[3].pk, refs[4].pk}
    t1 = timezone.now()
    assert check_references(limit=1)["checked"] == 1
    assert checked_now(t1) == {refs[0].pk}  # three days stale beats one day
    t2 = timezone.now()
    assert check_references(only_unchecked=True)["checked"] == 0
    assert checked_now(t2) == set()


def test_references_without_uses_are_not_checked(moto_s3, s3_bucket):
    orphan = BlobReference.objects.create(uri=f"s3://{s3_bucket}/uploads/nobody", store="s3")
    assert check_references()["checked"] == 0
    orphan.refresh_from_db()
    assert orphan.checked_at is None


def test_file_references(tmp_path, settings):
    root = (tmp_path / "blobs").resolve()
    root.mkdir()
    settings.BLOB_ROOT = root
    (root / "here.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("no")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    here = reference(f"file://{root}/here.txt")
    gone = reference(f"file://{root}/gone.txt")
    escape = reference(f"file://{root}/escape.txt")

    result = check_references()

    assert result["error"] is None  # a refused path is about one object, not the store
    assert (result["present"], result["missing"], result["unchecked"]) == (1, 1, 1)
    assert [e["uri"] for e in result["errors"]] == [escape.uri]
    states = {r.pk: (r.state, r.size, r.content_type) for r in BlobReference.objects.all()}
    assert states[here.pk] == ("present", 5, "text/plain")
    assert states[gone.pk] == ("missing", None, "")
    assert states[escape.pk][0] == "unchecked"
    assert "through a link" in BlobReference.objects.get(pk=escape.pk).check_error


def test_json_command(moto_s3, s3_bucket):
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/j", Body=b"json")
    reference(f"s3://{s3_bucket}/uploads/j")
    out = io.StringIO()
    call_command("check_references", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert {k: result[k] for k in ("checked", "present", "missing", "unchecked", "error")} == {
        "checked": 1, "present": 1, "missing": 0, "unchecked": 0, "error": None,
    }
    assert Run.objects.get(pk=result["run"]).state == "done"


def test_a_second_check_while_one_runs_is_skipped(moto_s3, s3_bucket):
    from checkpoints.runs import start_run

    start_run("refcheck", None, origin="test")
    out = io.StringIO()
    with pytest.raises(Exception, match="skipped: another refcheck"):
        call_command("check_references", "--json", stdout=out)
    assert json.loads(out.getvalue())["run"] is None

