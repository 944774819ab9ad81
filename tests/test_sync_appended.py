"""Change capture adds what a thread gained instead of reading it whole (sync._apply_appended).

The mirror it builds must equal, field for field, the one a full read of the
same source builds: threads, checkpoints, tags and reference uses, after
appends, writes to mirrored checkpoints, subgraphs, forks, late commits and
checkpoints a previous snapshot already saw.
"""

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.types import Command

from checkpoints import sync
from checkpoints.ids import source_thread_id
from checkpoints.models import Checkpoint, ReferenceUse, Source, Tag, Thread
from checkpoints.sources.capture import Capture
from checkpoints.sources.postgres.reader import PostgresReader
from tests.graphs import chat_graph, config, file_graph, interrupt_graph, run_scenarios, subgraph_graph
from tests.test_sync_capture import capturing_source, logical_url, pending_changes, saver  # noqa: F401
from tests.truth import assert_mirror_consistent, assert_mirror_matches

pytestmark = pytest.mark.django_db(transaction=True)


def mirror_image(source):
    """Everything a sync writes for a source, keyed by the source's ids (no pks)."""
    threads = {
        source_thread_id(t["thread_id"]): t
        for t in Thread.objects.filter(source=source).values("thread_id", *sync._THREAD_FIELDS)
    }
    checkpoints = {
        (source_thread_id(c.pop("thread__thread_id")), c["checkpoint_ns"], c["checkpoint_id"]): c
        for c in Checkpoint.objects.filter(source=source).values("thread__thread_id", *sync._RECORD_FIELDS)
    }
    tags = set(Tag.objects.filter(source=source).values_list("thread__thread_id", "key", "value"))
    uses = set(ReferenceUse.objects.filter(thread__source=source).values_list(
        "thread__thread_id", "checkpoint__checkpoint_ns", "checkpoint__checkpoint_id", "location", "reference__uri"))
    return {"threads": threads, "checkpoints": checkpoints, "tags": tags, "uses": uses}


def only_thread(image, thread_id):
    return {
        "threads": image["threads"].get(thread_id),
        "checkpoints": {k: v for k, v in image["checkpoints"].items() if k[0] == thread_id},
        "tags": {t for t in image["tags"] if t[0] == thread_id},
        "uses": {u for u in image["uses"] if u[0] == thread_id},
    }


def assert_equals_a_full_read(source, url):
    assert_mirror_matches(source, url)
    Source.objects.filter(name="full").delete()
    full = Source.objects.create(name="full", url=url, kind="postgres")
    assert sync.sync_source(full, full=True)["error"] is None
    got, expected = mirror_image(source), mirror_image(full)
    for part in ("threads", "checkpoints", "tags", "uses"):
        assert got[part] == expected[part], part


@pytest.fixture
def appended_calls(monkeypatch):
    """(threads given, threads left to a whole read) of every _apply_appended call."""
    calls = []
    original = sync._apply_appended

    def spy(context, batch, appended):
        whole = original(context, batch, appended)
        calls.append((set(appended), whole))
        return whole

    monkeypatch.setattr(sync, "_apply_appended", spy)
    return calls


def added_up(calls):
    return set().union(*(given - whole for given, whole in calls)) if calls else set()


def test_appends_writes_forks_and_subgraphs_are_added_up_exactly(saver, logical_url, appended_calls):
    run_scenarios(saver)
    source = capturing_source(logical_url)
    assert sync.sync_source(source)["error"] is None  # creates the slot, scans once
    assert_equals_a_full_read(source, logical_url)

    chat, files, asking = chat_graph(saver), file_graph(saver), interrupt_graph(saver)
    chat.invoke({"messages": ["again"]}, config("t-chat0", tenant="acme"))
    chat.invoke({"messages": ["and again"]}, config("t-chat1", tenant="globex", project="other"))  # tags change
    files.invoke({"attachment": "s3://bucket/uploads/u1/second.pdf"}, config("t-file", tenant="acme"))
    subgraph_graph(saver).invoke({"messages": ["more"]}, config("t-sub", tenant="acme"))
    asking.invoke(Command(resume="no"), config("t-waiting"))  # its pending writes' checkpoint gains more
    cfg = config("t-fork")
    history = list(chat.get_state_history(cfg))
    chat.update_state(history[-2].config, {"label": "another fork"})  # older than the latest: not the latest
    result = sync.sync_source(source)
    assert result["error"] is None and result["added"] > 0
    assert {"t-chat0", "t-chat1", "t-file", "t-sub", "t-waiting", "t-fork"} <= added_up(appended_calls)
    assert_equals_a_full_read(source, logical_url)

    # Writes alone, to a mirrored checkpoint, one of them naming a file: that checkpoint's figures move.
    latest = saver.get_tuple(config("t-chat2"))
    saver.put_writes(latest.config, [("messages", ["s3://bucket/uploads/u9/pending.pdf"]), ("label", "x" * 500)], "task-9")
    appended_calls.clear()
    result = sync.sync_source(source)
    assert result["error"] is None and result["updated"] == 1 and result["added"] == 0
    assert added_up(appended_calls) == {"t-chat2"}
    assert_equals_a_full_read(source, logical_url)


def test_a_late_commit_and_rows_a_previous_snapshot_saw_are_counted_once(saver, logical_url, appended_calls, monkeypatch):
    run_scenarios(saver)
    source = capturing_source(logical_url)
    sync.sync_source(source)
    chat = chat_graph(saver)

    # A checkpoint committed between the slot's peek and the sync's read: the read sees it, and
    # the next sync's peek reports it again, to a mirror that holds it already.
    peek = Capture.peek

    def peek_then_write(self):
        changes = peek(self)
        if not getattr(peek_then_write, "done", False):
            peek_then_write.done = True
            chat.invoke({"messages": ["between"]}, config("t-chat0", tenant="acme"))
        return changes

    chat.invoke({"messages": ["first"]}, config("t-chat0", tenant="acme"))
    monkeypatch.setattr(Capture, "peek", peek_then_write)
    first = sync.sync_source(source)
    assert first["error"] is None
    assert_mirror_consistent()  # what came after the peek is the next sync's
    monkeypatch.setattr(Capture, "peek", peek)
    appended_calls.clear()
    again = sync.sync_source(source)
    assert again["error"] is None and (first["added"], again["added"]) == (4, 4)  # two runs of four checkpoints, each once
    assert added_up(appended_calls) == {"t-chat0"}
    assert_equals_a_full_read(source, logical_url)

    # The same, the later rows in a thread the slot had not reported (read whole next time), one naming a file.
    files = file_graph(saver)

    def peek_then_attach(uri):
        def peeking(self):
            changes = peek(self)
            files.invoke({"attachment": uri}, config("t-file", tenant="acme"))
            return changes
        return peeking

    chat.invoke({"messages": ["again"]}, config("t-chat0", tenant="acme"))
    monkeypatch.setattr(Capture, "peek", peek_then_attach("s3://bucket/uploads/u3/late.pdf"))
    assert sync.sync_source(source)["error"] is None
    monkeypatch.setattr(Capture, "peek", peek)
    assert sync.sync_source(source)["error"] is None
    assert_equals_a_full_read(source, logical_url)
    assert ReferenceUse.objects.filter(thread__source=source, reference__uri="s3://bucket/uploads/u3/late.pdf").exists()

    # Again, with the thread read whole next time (a row of it updated): the late rows' values are
    # searched too, though they predate that snapshot's horizon.
    chat.invoke({"messages": ["once more"]}, config("t-chat0", tenant="acme"))
    monkeypatch.setattr(Capture, "peek", peek_then_attach("s3://bucket/uploads/u4/later.pdf"))
    assert sync.sync_source(source)["error"] is None
    monkeypatch.setattr(Capture, "peek", peek)
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("UPDATE checkpoint_writes SET idx = idx WHERE thread_id = 't-file'")
    appended_calls.clear()
    assert sync.sync_source(source)["error"] is None
    assert "t-file" not in added_up(appended_calls)
    assert_equals_a_full_read(source, logical_url)
    assert ReferenceUse.objects.filter(thread__source=source, reference__uri="s3://bucket/uploads/u4/later.pdf").exists()

    # A late commit: lower ids than rows written and mirrored after it began.
    slow_conn = psycopg.connect(logical_url, autocommit=False)
    chat_graph(PostgresSaver(slow_conn)).invoke({"messages": ["slow"]}, config("t-chat1", tenant="acme"))
    chat.invoke({"messages": ["fast"]}, config("t-chat1", tenant="acme"))
    sync.sync_source(source)
    assert_equals_a_full_read(source, logical_url)
    slow_conn.commit()
    slow_conn.close()
    assert sync.sync_source(source)["added"] > 0
    assert_equals_a_full_read(source, logical_url)
    chat.invoke({"messages": ["after"]}, config("t-chat1", tenant="acme"))
    appended_calls.clear()
    assert sync.sync_source(source)["added"] > 0
    assert added_up(appended_calls) == {"t-chat1"}
    assert_equals_a_full_read(source, logical_url)


def test_threads_with_an_update_or_deletion_or_new_to_the_mirror_are_read_whole(saver, logical_url, appended_calls):
    run_scenarios(saver)
    source = capturing_source(logical_url)
    sync.sync_source(source)
    chat = chat_graph(saver)
    chat.invoke({"messages": ["new"]}, config("t-brand-new"))
    chat.invoke({"messages": ["more"]}, config("t-chat0", tenant="acme"))
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoints WHERE thread_id = 't-chat0' AND checkpoint_id ="
                     " (SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 't-chat0')")
        conn.execute("UPDATE checkpoint_writes SET blob = blob || '\\x00'::bytea WHERE thread_id = 't-waiting'")
    assert sync.sync_source(source)["error"] is None
    assert not added_up(appended_calls) & {"t-chat0", "t-waiting"}
    assert "t-brand-new" not in added_up(appended_calls)
    assert_equals_a_full_read(source, logical_url)


def test_odd_thread_ids_are_added_up_like_any_other(saver, logical_url, appended_calls):
    chat = chat_graph(saver)
    odd = ["line\nbreak", "../../etc/passwd", "odd id/ünï çødé"]
    for thread_id in odd:
        chat.invoke({"messages": ["one"]}, config(thread_id))
    source = capturing_source(logical_url)
    assert sync.sync_source(source)["error"] is None
    for thread_id in odd:
        chat.invoke({"messages": ["two"]}, config(thread_id))
    assert sync.sync_source(source)["error"] is None
    assert added_up(appended_calls) == set(odd)
    assert_equals_a_full_read(source, logical_url)


def test_a_source_connection_dropped_while_gained_rows_are_read_loses_nothing(saver, logical_url, monkeypatch, caplog):
    # The gained rows are read on a second thread while the mirror locks their threads: a failure
    # there fails the sync (it is not taken for a bad thread to read whole), the slot is not
    # confirmed, and the next sync mirrors everything.
    chat = chat_graph(saver)
    chat.invoke({"messages": ["one"]}, config("t-a"))
    source = capturing_source(logical_url)
    assert sync.sync_source(source)["error"] is None
    before = mirror_image(source)
    chat.invoke({"messages": ["two"]}, config("t-a"))  # gained rows: added up
    chat.invoke({"messages": ["one"]}, config("t-new"))  # new to the mirror: read whole, written meanwhile

    original = PostgresReader.read_appended

    def dropped(self, appended):
        with psycopg.connect(logical_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (self.conn.info.backend_pid,))
        return original(self, appended)

    monkeypatch.setattr(PostgresReader, "read_appended", dropped)
    result = sync.sync_source(source)
    assert result["error"] and "reading" in result["error"]
    assert "reading them whole" not in caplog.text
    # t-new, written before the gained rows were read, may have committed: only t-a must be as it was.
    assert only_thread(mirror_image(source), "t-a") == only_thread(before, "t-a")
    assert {"t-a", "t-new"} <= pending_changes(source).threads  # not confirmed

    monkeypatch.undo()
    assert sync.sync_source(source)["error"] is None
    assert_equals_a_full_read(source, logical_url)
