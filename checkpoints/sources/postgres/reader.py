"""Reader of the PostgresSaver schema (langgraph-checkpoint-postgres).

Incremental reads rely on PostgreSQL's own commit bookkeeping rather than on
checkpoint ids: writers commit out of id order, so "id > last seen" loses
late commits. Every row carries the id of the transaction that wrote it
(xmin). A row not visible in the previous sync's snapshot was written by a
transaction at or after that snapshot's xmin, so "xmin >= previous xmin"
(modulo 2^32) finds every new or rewritten row, late commits included, at the
price of re-reading a few rows that were already seen.
"""

import json
import time
from functools import partial

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from checkpoints.dburl import redact
from checkpoints.ids import version_text
from checkpoints import sources
from checkpoints.sources import AppendedRows, BlobRow, CheckpointRow, ScannedURIs, SourceError, ThreadRows, WriteRow, first_line
from checkpoints.uris import scan_windows

_XID_WRAP = 2**32
# Only fetch a value's bytes when they may contain a URI of a blob store, or
# when they are encrypted (we cannot search ciphertext). The nested CASE
# scans each value once for "://" and only then for the three schemes. A
# value above WHOLE_VALUE_LIMIT comes as an empty bytea instead (no value
# that large is empty): the reader then scans it in windows.
_FETCH_IF_MAY_HOLD_URI = (
    "CASE WHEN NOT {fresh} THEN NULL"
    " WHEN type LIKE '%%+%%' THEN {col}"
    " WHEN position('\\x3a2f2f'::bytea in {col}) = 0 THEN NULL"  # ://
    " WHEN position('\\x73333a2f2f'::bytea in {col}) > 0"  # s3://
    "   OR position('\\x6d696e696f3a2f2f'::bytea in {col}) > 0"  # minio://
    "   OR position('\\x66696c653a2f2f'::bytea in {col}) > 0"  # file://
    "   THEN CASE WHEN octet_length({col}) > %(whole)s THEN ''::bytea ELSE {col} END"
    " END"
)
# One window of a large value, by its primary key (substring is 1-based).
_WINDOW_SQL = {
    "blob": "SELECT substring(blob from %s for %s) FROM checkpoint_blobs"
            " WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = %s",
    "write": "SELECT substring(blob from %s for %s) FROM checkpoint_writes"
             " WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s AND task_id = %s AND idx = %s",
}
# age() counts back from one transaction id that stays fixed for our whole
# transaction, so "at or after the previous snapshot's xmin" is a comparison
# of two ages: integer arithmetic, no text conversion per row.
_FRESH = "(%(all)s OR age(xmin) <= age(%(lo)s::text::xid))"


class PostgresReader:
    kind = "postgres"

    def __init__(self, url: str, *, connect_timeout: int = 10):
        self.url = url
        self.connect_timeout = connect_timeout
        self.conn = None

    def __enter__(self):
        try:
            self.conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout, autocommit=False)
        except psycopg.Error as e:
            raise SourceError(f"cannot connect to {redact(self.url)}: {first_line(e)}") from None
        set_json_loads(_json_loads, self.conn)
        # JIT compilation costs more than it saves on these scans.
        self.conn.execute("SET jit = off")
        self.conn.commit()
        # One snapshot for the whole read: counts, changed rows and thread
        # rows all describe the same moment.
        self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return self

    def __exit__(self, *exc):
        if self.conn is not None:
            try:
                self.conn.rollback()
                self.conn.close()
            except psycopg.Error:
                pass
        return False

    def _query(self, sql, params=None, row_type=None):
        """All rows, as tuples or as `row_type` (a NamedTuple matching the SELECT list)."""
        try:
            cursor = self.conn.cursor(row_factory=_rows_as(row_type)) if row_type else self.conn.cursor()
            return cursor.execute(sql, params).fetchall()
        except psycopg.Error as e:
            raise SourceError(f"reading {redact(self.url)} failed: {first_line(e)}") from None

    def layout(self) -> str:
        """`standard`, or a SourceError that says why the schema cannot be read."""
        rows = self._query(
            """
            SELECT t.name, a.attname
            FROM (VALUES ('checkpoints'), ('checkpoint_blobs'), ('checkpoint_writes')) AS t(name)
            LEFT JOIN pg_attribute a
              ON a.attrelid = to_regclass(t.name) AND a.attnum > 0 AND NOT a.attisdropped
            """
        )
        columns = {}
        for table, column in rows:
            columns.setdefault(table, set())
            if column:
                columns[table].add(column)
        missing = [t for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes") if not columns.get(t)]
        if missing:
            raise SourceError(
                f"{redact(self.url)} has no LangGraph table {', '.join(missing)}: is this a PostgresSaver "
                "database, and has the agent called setup()? (the console never creates tables)"
            )
        if "checkpoint_id" not in columns["checkpoints"] or "version" not in columns["checkpoint_blobs"]:
            raise SourceError(
                f"{redact(self.url)} uses the shallow layout of the deprecated ShallowPostgresSaver "
                "(one checkpoint per thread, no history); it is not supported. Switch the agents to "
                "PostgresSaver with durability='exit' to keep the same footprint with a readable schema."
            )
        needed = {
            "checkpoints": {"thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "checkpoint", "metadata"},
            "checkpoint_blobs": {"thread_id", "checkpoint_ns", "channel", "version", "type", "blob"},
            "checkpoint_writes": {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "type", "blob"},
        }
        for table, cols in needed.items():
            absent = cols - columns[table]
            if absent:
                raise SourceError(f"{redact(self.url)}: table {table} lacks column(s) {', '.join(sorted(absent))}")
        return "standard"

    def space(self) -> dict:
        """What the three LangGraph tables hold on disk, and whether anything vacuums them.

        Deleted rows (a prune) stay as dead rows until VACUUM, plain or
        automatic, marks their space reusable; with autovacuum off (globally,
        or per table by a reloption) or behind, the tables grow however much
        is pruned. Autovacuum runs only with both `autovacuum` and
        `track_counts` on. Read from the statistics views and the catalog: no
        table is scanned.
        """
        rows = self._query(
            """
            SELECT t.name, s.n_live_tup, s.n_dead_tup, s.last_vacuum, s.last_autovacuum,
                   pg_total_relation_size(c.oid), coalesce(c.reloptions, '{}')
            FROM (VALUES (1, 'checkpoints'), (2, 'checkpoint_blobs'), (3, 'checkpoint_writes')) AS t(n, name)
            JOIN pg_class c ON c.oid = to_regclass(t.name)
            LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            ORDER BY t.n
            """
        )
        ((autovacuum, track_counts),) = self._query(
            "SELECT current_setting('autovacuum') = 'on', current_setting('track_counts') = 'on'"
        )
        server_on = bool(autovacuum and track_counts)
        tables = []
        for name, live, dead, vacuumed, autovacuumed, size, options in rows:
            tables.append({
                "table": name, "live_rows": live or 0, "dead_rows": dead or 0,
                "last_vacuum": vacuumed.isoformat() if vacuumed else None,
                "last_autovacuum": autovacuumed.isoformat() if autovacuumed else None,
                "autovacuum": server_on and _autovacuum_enabled(options), "bytes": size,
            })
        return {"kind": "postgres", "autovacuum": server_on, "tables": tables}

    def unchanged_since(self, since: dict, now: dict) -> bool:
        """True when no transaction can have written anything since the `since` snapshot: exact and free.

        Every row written (or deleted) after a snapshot comes from a
        transaction that was in progress then or got its id after it. When the
        earlier snapshot had none in progress (xmin = xmax) and no id has been
        handed out since (same xmax), no row changed, anywhere on the server:
        the change scans and the row counts can be skipped. Any write on the
        server, in any database, moves xmax, so this only helps a quiet server;
        it never hides a change.

        >>> r = PostgresReader("postgresql://x")
        >>> r.unchanged_since({"xmin": 7, "xmax": 7}, {"xmin": 7, "xmax": 7})
        True
        >>> r.unchanged_since({"xmin": 6, "xmax": 7}, {"xmin": 7, "xmax": 7}), r.unchanged_since({"xmin": 7, "xmax": 7}, {"xmin": 8, "xmax": 8})
        (False, False)
        """
        return bool(since) and since.get("xmin") == since.get("xmax") == now["xmax"] and now["xmin"] == now["xmax"]

    def cover_transactions(self, xids, attempts: int = 100) -> None:
        """Make sure this read's snapshot sees these transactions (32-bit ids), taking a new one if not.

        A transaction's commit record reaches the WAL, where logical decoding
        finds it, a moment before the transaction becomes visible to new
        snapshots: a snapshot taken in that moment would read its thread as
        it was before, and the slot would then be confirmed past it.
        """
        if not xids:
            return
        for _ in range(attempts):
            ((xmax,),) = self._query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            epoch = xmax & ~0xFFFFFFFF
            full = [epoch | x if (epoch | x) < xmax else (epoch | x) - 2**32 for x in xids]
            ((unseen,),) = self._query(
                "SELECT count(*) FROM unnest(%s::text[]) AS x"
                " WHERE NOT pg_visible_in_snapshot(x::xid8, pg_current_snapshot())",
                ([str(x) for x in full if x > 0],),
            )
            if not unseen:
                return
            self.conn.rollback()
            time.sleep(0.01)
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        raise SourceError(f"{redact(self.url)}: {unseen} committed transaction(s) stay invisible to new snapshots")

    def watermark(self) -> dict:
        """The snapshot this read sees, to find what changed after it next time."""
        ((xmin, xmax),) = self._query(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,"
            " pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        )
        return {"xmin": xmin, "xmax": xmax}

    def _fresh_params(self, since, now):
        if not since or "xmin" not in since:
            return {"all": True, "lo": 3}
        lo = since["xmin"]
        if now["xmax"] - lo >= _XID_WRAP // 2 - 1_000_000:
            # So many transactions since the last sync that 32-bit ages may
            # wrap: treat everything as new.
            return {"all": True, "lo": 3}
        return {"all": False, "lo": max(lo % _XID_WRAP, 3)}

    def totals(self) -> dict:
        ((c, b, w),) = self._query(
            "SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM checkpoint_blobs),"
            " (SELECT count(*) FROM checkpoint_writes)"
        )
        return {"checkpoints": c, "blobs": b, "writes": w}

    def thread_ids(self) -> list:
        return [r[0] for r in self._query("SELECT DISTINCT thread_id FROM checkpoints")]

    def thread_counts(self, table: str) -> dict:
        sql = {
            "checkpoints": "SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id",
            "blobs": "SELECT thread_id, count(*) FROM checkpoint_blobs GROUP BY thread_id",
            "writes": "SELECT thread_id, count(*) FROM checkpoint_writes GROUP BY thread_id",
        }[table]
        return dict(self._query(sql))

    def changed_thread_ids(self, since: dict, now: dict) -> set:
        """Threads with a checkpoint or write row written since `since`.

        Blob rows are not scanned: PostgresSaver.put writes them in the same
        transaction as the checkpoint row that names them, so a new blob row
        means a new checkpoint row in the same thread. Blob rows deleted by
        other tools are found by the row-count comparison of the sync.

        One query per table, with a predicate PostgreSQL may run in parallel
        workers (age() is parallel-restricted, and a UNION is planned
        serially): the two whole-table scans are most of an incremental sync.
        """
        where, params = _written_since(self._fresh_params(since, now), now)
        changed = set()
        for table in ("checkpoints", "checkpoint_writes"):
            changed.update(r[0] for r in self._query(f"SELECT DISTINCT thread_id FROM {table} WHERE {where}", params))
        return changed

    def read_threads(self, thread_ids, since=None, now=None) -> list:
        """Every row of these threads; values fetched only where useful."""
        ids = list(thread_ids)
        params = {**self._fresh_params(since, now), "ids": ids, "whole": sources.WHOLE_VALUE_LIMIT}
        threads = {t: ThreadRows(t) for t in ids}
        for r in self._query(
            f"""
            SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                   octet_length(checkpoint::text) + octet_length(metadata::text),
                   metadata::text, checkpoint->'channel_versions', checkpoint->>'ts',
                   CASE WHEN (checkpoint->'channel_values')::text ~ '(s3|minio|file)://'
                        THEN checkpoint->'channel_values' END,
                   NULL, NULL, {_FRESH},
                   CASE WHEN jsonb_typeof(metadata->'step') = 'number' THEN metadata->>'step' END,
                   CASE WHEN jsonb_typeof(metadata->'source') = 'string' THEN metadata->>'source' END,
                   metadata IS NOT NULL
            FROM checkpoints WHERE thread_id = ANY(%(ids)b)
            """,
            params,
            CheckpointRow,
        ):
            threads[r[0]].checkpoints.append(r)
        for r in self._query(
            f"""
            SELECT thread_id, checkpoint_ns, channel, version, type, coalesce(octet_length(blob), 0),
                   {_FETCH_IF_MAY_HOLD_URI.format(col='blob', fresh=_FRESH)}, {_FRESH}
            FROM checkpoint_blobs WHERE thread_id = ANY(%(ids)b)
            """,
            params,
            BlobRow,
        ):
            if r[6] == b"" and r[5]:  # larger than WHOLE_VALUE_LIMIT: scanned in windows
                r = r._replace(data=self._scan("blob", r[5], r[:4]))
            threads[r[0]].blobs.append(r)
        for r in self._query(
            f"""
            SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type,
                   coalesce(octet_length(blob), 0),
                   {_FETCH_IF_MAY_HOLD_URI.format(col='blob', fresh=_FRESH)}, {_FRESH}
            FROM checkpoint_writes WHERE thread_id = ANY(%(ids)b)
            """,
            params,
            WriteRow,
        ):
            if r[8] == b"" and r[7]:  # larger than WHOLE_VALUE_LIMIT: scanned in windows
                r = r._replace(data=self._scan("write", r[7], r[:5]))
            threads[r[0]].writes.append(r)
        return list(threads.values())

    def read_appended(self, appended: dict) -> list:
        """The rows behind what these threads gained ({thread id: capture.Appended}), by key.

        Three statements for the whole batch, each index lookups by key: the
        inserted checkpoints with their parents' channel versions, the blobs
        they name, and the writes of them and of the checkpoints that gained
        writes. Nothing else of the threads is read.
        """
        out = {t: AppendedRows(t) for t in appended}
        keys = [(t, ns, cid) for t, a in appended.items() for ns, cid in a.checkpoints]
        written = {(t, ns, cid) for t, a in appended.items() for ns, cid in a.written} | set(keys)
        # A row the slot reports is searched for URIs ("fresh") even when it predates the previous
        # snapshot's xmin: it was committed after that sync's peek, and never mirrored. So are all
        # writes read (few, and most of them new); blobs inserted earlier, which new checkpoints
        # name again, are not: the mirror holds their references.
        params = {"whole": sources.WHOLE_VALUE_LIMIT}
        for r in self._query(
            f"""
            SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id,
                   octet_length(c.checkpoint::text) + octet_length(c.metadata::text),
                   c.metadata::text, c.checkpoint->'channel_versions', c.checkpoint->>'ts',
                   CASE WHEN (c.checkpoint->'channel_values')::text ~ '(s3|minio|file)://'
                        THEN c.checkpoint->'channel_values' END,
                   NULL, NULL, TRUE,
                   CASE WHEN jsonb_typeof(c.metadata->'step') = 'number' THEN c.metadata->>'step' END,
                   CASE WHEN jsonb_typeof(c.metadata->'source') = 'string' THEN c.metadata->>'source' END,
                   c.metadata IS NOT NULL,
                   p.checkpoint->'channel_versions'
            FROM unnest(%(t)b::text[], %(n)b::text[], %(c)b::text[]) AS k(t, n, c)
            JOIN checkpoints c ON c.thread_id = k.t AND c.checkpoint_ns = k.n AND c.checkpoint_id = k.c
            LEFT JOIN checkpoints p ON p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns
                                   AND p.checkpoint_id = c.parent_checkpoint_id
            """,
            {**params, **_columns(keys, "t", "n", "c")},
        ):
            rows = out[r[0]]
            rows.checkpoints.append(tuple.__new__(CheckpointRow, r[:15]))
            if r[3] is not None and r[15] is not None:
                rows.parent_versions[(r[1], r[3])] = r[15]
        named = {
            (c.thread_id, c.checkpoint_ns, channel, v if type(v) is str else version_text(v))
            for rows in out.values() for c in rows.checkpoints if isinstance(c.channel_versions, dict)
            for channel, v in c.channel_versions.items()
        }
        for r in self._query(
            f"""
            SELECT b.thread_id, b.checkpoint_ns, b.channel, b.version, b.type, coalesce(octet_length(b.blob), 0),
                   {_FETCH_IF_MAY_HOLD_URI.format(col='b.blob', fresh='k.f').replace("type LIKE", "b.type LIKE")}, k.f
            FROM unnest(%(t)b::text[], %(n)b::text[], %(ch)b::text[], %(v)b::text[], %(f)b::bool[]) AS k(t, n, ch, v, f)
            JOIN checkpoint_blobs b ON b.thread_id = k.t AND b.checkpoint_ns = k.n AND b.channel = k.ch AND b.version = k.v
            """,
            {**params, **_columns({(*key, key[1:] in appended[key[0]].blobs) for key in named}, "t", "n", "ch", "v", "f")},
            BlobRow,
        ):
            if r[6] == b"" and r[5]:
                r = r._replace(data=self._scan("blob", r[5], r[:4]))
            out[r[0]].blobs.append(r)
        for r in self._query(
            f"""
            SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel, w.type,
                   coalesce(octet_length(w.blob), 0),
                   {_FETCH_IF_MAY_HOLD_URI.format(col='w.blob', fresh='TRUE').replace("type LIKE", "w.type LIKE")}, TRUE
            FROM unnest(%(t)b::text[], %(n)b::text[], %(c)b::text[]) AS k(t, n, c)
            JOIN checkpoint_writes w ON w.thread_id = k.t AND w.checkpoint_ns = k.n AND w.checkpoint_id = k.c
            """,
            {**params, **_columns(written, "t", "n", "c")},
            WriteRow,
        ):
            if r[8] == b"" and r[7]:
                r = r._replace(data=self._scan("write", r[7], r[:5]))
            out[r[0]].writes.append(r)
        return list(out.values())

    def _scan(self, kind, size, key):
        """The URIs in one large value, read in windows of SCAN_WINDOW bytes within this snapshot."""

        def read(offset, length):
            rows = self._query(_WINDOW_SQL[kind], (offset + 1, length, *key))
            return bytes(rows[0][0]) if rows and rows[0][0] is not None else b""

        return ScannedURIs(scan_windows(read, size, sources.SCAN_WINDOW))


def _autovacuum_enabled(reloptions) -> bool:
    """False when a table's reloptions turn autovacuum off (PostgreSQL's boolean spellings).

    >>> _autovacuum_enabled([]), _autovacuum_enabled(["fillfactor=90", "autovacuum_enabled=off"])
    (True, False)
    >>> _autovacuum_enabled(["autovacuum_enabled=TRUE"]), _autovacuum_enabled(["autovacuum_enabled=0"])
    (True, False)
    """
    for option in reloptions or ():
        key, _, value = option.partition("=")
        if key.strip().lower() == "autovacuum_enabled":
            return value.strip().lower() not in ("false", "off", "no", "0", "f", "n", "of")
    return True


def _columns(keys, *names):
    """Key tuples as one array per column, for unnest().

    >>> _columns({("t", "", "1")}, "t", "n", "c")
    {'t': ['t'], 'n': [''], 'c': ['1']}
    """
    columns = list(zip(*keys)) or [()] * len(names)
    return {name: list(column) for name, column in zip(names, columns)}


def _json_loads(data):
    """orjson, or the standard parser for numbers orjson refuses (beyond a double, which jsonb keeps)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)


def _rows_as(row_type):
    """A psycopg row factory building `row_type` tuples in C: tuple.__new__(row_type, values)."""
    make = partial(tuple.__new__, row_type)
    return lambda cursor: make


def _written_since(fresh, now):
    """A parallel-safe WHERE for rows written at or after the xid `fresh["lo"]`, and its params.

    xmin is a 32-bit counter: once it wrapped, the newest ids are small again.

    >>> _written_since({"all": True, "lo": 3}, {"xmax": 10})
    ('TRUE', {})
    >>> _written_since({"all": False, "lo": 100}, {"xmax": 150})
    ('xmin::text::bigint >= %(lo)s', {'lo': 100, 'hi': 150})
    >>> _written_since({"all": False, "lo": 2**32 - 5}, {"xmax": 2**32 + 20})[0]
    'xmin::text::bigint >= %(lo)s OR xmin::text::bigint < %(hi)s'
    """
    if fresh["all"]:
        return "TRUE", {}
    lo, hi = fresh["lo"], now["xmax"] % _XID_WRAP
    where = "xmin::text::bigint >= %(lo)s" + ("" if hi >= lo else " OR xmin::text::bigint < %(hi)s")
    return where, {"lo": lo, "hi": hi}
