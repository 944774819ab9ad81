"""Property test: random real thread histories, random policies, PostgreSQL and SQLite.

After a prune, every remaining thread loads in LangGraph with the same latest
state; what went equals the dry run's selection and the rules' (an
independent statement of them in tests/test_prune_support.py); no orphan blob
or write rows appear; nothing else changed, byte for byte, except the parent
of kept rows whose parent went; and `bytes` is the drop in the SQL total.

The age cut is placed between real checkpoints: `now` is passed explicitly
(the cut is `now - older_than`), so the histories run in real time.
"""

from datetime import timedelta

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoints.ids import uuid6_time
from checkpoints.models import Source, Thread
from checkpoints.prune import PrunePolicy, prune
from tests.test_prune_support import Histories, SourceDB, build_mirror, expected, make_source
from tests.truth import assert_mirror_consistent

AGE = timedelta(hours=1)

chat_ops = st.lists(st.sampled_from(["invoke", "invoke", "update", "fork"]), min_size=0, max_size=3).map(
    lambda ops: ["invoke", *ops]
)
sub_ops = st.integers(1, 3).map(lambda n: ["invoke"] * n)
interrupt_ops = st.lists(st.sampled_from(["resume", "invoke"]), min_size=0, max_size=3).map(
    lambda ops: ["invoke", *ops]
)
thread_specs = st.lists(
    st.one_of(
        st.tuples(st.just("chat"), chat_ops),
        st.tuples(st.just("sub"), sub_ops),
        st.tuples(st.just("interrupt"), interrupt_ops),
    ).flatmap(lambda spec: st.tuples(st.just(spec[0]), st.just(spec[1]), st.sampled_from(["acme", "globex"]))),
    min_size=1,
    max_size=4,
)
policies = st.fixed_dictionaries(
    {
        "whole_threads": st.booleans(),
        "keep_last": st.one_of(st.integers(1, 2), st.integers(1, 4)),
        "zero": st.booleans(),  # keep_last 0 when whole_threads
        "tags": st.one_of(
            st.just(()),
            st.sampled_from([(("tenant", "acme"),), (("tenant", "globex"), ("kind", "chat")), (("kind", "sub"),)]),
        ),
        # Where the age cut falls among the checkpoints, as a fraction of them
        # (past 1: after the last one).
        "cut": st.floats(0.2, 1.1),
        # Where the active window starts; mostly after everything.
        "active": st.one_of(st.just(2.0), st.floats(0, 1.2)),
    }
)


def _at(ids, fraction):
    """The uuid6 time at a fraction of the sorted ids (past the end: after the last one)."""
    index = int(fraction * len(ids))
    if index >= len(ids):
        return uuid6_time(ids[-1]) + timedelta(seconds=1)
    return uuid6_time(ids[index])


def check_prune(source, db, histories, specs, p):
    db.clear()
    Thread.objects.filter(source=source).delete()
    for n, (kind, ops, tenant) in enumerate(specs):
        histories.run(f"{kind} {n}/ü'\" x", kind, ops, tenant=tenant)

    before = db.dump()
    build_mirror(source, before)
    states = {tid: histories.state(tid) for tid in histories.owner}
    orphan_blobs, orphan_writes = db.orphan_blobs(), db.orphan_writes()
    total_before = db.stored_bytes()

    ids = sorted(k[2] for k in before.checkpoints)
    cut = _at(ids, p["cut"])
    active_after = max(_at(ids, p["active"]), cut)
    now = cut + AGE
    keep_last = 0 if p["whole_threads"] and p["zero"] else p["keep_last"]
    policy = PrunePolicy(AGE, keep_last=keep_last, tags=p["tags"], whole_threads=p["whole_threads"])
    want = expected(before, keep_last=keep_last, tags=p["tags"], whole_threads=p["whole_threads"],
                    cut=cut, active_after=active_after)

    dry, real = [], []
    with override_settings(PRUNE_ACTIVE_WINDOW=now - active_after):
        preview = prune(source, policy, dry_run=True, now=now, on_selection=dry.append)
        assert db.dump() == before, "a dry run changed nothing"
        result = prune(source, policy, dry_run=False, now=now, on_selection=real.append)
    after = db.dump()

    # What went: exactly the dry run's selection, which is what the rules say.
    gone = before.checkpoints.keys() - after.checkpoints.keys()
    selected = {(s.thread_id, ns, cid) for s in dry if not s.skip for ns, cid in s.checkpoints}
    assert selected == {(s.thread_id, ns, cid) for s in real if not s.skip for ns, cid in s.checkpoints}
    assert gone == selected == want.checkpoints
    assert before.blobs.keys() - after.blobs.keys() == want.blobs
    assert before.writes.keys() - after.writes.keys() == want.writes
    assert {s["thread_id"]: s["reason"] for s in result["skipped"]} == want.skipped
    assert preview["skipped"] == result["skipped"]
    for key in ("threads", "checkpoints", "writes", "blobs", "bytes"):
        assert preview[key] == result[key], key
    assert result["checkpoints"] == len(gone)
    assert result["writes"] == len(want.writes) and result["blobs"] == len(want.blobs)
    assert result["threads"] == len({k[0] for k in gone})
    assert total_before - db.stored_bytes() == result["bytes"]

    # Nothing else changed: kept rows are byte-identical, but for parents that went.
    for key, row in after.checkpoints.items():
        old = before.checkpoints[key]
        assert row[1:] == old[1:]
        parent = old[0]
        if parent is not None and (key[0], key[1], parent) in gone:
            assert row[0] is None, "a kept row whose parent went has no parent"
        else:
            assert row[0] == parent
    assert all(before.blobs[k] == v for k, v in after.blobs.items())
    assert all(before.writes[k] == v for k, v in after.writes.items())
    for tid in want.skipped:
        assert before.thread(tid) == after.thread(tid)

    # No orphans made, in the source or the mirror.
    assert_mirror_consistent()
    assert db.orphan_blobs() <= orphan_blobs
    assert db.orphan_writes() <= orphan_writes

    # LangGraph loads every thread left, with the same latest state.
    for tid, state in states.items():
        now_state = histories.state(tid)
        if tid in want.whole:
            assert now_state is None
        else:
            assert now_state == state, tid


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=thread_specs, p=policies)
@pytest.mark.django_db
def test_prune_postgres(pg_saver, pg_source_url, specs, p):
    source = Source.objects.filter(name="pg").first() or make_source(pg_source_url, "pg")
    check_prune(source, SourceDB(pg_source_url), Histories(pg_saver), specs, p)


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=thread_specs, p=policies)
@pytest.mark.django_db
def test_prune_sqlite(sqlite_saver, sqlite_source_url, specs, p):
    source = Source.objects.filter(name="lite").first() or make_source(sqlite_source_url, "lite")
    check_prune(source, SourceDB(sqlite_source_url), Histories(sqlite_saver), specs, p)

