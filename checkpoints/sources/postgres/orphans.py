"""A PostgreSQL store's orphan rows (docs/architecture.md, "Source kinds"): blob rows no checkpoint names
and write rows whose checkpoint is gone; `checkpoints/orphans.py` calls `orphans()` for the sweep.
"""

import psycopg

from checkpoints.decode import DELTA_KEYS
from checkpoints.ids import UUID6_PATTERN
from checkpoints.sources import open_reader

_PG_OLD = "(lower({col}) ~ %(uuid6)s AND lower({col}) < %(floor)s)"
# Blob rows no checkpoint names, in threads that are neither DeltaChannel
# threads nor active within the grace (a checkpoint or write newer than it, or
# an id whose age cannot be read). The thread_id indexes serve the subqueries.
_PG_ORPHAN_BLOBS = f"""
FROM checkpoint_blobs b
WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
          AND c.checkpoint->'channel_versions'->>b.channel = b.version)
  AND NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.thread_id = b.thread_id
          AND (c.metadata ?| %(delta)s OR NOT {_PG_OLD.format(col="c.checkpoint_id")}))
  AND NOT EXISTS (
        SELECT 1 FROM checkpoint_writes w
        WHERE w.thread_id = b.thread_id AND NOT {_PG_OLD.format(col="w.checkpoint_id")})
"""
_PG_ORPHAN_WRITES = f"""
FROM checkpoint_writes w
WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)
  AND {_PG_OLD.format(col="w.checkpoint_id")}
  AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id AND c.metadata ?| %(delta)s)
"""


def orphans(url: str, floor: str, *, dry_run: bool) -> dict:
    """The count and the delete share their WHERE clause: a dry run counts what a real run removes."""
    with open_reader(url) as reader:
        reader.layout()  # refuses non-LangGraph and shallow schemas with a clear message
    params = {"uuid6": UUID6_PATTERN, "floor": floor, "delta": list(DELTA_KEYS)}
    with psycopg.connect(url, connect_timeout=10) as conn:
        if dry_run:
            (blobs,) = conn.execute(f"SELECT count(*) {_PG_ORPHAN_BLOBS}", params).fetchone()
            (writes,) = conn.execute(f"SELECT count(*) {_PG_ORPHAN_WRITES}", params).fetchone()
            return {"blobs": blobs, "writes": writes, "thread_ids": []}
        with conn.transaction():
            done = "SELECT count(*), coalesce(array_agg(DISTINCT thread_id), '{}') FROM d"
            blobs, t1 = conn.execute(
                f"WITH d AS (DELETE {_PG_ORPHAN_BLOBS} RETURNING b.thread_id) {done}", params
            ).fetchone()
            writes, t2 = conn.execute(
                f"WITH d AS (DELETE {_PG_ORPHAN_WRITES} RETURNING w.thread_id) {done}", params
            ).fetchone()
    return {"blobs": blobs, "writes": writes, "thread_ids": sorted(set(t1) | set(t2))}
