"""A SQLite store's orphan rows (docs/architecture.md, "Source kinds"): write rows whose checkpoint is gone
(SqliteSaver keeps no blob rows); `checkpoints/orphans.py` calls `orphans()` for the sweep.
"""

import sqlite3

from checkpoints.decode import DELTA_KEYS
from checkpoints.ids import UUID6_GLOB
from checkpoints.sources import open_reader
from checkpoints.sources.sqlite.recheck import sqlite_path

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
    conn = sqlite3.connect(sqlite_path(url, "rw"), uri=True, timeout=30, isolation_level=None)
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
