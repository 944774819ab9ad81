"""Prune on a SQLite store: the `Maintenance` of the `sqlite` kind (checkpoints/sources/kind.py).

checkpoints.prune decides what goes (`choose`, from its policy); this module
reads a thread's rows into a ThreadSnapshot and deletes the Selection, each
thread in one transaction that holds SQLite's write lock from before the read
(one writer at a time, so one connection). SQLite has no blob table: nothing
is shared between checkpoints, so a selection never names blob rows.
"""

import sqlite3
from pathlib import Path

import orjson

from checkpoints.dburl import parse_database_url
from checkpoints.decode import DELTA_KEYS, contains_delta_snapshot, is_legacy_msgpack_checkpoint
from checkpoints.prune_rows import TASKS, Conflict, Row, ThreadSnapshot, WriteGroup
from checkpoints.sources import SourceError

SQLITE_CHECKPOINTS_SQL = """
SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, CAST(metadata AS BLOB), type,
       CASE WHEN type = 'msgpack' THEN checkpoint END,
       coalesce(length(CAST(checkpoint AS BLOB)), 0) + coalesce(length(CAST(metadata AS BLOB)), 0)
FROM checkpoints WHERE thread_id = ?
"""
SQLITE_WRITES_SQL = """
SELECT checkpoint_ns, checkpoint_id, count(*), coalesce(sum(coalesce(length(CAST(value AS BLOB)), 0)), 0),
       max(channel = ?)
FROM writes WHERE thread_id = ?
GROUP BY checkpoint_ns, checkpoint_id
"""


class SqliteMaintenance:
    """Per-thread transactions on SQLite: one writer at a time, so one connection."""

    workers = 1

    def __init__(self, url):
        self.url = url
        self.path = Path(parse_database_url(url)["NAME"])

    def connect(self):
        if not self.path.is_file():
            raise SourceError(f"{self.url}: no such SQLite file")
        try:
            # mode=rw: never create a database where there was none.
            return sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=30, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise SourceError(f"cannot open {self.url}: {e}") from None

    @staticmethod
    def retryable(exc) -> bool:
        # Lock timeouts (a writer held the database for `timeout` seconds).
        if isinstance(exc, sqlite3.OperationalError):
            return "locked" in str(exc) or "busy" in str(exc)
        return isinstance(exc, Conflict)

    @staticmethod
    def broken(conn) -> bool:
        return False

    @staticmethod
    def disk_bytes(conn) -> int:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
        return pages * size

    @staticmethod
    def flush_stats(conn):
        pass  # SQLite counts free pages in the file itself

    @staticmethod
    def release(conn):
        conn.close()

    @classmethod
    def space(cls, conn) -> dict:
        """Free pages and the file's bytes: what a VACUUM changes."""
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        return {"free_pages": free, "bytes": cls.disk_bytes(conn)}

    @staticmethod
    def vacuum(conn):
        # SQLite's VACUUM rebuilds the whole file without its free pages (it
        # cannot do one table); it waits up to the connection's timeout for
        # other connections' transactions to end.
        conn.execute("VACUUM")

    @staticmethod
    def candidates(conn, floor, only=None):
        rows = conn.execute("SELECT DISTINCT thread_id FROM checkpoints WHERE checkpoint_id < ?", (floor,))
        found = {r[0] for r in rows}
        if only is not None:
            found &= set(only)
        return sorted(found)

    def prune_thread(self, conn, thread_id, choose, dry_run, *, metadata=False):
        # IMMEDIATE: take the write lock before reading, so that what we read
        # is what we delete (SQLite has one writer at a time). `metadata` is
        # read anyway: SQLite's read of the checkpoints carries it.
        conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
        try:
            snapshot = self._read(conn, thread_id)
            selection = choose(snapshot)
            if selection is not None and selection.skip is None and not dry_run:
                self._delete(conn, thread_id, selection)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return selection

    @staticmethod
    def _read(conn, thread_id):
        checkpoints = []
        delta = False
        latest_root, latest_metadata = None, None
        for ns, cid, parent, meta, type_, data, size in conn.execute(SQLITE_CHECKPOINTS_SQL, (thread_id,)):
            try:
                metadata = orjson.loads(meta) if meta else {}
            except orjson.JSONDecodeError:
                metadata = None
            root = None
            if isinstance(metadata, dict):
                delta = delta or any(k in metadata for k in DELTA_KEYS)
                parents = metadata.get("parents")
                if isinstance(parents, dict) and isinstance(parents.get(""), str):
                    root = parents[""]
            if data is not None and not delta and contains_delta_snapshot(data):
                delta = True
            checkpoints.append(Row(ns, cid, parent, root, size, None, is_legacy_msgpack_checkpoint(data)))
            if ns == "" and (latest_root is None or cid > latest_root):
                latest_root, latest_metadata = cid, metadata
        writes = {
            (ns, cid): WriteGroup(n, size, bool(tasks))
            for ns, cid, n, size, tasks in conn.execute(SQLITE_WRITES_SQL, (TASKS, thread_id))
        }
        return ThreadSnapshot(thread_id, checkpoints, writes, {}, delta, latest_metadata)

    @staticmethod
    def _delete(conn, thread_id, selection):
        steps = [
            ("DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
             selection.writes, selection.write_rows),
            ("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
             selection.checkpoints, len(selection.checkpoints)),
            ("UPDATE checkpoints SET parent_checkpoint_id = NULL"
             " WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
             selection.parents, len(selection.parents)),
        ]
        for sql, keys, expected in steps:
            if not keys:
                continue
            before = conn.total_changes
            conn.executemany(sql, [(thread_id, ns, cid) for ns, cid in keys])
            if conn.total_changes - before != expected:
                raise Conflict(f"{thread_id!r}: {conn.total_changes - before} rows changed where {expected} were selected")
