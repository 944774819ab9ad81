"""The sweep's last look at a PostgreSQL store (docs/architecture.md, "Source kinds").

`PostgresRecheck` streams the rows (checkpoints, blobs, writes) containing a
marker, in a fresh snapshot per batch, then refuses when encrypted values were
written since the sweep's sync. Its orphan rows are orphans.py's.
"""

import psycopg

from checkpoints.sources import SourceError
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
