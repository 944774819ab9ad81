"""The sweep's last look at a SQLite store, and its orphan rows (docs/architecture.md, "Source kinds").

`SqliteRecheck` streams the rows (checkpoints, writes) containing a marker,
then refuses when encrypted values were written since the sweep's sync.
`orphans()` counts or deletes write rows whose checkpoint is gone (SqliteSaver
keeps no blob rows).
"""

import json
import sqlite3
from pathlib import Path

from checkpoints.dburl import parse_database_url
from checkpoints.decode import DELTA_KEYS
from checkpoints.ids import UUID6_GLOB
from checkpoints.sources import SourceError, open_reader
from checkpoints.sources.recheck import ENCRYPTED_SINCE_SYNC, changed_since

_SQLITE_ENCRYPTED = """
SELECT EXISTS (SELECT 1 FROM checkpoints
               WHERE type LIKE '%+%' AND (:all OR thread_id IN (SELECT value FROM json_each(:ids))))
    OR EXISTS (SELECT 1 FROM writes
               WHERE type LIKE '%+%' AND (:all OR thread_id IN (SELECT value FROM json_each(:ids))))
"""


def _sqlite_rows_sql(markers: int) -> str:
    # One placeholder per marker (a scope has one to four); values are bound.
    found = " OR ".join(["instr(data, ?) > 0"] * markers)
    return (
        "SELECT data FROM (SELECT CAST(checkpoint AS BLOB) AS data FROM checkpoints"
        f" UNION ALL SELECT CAST(value AS BLOB) FROM writes) WHERE {found}"
    )


def _sqlite_path(url: str, mode: str) -> str:
    path = Path(parse_database_url(url)["NAME"])
    if not path.is_file():
        raise SourceError(f"{url}: no such SQLite file")
    return f"{path.resolve().as_uri()}?mode={mode}"


class SqliteRecheck:
    """One read-only connection kept across the sweep's batches (autocommit: each statement a fresh snapshot)."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None

    def values(self, markers: list, since: dict | None):
        if self.conn is None:
            self.conn = sqlite3.connect(_sqlite_path(self.url, "ro"), uri=True, timeout=30, isolation_level=None)
        for (data,) in self.conn.execute(_sqlite_rows_sql(len(markers)), list(markers)):
            if data:
                yield bytes(data)
        self._no_new_encrypted_rows(since)

    def _no_new_encrypted_rows(self, since):
        changed = changed_since(self.url, since)
        if changed is not None and not changed:
            return
        if changed and any("\x00" in t for t in changed):
            changed = None  # SQLite's json_each() cuts an id at a NUL: check every thread instead
        ids = sorted(changed or ())
        (encrypted,) = self.conn.execute(_SQLITE_ENCRYPTED, {"all": changed is None, "ids": json.dumps(ids)}).fetchone()
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

_SQLITE_DELTA = " OR ".join(["instr(CAST(c.metadata AS BLOB), ?) > 0"] * len(DELTA_KEYS))
_SQLITE_ORPHAN_WRITES = f"""
FROM writes AS w
WHERE NOT EXISTS (
        SELECT 1 FROM checkpoints c
        WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)
  AND lower(w.checkpoint_id) GLOB ? AND lower(w.checkpoint_id) < ?
  AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id AND ({_SQLITE_DELTA}))
"""


def orphans(url: str, floor: str, *, dry_run: bool) -> dict:
    """The count and the delete share their WHERE clause: a dry run counts what a real run removes."""
    with open_reader(url) as reader:
        reader.layout()  # refuses non-LangGraph layouts with a clear message
    params = [UUID6_GLOB, floor, *(k.encode() for k in DELTA_KEYS)]
    conn = sqlite3.connect(_sqlite_path(url, "rw"), uri=True, timeout=30, isolation_level=None)
    try:
        if dry_run:
            (writes,) = conn.execute(f"SELECT count(*) {_SQLITE_ORPHAN_WRITES}", params).fetchone()
            return {"blobs": 0, "writes": writes, "thread_ids": []}
        conn.execute("BEGIN IMMEDIATE")  # the writer lock: the SELECT and the DELETE see the same rows
        try:
            thread_ids = [r[0] for r in conn.execute(f"SELECT DISTINCT w.thread_id {_SQLITE_ORPHAN_WRITES}", params)]
            writes = conn.execute(
                f"DELETE FROM writes WHERE rowid IN (SELECT w.rowid {_SQLITE_ORPHAN_WRITES})", params
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return {"blobs": 0, "writes": writes, "thread_ids": sorted(thread_ids)}
