"""The sweep's last look at a PostgreSQL store, and its orphan rows (docs/architecture.md, "Source kinds").

`PostgresRecheck` streams the rows (checkpoints, blobs, writes) containing a
marker, in a fresh snapshot per batch, then refuses when encrypted values were
written since the sweep's sync. `orphans()` counts or deletes blob rows no
checkpoint names and write rows whose checkpoint is gone.
"""

import psycopg

from checkpoints.decode import DELTA_KEYS
from checkpoints.ids import UUID6_PATTERN
from checkpoints.sources import SourceError, open_reader
from checkpoints.sources.recheck import ENCRYPTED_SINCE_SYNC, changed_since

# Rows that contain a marker; the markers are parameters, so this is one
# statement per source and batch whatever the batch's keys. OFFSET 0 keeps
# the union a subquery, so each row's checkpoint text is built once.
_PG_ROWS = """
SELECT r.data FROM (
    SELECT blob AS data FROM checkpoint_blobs
    UNION ALL SELECT blob FROM checkpoint_writes
    UNION ALL SELECT convert_to(checkpoint::text, 'UTF8') FROM checkpoints
    OFFSET 0
) AS r
WHERE EXISTS (SELECT 1 FROM unnest(%(markers)s::bytea[]) AS m(v) WHERE position(m.v IN r.data) > 0)
"""
_PG_ENCRYPTED = """
SELECT EXISTS (SELECT 1 FROM checkpoint_blobs WHERE type LIKE '%%+%%' AND (%(all)s OR thread_id = ANY(%(ids)s)))
    OR EXISTS (SELECT 1 FROM checkpoint_writes WHERE type LIKE '%%+%%' AND (%(all)s OR thread_id = ANY(%(ids)s)))
"""

class PostgresRecheck:
    """One connection kept across the sweep's batches; each batch reads a fresh snapshot."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None

    def values(self, markers: list, since: dict | None):
        if self.conn is None:
            self.conn = psycopg.connect(self.url, connect_timeout=10, autocommit=False)
        try:
            # A server-side cursor: rows arrive a few at a time, memory stays flat.
            with self.conn.cursor(name="sweep_recheck") as cur:
                cur.itersize = 200
                cur.execute(_PG_ROWS, {"markers": list(markers)})
                for (data,) in cur:
                    if data:
                        yield bytes(data)
        finally:
            self.conn.rollback()  # the next batch reads a fresh snapshot
        self._no_new_encrypted_rows(since)

    def _no_new_encrypted_rows(self, since):
        changed = changed_since(self.url, since)
        if changed is not None and not changed:
            return
        if changed and any("\x00" in t for t in changed):
            changed = None  # check every thread, as the SQLite kind must (its json_each() cuts an id at a NUL)
        ids = sorted(changed or ())
        with self.conn.cursor() as cur:
            (encrypted,) = cur.execute(_PG_ENCRYPTED, {"all": changed is None, "ids": ids}).fetchone()
        self.conn.rollback()
        if encrypted:
            raise SourceError(ENCRYPTED_SINCE_SYNC)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self.conn = None


# --- Orphan rows ----------------------------------------------------------------

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
