"""Idle read connections to PostgreSQL sources, kept per process and per URL for short reads.

The checkpoint page serves a cached checkpoint's values from the cache but
reads its pending writes fresh on every view (they arrive after the
checkpoint). Opening a connection for that one query costs more than the
whole rest of the read: TCP, authentication and a backend start, 5-9 ms on
loopback. So a read takes an idle connection to its source when there is
one and gives it back afterwards.

Each connection is autocommit, read only and under the same statement
timeout as the page's other reads; one statement is one snapshot. Health:
a connection that is closed, broken or left inside a transaction is never
given back; one idle for longer than MAX_IDLE_SECONDS is closed rather than
reused (servers and proxies drop idle sessions); and a read that fails on a
reused connection with a connection error (server restarted, session
killed) is retried once on a new connection. A forked child (web or task
workers) never uses its parent's connections: they belong to a process id.
"""

import os
import threading
import time

import psycopg
from psycopg.pq import TransactionStatus

MAX_IDLE_PER_URL = 4  # connections kept per source beyond the requests running at once
MAX_IDLE_SECONDS = 60.0

_lock = threading.Lock()
_idle: dict[str, list] = {}  # url -> [(connection, last used, monotonic)]
_pid = os.getpid()


def run(url, read, *, connect_timeout, statement_timeout_ms):
    """`read(connection)` on an idle connection to `url` (a new one when none is idle); its result.

    Errors propagate, as does anything `read` raises, except a reused
    connection found dead: `read` runs again on a new one.
    """
    conn = _take(url)
    if conn is not None:
        try:
            result = read(conn)
        except psycopg.OperationalError:
            if not (conn.closed or conn.broken):  # a statement timeout, say: the connection is fine
                _give_back(url, conn)
                raise
            # The server or a proxy dropped the session while it was idle: once more on a new one.
            _close(conn)
        except BaseException:
            _give_back(url, conn)
            raise
        else:
            _give_back(url, conn)
            return result
    conn = _connect(url, connect_timeout, statement_timeout_ms)
    try:
        result = read(conn)
    except BaseException:
        _give_back(url, conn)
        raise
    _give_back(url, conn)
    return result


def close_all():
    """Close every idle connection of this process (tests; a source's URL changed)."""
    with _lock:
        conns = [c for entries in _idle.values() for c, _ in entries] if os.getpid() == _pid else []
        _idle.clear()
    for conn in conns:
        _close(conn)


def _connect(url, connect_timeout, statement_timeout_ms):
    conn = psycopg.connect(url, connect_timeout=connect_timeout, autocommit=True)
    try:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
    except BaseException:
        _close(conn)
        raise
    return conn


def _take(url):
    global _pid
    stale = []
    now = time.monotonic()
    with _lock:
        if os.getpid() != _pid:  # forked: the parent's sockets are not ours to use or close
            _idle.clear()
            _pid = os.getpid()
        entries = _idle.get(url, [])
        conn = None
        while entries:
            candidate, used = entries.pop()
            if now - used > MAX_IDLE_SECONDS or candidate.closed or candidate.broken:
                stale.append(candidate)
            else:
                conn = candidate
                break
        # Older entries of other URLs (a source removed or its URL changed) go as well.
        for other, rest in list(_idle.items()):
            kept = [(c, used) for c, used in rest if now - used <= MAX_IDLE_SECONDS]
            stale += [c for c, used in rest if now - used > MAX_IDLE_SECONDS]
            if kept:
                _idle[other] = kept
            else:
                del _idle[other]
    for candidate in stale:
        _close(candidate)
    return conn


def _give_back(url, conn):
    healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
    if healthy:
        with _lock:
            entries = _idle.setdefault(url, [])
            if os.getpid() == _pid and len(entries) < MAX_IDLE_PER_URL:
                entries.append((conn, time.monotonic()))
                return
    _close(conn)


def _close(conn):
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a dead socket may fail; it is dropped either way
        pass
