"""Change capture for PostgreSQL sources through logical decoding.

Instead of scanning the LangGraph tables for rows written since the last
sync (a cost that grows with the source), a sync asks a logical replication
slot which rows were inserted, updated or deleted since the position it last
confirmed, and reads only the threads those rows belong to.

Why `pgoutput` and a publication rather than the `test_decoding` plugin:
test_decoding prints every column of every inserted row, so each new blob
(megabytes of bytea) would be turned into hex text and sent to the console
only to be thrown away. A publication can carry a column list (PostgreSQL 15
and newer): ours publishes the primary-key columns only, so the decoder
sends the keys and never the checkpoint, blob or write values. pgoutput
also ships with every PostgreSQL (the `pgserver` wheel has no test_decoding).

Exactness:
- the slot delivers whole transactions in commit order, late commits
  included, and deletions as deletions;
- the position is confirmed (pg_replication_slot_advance) only after the
  mirror has committed what the changes led to, so a crash in between makes
  the next sync see the same changes again (re-reading a thread is
  idempotent);
- the sync reads the threads in a snapshot taken after the changes were
  decoded, and checks that the snapshot sees every decoded transaction (a
  transaction's commit record reaches the WAL a moment before it becomes
  visible to new snapshots); otherwise it takes a new snapshot.

The slot only retains WAL: when it is lost or invalidated (dropped by hand,
max_slot_wal_keep_size exceeded), the sync recreates it first and then scans
once, so nothing written meanwhile is missed.
"""

import logging
import re
import secrets
import struct
import threading
from dataclasses import dataclass, field

import psycopg

from checkpoints.dburl import redact
from checkpoints.sources import SourceError, first_line

log = logging.getLogger(__name__)

PUBLICATION = "checkpoint_console"
_U32 = struct.Struct(">I").unpack_from
# Source URL -> whether the console may call pg_log_standby_snapshot() there (Capture._log_running_transactions).
_RUNNING_XACTS = {}
# The key columns the sync needs: the primary keys, which a publication that
# publishes updates and deletes must include anyway (replica identity).
PUBLISHED_COLUMNS = {
    "checkpoints": ("thread_id", "checkpoint_ns", "checkpoint_id"),
    "checkpoint_blobs": ("thread_id", "checkpoint_ns", "channel", "version"),
    "checkpoint_writes": ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
}
MIN_SERVER_VERSION = 150000  # publication column lists


class CaptureError(SourceError):
    """Change capture cannot run on this source (settings, privileges, a lost slot)."""


def new_slot_name(source_name: str) -> str:
    """A replication slot name for one source of this console: PostgreSQL's rules (lower case, at most
    63 bytes), and a random tail so that two consoles, or two sources of the same name, never share one.

    >>> name = new_slot_name("Prod-EU")
    >>> name.startswith("checkpoint_console_prod_eu_"), len(name) <= 63
    (True, True)
    """
    tail = re.sub(r"[^a-z0-9_]", "_", source_name.lower())[:30]
    return f"checkpoint_console_{tail}_{secrets.token_hex(4)}"


def publication_sql() -> str:
    """The statement an operator runs (as the tables' owner) when the console may not create the publication."""
    tables = ", ".join(f"{t} ({', '.join(cols)})" for t, cols in PUBLISHED_COLUMNS.items())
    return f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {tables};"


@dataclass
class Appended:
    """The rows one thread gained, by key (checkpoint_ns first), when it only gained rows."""

    checkpoints: dict = field(default_factory=dict)  # (ns, checkpoint_id) -> id of the inserting transaction
    blobs: dict = field(default_factory=dict)  # (ns, channel, version) -> id of the inserting transaction
    written: set = field(default_factory=set)  # (ns, checkpoint_id) of the checkpoints that gained writes


@dataclass
class Changes:
    """What the slot reported since the confirmed position."""

    threads: set = field(default_factory=set)  # thread ids with an inserted, updated or deleted row
    # Inserted rows by thread; `rewritten` names the threads that also had a row updated or deleted
    # (those are read whole: an update or deletion leaves nothing to add up).
    appended: dict = field(default_factory=dict)
    rewritten: set = field(default_factory=set)
    xids: set = field(default_factory=set)  # 32-bit ids of the decoded transactions
    end_lsn: str | None = None  # confirm up to here once the mirror has committed
    truncated: bool = False  # a TRUNCATE: every thread may have changed
    deleted_checkpoints: int = 0
    changes: int = 0
    decoded_bytes: int = 0  # what the decoder sent: keys only, never values


@dataclass
class SlotStatus:
    exists: bool
    wal_status: str | None = None  # reserved, extended, unreserved, lost
    retained_bytes: int | None = None
    active: bool = False

    @property
    def usable(self) -> bool:
        return self.exists and self.wal_status not in ("lost",)


class Capture:
    """One source's slot, on its own autocommit connection (use as a context manager)."""

    def __init__(self, url: str, slot: str, *, connect_timeout: int = 10):
        self.url = url
        self.slot = slot
        self.connect_timeout = connect_timeout
        self.conn = None
        self._confirming = None  # the thread of a confirmation still under way (confirm(wait=False))

    def __enter__(self):
        try:
            self.conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout, autocommit=True)
        except psycopg.Error as e:
            raise SourceError(f"cannot connect to {redact(self.url)}: {first_line(e)}") from None
        return self

    def __exit__(self, *exc):
        self.wait_for_confirmation()
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        return False

    def _query(self, query, params=None):
        try:
            cursor = self.conn.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as e:
            raise CaptureError(f"change capture on {redact(self.url)}: {first_line(e)}") from None

    # --- What it needs ---------------------------------------------------------

    def requirements(self) -> list:
        """What keeps change capture from running here, one sentence each; empty when all is in place."""
        ((version, wal_level, may_replicate, slots),) = self._query(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),"
            " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),"
            " current_setting('max_replication_slots')::int"
        )
        problems = []
        if version < MIN_SERVER_VERSION:
            problems.append("PostgreSQL 15 or newer is needed (publication column lists keep values out of the decoder).")
        if wal_level != "logical":
            problems.append(f"wal_level is {wal_level!r}: set wal_level = logical and restart PostgreSQL.")
        if not may_replicate:
            problems.append("the console's role needs the REPLICATION attribute: ALTER ROLE <role> REPLICATION;")
        if slots < 1:
            problems.append("max_replication_slots is 0: raise it and restart PostgreSQL.")
        if not self._publication_exists() and not self._may_create_publication():
            problems.append(f"the publication is missing and the console's role does not own the tables: run {publication_sql()}")
        return problems

    def _publication_exists(self) -> bool:
        return bool(self._query("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)))

    def _may_create_publication(self) -> bool:
        ((ok,),) = self._query(
            "SELECT has_database_privilege(current_database(), 'CREATE')"
            " AND bool_and(pg_has_role(c.relowner, 'USAGE'))"
            " FROM pg_class c WHERE c.oid = ANY(ARRAY[to_regclass('checkpoints'), to_regclass('checkpoint_blobs'),"
            " to_regclass('checkpoint_writes')])"
        )
        return bool(ok)

    # --- The slot --------------------------------------------------------------

    def status(self) -> SlotStatus:
        rows = self._query(
            "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active"
            " FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()",
            (self.slot,),
        )
        if not rows:
            return SlotStatus(exists=False)
        wal_status, retained, active = rows[0]
        return SlotStatus(exists=True, wal_status=wal_status, retained_bytes=retained, active=active)

    def ensure(self) -> bool:
        """Create the publication and the slot where missing; True when the slot is new (scan once)."""
        status = self.status()
        if status.usable and self._publication_exists():
            return False
        problems = self.requirements()
        if problems:
            raise CaptureError("change capture cannot run: " + " ".join(problems))
        if not self._publication_exists():
            self._query(publication_sql())
        status = self.status()
        if status.exists and status.usable:
            return False
        if status.exists:  # invalidated: its WAL is gone, so is what it would have told
            self.drop()
        self._query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
        return True

    def drop(self) -> bool:
        """Drop the slot (it retains WAL on the operator's server); False when there was none."""
        if not self.status().exists:
            return False
        self._query("SELECT pg_drop_replication_slot(%s)", (self.slot,))
        return True

    def peek(self) -> Changes:
        """The changes since the confirmed position, without consuming them.

        A one-message transaction written first is a barrier: decoding is in
        commit order, so once its commit comes out, everything committed before
        it has, and its end is a position the sync may confirm even when no
        LangGraph row changed. Without it a quiet source would never move its
        slot, which would hold back ever more WAL written by everything else on
        the server and make every peek decode it again.
        """
        changes = Changes()
        decoder = _PgOutput(changes)
        query = (
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')"
        )
        self._log_running_transactions()
        try:
            self.conn.execute("SELECT pg_logical_emit_message(true, %s, '')", (PUBLICATION,))
            with self.conn.cursor() as cursor:
                for (data,) in cursor.stream(query, (self.slot, PUBLICATION)):
                    changes.decoded_bytes += len(data)
                    decoder.feed(bytes(data))
        except psycopg.Error as e:
            raise CaptureError(f"reading the changes of slot {self.slot} on {redact(self.url)}: {first_line(e)}") from None
        return changes

    def _log_running_transactions(self) -> None:
        """Write a running-transactions record, so that confirming this peek also moves the slot's restart point.

        Every read of a slot (a peek, a confirmation) decodes from its
        restart_lsn, which only moves to such a record once a confirmation
        passes it; PostgreSQL writes one every 15 seconds at most. Syncs a few
        seconds apart thus each decoded the WAL of several syncs before (97 MB
        behind the confirmed position, 190 ms a peek, in bench_capture). Written
        just before the barrier, the record lies inside what this sync confirms:
        the next peek starts where this one ended (restart gap 0, 15-35 ms).
        pg_log_standby_snapshot() exists from PostgreSQL 16 and is for
        superusers unless granted (README: GRANT EXECUTE ...); without it the
        sync works as before, only reading further back.
        """
        allowed = _RUNNING_XACTS.get(self.url)
        if allowed is None:
            ((allowed,),) = self._query(
                "SELECT coalesce(has_function_privilege(to_regprocedure('pg_log_standby_snapshot()'), 'EXECUTE'), false)"
            )
            _RUNNING_XACTS[self.url] = allowed
        if allowed:
            try:
                self.conn.execute("SELECT pg_log_standby_snapshot()")
            except psycopg.Error as e:  # e.g. a standby, or the grant revoked: read further back from now on
                _RUNNING_XACTS[self.url] = False
                log.info("slot %s: not logging running transactions on %s: %s", self.slot, redact(self.url), first_line(e))

    def confirm(self, lsn: str | None, *, wait: bool = True) -> None:
        """Move the slot past `lsn`: the mirror holds everything up to there.

        pg_replication_slot_advance decodes the WAL up to `lsn` once more (in
        fast-forward mode): 10-25 ms after a thousand new checkpoints, more
        under a busy server. With wait=False the server does that while the
        sync finishes its bookkeeping, and leaving the context (or
        wait_for_confirmation) waits for it. A confirmation that fails then is
        logged, not raised: the mirror has committed, and a slot left behind
        only tells the next sync the same changes again, which it mirrors
        idempotently.
        """
        if lsn is None:
            return
        if wait:
            self._query("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn))
            return
        self.wait_for_confirmation()

        def advance():
            try:
                self._query("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn))
            except CaptureError as e:
                log.warning("slot %s: could not confirm %s (the next sync reads the same changes again): %s",
                            self.slot, lsn, e)

        self._confirming = threading.Thread(target=advance, name=f"confirm {self.slot}", daemon=True)
        self._confirming.start()

    def wait_for_confirmation(self) -> None:
        """Wait for a confirmation started with confirm(wait=False), if any."""
        if self._confirming is not None:
            self._confirming.join()
            self._confirming = None


def drop_slot(url: str, slot: str) -> bool:
    with Capture(url, slot) as capture:
        return capture.drop()


# --- pgoutput, protocol version 1 ---------------------------------------------
# https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html


class _PgOutput:
    """Decode pgoutput messages into a Changes: thread ids, transaction ids, the end position."""

    def __init__(self, changes: Changes):
        self.changes = changes
        self.relations = {}  # relation oid -> (table name, {column: index in its tuples})
        # relation oid -> (table name, index of thread_id, indexes of the _APPENDED_KEY columns (None when
        # missing)) for the tables whose inserted rows the sync adds up
        self.inserts = {}
        self.xid = None  # of the transaction being decoded

    def feed(self, data: bytes) -> None:
        kind = data[0]
        if kind == 73:  # Insert: most of what a sync decodes, on the short path
            plan = self.inserts.get(_U32(data, 1)[0])
            if plan is not None:
                self._insert(plan, data)
                return
        if kind == 66:  # Begin: final LSN, commit time, xid
            (self.xid,) = _U32(data, 17)
            self.changes.xids.add(self.xid)
        elif kind == 67:  # Commit: flags, commit LSN, end LSN, time
            (end,) = struct.unpack_from(">Q", data, 10)
            self.changes.end_lsn = f"{end >> 32:X}/{end & 0xFFFFFFFF:X}"
        elif kind == 82:  # Relation
            self._relation(data)
        elif kind in (73, 85, 68):  # Insert (of a table the sync does not add up), Update, Delete
            self._row(bytes([kind]), data)
        elif kind == 84:  # Truncate
            self.changes.truncated = True
        # Type, Origin and Message (our barrier) carry nothing the sync needs.

    def _relation(self, data: bytes) -> None:
        (oid,) = struct.unpack_from(">I", data, 1)
        pos = 5
        _namespace, pos = _cstring(data, pos)
        name, pos = _cstring(data, pos)
        pos += 1  # replica identity setting
        (ncols,) = struct.unpack_from(">H", data, pos)
        pos += 2
        columns = []
        for _ in range(ncols):
            pos += 1  # flags
            column, pos = _cstring(data, pos)
            pos += 8  # type oid, type modifier
            columns.append(column)
        index = {column: i for i, column in enumerate(columns)}
        self.relations[oid] = (name, index)
        self.inserts.pop(oid, None)
        if name in _APPENDED_KEY and "thread_id" in index:
            self.inserts[oid] = (name, index["thread_id"], tuple(index.get(c) for c in _APPENDED_KEY[name]))

    def _insert(self, plan, data: bytes) -> None:
        """An inserted row of a table the sync adds up: its thread, and its key with the inserting transaction."""
        table, thread_col, key_cols = plan
        changes = self.changes
        changes.changes += 1
        # The publication sends the key columns alone: a few short texts per row.
        values, _ = _tuple(data, 6)  # after the kind, the relation oid and 'N'
        thread = values[thread_col]
        if thread is None:
            return
        thread = thread.decode("utf-8", "surrogatepass")
        changes.threads.add(thread)
        appended = changes.appended.get(thread)
        if appended is None:
            appended = changes.appended[thread] = Appended()
        key = tuple(None if i is None or values[i] is None else values[i].decode("utf-8", "surrogatepass")
                    for i in key_cols)
        if None in key:  # not a row LangGraph writes: nothing to add up
            changes.rewritten.add(thread)
        elif table == "checkpoints":
            appended.checkpoints[key] = self.xid
        elif table == "checkpoint_blobs":
            appended.blobs[key] = self.xid
        else:
            appended.written.add(key)

    def _row(self, kind: bytes, data: bytes) -> None:
        (oid,) = struct.unpack_from(">I", data, 1)
        table, columns = self.relations.get(oid, (None, {}))
        thread_col = columns.get("thread_id")
        pos = 5
        self.changes.changes += 1
        if kind == b"D" and table == "checkpoints":
            self.changes.deleted_checkpoints += 1
        # An update or a delete may carry the old key ('K') or old row ('O'), an update the new
        # one ('N'); every tuple's thread counts (an update could move a row to another thread).
        while pos < len(data):
            pos += 1  # 'I', 'K', 'O' or 'N'
            values, pos = _tuple(data, pos)
            if thread_col is not None and values[thread_col] is not None:
                thread = values[thread_col].decode("utf-8", "surrogatepass")
                self.changes.threads.add(thread)
                self.changes.rewritten.add(thread)


# The key of an inserted row the sync adds up (Appended), after its thread id.
_APPENDED_KEY = {
    "checkpoints": ("checkpoint_ns", "checkpoint_id"),
    "checkpoint_blobs": ("checkpoint_ns", "channel", "version"),
    "checkpoint_writes": ("checkpoint_ns", "checkpoint_id"),
}


def _cstring(data: bytes, pos: int):
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int):
    r"""The column values of the TupleData at `pos` (None for a null or an unchanged TOAST value), and the position after it.

    >>> row = b"\x00\x03" + b"t\x00\x00\x00\x01a" + b"n" + b"t\x00\x00\x00\x02bc"
    >>> _tuple(row, 0)
    ([b'a', None, b'bc'], 16)
    """
    # Bytes indexed as integers: this runs for every decoded row.
    ncols = (data[pos] << 8) | data[pos + 1]
    pos += 2
    values = []
    append = values.append
    for _ in range(ncols):
        kind = data[pos]
        if kind == 116 or kind == 98:  # 't' text, 'b' binary: a length, then the value
            length = (data[pos + 1] << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
            pos += 5
            append(data[pos : pos + length])
            pos += length
        else:  # 'n' null, 'u' unchanged TOAST value
            append(None)
            pos += 1
    return values, pos


__all__ = ["Appended", "Capture", "CaptureError", "Changes", "SlotStatus", "new_slot_name", "publication_sql", "drop_slot"]
