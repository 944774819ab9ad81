"""Reader of the SqliteSaver schema (langgraph-checkpoint-sqlite).

SQLite has one writer at a time, so rowids grow in commit order: rows with a
rowid above the last one seen are new (SqliteSaver's INSERT OR REPLACE gives a
replaced row a new rowid too). SQLite reuses the largest rowid after that row
is deleted, so the watermark also remembers which row held it and falls back
to a full comparison when another row holds it now.
"""

import hashlib
import json
import sqlite3
from pathlib import Path

from checkpoints.dburl import parse_database_url
from checkpoints import sources
from checkpoints.sources import CheckpointRow, ScannedURIs, SourceError, ThreadRows, WriteRow
from checkpoints.uris import scan_windows

# Fetch a value only when it may name a blob URI, or is encrypted (ciphertext
# cannot be searched); "://" is looked for first so most values are scanned
# once. A value above WHOLE_VALUE_LIMIT comes as an empty blob instead (no
# value that large is empty), and the reader scans it in windows through the
# incremental blob API: SQLite runs in this process, and instr() or substr()
# on it would load the whole value into this process's memory.
_FETCH = (
    "CASE WHEN rowid <= ? THEN NULL"
    " WHEN type LIKE '%+%' THEN CAST({col} AS BLOB)"
    " WHEN {size} > ? THEN X''"
    " WHEN instr({col}, X'3a2f2f') > 0 AND (instr({col}, X'73333a2f2f') > 0"
    " OR instr({col}, X'6d696e696f3a2f2f') > 0 OR instr({col}, X'66696c653a2f2f') > 0) THEN CAST({col} AS BLOB)"
    " END"
)


def byte_length(col: str) -> str:
    """SQL for the contract's `coalesce(length(CAST(col AS BLOB)), 0)`, without loading a blob.

    The same number, but length() of a blob column reads only the row's
    header, while the CAST made SQLite load the whole value into this
    process's memory first (a 200 MB value: 200 MB more, just for its size).
    """
    return f"CASE typeof({col}) WHEN 'blob' THEN length({col}) ELSE coalesce(length(CAST({col} AS BLOB)), 0) END"


class SqliteReader:
    kind = "sqlite"

    def __init__(self, url: str):
        self.url = url
        self.path = parse_database_url(url)["NAME"]
        self.conn = None

    def __enter__(self):
        path = Path(self.path)
        if not path.is_file():
            raise SourceError(f"{self.url}: no such SQLite file")
        try:
            # mode=ro: the console never writes while syncing, and never
            # creates a file or tables where none were.
            # The sync reads the next batch on a helper thread; calls never overlap.
            self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            self.conn.execute("BEGIN")  # one read snapshot for the whole sync
        except sqlite3.Error as e:
            raise SourceError(f"cannot open {self.url}: {e}") from None
        return self

    def __exit__(self, *exc):
        if self.conn is not None:
            try:
                self.conn.rollback()
            finally:
                self.conn.close()
        return False

    def _query(self, sql, params=()):
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise SourceError(f"reading {self.url} failed: {e}") from None

    def layout(self) -> str:
        columns = {}
        for table in ("checkpoints", "writes"):
            columns[table] = {r[1] for r in self._query("SELECT * FROM pragma_table_info(?)", (table,))}
        missing = [t for t, cols in columns.items() if not cols]
        if missing:
            raise SourceError(
                f"{self.url} has no LangGraph table {', '.join(missing)}: is this a SqliteSaver database, "
                "and has the agent called setup()? (the console never creates tables)"
            )
        needed = {
            "checkpoints": {"thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "type", "checkpoint", "metadata"},
            "writes": {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "type", "value"},
        }
        for table, cols in needed.items():
            absent = cols - columns[table]
            if absent:
                raise SourceError(f"{self.url}: table {table} lacks column(s) {', '.join(sorted(absent))}")
        return "standard"

    def space(self) -> dict:
        """The file's pages and its free pages: deleted rows leave free pages that only VACUUM returns.

        `auto_vacuum` (none, full, incremental) is SQLite's own: with `full`
        the file shrinks at each commit; it must be set before the first table.
        """
        ((page_size,),) = self._query("PRAGMA page_size")
        ((page_count,),) = self._query("PRAGMA page_count")
        ((free_pages,),) = self._query("PRAGMA freelist_count")
        ((auto_vacuum,),) = self._query("PRAGMA auto_vacuum")
        return {
            "kind": "sqlite", "page_size": page_size, "page_count": page_count, "free_pages": free_pages,
            "bytes": page_count * page_size, "free_bytes": free_pages * page_size,
            "auto_vacuum": {0: "none", 1: "full", 2: "incremental"}.get(auto_vacuum, str(auto_vacuum)),
        }

    def unchanged_since(self, since: dict, now: dict) -> bool:
        """SQLite offers no exact cheap signal of deletions: always look."""
        return False

    def watermark(self) -> dict:
        mark = {}
        for table in ("checkpoints", "writes"):
            row = self._query(f"SELECT rowid, thread_id, checkpoint_ns, checkpoint_id FROM {table} ORDER BY rowid DESC LIMIT 1")
            mark[table] = [row[0][0], _key_digest(row[0][1:])] if row else [0, None]
        return mark

    def totals(self) -> dict:
        ((c, w),) = self._query("SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM writes)")
        return {"checkpoints": c, "blobs": 0, "writes": w}

    def thread_ids(self) -> list:
        return [r[0] for r in self._query("SELECT DISTINCT thread_id FROM checkpoints")]

    def thread_counts(self, table: str) -> dict:
        if table == "blobs":
            return {}
        name = {"checkpoints": "checkpoints", "writes": "writes"}[table]
        return dict(self._query(f"SELECT thread_id, count(*) FROM {name} GROUP BY thread_id"))

    def _since_rowids(self, since):
        """Rowid floors per table, or None when a full comparison is needed."""
        if not since:
            return {"checkpoints": 0, "writes": 0}
        floors = {}
        for table in ("checkpoints", "writes"):
            rowid, key = since.get(table, [0, None])
            if rowid and key is not None:
                row = self._query(f"SELECT thread_id, checkpoint_ns, checkpoint_id FROM {table} WHERE rowid = ?", (rowid,))
                # A digest since the key may hold a NUL that the mirror's jsonb cannot;
                # watermarks saved before that hold the key itself.
                if not row or (_key_digest(row[0]) if isinstance(key, str) else list(row[0])) != key:
                    return None  # the watermark row was deleted or its rowid reused
            floors[table] = rowid
        return floors

    def changed_thread_ids(self, since: dict, now: dict):
        """Threads with rows written since `since`; None when it cannot tell."""
        floors = self._since_rowids(since)
        if floors is None:
            return None
        rows = self._query(
            "SELECT thread_id FROM checkpoints WHERE rowid > ? UNION SELECT thread_id FROM writes WHERE rowid > ?",
            (floors["checkpoints"], floors["writes"]),
        )
        return {r[0] for r in rows}

    def read_threads(self, thread_ids, since=None, now=None) -> list:
        ids = list(thread_ids)
        floors = self._since_rowids(since) or {"checkpoints": 0, "writes": 0}
        threads = {t: ThreadRows(t) for t in ids}
        # One placeholder per id, at most 500 a query (SQLite before 3.32 allows
        # 999): json_each() would cut an id at a NUL character and miss its rows.
        for i in range(0, len(ids), 500):
            self._read_rows(threads, ids[i : i + 500], floors)
        return list(threads.values())

    def _read_rows(self, threads, ids, floors):
        marks = ", ".join("?" * len(ids))
        whole = sources.WHOLE_VALUE_LIMIT
        for r in self._query(
            f"""
            SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                   {byte_length('checkpoint')} + {byte_length('metadata')},
                   CAST(metadata AS BLOB), type,
                   {_FETCH.format(col='checkpoint', size=byte_length('checkpoint'))},
                   rowid > ?, rowid
            FROM checkpoints WHERE thread_id IN ({marks})
            """,
            (floors["checkpoints"], whole, floors["checkpoints"], *ids),
        ):
            data = r[7]
            if data == b"" and r[4] > whole:  # larger than WHOLE_VALUE_LIMIT: scanned in windows
                data = self._scan("checkpoints", "checkpoint", r[9])
            threads[r[0]].checkpoints.append(
                CheckpointRow(
                    r[0], r[1], r[2], r[3], r[4], _json_or_none(r[5]), None, None,
                    value_type=r[6], value_data=data, fresh=bool(r[8]),
                )
            )
        for r in self._query(
            f"""
            SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type,
                   {byte_length('value')},
                   {_FETCH.format(col='value', size=byte_length('value'))},
                   rowid > ?, rowid
            FROM writes WHERE thread_id IN ({marks})
            """,
            (floors["writes"], whole, floors["writes"], *ids),
        ):
            data = r[8]
            if data == b"" and r[7] > whole:  # larger than WHOLE_VALUE_LIMIT: scanned in windows
                data = self._scan("writes", "value", r[10])
            threads[r[0]].writes.append(WriteRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], data, bool(r[9])))

    def _scan(self, table, column, rowid):
        """The URIs in one large value, read in windows of SCAN_WINDOW bytes within this read transaction."""
        try:
            with self.conn.blobopen(table, column, rowid, readonly=True) as blob:

                def read(offset, length):
                    blob.seek(offset)
                    return blob.read(length)

                return ScannedURIs(scan_windows(read, len(blob), sources.SCAN_WINDOW))
        except sqlite3.Error as e:
            raise SourceError(f"reading {self.url} failed: {e}") from None


def _key_digest(key) -> str:
    """A stand-in for a row's (thread_id, checkpoint_ns, checkpoint_id) that any JSON store can hold.

    >>> _key_digest(("t\\x00", "", "1")) == _key_digest(["t\\x00", "", "1"]) != _key_digest(("t", "", "1"))
    True
    """
    text = json.dumps(list(key))  # NUL and lone surrogates become ASCII escapes
    return hashlib.sha256(text.encode()).hexdigest()


def _json_or_none(data):
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
