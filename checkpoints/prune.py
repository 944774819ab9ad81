"""Prune: delete old checkpoints from a LangGraph source (the prune_checkpoints contract).

One function, `prune()`, does the work for the command, the maintenance page
and the schedule; `run_prune()` wraps it in a Run (the audit log and the
lock) and brings the mirror up to date afterwards.

The rules are those of `PostgresSaver.prune(strategy="keep_latest")`, with an
age and N (docs/architecture.md §4):

- a checkpoint goes when it is older than the age (its uuid6 time) and outside
  the last N of its namespace; a subgraph call's namespace (one with a ":")
  goes with the root checkpoint its `metadata.parents['']` names, and stays
  while that one stays;
- kept rows whose parent goes get a NULL parent; the writes of removed
  checkpoints go; on PostgreSQL the blob rows that removed checkpoints named
  and no remaining checkpoint of the same thread and namespace names go
  (like `_garbage_blobs`: orphans left by others are the sweep's business);
- with `whole_threads`, a thread idle for longer than the age goes whole;
- threads that must not be touched are skipped with a reason: `delta_channel`,
  `pending_writes` (writes on the latest root checkpoint: waiting at an
  interrupt, or a step in flight) and `active` (a checkpoint or write newer
  than PRUNE_ACTIVE_WINDOW), in that order of precedence. A thread is listed
  as skipped only when the policy would have removed something from it.

The mirror only proposes candidate threads (tag filters). What goes is
decided by `select()` from the source rows read inside the thread's own
transaction, and the real run deletes exactly that selection in that same
transaction, so a dry run and a real run on the same data select the same
rows. PostgreSQL runs each thread at REPEATABLE READ: rows committed by a
writer after the snapshot are invisible to the DELETEs (they name rows by
key), and a row changed under us raises a serialization failure, on which the
thread is retried from a fresh snapshot.
"""

import random
import sqlite3
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import orjson
from django.conf import settings
from django.utils import timezone

from checkpoints.dburl import parse_database_url, redact
from checkpoints.decode import DELTA_KEYS, contains_delta_snapshot, is_delta_snapshot_head, is_legacy_msgpack_checkpoint
from checkpoints.ids import is_uuid6, source_thread_id, thread_key, uuid6_floor, uuid6_time, version_text
from checkpoints.jobs import PRUNE
from checkpoints.models import PruneMark, Thread
from checkpoints.runs import RunBusy, finish_run, start_run, throttled_progress
from checkpoints.sources import SourceError, first_line, open_reader
from checkpoints.sync import refresh_threads
from checkpoints.tags import MAX_VALUE, split_tag, tag_value
from checkpoints.units import duration_text, parse_duration

SKIP_REASONS = ("delta_channel", "pending_writes", "active")
ATTEMPTS = 5  # per thread, on serialization failures, deadlocks and SQLite lock timeouts
SAMPLE_THREADS = 50  # threads described in the preview's "what goes" sample
SAMPLE_CHECKPOINTS = 5  # checkpoint keys shown per sampled thread
MARK_AHEAD = 500  # threads marked (PruneMark) in one commit before any of them is pruned
TASKS = "__pregel_tasks"
CONTRACT_KEYS = (
    "dry_run", "threads", "checkpoints", "writes", "blobs", "bytes",
    "disk_bytes_before", "disk_bytes_after", "skipped",
)


class PruneBusy(Exception):
    """A prune of the same source is already running."""


class _Conflict(Exception):
    """The rows changed between the read and the delete: retry the thread."""


class PruneMismatch(Exception):
    """A thread's deletes touched another number of rows than selected."""


# --- Policy ------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePolicy:
    """What to prune: the command's options, the page's form, a saved schedule.

    `keep_last` 0 is allowed with `whole_threads` only, and then a thread that
    does not go whole still keeps its latest checkpoint: no thread ever loses
    its latest state without going whole.

    >>> PrunePolicy(timedelta(days=30), keep_last=2, tags=(("tenant", "acme"),)).as_parameters()
    {'older_than': '30d', 'keep_last': 2, 'tags': ['tenant=acme'], 'threads': False}
    >>> PrunePolicy.from_parameters(PrunePolicy.from_options("90m", 3, ["a=b=c"], True).as_parameters())
    PrunePolicy(older_than=datetime.timedelta(seconds=5400), keep_last=3, tags=(('a', 'b=c'),), whole_threads=True, vacuum=False)
    >>> PrunePolicy.from_options("30d", keep_last=0)
    Traceback (most recent call last):
    ...
    ValueError: --keep-last must be at least 1 (0 is only allowed with --threads)
    >>> PrunePolicy.from_options("30d", tags=["tenant"])
    Traceback (most recent call last):
    ...
    ValueError: 'tenant' is not key=value
    """

    older_than: timedelta
    keep_last: int = 1
    tags: tuple = ()
    whole_threads: bool = False
    # A plain VACUUM of the pruned tables after a real run (never VACUUM FULL).
    vacuum: bool = False

    def __post_init__(self):
        if self.older_than < timedelta(0):
            raise ValueError("--older-than must not be negative")
        if self.keep_last < 0 or (self.keep_last == 0 and not self.whole_threads):
            raise ValueError("--keep-last must be at least 1 (0 is only allowed with --threads)")

    @classmethod
    def from_options(cls, older_than, keep_last=1, tags=(), whole_threads=False, vacuum=False):
        """From the strings a user typed: `30d`, `tenant=acme`."""
        age = older_than if isinstance(older_than, timedelta) else parse_duration(older_than)
        pairs = tuple(split_tag(t, "=") for t in tags)
        return cls(age, int(keep_last), pairs, bool(whole_threads), bool(vacuum))

    @classmethod
    def from_parameters(cls, parameters):
        """The inverse of `as_parameters` (saved policies, run history)."""
        return cls.from_options(
            parameters["older_than"], parameters.get("keep_last", 1),
            parameters.get("tags", ()), parameters.get("threads", False), parameters.get("vacuum", False),
        )

    def as_parameters(self) -> dict:
        """The policy as a Run's or a saved policy's parameters.

        `vacuum` appears only when asked for, so the parameters of runs and
        policies saved before it existed read the same.

        >>> PrunePolicy(timedelta(hours=1), vacuum=True).as_parameters()["vacuum"]
        True
        """
        parameters = {
            "older_than": duration_text(self.older_than),
            "keep_last": self.keep_last,
            "tags": [f"{k}={v}" for k, v in self.tags],
            "threads": self.whole_threads,
        }
        if self.vacuum:
            parameters["vacuum"] = True
        return parameters


# --- One thread's rows and what goes ------------------------------------------


@dataclass(slots=True)
class Row:
    """One checkpoint row, as much of it as the selection needs."""

    ns: str
    id: str
    parent: str | None = None
    root: str | None = None  # metadata.parents[''], the root checkpoint a subgraph call started from
    bytes: int = 0
    versions: dict | None = None  # channel -> version (PostgreSQL: the blob rows it names)
    legacy: bool = False  # format v < 4: reads pending sends from its parent's writes


@dataclass(slots=True)
class WriteGroup:
    """The write rows of one (namespace, checkpoint id)."""

    count: int
    bytes: int
    tasks: bool = False  # holds __pregel_tasks writes (pending sends of a v < 4 child)


@dataclass
class ThreadSnapshot:
    """One thread at the source, read inside the transaction that may prune it."""

    thread_id: str
    checkpoints: list
    writes: dict = field(default_factory=dict)  # (ns, checkpoint_id) -> WriteGroup
    blobs: dict = field(default_factory=dict)  # (ns, channel, version) -> bytes
    delta: bool = False
    latest_metadata: dict | None = None  # of the latest root checkpoint, read when tags filter


@dataclass
class Selection:
    """What goes from one thread, or why nothing may."""

    thread_id: str
    checkpoints: list  # (ns, id), sorted
    writes: list  # (ns, checkpoint id) whose write rows go
    blobs: list  # (ns, channel, version)
    parents: list  # (ns, id) of kept rows whose parent goes
    write_rows: int = 0
    bytes: int = 0
    whole: bool = False
    skip: str | None = None


def select(snapshot: ThreadSnapshot, policy: PrunePolicy, *, cut, active_after):
    """What the policy removes from this thread: a Selection, or None when nothing.

    `cut`: checkpoints created before it are old; `active_after`: activity after
    it makes the thread active. Dry run and real run both call this, on rows
    read in the transaction that deletes.

    >>> from datetime import datetime, UTC
    >>> from checkpoints.ids import uuid6_floor
    >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
    >>> ids = [uuid6_floor(t0 + timedelta(minutes=m)) for m in range(4)]
    >>> rows = [Row("", i, parent=p, bytes=10, versions={"m": str(n)})
    ...         for n, (i, p) in enumerate(zip(ids, [None] + ids))]
    >>> snap = ThreadSnapshot("t", rows, blobs={("", "m", str(n)): 5 for n in range(4)})
    >>> policy = PrunePolicy(timedelta(hours=1), keep_last=1)
    >>> sel = select(snap, policy, cut=t0 + timedelta(minutes=2, seconds=30), active_after=t0 + timedelta(days=1))
    >>> [ids.index(i) for _, i in sel.checkpoints], [v for _, _, v in sel.blobs], sel.bytes
    ([0, 1, 2], ['0', '1', '2'], 45)
    >>> [ids.index(i) for _, i in sel.parents]
    [3]
    >>> select(snap, policy, cut=t0, active_after=t0) is None
    True
    >>> select(snap, policy, cut=t0 + timedelta(days=1), active_after=t0).skip
    'active'
    """
    if not snapshot.checkpoints:
        return None
    if policy.tags and not _tags_match(snapshot.latest_metadata, policy.tags):
        return None
    # uuid6 ids sort by time: comparing the text with the smallest id at the
    # cut is comparing times (ids that are not lowercase uuid6 have no time:
    # never old, never idle).
    old_below = uuid6_floor(cut)
    active_from = uuid6_floor(active_after + timedelta(microseconds=1))
    activity = [c.id for c in snapshot.checkpoints] + [cid for _, cid in snapshot.writes]
    idle = policy.whole_threads and all(cid < old_below and is_uuid6(cid) for cid in activity)
    if idle:
        removed = {(c.ns, c.id) for c in snapshot.checkpoints}
        write_keys = set(snapshot.writes)
        blobs = set(snapshot.blobs)
    else:
        removed = _trimmed(snapshot, max(policy.keep_last, 1), old_below)
        write_keys = removed & snapshot.writes.keys()
        blobs = _garbage_blobs(snapshot, removed)
    if not removed and not write_keys:
        return None

    root_rows = [c.id for c in snapshot.checkpoints if c.ns == ""]
    latest_root = max(root_rows) if root_rows else None
    skip = None
    if snapshot.delta:
        skip = "delta_channel"
    elif latest_root is not None and ("", latest_root) in snapshot.writes:
        skip = "pending_writes"
    elif any(cid >= active_from and is_uuid6(cid) for cid in activity):
        skip = "active"

    parents = sorted(
        (c.ns, c.id) for c in snapshot.checkpoints
        if (c.ns, c.id) not in removed and c.parent and (c.ns, c.parent) in removed
    )
    row_bytes = sum(c.bytes for c in snapshot.checkpoints if (c.ns, c.id) in removed)
    write_rows = sum(snapshot.writes[k].count for k in write_keys)
    write_bytes = sum(snapshot.writes[k].bytes for k in write_keys)
    blob_bytes = sum(snapshot.blobs[k] for k in blobs)
    return Selection(
        thread_id=snapshot.thread_id,
        checkpoints=sorted(removed),
        writes=sorted(write_keys),
        blobs=sorted(blobs),
        parents=parents,
        write_rows=write_rows,
        bytes=row_bytes + write_bytes + blob_bytes,
        whole=idle,
        skip=skip,
    )


def _trimmed(snapshot, keep_last, old_below):
    """Checkpoints outside the last `keep_last` of their namespace with an id below `old_below`."""
    by_ns = defaultdict(list)
    for c in snapshot.checkpoints:
        if ":" not in c.ns:
            by_ns[c.ns].append(c)
    removed = set()
    for ns, rows in by_ns.items():
        # LangGraph's own order: the latest checkpoint is the greatest id.
        rows.sort(key=lambda c: c.id, reverse=True)
        kept = rows[:keep_last]
        for c in rows[keep_last:]:
            if c.id < old_below and is_uuid6(c.id):
                removed.add((ns, c.id))
            else:
                kept.append(c)
        # A checkpoint saved before format v4 reads its pending sends from its
        # parent's writes (as keep_latest keeps that parent, so do we).
        for c in kept:
            if c.legacy and c.parent and (ns, c.parent) in removed:
                group = snapshot.writes.get((ns, c.parent))
                if group is not None and group.tasks:
                    removed.discard((ns, c.parent))
    removed_roots = {cid for ns, cid in removed if ns == ""}
    for c in snapshot.checkpoints:
        if ":" in c.ns and c.root is not None and c.root in removed_roots:
            removed.add((c.ns, c.id))
    return removed


def _garbage_blobs(snapshot, removed):
    """Blob rows a removed checkpoint names and no remaining one of its namespace does.

    >>> rows = [Row("", "a", versions={"m": "1", "n": "1"}), Row("", "b", versions={"m": "2", "n": "1"})]
    >>> snap = ThreadSnapshot("t", rows, blobs={("", "m", "1"): 5, ("", "n", "1"): 5, ("", "m", "2"): 5, ("", "x", "9"): 5})
    >>> sorted(_garbage_blobs(snap, {("", "a")}))
    [('', 'm', '1')]
    """
    if not snapshot.blobs or not removed:
        return set()
    freed, referenced = set(), set()
    for c in snapshot.checkpoints:
        if not c.versions:
            continue
        target = freed if (c.ns, c.id) in removed else referenced
        for channel, version in c.versions.items():
            target.add((c.ns, channel, version if type(version) is str else version_text(version)))
    return (freed - referenced) & snapshot.blobs.keys()


def _tags_match(metadata, tags) -> bool:
    """Whether the latest root checkpoint's metadata carries every tag (as the mirror renders them).

    >>> _tags_match({"tenant": "acme", "n": 2, "ok": True}, [("tenant", "acme"), ("n", "2"), ("ok", "true")])
    True
    >>> _tags_match({"tenant": "acme"}, [("tenant", "globex")]), _tags_match(None, [("a", "b")])
    (False, False)
    """
    if not isinstance(metadata, dict):
        return False
    for key, value in tags:
        text = tag_value(metadata.get(key))
        if text is None or text[:MAX_VALUE] != value:
            return False
    return True


# --- PostgreSQL ---------------------------------------------------------------

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


class _Postgres:
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

        return isinstance(exc, (errors.SerializationFailure, errors.DeadlockDetected, _Conflict))

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

    def prune_thread(self, conn, thread_id, policy, cut, active_after, dry_run):
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            reads = self._send_reads(conn, thread_id, bool(policy.tags))
            snapshot = self._snapshot(thread_id, *reads)
            selection = select(snapshot, policy, cut=cut, active_after=active_after)
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


# --- SQLite -------------------------------------------------------------------

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


class _Sqlite:
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
        return isinstance(exc, _Conflict)

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

    def prune_thread(self, conn, thread_id, policy, cut, active_after, dry_run):
        # IMMEDIATE: take the write lock before reading, so that what we read
        # is what we delete (SQLite has one writer at a time).
        conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
        try:
            snapshot = self._read(conn, thread_id)
            selection = select(snapshot, policy, cut=cut, active_after=active_after)
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
                raise _Conflict(f"{thread_id!r}: {conn.total_changes - before} rows changed where {expected} were selected")


# --- The run ------------------------------------------------------------------


def prune(source, policy: PrunePolicy, *, dry_run: bool, now=None, progress=None, on_selection=None, run=None) -> dict:
    """Prune one source by `policy`; return the contract's counts (plus a sample and details).

    `now` fixes the clock (the age and the active window count back from it);
    `progress(done, total)` is called as threads are done, `on_selection` with
    every thread's Selection (skipped ones too) once it is committed. A real
    run marks the threads (PruneMark, for `run`) before it changes them at the
    source, MARK_AHEAD at a time, so that a sync knows the deletions are ours
    even if this process dies before the mirror follows. Raises SourceError
    when the source cannot be read. Threads that fail even after retries are
    listed in `errors` and left as they were.
    """
    started = time.monotonic()
    now = now or timezone.now()
    cut = now - policy.older_than
    active_after = now - settings.PRUNE_ACTIVE_WINDOW
    with open_reader(source) as reader:
        reader.layout()  # refuses non-LangGraph and shallow schemas with a clear message
    if source.kind == "s3":
        from checkpoints.sources.s3 import settings_for
        from checkpoints.sources.s3.prune import S3Prune

        backend = S3Prune(source.url, settings_for(source.url))
    else:
        backend = _Postgres(source.url) if source.kind == "postgres" else _Sqlite(source.url)
    result = {
        "dry_run": dry_run, "threads": 0, "checkpoints": 0, "writes": 0, "blobs": 0, "bytes": 0,
        "disk_bytes_before": 0, "disk_bytes_after": 0, "skipped": [],
        "source": source.name, "cut": cut.isoformat(), "now": now.isoformat(),
        "candidates": 0, "whole_threads": 0, "parents_nulled": 0, "retries": 0,
        "sample": [], "errors": [], "seconds": 0.0, "thread_ids": [],
    }
    main = backend.connect()
    try:
        result["disk_bytes_before"] = backend.disk_bytes(main)
        only = None
        if policy.tags:
            only = _mirror_threads(source, policy.tags)
        candidates = backend.candidates(main, uuid6_floor(cut), only) if only is None or only else []
        result["candidates"] = total = len(candidates)
        if progress:
            progress(0, total)

        def work(conn, thread_id):
            attempts = [0]
            try:
                selection = _with_retries(backend, conn, thread_id, policy, cut, active_after, dry_run, attempts)
            except Exception as e:  # noqa: BLE001 - one thread's failure must not stop the others
                if backend.broken(conn):
                    raise
                return thread_id, None, attempts[0] - 1, f"{type(e).__name__}: {e}"
            return thread_id, selection, attempts[0] - 1, None

        ids = candidates if dry_run else _marked_ahead(source, run, candidates)
        for done, (thread_id, selection, retries, error) in enumerate(_each(backend, main, ids, total, work), 1):
            result["retries"] += retries
            if error is not None:
                result["errors"].append({"thread_id": thread_key(thread_id), "error": error})
            if selection is not None:
                _add(result, selection)
                if on_selection:
                    on_selection(selection)
            if progress:
                progress(done, total)
        if policy.vacuum and not dry_run:
            result["vacuum"] = _vacuum(backend, main)
        result["disk_bytes_after"] = backend.disk_bytes(main)
    finally:
        backend.release(main)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _marked_ahead(source, run, thread_ids):
    """The thread ids, each marked (PruneMark) in the console's database before it is handed out.

    One commit per MARK_AHEAD threads, taken before any of them is pruned:
    a mark may precede its thread's delete by a few seconds, never follow it.
    Marking a thread that then loses nothing costs a sync one re-read.
    """
    for i in range(0, len(thread_ids), MARK_AHEAD):
        chunk = thread_ids[i : i + MARK_AHEAD]
        PruneMark.objects.bulk_create([PruneMark(source=source, run=run, thread_id=thread_key(t)) for t in chunk])
        yield from chunk


def _vacuum(backend, main) -> dict:
    """VACUUM the pruned tables; {"before", "after", "seconds"} (dead rows or free pages, bytes), or {"error"}.

    A VACUUM that fails (a lock it waited for too long, say) leaves the
    prune done: the error is reported with the run.
    """
    started = time.monotonic()
    try:
        backend.flush_stats(main)  # this connection's own deletes
        before = backend.space(main)
        backend.vacuum(main)
        after = backend.space(main)
    except Exception as e:  # noqa: BLE001 - reported, the prune itself is done
        return {"error": f"{type(e).__name__}: {first_line(e)}", "seconds": round(time.monotonic() - started, 3)}
    return {"before": before, "after": after, "seconds": round(time.monotonic() - started, 3)}


def _each(backend, main, candidates, count, work):
    """work(conn, thread_id) for every candidate (`count` of them), in order, on `backend.workers` connections."""
    if backend.workers <= 1 or count < 2:
        for thread_id in candidates:
            yield work(main, thread_id)
        return
    local = threading.local()
    opened, lock = [], threading.Lock()

    def run(thread_id):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = backend.connect()
            with lock:
                opened.append(conn)
        return work(conn, thread_id)

    # A bounded window of submitted threads: memory stays flat on millions of threads.
    window = deque()
    pool = ThreadPoolExecutor(backend.workers, thread_name_prefix="prune")
    try:
        for thread_id in candidates:
            window.append(pool.submit(run, thread_id))
            if len(window) >= 64 * backend.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()
        pool.shutdown(wait=True)
        for conn in opened:
            backend.release(conn)


def _with_retries(backend, conn, thread_id, policy, cut, active_after, dry_run, attempts):
    for attempt in range(ATTEMPTS):
        attempts[0] = attempt + 1
        try:
            return backend.prune_thread(conn, thread_id, policy, cut, active_after, dry_run)
        except Exception as e:
            if not backend.retryable(e) or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.02 * 2**attempt * (1 + random.random()))


def _add(result, selection):
    if selection.skip is not None:
        result["skipped"].append({"thread_id": thread_key(selection.thread_id), "reason": selection.skip})
        return
    result["threads"] += 1
    result["thread_ids"].append(selection.thread_id)  # the source's ids, for refresh_threads
    result["checkpoints"] += len(selection.checkpoints)
    result["writes"] += selection.write_rows
    result["blobs"] += len(selection.blobs)
    result["bytes"] += selection.bytes
    result["parents_nulled"] += len(selection.parents)
    result["whole_threads"] += selection.whole
    if len(result["sample"]) < SAMPLE_THREADS:
        result["sample"].append({
            "thread_id": thread_key(selection.thread_id),
            "whole": selection.whole,
            "count": len(selection.checkpoints),
            "checkpoints": [
                {"checkpoint_ns": ns, "checkpoint_id": cid, "created_at": _iso(uuid6_time(cid))}
                for ns, cid in selection.checkpoints[:SAMPLE_CHECKPOINTS]
            ],
        })


def _iso(moment):
    return moment.isoformat() if moment is not None else None


def _mirror_threads(source, tags):
    """Source thread ids whose mirrored tags carry every (key, value): candidates only, re-checked at the source."""
    qs = Thread.objects.filter(source=source)
    for key, value in tags:
        # One filter() per tag: each gets its own join, so all must match.
        qs = qs.filter(tag_rows__key=key, tag_rows__value=value)
    return {source_thread_id(t) for t in qs.values_list("thread_id", flat=True)}


def contract_result(result) -> dict:
    """The keys of the prune_checkpoints --json contract, nothing else."""
    return {k: result[k] for k in CONTRACT_KEYS}


def run_prune(source, policy, *, dry_run, requested_by=None, origin="command", now=None, run=None):
    """Prune under a Run (audit log, progress, one at a time per source); refresh the mirror after.

    Returns the finished Run (state done or failed, `result` as `prune` returns
    it without the thread id list). Raises PruneBusy when a prune of the
    source is already running.
    """
    try:
        run = start_run(
            PRUNE, source, parameters=policy.as_parameters(), requested_by=requested_by,
            origin=origin, dry_run=dry_run, run=run,
        )
    except RunBusy:
        raise PruneBusy(f"a prune of {source.name} is already running") from None
    try:
        result = prune(source, policy, dry_run=dry_run, now=now, progress=throttled_progress(run), run=run)
    except SourceError as e:
        return finish_run(run, result={}, error=str(e))
    except Exception as e:
        finish_run(run, result={}, error=f"{type(e).__name__}: {e}")
        raise
    errors = []
    if result["errors"]:
        names = ", ".join(repr(e["thread_id"]) for e in result["errors"][:10])
        errors.append(f"{len(result['errors'])} thread(s) failed (see the result): {names}")
    if (result.get("vacuum") or {}).get("error"):
        errors.append(f"the prune is done but VACUUM failed: {result['vacuum']['error']}")
    touched = result.pop("thread_ids")
    if not dry_run and touched:
        try:
            refresh_threads(source, touched)
        except Exception as e:  # noqa: BLE001 - the prune is done; the next sync catches the mirror up
            errors.append(f"the prune is done but the mirror was not refreshed: {type(e).__name__}: {e}")
    return finish_run(run, result=result, error="; ".join(errors))
