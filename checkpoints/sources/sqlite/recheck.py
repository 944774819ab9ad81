"""The sweep's last look at a SQLite store (docs/architecture.md, "Source kinds").

`SqliteRecheck` streams the rows (checkpoints, writes) containing a marker,
then refuses when encrypted values were written since the sweep's sync. Its
orphan rows are orphans.py's.
"""

import json
import sqlite3
from pathlib import Path

from checkpoints.dburl import parse_database_url
from checkpoints.sources import SourceError
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


def sqlite_path(url: str, mode: str) -> str:
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
            self.conn = sqlite3.connect(sqlite_path(self.url, "ro"), uri=True, timeout=30, isolation_level=None)
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
