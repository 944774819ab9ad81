"""Helpers for the maintenance page tests: users, sources with real graphs, rows read by plain SQL.

The rows and bytes are read with the contract's SQL (docs/architecture.md §3) straight
from the LangGraph database, independently of checkpoints.prune, so that the
page's previews are checked against the source itself.
"""

import sqlite3
from contextlib import closing
from dataclasses import dataclass

import psycopg

from checkpoints.dburl import parse_database_url
from checkpoints.sources.registry import kind_of
from checkpoints.models import Source
from checkpoints.sync import sync_source
from tests.clock import OLD, written_ago
from tests.graphs import run_scenarios
from tests.mirror_data import make_user  # noqa: F401 - the maintenance tests' users

PG_SQL = {
    "checkpoints": "SELECT thread_id, checkpoint_ns, checkpoint_id,"
                   " octet_length(checkpoint::text) + octet_length(metadata::text) FROM checkpoints",
    "blobs": "SELECT thread_id, checkpoint_ns, channel, version, coalesce(octet_length(blob), 0) FROM checkpoint_blobs",
    "writes": "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, octet_length(blob) FROM checkpoint_writes",
}
SQLITE_SQL = {
    "checkpoints": "SELECT thread_id, checkpoint_ns, checkpoint_id, coalesce(length(CAST(checkpoint AS BLOB)), 0)"
                   " + coalesce(length(CAST(metadata AS BLOB)), 0) FROM checkpoints",
    "writes": "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, coalesce(length(CAST(value AS BLOB)), 0)"
              " FROM writes",
}


@dataclass
class Rows:
    """Every row of a LangGraph database: primary key -> serialized bytes."""

    checkpoints: dict
    blobs: dict
    writes: dict

    @property
    def bytes(self):
        return sum(self.checkpoints.values()) + sum(self.blobs.values()) + sum(self.writes.values())

    def minus(self, other):
        return Rows(
            {k: v for k, v in self.checkpoints.items() if k not in other.checkpoints},
            {k: v for k, v in self.blobs.items() if k not in other.blobs},
            {k: v for k, v in self.writes.items() if k not in other.writes},
        )

    def threads(self):
        return {k[0] for part in (self.checkpoints, self.blobs, self.writes) for k in part}


def read_rows(url) -> Rows:
    if url.startswith("postgres"):
        with psycopg.connect(url) as conn:
            found = {name: {tuple(r[:-1]): r[-1] for r in conn.execute(sql)} for name, sql in PG_SQL.items()}
        return Rows(found["checkpoints"], found["blobs"], found["writes"])
    with closing(sqlite3.connect(parse_database_url(url)["NAME"])) as conn:
        found = {name: {tuple(r[:-1]): r[-1] for r in conn.execute(sql)} for name, sql in SQLITE_SQL.items()}
    return Rows(found["checkpoints"], {}, found["writes"])


def latest_values(saver, thread_ids) -> dict:
    """The latest root state of each thread, as LangGraph loads it."""
    found = {}
    for tid in thread_ids:
        found[tid] = saver.get_tuple({"configurable": {"thread_id": tid, "checkpoint_ns": ""}}).checkpoint["channel_values"]
    return found


def make_source(url, name="src") -> Source:
    source = Source.objects.create(name=name, url=url, kind=kind_of(url))
    result = sync_source(source)
    assert result["error"] is None, result
    source.refresh_from_db()
    return source


def old_scenarios(saver, age=OLD):
    """run_scenarios with checkpoint ids `age` (two hours) in the past: older than a 1h cut by an hour."""
    with written_ago(age):
        return run_scenarios(saver)


def prune_post(source, older_than="1h", keep_last=1, tags="", threads=False):
    data = {"prune-source": source.pk, "prune-older_than": older_than, "prune-keep_last": keep_last, "prune-tags": tags}
    if threads:
        data["prune-threads"] = "on"
    return data
