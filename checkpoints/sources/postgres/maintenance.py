"""Prune on a PostgreSQL store: the `Maintenance` of the `postgres` kind (checkpoints/sources/kind.py).

checkpoints.prune decides what goes (`choose`, from its policy); this module
reads a thread's rows into a ThreadSnapshot and deletes the Selection, each
thread in its own REPEATABLE READ transaction: rows committed by a writer
after the snapshot are invisible to the DELETEs (they name rows by key), and a
row changed under us raises a serialization failure, on which prune retries
the thread from a fresh snapshot.
"""

import orjson

from checkpoints.decode import is_delta_snapshot_head
from checkpoints.dburl import redact
from checkpoints.prune_rows import TASKS, Conflict, PruneMismatch, Row, ThreadSnapshot, WriteGroup
from checkpoints.sources import SourceError

# One statement reads what the selection needs of a thread, through the
# thread_id indexes LangGraph creates, as three JSON arrays: one value to
# parse (orjson) instead of a Python tuple per row. Only msgpack blob heads can
# be a _DeltaSnapshot; an encrypted one cannot be told (the thread's metadata
# still carries the counters between snapshots).
PG_READ_SQL = """
SELECT
  (SELECT coalesce(json_agg(json_build_array(
            checkpoint_ns, checkpoint_id, parent_checkpoint_id, metadata -> 'parents' ->> '',
            metadata ? 'counters_since_delta_snapshot' OR metadata ? 'delta_writes_versioned',
            coalesce(checkpoint ->> 'v' IN ('1', '2', '3'), false),
            checkpoint -> 'channel_versions',
            octet_length(checkpoint::text) + octet_length(metadata::text))), '[]')
   FROM checkpoints WHERE thread_id = %(thread_id)s),
  (SELECT coalesce(json_agg(json_build_array(checkpoint_ns, checkpoint_id, n, size, tasks)), '[]')
   FROM (SELECT checkpoint_ns, checkpoint_id, count(*) AS n, coalesce(sum(octet_length(blob)), 0) AS size,
                bool_or(channel = %(tasks)s) AS tasks
         FROM checkpoint_writes WHERE thread_id = %(thread_id)s
         GROUP BY checkpoint_ns, checkpoint_id) AS w),
  (SELECT coalesce(json_agg(json_build_array(
            checkpoint_ns, channel, version, coalesce(octet_length(blob), 0),
            CASE WHEN type = 'msgpack' THEN encode(substring(blob from 1 for 6), 'hex') END)), '[]')
   FROM checkpoint_blobs WHERE thread_id = %(thread_id)s)
"""
PG_LATEST_METADATA_SQL = """
SELECT metadata FROM checkpoints WHERE thread_id = %(thread_id)s AND checkpoint_ns = ''
ORDER BY checkpoint_id DESC LIMIT 1
"""
# One statement deletes a thread's selection: rows are named by key, never by
# a predicate, so a row a writer commits after our snapshot is invisible to it
# whatever its id. Each part joins its keys to the thread's rows found through
# the thread_id index, a plan that suits a generic (prepared) plan as well as
# 10 rows or 100,000. Keys travel as JSON arrays of arrays: orjson writes them
# many times faster than psycopg adapts lists to text[] parameters.
PG_DELETE_SQL = """
WITH w AS (
    DELETE FROM checkpoint_writes w USING json_array_elements(%(writes)s::json) AS k
    WHERE w.thread_id = %(thread_id)s AND w.checkpoint_ns = k ->> 0 AND w.checkpoint_id = k ->> 1
    RETURNING 1
), c AS (
    DELETE FROM checkpoints c USING json_array_elements(%(checkpoints)s::json) AS k
    WHERE c.thread_id = %(thread_id)s AND c.checkpoint_ns = k ->> 0 AND c.checkpoint_id = k ->> 1
    RETURNING 1
), b AS (
    DELETE FROM checkpoint_blobs b USING json_array_elements(%(blobs)s::json) AS k
    WHERE b.thread_id = %(thread_id)s AND b.checkpoint_ns = k ->> 0 AND b.channel = k ->> 1 AND b.version = k ->> 2
    RETURNING 1
), p AS (
    UPDATE checkpoints c SET parent_checkpoint_id = NULL FROM json_array_elements(%(parents)s::json) AS k
    WHERE c.thread_id = %(thread_id)s AND c.checkpoint_ns = k ->> 0 AND c.checkpoint_id = k ->> 1
    RETURNING 1
)
SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM c), (SELECT count(*) FROM b), (SELECT count(*) FROM p)
"""
PG_DISK_SQL = """
SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0)::bigint
FROM unnest(ARRAY['checkpoints', 'checkpoint_blobs', 'checkpoint_writes']) AS t
"""
PG_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
PG_SPACE_SQL = """
SELECT t, coalesce(s.n_dead_tup, 0), pg_total_relation_size(to_regclass(t))
FROM unnest(ARRAY['checkpoints', 'checkpoint_blobs', 'checkpoint_writes']) WITH ORDINALITY AS u(t, n)
LEFT JOIN pg_stat_user_tables s ON s.relid = to_regclass(t)
ORDER BY n
"""


class PostgresMaintenance:
    """Per-thread transactions on PostgreSQL, several threads at a time.

    A thread costs four short round trips (BEGIN, the reads, the deletes,
    COMMIT), sent one by one: the deleted counts are checked before COMMIT,
    and psycopg's pipeline mode cost more interpreter time than the round
    trips it saved. Several connections work on different threads at once
    (rows are keyed by thread, so they never meet), which hides the round
    trips and keeps the server busy while Python selects: on two cores, 6
    connections pruned 13,500 checkpoints/s against 11,800 with 4 and 12,400
    with 8 (bench/bench_prune.py's source, same hour).
    """

    workers = 6

    def __init__(self, url):
        self.url = url

    def connect(self):
        import psycopg
        from psycopg.types.json import set_json_loads

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise SourceError(f"cannot connect to {redact(self.url)}: {str(e).splitlines()[0]}") from None
        set_json_loads(orjson.loads, conn)
        # Each thread's transaction stays atomic; a crash may only lose the
        # last few commits, i.e. leave some rows that the next prune removes.
        # Waiting for a WAL flush per thread would bound us to the disk's
        # flush rate instead.
        conn.execute("SET synchronous_commit = off")
        return conn

    @staticmethod
    def retryable(exc) -> bool:
        from psycopg import errors

        return isinstance(exc, (errors.SerializationFailure, errors.DeadlockDetected, Conflict))

    @staticmethod
    def broken(conn) -> bool:
        return conn.closed or conn.broken

    @staticmethod
    def disk_bytes(conn) -> int:
        return conn.execute(PG_DISK_SQL).fetchone()[0]

    @staticmethod
    def flush_stats(conn):
        # The deletes' row counts reach pg_stat_user_tables when a session
        # goes idle (at most once a second) or ends, after we moved on: sent
        # now (PostgreSQL 15+, before this statement's reply), so that a
        # VACUUM next finds the dead rows counted, and a late report does not
        # count them again after it.
        import psycopg

        if conn.closed or conn.broken or conn.info.server_version < 150000:
            return
        try:
            conn.execute("SELECT pg_stat_force_next_flush()")
        except psycopg.Error:
            pass  # a connection left in a failed transaction: its figures go when it closes

    @classmethod
    def release(cls, conn):
        try:
            cls.flush_stats(conn)
        finally:
            conn.close()

    @staticmethod
    def space(conn) -> dict:
        """Dead rows per table and the tables' bytes: what a VACUUM changes."""
        rows = conn.execute(PG_SPACE_SQL).fetchall()
        return {"dead_rows": {t: dead for t, dead, _ in rows}, "bytes": sum(size for _, _, size in rows)}

    @staticmethod
    def vacuum(conn):
        # Plain VACUUM: marks dead rows' space reusable and updates the
        # visibility map, under a lock that lets agents keep reading and
        # writing. Never FULL, which rewrites the tables under an exclusive
        # lock. It cannot run in a transaction: this connection autocommits.
        conn.execute(f"VACUUM {', '.join(PG_TABLES)}")

    @staticmethod
    def candidates(conn, floor, only=None):
        """Threads with a checkpoint created before the cut (nothing else can lose a row)."""
        if only is None:
            sql, params = "SELECT DISTINCT thread_id FROM checkpoints WHERE checkpoint_id < %s", (floor,)
        else:
            sql = "SELECT DISTINCT thread_id FROM checkpoints WHERE checkpoint_id < %s AND thread_id = ANY(%s)"
            params = (floor, list(only))
        return sorted(r[0] for r in conn.execute(sql, params, prepare=False))

    def prune_thread(self, conn, thread_id, choose, dry_run, *, metadata=False):
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            reads = self._send_reads(conn, thread_id, metadata)
            snapshot = self._snapshot(thread_id, *reads)
            selection = choose(snapshot)
            if not dry_run and selection is not None and selection.skip is None:
                cursor, expected = self._send_delete(conn, thread_id, selection)
                counts = cursor.fetchone()
                # At REPEATABLE READ a row changed or deleted since the snapshot
                # raises (and is retried) instead of being skipped, so the
                # counts always match; this only trips on a broken assumption,
                # and then nothing is committed.
                if counts != expected:
                    raise PruneMismatch(f"rows changed {counts} where {expected} were selected (rolled back)")
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except BaseException:
            if not conn.broken and conn.info.transaction_status != 0:  # not IDLE
                conn.execute("ROLLBACK")
            raise
        return selection

    @staticmethod
    def _send_reads(conn, thread_id, with_metadata):
        params = {"thread_id": thread_id, "tasks": TASKS}
        return (
            conn.execute(PG_READ_SQL, params),
            conn.execute(PG_LATEST_METADATA_SQL, params) if with_metadata else None,
        )

    @staticmethod
    def _snapshot(thread_id, main, latest):
        checkpoint_rows, write_rows, blob_rows = main.fetchone()
        delta = False
        checkpoints = []
        for ns, cid, parent, root, is_delta, legacy, versions, size in checkpoint_rows:
            delta = delta or is_delta
            # Only a JSON object names blobs (docs/architecture.md §3).
            checkpoints.append(Row(ns, cid, parent, root, size, versions if isinstance(versions, dict) else None, legacy))
        writes = {(ns, cid): WriteGroup(n, size, tasks) for ns, cid, n, size, tasks in write_rows}
        blobs = {}
        for ns, channel, version, size, head in blob_rows:
            blobs[(ns, channel, version)] = size
            if head is not None and not delta and is_delta_snapshot_head(bytes.fromhex(head)):
                delta = True
        metadata = None
        if latest is not None:
            row = latest.fetchone()
            metadata = row[0] if row else None
        return ThreadSnapshot(thread_id, checkpoints, writes, blobs, delta, metadata)

    @staticmethod
    def _send_delete(conn, thread_id, selection):
        params = {
            "thread_id": thread_id,
            "writes": orjson.dumps(selection.writes).decode(),
            "checkpoints": orjson.dumps(selection.checkpoints).decode(),
            "blobs": orjson.dumps(selection.blobs).decode(),
            "parents": orjson.dumps(selection.parents).decode(),
        }
        expected = (selection.write_rows, len(selection.checkpoints), len(selection.blobs), len(selection.parents))
        return conn.execute(PG_DELETE_SQL, params), expected
