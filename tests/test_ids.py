"""One definition of "a uuid6 id": Python, PostgreSQL's regex and SQLite's GLOB agree on every id.

Prune decides in Python which checkpoint ids have a time; the sweep decides
it in SQL on PostgreSQL (`~ UUID6_PATTERN`) and SQLite (`GLOB UUID6_GLOB`).
If they disagreed, one would treat as old an id the other leaves alone.
"""

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from checkpoints.ids import UUID6_GLOB, UUID6_PATTERN, is_uuid6, uuid6_floor, uuid6_time
from tests.pg import server_url


def _ids():
    """Real uuid6 ids beside every version and variant nibble, and malformed text."""
    moment = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    real = [uuid6_floor(moment + timedelta(microseconds=n)) for n in (0, 1, 999_999)]
    from langgraph.checkpoint.base.id import uuid6

    real += [str(uuid6()) for _ in range(5)]  # what LangGraph writes
    base = "1f0c8a6e-1d2c-6f3e-8001-0242ac120002"
    varied = []
    for version in "0123456789abcdef":
        for variant in "0123456789abcdef":
            varied.append(f"{base[:14]}{version}{base[15:19]}{variant}{base[20:]}")
    odd = [
        base.upper(), base[:-1], base + "0", base + "\n", " " + base, base.replace("-", ""),
        base[:8] + "_" + base[9:], base[:35] + "g", "", "not-a-uuid", str(uuid.uuid4()), str(uuid.uuid1()),
        base[:14] + "6" + base[15:19] + "A" + base[20:],
    ]
    return real + varied + odd


def test_python_postgresql_and_sqlite_agree_on_which_ids_are_uuid6():
    ids = _ids()
    python = {i: is_uuid6(i) for i in ids}
    with psycopg.connect(server_url(), autocommit=True) as conn:
        postgres = dict(conn.execute("SELECT i, i ~ %s FROM unnest(%s::text[]) AS i", (UUID6_PATTERN, ids)).fetchall())
    db = sqlite3.connect(":memory:")
    try:
        sqlite = {i: bool(db.execute("SELECT ? GLOB ?", (i, UUID6_GLOB)).fetchone()[0]) for i in ids}
    finally:
        db.close()
    assert python == postgres == sqlite
    # The definition is the RFC's: version 6 and variant 10xx only, lowercase.
    accepted = sorted(i for i, ok in python.items() if ok)
    assert all(i[14] == "6" and i[19] in "89ab" for i in accepted)
    assert sum(1 for i in accepted if i.startswith("1f0c8a6e-1d2c-6f3e")) == 4  # variants 8, 9, a, b of the base
    assert all(python[i] for i in ids[:8])  # every id LangGraph writes (and every floor) is uuid6
    assert all(uuid6_time(i) is not None for i in accepted)


def test_uuid6_floor_is_cached_and_exact():
    uuid6_floor.cache_clear()
    moment = datetime(2025, 6, 1, 12, 30, 0, 123456, tzinfo=UTC)
    first = uuid6_floor(moment)
    assert uuid6_floor(moment) is first and uuid6_floor.cache_info().hits == 1
    assert uuid6_time(first) == moment
    assert uuid6_floor(moment - timedelta(microseconds=1)) < first < uuid6_floor(moment + timedelta(microseconds=1))
