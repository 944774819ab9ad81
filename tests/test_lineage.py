"""The checkpoint page's lineage in one statement (dashboard.lineage) against the ORM querysets it replaced.

On the suite's PostgreSQL console in process, and on a fresh SQLite console
(the embedded default) in a subprocess: the SQL differs by database.
"""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def orm_lineage(cp):
    """What the page ran before: three querysets."""
    from django.db.models import TextField
    from django.db.models.fields.json import KeyTextTransform, KeyTransform
    from django.db.models.functions import Cast

    from checkpoints.models import Checkpoint

    same_ns = Checkpoint.objects.filter(thread=cp.thread, checkpoint_ns=cp.checkpoint_ns)
    parent = same_ns.filter(checkpoint_id=cp.parent_checkpoint_id).first() if cp.parent_checkpoint_id else None
    children = list(same_ns.filter(parent_checkpoint_id=cp.checkpoint_id).order_by("checkpoint_id")[:50])
    subgraphs = []
    if cp.checkpoint_ns == "":
        root = Cast(KeyTextTransform("", KeyTransform("parents", "metadata")), TextField())
        subgraphs = list(Checkpoint.objects.filter(thread=cp.thread).exclude(checkpoint_ns="").annotate(root=root)
                         .filter(root=cp.checkpoint_id).order_by("checkpoint_ns", "checkpoint_id")[:50])
    return parent, children, subgraphs


def build_threads():
    """Two threads: root chains, a fork with more children than shown, subgraphs, odd metadata."""
    from checkpoints.models import Checkpoint, Source, Thread

    source = Source.objects.create(name="lineage", url="sqlite:////nowhere/lineage.db", kind="sqlite")
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for name in ("t1", "t2"):
        thread = Thread.objects.create(source=source, thread_id=name)

        def add(ns, cid, parent="", metadata=None, thread=thread):
            rows.append(Checkpoint(source=source, thread=thread, checkpoint_ns=ns, checkpoint_id=cid,
                                   parent_checkpoint_id=parent, created_at=when, metadata=metadata or {}))

        root = [f"1ef{i:03d}" for i in range(6)]
        for i, cid in enumerate(root):
            add("", cid, root[i - 1] if i else "", {"step": i, "parents": {}})
        for j in range(55):  # a fork point: more children than the page lists, added out of order
            add("", f"1f0{(j * 37) % 55:03d}", root[2], {"step": 3})
        add("", "1ee999", "missing-parent")  # a parent the mirror does not hold
        for ns in ("sub:b", "sub:a", "Sub:c", "sub|x:1", "sub:a:nested"):
            for k in range(3):
                add(ns, f"{ns}-{k}", f"{ns}-{k - 1}" if k else "", {"parents": {"": root[3], "sub:a": "x"}})
        for k in range(52):  # a root checkpoint that ran more subgraph checkpoints than shown
            add("many:1", f"2a{(k * 7) % 52:03d}", "", {"parents": {"": root[4]}})
        add("odd:1", "3a1", "", {"parents": {"": 5}})
        add("odd:2", "3a2", "", {"parents": ["", root[3]]})
        add("odd:3", "3a3", "", {"parents": None})
        add("odd:4", "3a4", "", "just a string")
    Checkpoint.objects.bulk_create(rows)


def compare():
    """Every checkpoint's lineage, both ways: (checkpoints compared, differences)."""
    from checkpoints.models import Checkpoint
    from dashboard.lineage import lineage

    def pks(found):
        parent, children, subgraphs = found
        return (parent.pk if parent else None, [c.pk for c in children], [s.pk for s in subgraphs])

    diffs, count = [], 0
    for cp in Checkpoint.objects.select_related("thread").order_by("pk"):
        count += 1
        mine, theirs = pks(lineage(cp)), pks(orm_lineage(cp))
        if mine != theirs:
            diffs.append((cp.thread.thread_id, cp.checkpoint_ns, cp.checkpoint_id, mine, theirs))
    return count, diffs


def check_shapes():
    """What the comparison must have covered, so that it compares something."""
    from checkpoints.models import Checkpoint, Thread
    from dashboard.lineage import lineage

    thread = Thread.objects.get(thread_id="t1")
    fork = Checkpoint.objects.get(thread=thread, checkpoint_id="1ef002")
    parent, children, subgraphs = lineage(fork)
    assert parent.checkpoint_id == "1ef001" and len(children) == 50 and subgraphs == []
    assert [c.checkpoint_id for c in children] == sorted(c.checkpoint_id for c in children)
    ran = lineage(Checkpoint.objects.get(thread=thread, checkpoint_id="1ef003"))[2]
    assert len(ran) == 15 and {c.checkpoint_ns for c in ran} == {"sub:b", "sub:a", "Sub:c", "sub|x:1", "sub:a:nested"}
    assert len(lineage(Checkpoint.objects.get(thread=thread, checkpoint_id="1ef004"))[2]) == 50
    assert lineage(Checkpoint.objects.get(thread=thread, checkpoint_id="1ee999"))[0] is None
    nested = Checkpoint.objects.get(thread=thread, checkpoint_ns="sub:a", checkpoint_id="sub:a-1")
    parent, children, subgraphs = lineage(nested)
    assert parent.checkpoint_id == "sub:a-0" and [c.checkpoint_id for c in children] == ["sub:a-2"] and subgraphs == []


@pytest.mark.django_db
def test_lineage_on_postgresql_matches_the_orm():
    from django.db import connection

    assert connection.vendor == "postgresql"
    build_threads()
    count, diffs = compare()
    assert count > 200 and diffs == []
    check_shapes()


SQLITE_SCRIPT = """
import json, django
django.setup()
from django.core.management import call_command
from django.db import connection
call_command("migrate", verbosity=0)
assert connection.vendor == "sqlite"
from tests.test_lineage import build_threads, check_shapes, compare
build_threads()
count, diffs = compare()
check_shapes()
print(json.dumps({"count": count, "diffs": diffs}))
"""


def test_lineage_on_sqlite_matches_the_orm(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="dashboard.settings", CONSOLE_VAR_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SQLITE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["count"] > 200 and result["diffs"] == []
