"""sync_checkpoints against real LangGraph graphs on PostgreSQL and SQLite."""

import io
import json
import sqlite3
import threading
import uuid

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from checkpoints.models import BlobReference, Checkpoint, DailyUsage, ReferenceUse, Run, Source, Thread
from checkpoints.sync import sync_source, sync_sources
from tests.graphs import chat_graph, config, file_graph, run_scenarios
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request):
    """(saver, url, kind) for each LangGraph backend."""
    kind = request.param
    if kind == "postgres":
        saver = request.getfixturevalue("pg_saver")
        url = request.getfixturevalue("pg_source_url")
    else:
        saver = request.getfixturevalue("sqlite_saver")
        url = request.getfixturevalue("sqlite_source_url")
    return saver, url, kind


def make_source(url, kind, name="src"):
    return Source.objects.create(name=name, url=url, kind=kind)


def execute(url, sql, params=()):
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(sql, params)
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)


def test_mirror_equals_source_after_first_sync(backend):
    saver, url, kind = backend
    threads = run_scenarios(saver)
    source = make_source(url, kind)

    result = sync_source(source)

    assert result["error"] is None
    truth = assert_mirror_matches(source, url)
    assert result["added"] == len(truth["checkpoints"]) == result["checkpoints"]
    assert result["threads"] == len(threads)
    # Subgraph checkpoints live in their own namespace and are mirrored too.
    assert Checkpoint.objects.filter(source=source, checkpoint_ns__contains=":").exists()
    assert Thread.objects.get(source=source, thread_id="t-chat2").tags == {
        "tenant": "globex", "user_id": "u2", "project": "demo"
    }
    assert Thread.objects.get(source=source, thread_id="t-waiting").tags["urgent"] == "true"
    assert Thread.objects.get(source=source, thread_id="t-interrupt").tags["priority"] == "2"


def test_second_sync_changes_nothing_and_new_runs_are_added(backend):
    saver, url, kind = backend
    run_scenarios(saver)
    source = make_source(url, kind)
    sync_source(source)

    again = sync_source(source)
    assert (again["added"], again["updated"], again["removed"]) == (0, 0, 0)

    run_scenarios(saver, prefix="more")
    chat_graph(saver).invoke({"messages": ["again"]}, config("t-chat0", tenant="acme", user_id="u0", project="demo"))
    result = sync_source(source)
    assert result["error"] is None and result["added"] > 0
    assert_mirror_matches(source, url)

    # Pending writes on an existing checkpoint: its mirrored sizes and the thread's totals change.
    latest = saver.get_tuple({"configurable": {"thread_id": "t-chat0"}})
    saver.put_writes(latest.config, [("messages", ["a late write"]), ("extra", {"k": "v" * 500})], "late-task")
    result = sync_source(source)
    assert (result["error"], result["added"], result["updated"]) == (None, 0, 1)
    assert_mirror_matches(source, url)


def test_blob_references_found_in_state_and_writes(backend):
    saver, url, kind = backend
    uri = "s3://bucket/uploads/u1/report.pdf"
    file_graph(saver).invoke({"attachment": uri}, config("with-file"))
    source = make_source(url, kind)
    sync_source(source)

    ref = BlobReference.objects.get(uri=uri)
    thread = Thread.objects.get(source=source, thread_id="with-file")
    uses = ReferenceUse.objects.filter(reference=ref, thread=thread)
    latest = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    assert uses.filter(checkpoint=latest).exists(), "the latest state names the file"
    assert any(u.startswith("write:") for u in uses.values_list("location", flat=True))
    assert ref.state == "foreign"  # no store configured in this test

    # An incremental sync that re-reads the thread keeps what it found before.
    file_graph(saver).invoke({"attachment": uri}, config("with-file"))
    sync_source(source)
    thread.refresh_from_db()
    latest = Checkpoint.objects.get(thread=thread, checkpoint_id=thread.latest_checkpoint_id)
    assert ReferenceUse.objects.filter(reference=ref, checkpoint=latest).exists()
    assert ReferenceUse.objects.filter(reference=ref, thread=thread).count() > uses.count() - 1


def test_reference_inside_configured_bucket_is_classified(backend, settings):
    saver, url, kind = backend
    settings.S3_BUCKET_NAME, settings.S3_PREFIX = "agent-files", "uploads/"
    file_graph(saver).invoke({"attachment": "s3://agent-files/uploads/a/b.pdf"}, config("in-bucket"))
    file_graph(saver).invoke({"attachment": "s3://agent-files/private/c.pdf"}, config("outside-prefix"))
    sync_source(make_source(url, kind))
    assert BlobReference.objects.get(uri="s3://agent-files/uploads/a/b.pdf").store == "s3"
    assert BlobReference.objects.get(uri="s3://agent-files/private/c.pdf").store == "foreign"


def test_late_commit_with_lower_id_is_mirrored(pg_saver, pg_source_url):
    from langgraph.checkpoint.postgres import PostgresSaver

    chat = chat_graph(pg_saver)
    chat.invoke({"messages": ["a"]}, config("early"))
    source = make_source(pg_source_url, "postgres")

    # A writer whose transaction stays open: PostgresSaver on a connection
    # without autocommit does not commit by itself.
    slow_conn = psycopg.connect(pg_source_url, autocommit=False)
    slow = chat_graph(PostgresSaver(slow_conn))
    slow.invoke({"messages": ["slow"]}, config("late"))  # ids from now, not yet committed

    chat.invoke({"messages": ["b"]}, config("early"))  # higher ids, committed
    sync_source(source)
    assert not Thread.objects.filter(source=source, thread_id="late").exists()

    slow_conn.commit()
    slow_conn.close()
    result = sync_source(source)
    assert result["added"] > 0
    assert Thread.objects.filter(source=source, thread_id="late").exists()
    assert_mirror_matches(source, pg_source_url)


def test_rows_deleted_at_the_source_leave_the_mirror(backend):
    saver, url, kind = backend
    run_scenarios(saver)
    source = make_source(url, kind)
    sync_source(source)

    saver.delete_thread("t-chat1")
    # One checkpoint removed by some other tool, in a thread that is otherwise unchanged.
    execute(url, "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id = "
                 "(SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = ?)", ("t-chat2", "t-chat2"))
    result = sync_source(source)

    assert result["error"] is None
    assert result["removed"] >= 9
    assert not Thread.objects.filter(source=source, thread_id="t-chat1").exists()
    assert_mirror_matches(source, url)


def test_orphan_rows_deleted_elsewhere_update_stored_bytes(pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    source = make_source(pg_source_url, "postgres")
    sync_source(source)
    # Another tool removes some blob and write rows only.
    execute(pg_source_url, "DELETE FROM checkpoint_blobs WHERE thread_id = 't-chat0' AND channel = 'messages'")
    execute(pg_source_url, "DELETE FROM checkpoint_writes WHERE thread_id = 't-chat0'")
    sync_source(source)
    assert_mirror_matches(source, pg_source_url)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_syncs_never_duplicate(backend):
    saver, url, kind = backend
    run_scenarios(saver)
    source = make_source(url, kind)
    results, errors = [], []

    def worker():
        try:
            results.append(sync_source(Source.objects.get(pk=source.pk)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            connection.close()

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert all(r["error"] is None for r in results)
    assert sum(r["added"] for r in results) == Checkpoint.objects.filter(source=source).count()
    assert_mirror_matches(source, url)
    assert Run.objects.filter(kind="sync", state="done").count() == 3


def test_odd_thread_ids_and_metadata(backend):
    saver, url, kind = backend
    chat = chat_graph(saver)
    odd = ["with space", "a/b/c", "ünï-çødé ✓", "quote'\"; DROP TABLE x; --", "%_like_\\"]
    for thread_id in odd:
        chat.invoke({"messages": ["hi"]}, {"configurable": {"thread_id": thread_id, "note": "ünï", "ratio": 0.5,
                                                              "big": 2**62, "flag": False, "api_key": "sk-secret"}})
    source = make_source(url, kind)
    sync_source(source)
    assert_mirror_matches(source, url)
    t = Thread.objects.get(source=source, thread_id="ünï-çødé ✓")
    assert t.tags == {"note": "ünï", "ratio": "0.5", "big": str(2**62), "flag": "false"}
    assert "api_key" not in t.tags


def test_corrupt_and_foreign_rows_are_mirrored_with_a_clear_mark(pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    ckpt = "(SELECT checkpoint_id FROM checkpoints WHERE thread_id = 't-file' AND checkpoint_ns = '' ORDER BY checkpoint_id DESC LIMIT 1)"
    # Bad msgpack that mentions a URI, an unknown serializer type, a pickle
    # (never unpickled), and an encrypted value.
    for i, (type_, blob) in enumerate([
        ("msgpack", b"\xc1\xc1 s3://bucket/x"),
        ("weird-type", b"s3://bucket/y"),
        ("pickle", b"\x80\x04\x95s3://bucket/z"),
        ("msgpack+aes", b"0" * 40 + b"s3://"),
    ]):
        execute(pg_source_url,
                f"INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)"
                f" VALUES ('t-file', '', {ckpt}, 'corrupt', %s, 'c', %s, %s)", (i, type_, blob))
    source = make_source(pg_source_url, "postgres")
    result = sync_source(source)
    source.refresh_from_db()
    assert result["error"] is None
    assert source.references_unknown and source.undecodable_values == 4
    assert_mirror_matches(source, pg_source_url)


def test_sqlite_corrupt_checkpoint_and_metadata(sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver)
    path = sqlite_source_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO checkpoints VALUES ('broken', '', ?, NULL, 'msgpack', ?, ?)",
            (str(uuid.uuid4()), b"\xc1 file:///x garbage", b"{not json"),
        )
    conn.close()
    source = make_source(sqlite_source_url, "sqlite")
    result = sync_source(source)
    assert result["error"] is None
    source.refresh_from_db()
    assert source.references_unknown
    broken = Thread.objects.get(source=source, thread_id="broken")
    assert broken.checkpoints == 1 and broken.tags == {}


def test_source_down_is_reported_and_loses_nothing(pg_saver, pg_source_url):
    run_scenarios(pg_saver)
    source = make_source(pg_source_url, "postgres")
    sync_source(source)
    before = Checkpoint.objects.filter(source=source).count()

    good_url = source.url
    source.url = "postgresql://postgres@127.0.0.1:1/nowhere"
    source.save()
    result = sync_source(source)
    source.refresh_from_db()
    assert "cannot connect" in result["error"]
    assert source.last_sync_ok is False and "cannot connect" in source.last_error
    run = Run.objects.filter(kind="sync", source=source).first()
    assert run.state == "failed" and "cannot connect" in run.error
    assert Checkpoint.objects.filter(source=source).count() == before

    source.url = good_url
    source.save()
    run_scenarios(pg_saver, prefix="after")
    result = sync_source(source)
    source.refresh_from_db()
    assert result["error"] is None and source.last_sync_ok and source.last_error == ""
    assert_mirror_matches(source, pg_source_url)


def test_sync_refuses_to_wipe_the_mirror_unless_full(backend, tmp_path):
    saver, url, kind = backend
    run_scenarios(saver)
    source = make_source(url, kind)
    sync_source(source)
    count = Checkpoint.objects.filter(source=source).count()
    for thread_id in list(Thread.objects.filter(source=source).values_list("thread_id", flat=True)):
        saver.delete_thread(thread_id)

    result = sync_source(source)
    assert "more than half" in result["error"]
    assert Checkpoint.objects.filter(source=source).count() == count

    result = sync_source(source, full=True)
    assert result["error"] is None and result["removed"] == count
    assert not Thread.objects.filter(source=source).exists()


def test_missing_tables_and_shallow_layout_are_refused(pg_source_url, tmp_path):
    from langgraph.checkpoint.postgres.shallow import ShallowPostgresSaver

    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    result = sync_source(make_source(f"sqlite:///{empty}", "sqlite", name="empty"))
    assert "no LangGraph table" in result["error"]

    execute(pg_source_url, "DROP TABLE checkpoints, checkpoint_blobs, checkpoint_writes, checkpoint_migrations")
    with ShallowPostgresSaver.from_conn_string(pg_source_url) as shallow:
        shallow.setup()
    result = sync_source(make_source(pg_source_url, "postgres", name="shallow"))
    assert "shallow layout" in result["error"]


def test_missing_sqlite_file_is_an_error_not_an_empty_source(tmp_path):
    result = sync_source(make_source(f"sqlite:///{tmp_path}/nope.sqlite", "sqlite"))
    assert "no such SQLite file" in result["error"]
    assert not (tmp_path / "nope.sqlite").exists()


def test_daily_usage_is_backfilled_and_captured(backend):
    saver, url, kind = backend
    run_scenarios(saver)
    source = make_source(url, kind)
    sync_source(source)
    rows = list(DailyUsage.objects.filter(source=source))
    assert len(rows) == 1  # everything was written today
    today = rows[0]
    threads = Thread.objects.filter(source=source)
    assert today.checkpoints == Checkpoint.objects.filter(source=source).count() == today.checkpoints_added
    assert today.stored_bytes == sum(t.stored_bytes for t in threads)
    assert today.threads == today.threads_added == threads.count()
    assert today.checkpoint_bytes + today.blob_bytes + today.write_bytes == today.stored_bytes


def test_command_prints_the_json_contract(backend, settings):
    saver, url, kind = backend
    run_scenarios(saver)
    settings.CHECKPOINT_DATABASE_URL = url
    out = io.StringIO()
    call_command("sync_checkpoints", "--json", stdout=out)
    data = json.loads(out.getvalue())
    (entry,) = data["sources"]
    assert set(entry) == {"name", "added", "updated", "removed", "threads", "checkpoints", "seconds", "error"}
    assert entry["name"] == "default" and entry["error"] is None
    assert entry["checkpoints"] == Checkpoint.objects.count()


def test_command_fails_with_nonzero_status_on_error(tmp_path, settings):
    from django.core.management.base import CommandError

    settings.CHECKPOINT_DATABASE_URL = f"sqlite:///{tmp_path}/missing.sqlite"
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("sync_checkpoints", stdout=out)
    assert "FAILED" in out.getvalue()
    assert sync_sources("nonexistent")["sources"][0]["error"] == "no source named 'nonexistent'"


def test_encrypted_values_mark_references_unknown_until_the_key_is_given(pg_source_url, settings):
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

    key = b"0123456789abcdef0123456789abcdef"
    serde = EncryptedSerializer.from_pycryptodome_aes(key=key)
    uri = "s3://bucket/uploads/secret/contract.pdf"
    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        saver.serde = serde
        file_graph(saver).invoke({"attachment": uri}, config("encrypted"))

    source = make_source(pg_source_url, "postgres")
    assert sync_source(source)["error"] is None
    source.refresh_from_db()
    assert source.references_unknown and source.undecodable_values > 0
    assert_mirror_matches(source, pg_source_url)  # sizes are mirrored all the same
    # Only the plaintext inline copy of the string is seen without the key.
    ref = BlobReference.objects.get(uri=uri)
    assert set(ref.uses.values_list("location", flat=True)) == {"value:attachment"}

    settings.LANGGRAPH_AES_KEY = key.decode()
    assert sync_source(source, full=True)["error"] is None
    source.refresh_from_db()
    assert not source.references_unknown
    locations = set(ref.uses.values_list("location", flat=True))
    assert any(loc.startswith("write:") for loc in locations)
    assert any(loc.startswith("blob:doc@") for loc in locations)


def test_scheduled_sync_runs_every_source(backend, settings):
    from django_q.models import Schedule

    from checkpoints.tasks import SYNC_SCHEDULE, ensure_schedules, sync_all

    saver, url, kind = backend
    run_scenarios(saver)
    make_source(url, kind)
    ensure_schedules()
    schedule = Schedule.objects.get(name=SYNC_SCHEDULE)
    assert schedule.func == "checkpoints.tasks.sync_all" and schedule.minutes == 1

    result = sync_all()
    assert [s["error"] for s in result["sources"]] == [None]
    assert Run.objects.get(kind="sync").origin == "schedule"


@pytest.mark.parametrize(
    "lo, xmax, expected",
    [
        # No wrap: everything at or after lo (rows of an older epoch are re-read, harmless).
        (100, 150, {100, 149, 4_000_000_000, 2**32 - 10, 2**32 - 5, 2**32 - 1}),
        (2**32 - 5, 2**32 + 20, {2**32 - 5, 2**32 - 1, 10}),  # the counter wrapped between the syncs
    ],
)
def test_rows_written_since_a_snapshot_by_xmin_across_a_wraparound(db, lo, xmax, expected):
    from django.db import connection

    from checkpoints.sources.postgres.reader import _written_since

    where, params = _written_since({"all": False, "lo": lo}, {"xmax": xmax})
    xids = [10, 30, 99, 100, 149, 4_000_000_000, 2**32 - 10, 2**32 - 5, 2**32 - 1]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT xmin FROM unnest(%(xids)s::bigint[]) AS t(xmin) WHERE {where}", {**params, "xids": xids}
        )
        assert {r[0] for r in cursor.fetchall()} == expected


@pytest.mark.django_db(transaction=True)
def test_a_big_sync_outside_a_transaction_vacuums_the_mirror_for_index_only_scans():
    from django.db import connection

    from checkpoints.sync import _analyze_if_grown

    source = Source.objects.create(name="vacuumed", url="sqlite:////nonexistent/v.db", kind="sqlite")
    for i in range(300):
        Thread.objects.create(source=source, thread_id=f"t{i}", checkpoints=1, latest_checkpoint_id="x",
                              logical_bytes=1, stored_bytes=1, tags={})

    def visible_pages():
        with connection.cursor() as cursor:
            cursor.execute("SELECT relallvisible, reltuples FROM pg_class WHERE oid = %s::regclass",
                           [Thread._meta.db_table])
            return cursor.fetchone()

    assert visible_pages()[0] == 0  # rows just written: nothing marked all-visible yet
    assert _analyze_if_grown({"added": 1000, "updated": 0, "removed": 0}, 0)
    pages, rows = visible_pages()
    assert pages > 0 and rows == 300


@pytest.mark.django_db(transaction=True)
def test_a_vacuum_that_cannot_run_never_fails_the_sync():
    from django.db import connection

    from checkpoints.sync import _analyze_if_grown
    from tests.pg import url_for_database

    # Another session holds the thread table: VACUUM times out on its lock.
    blocker = psycopg.connect(url_for_database(connection.settings_dict["NAME"]))
    blocker.execute(f"LOCK TABLE {Thread._meta.db_table} IN ACCESS EXCLUSIVE MODE")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '50ms'")
        assert _analyze_if_grown({"added": 5000, "updated": 0, "removed": 0}, 0) is False
    finally:
        blocker.rollback()
        blocker.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert Thread.objects.count() == 0  # the connection is still usable
    assert _analyze_if_grown({"added": 5000, "updated": 0, "removed": 0}, 0) is True



def test_the_collector_is_paused_only_while_a_batch_job_runs():
    import gc

    from checkpoints.sync import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failing batch")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_rows_written_by_copy_come_back_exactly(db):
    from checkpoints.ids import uuid6_time
    from checkpoints.models import Tag
    from checkpoints.bulk import insert_rows as _insert_rows

    source = Source.objects.create(name="copy", url="sqlite:////nonexistent/c.db", kind="sqlite")
    thread = Thread.objects.create(source=source, thread_id="t", checkpoints=1, latest_checkpoint_id="x",
                                   logical_bytes=1, stored_bytes=1, tags={})
    odd = ["back\\slash", "tab\there", "new\nline", "cr\rret", "\\N", "\\\\N", "quote ' \" ", "ünï 東京 🙂", "", " "]
    _insert_rows(Tag, ("source_id", "thread_id", "key", "value"),
                 [(source.pk, thread.pk, f"k{i}", value) for i, value in enumerate(odd)])
    assert [t.value for t in Tag.objects.filter(thread=thread).order_by("id")] == odd
    meta = {"text": "a\\b\tc\nd", "nested": {"q": "\"x\""}, "n": 1, "none": None}
    ckpt_id = "1f0c8a6e-1d2c-6f3e-8001-0242ac120002"
    record = {"checkpoint_ns": "ns:\\x", "checkpoint_id": ckpt_id, "parent_checkpoint_id": "", "created_at": uuid6_time(ckpt_id),
              "step": None, "origin": "loop", "metadata": meta, "row_bytes": 1, "blob_bytes": 2, "write_bytes": 3,
              "write_count": 4, "logical_bytes": 5, "new_bytes": 6}
    _insert_rows(Checkpoint, ("source_id", "thread_id", *record), [(source.pk, thread.pk, *record.values())])
    row = Checkpoint.objects.get(thread=thread)
    assert (row.checkpoint_ns, row.metadata, row.created_at, row.step) == ("ns:\\x", meta, uuid6_time(ckpt_id), None)


def test_a_sync_commits_without_waiting_for_the_disk_and_puts_the_setting_back(pg_saver, pg_source_url):
    from checkpoints.sync import sync_finished

    def setting():
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    seen = []

    def receiver(sender, source, result, **kwargs):
        seen.append((result["error"] is None, setting()))

    run_scenarios(pg_saver)
    source = make_source(pg_source_url, "postgres")
    sync_finished.connect(receiver)
    try:
        assert setting() == "on"
        assert sync_source(source)["error"] is None
        assert setting() == "on"
        source.url = "postgresql://postgres@127.0.0.1:1/nowhere"  # a failing sync puts it back too
        assert "cannot connect" in sync_source(source)["error"]
        assert setting() == "on"
    finally:
        sync_finished.disconnect(receiver)
    assert seen == [(True, "off"), (False, "off")]
    assert_mirror_matches(source, pg_source_url)


def test_sqlite_watermarks_are_digests_and_earlier_ones_still_count(sqlite_saver, sqlite_source_url):
    from checkpoints.sources import open_reader

    run_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url, "sqlite")
    sync_source(source)
    source.refresh_from_db()
    mark = source.sync_state["watermark"]
    rowid, digest = mark["checkpoints"]
    assert isinstance(digest, str) and len(digest) == 64  # no thread id in the state: it may hold a NUL
    conn = sqlite3.connect(sqlite_source_url.removeprefix("sqlite:///"))
    key = list(conn.execute("SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints WHERE rowid = ?",
                            (rowid,)).fetchone())
    conn.close()
    legacy = {table: [r, key if table == "checkpoints" else None] for table, (r, _) in mark.items()}
    with open_reader(sqlite_source_url) as reader:
        assert reader._since_rowids(mark) == {"checkpoints": rowid, "writes": mark["writes"][0]}
        assert reader._since_rowids(legacy)["checkpoints"] == rowid  # saved by an earlier version
        assert reader._since_rowids({**mark, "checkpoints": [rowid, "0" * 64]}) is None  # another row now


def test_a_console_database_that_fails_stops_the_sync_instead_of_blaming_threads(sqlite_saver, sqlite_source_url,
                                                                                  monkeypatch):
    from django.db import OperationalError

    from checkpoints import sync

    run_scenarios(sqlite_saver)
    source = make_source(sqlite_source_url, "sqlite")
    real = sync._apply_batch
    calls = []

    def flaky(context, thread_rows):
        calls.append(len(thread_rows))
        if any(rows.thread_id == "t-chat1" for rows in thread_rows):
            raise OperationalError("server closed the connection unexpectedly")
        return real(context, thread_rows)

    monkeypatch.setattr(sync, "_apply_batch", flaky)
    with pytest.raises(OperationalError):  # recorded, then raised: the task fails too
        sync_source(source)
    assert len(calls) == 1  # not retried thread by thread
    source.refresh_from_db()
    assert not source.last_sync_ok and "server closed the connection" in source.last_error
    assert "could not be mirrored" not in source.last_error and "retry" not in (source.sync_state or {})
    assert Run.objects.get(kind="sync", source=source).state == "failed"
