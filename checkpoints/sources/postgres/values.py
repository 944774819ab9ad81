"""One PostgreSQL checkpoint's values for display (SourceKind.read_values), and its DeltaChannel history.

The page reads the one checkpoint and its parent straight from the store, in
one read-only snapshot: inline values from `checkpoint->'channel_values'`,
the blob rows its `channel_versions` names, its pending writes. A value above
the display limit is never fetched: SQL returns its size only.
"""

import psycopg

from checkpoints.dburl import redact
from checkpoints.decode import decode_json_text, safe_loads
from checkpoints.sources import DeltaRows, first_line
from checkpoints.sources.postgres import idle
from checkpoints.sources.values import (
    DELTA_READ_FACTOR, CheckpointValues, ReadError, Value, apply_delta, as_object, decode_write,
)

CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 10_000
GONE = "this checkpoint is no longer in the source (pruned or deleted since the last sync)"

_VERSIONS = """
    SELECT checkpoint_id,
           CASE WHEN jsonb_typeof(checkpoint->'channel_versions') = 'object' THEN checkpoint->'channel_versions' END,
           (SELECT jsonb_object_agg(key, octet_length(value::text))
              FROM jsonb_each(CASE WHEN jsonb_typeof(checkpoint->'channel_values') = 'object'
                                   THEN checkpoint->'channel_values' ELSE '{}'::jsonb END)),
           jsonb_build_object('counters_since_delta_snapshot', metadata->'counters_since_delta_snapshot',
                              'delta_updates_since_snapshot', metadata->'delta_updates_since_snapshot')
    FROM checkpoints
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = ANY(%(ids)s)
"""
_INLINE = """
    SELECT c.checkpoint_id, v.key, octet_length(v.value::text),
           CASE WHEN octet_length(v.value::text) <= %(limit)s THEN v.value::text END
    FROM checkpoints c,
         jsonb_each(CASE WHEN jsonb_typeof(c.checkpoint->'channel_values') = 'object'
                         THEN c.checkpoint->'channel_values' ELSE '{}'::jsonb END) v
    WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = %(ns)s AND c.checkpoint_id = ANY(%(ids)s)
"""
# A checkpoint's blob rows are those its channel_versions name (docs/architecture.md §3).
_BLOBS = """
    SELECT c.checkpoint_id, b.channel, b.version, b.type, coalesce(octet_length(b.blob), 0),
           CASE WHEN octet_length(b.blob) <= %(limit)s THEN b.blob END
    FROM checkpoints c
    CROSS JOIN LATERAL jsonb_each_text(CASE WHEN jsonb_typeof(c.checkpoint->'channel_versions') = 'object'
                                            THEN c.checkpoint->'channel_versions' ELSE '{}'::jsonb END) v
    JOIN checkpoint_blobs b
      ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns AND b.channel = v.key AND b.version = v.value
    WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = %(ns)s AND c.checkpoint_id = ANY(%(ids)s)
"""
# The checkpoint's row (no column of it: nothing is detoasted) and its writes, in one statement:
# no row at all when the checkpoint is gone, one row of NULLs when it has no writes.
_PG_FRESH_WRITES = """
    SELECT w.task_id, w.idx, w.channel, w.type, coalesce(octet_length(w.blob), 0),
           CASE WHEN octet_length(w.blob) <= %(limit)s THEN w.blob END
    FROM checkpoints c
    LEFT JOIN checkpoint_writes w
      ON w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id
    WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = %(ns)s AND c.checkpoint_id = %(id)s
    ORDER BY w.task_id, w.idx
"""
_PG_WRITES = """
    SELECT task_id, idx, channel, type, coalesce(octet_length(blob), 0),
           CASE WHEN octet_length(blob) <= %(limit)s THEN blob END
    FROM checkpoint_writes
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(id)s
    ORDER BY task_id, idx
"""


def read_values(url, key, parent, *, limit, aes_key=None, digest=False) -> CheckpointValues:
    """SourceKind.read_values: the checkpoint `key` and its parent in one REPEATABLE READ, READ ONLY snapshot."""
    thread, ns, cid = key
    params = {"thread": thread, "ns": ns, "id": cid, "ids": [cid] + ([parent] if parent else []), "limit": limit}
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=False) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            versions = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(_VERSIONS, params)}
            if cid not in versions:
                raise ReadError("this checkpoint is no longer in the source (pruned or deleted since the last sync)")
            inline = conn.execute(_INLINE, params).fetchall()
            blobs = conn.execute(_BLOBS, params).fetchall()
            writes = conn.execute(_PG_WRITES, params).fetchall()
            out = _postgres_values(versions, inline, blobs, writes, cid, parent, limit, aes_key, digest)

            def read_rows(start, channels):
                return read_delta_rows(
                    conn, thread, ns, start, channels, limit=limit, total_limit=limit * DELTA_READ_FACTOR)

            def read_snapshot(channel):
                return read_any_snapshot(conn, thread, ns, channel, limit=limit)

            apply_delta(out, cid, parent, versions[cid][2], versions.get(parent, (None, None, None))[2],
                         read_rows, read_snapshot, limit, aes_key, digest)
            conn.rollback()
    except psycopg.Error as e:
        raise ReadError(f"cannot read {redact(url)}: {first_line(e)}") from None
    return out


def read_writes(url, key, *, limit, aes_key=None, digest=False) -> list:
    """SourceKind.read_writes: the checkpoint's pending writes, read now (they arrive after it).

    Read on every view of a cached checkpoint: one statement on an idle
    connection kept for the source (checkpoints.sources.postgres.idle).
    """
    thread, ns, cid = key
    params = {"thread": thread, "ns": ns, "id": cid, "limit": limit}
    try:
        rows = idle.run(url, lambda conn: conn.execute(_PG_FRESH_WRITES, params).fetchall(),
                        connect_timeout=CONNECT_TIMEOUT, statement_timeout_ms=STATEMENT_TIMEOUT_MS)
    except psycopg.Error as e:
        raise ReadError(f"cannot read {redact(url)}: {first_line(e)}") from None
    if not rows:
        raise ReadError(GONE)
    return [decode_write(task, idx, channel, t, s, d, limit, aes_key, digest)
            for task, idx, channel, t, s, d in rows if task is not None]


def _postgres_values(versions, inline, blobs, writes, cid, parent, limit, aes_key, digest=False):
    out = CheckpointValues()
    out.versions = as_object(versions[cid][0])
    if parent in versions:
        out.parent_versions = as_object(versions[parent][0])
    sizes = {cid: dict(as_object(versions[cid][1]))}
    if parent in versions:
        sizes[parent] = dict(as_object(versions[parent][1]))
    channels = {cid: [], parent: []}
    blob_channels = set()
    for checkpoint_id, channel, version, type_, size, data in blobs:
        per = sizes.setdefault(checkpoint_id, {})
        # A delta snapshot leaves a `true` marker inline next to its blob: both count.
        per[channel] = per.get(channel, 0) + size
        blob_channels.add((checkpoint_id, channel))
        value = safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest) if data is not None or size == 0 else {
            "__truncated__": True, "type": type_, "size": size}
        channels[checkpoint_id].append(Value(channel, type_ or "", size, value, version))
    for checkpoint_id, channel, size, text in inline:
        if (checkpoint_id, channel) in blob_channels:
            continue
        value = decode_json_text(text, limit=limit, clip=False) if text is not None else {
            "__truncated__": True, "type": "json", "size": size}
        own = as_object(versions[checkpoint_id][0])
        channels[checkpoint_id].append(Value(channel, "inline json", size, value, str(own.get(channel, ""))))
    out.channels = sorted(channels[cid], key=lambda v: v.name)
    if parent in versions:
        out.parent_channels = sorted(channels[parent], key=lambda v: v.name)
    out.channel_sizes = sizes.get(cid, {})
    out.parent_sizes = sizes.get(parent, {})
    out.writes = [decode_write(task, idx, channel, type_, size, data, limit, aes_key, digest) for task, idx, channel, type_, size, data in writes]
    return out


# --- DeltaChannel history (checkpoints.delta) ----------------------------------------

# The walk of LangGraph's get_delta_channel_history, in SQL: from the start
# checkpoint along parent_checkpoint_id, one primary-key lookup a step, with
# the delta channels each checkpoint stores a value for: a blob row at the
# version its channel_versions names (a _DeltaSnapshot, or a plain value from
# before the channel became a DeltaChannel), or a non-null inline value. Read
# through a server-side cursor, so the recursion stops as soon as we stop
# fetching: every channel found its seed.
_DELTA_WALK = """
    WITH RECURSIVE chain(checkpoint_id, parent_checkpoint_id, checkpoint, depth) AS (
        SELECT checkpoint_id, parent_checkpoint_id, checkpoint, 0 FROM checkpoints
        WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(start)s
      UNION ALL
        SELECT c.checkpoint_id, c.parent_checkpoint_id, c.checkpoint, chain.depth + 1
        FROM chain JOIN checkpoints c
          ON c.thread_id = %(thread)s AND c.checkpoint_ns = %(ns)s AND c.checkpoint_id = chain.parent_checkpoint_id
        WHERE chain.depth < %(max_depth)s
    )
    SELECT checkpoint_id, parent_checkpoint_id,
           ARRAY(SELECT ch FROM unnest(%(channels)s::text[]) ch
                 WHERE EXISTS (SELECT 1 FROM checkpoint_blobs b
                               WHERE b.thread_id = %(thread)s AND b.checkpoint_ns = %(ns)s AND b.channel = ch
                                 AND b.version = chain.checkpoint->'channel_versions'->>ch AND b.type <> 'empty')
                    OR coalesce(jsonb_typeof(chain.checkpoint->'channel_values'->ch), 'null') <> 'null')
    FROM chain
"""
_DELTA_SEED_BLOB = """
    SELECT b.type, coalesce(octet_length(b.blob), 0), CASE WHEN octet_length(b.blob) <= %(limit)s THEN b.blob END
    FROM checkpoints c JOIN checkpoint_blobs b
      ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns AND b.channel = %(channel)s
     AND b.version = c.checkpoint->'channel_versions'->>%(channel)s AND b.type <> 'empty'
    WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = %(ns)s AND c.checkpoint_id = %(id)s
"""
_DELTA_SEED_INLINE = """
    SELECT octet_length((checkpoint->'channel_values'->%(channel)s)::text),
           CASE WHEN octet_length((checkpoint->'channel_values'->%(channel)s)::text) <= %(limit)s
                THEN (checkpoint->'channel_values'->%(channel)s)::text END
    FROM checkpoints WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(id)s
"""
_DELTA_WRITE_BYTES = """
    SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_writes
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND channel = ANY(%(channels)s) AND checkpoint_id = ANY(%(ids)s)
"""
_DELTA_WRITES = """
    SELECT checkpoint_id, task_id, {task_path}, idx, channel, type, coalesce(octet_length(blob), 0),
           CASE WHEN octet_length(blob) <= %(limit)s THEN blob END
    FROM checkpoint_writes
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND channel = ANY(%(channels)s) AND checkpoint_id = ANY(%(ids)s)
"""


def read_delta_rows(conn, thread, ns, start, channels, *, limit, total_limit, max_depth=10_000):
    """The DeltaRows of `channels` walking from checkpoint `start`, in the caller's transaction.

    Values over `limit` bytes come back as sizes only; when the writes to
    replay add up to more than `total_limit` bytes none are read and each
    channel gets a problem instead.
    """
    out = DeltaRows(chains={ch: [] for ch in channels})
    params = {"thread": thread, "ns": ns, "start": start, "channels": list(channels), "max_depth": max_depth, "limit": limit}
    open_, seen, seed_at = set(channels), set(), {}
    with conn.cursor(name="delta_walk") as cur:
        cur.execute(_DELTA_WALK, params)
        while open_:
            rows = cur.fetchmany(200)
            if not rows:
                break
            for cid, _parent, stored in rows:
                if cid in seen:  # a parent loop: stop where LangGraph's walk would
                    open_.clear()
                    break
                seen.add(cid)
                for ch in list(open_):
                    out.chains[ch].append(cid)
                    if ch in stored:
                        seed_at[ch] = cid
                        open_.discard(ch)
                if not open_:
                    break
    if open_ and len(seen) > max_depth:
        for ch in open_:
            out.problems[ch] = f"more than {max_depth:,} checkpoints since the last snapshot: not replayed for display"
    for ch, cid in seed_at.items():
        row = conn.execute(_DELTA_SEED_BLOB, {**params, "channel": ch, "id": cid}).fetchone()
        if row is None:
            size, text = conn.execute(_DELTA_SEED_INLINE, {**params, "channel": ch, "id": cid}).fetchone()
            row = ("inline json", size, text.encode() if text is not None else None)
        out.seeds[ch] = (cid, *row)
    ids = sorted({cid for chain in out.chains.values() for cid in chain})
    wanted = [ch for ch in channels if ch not in out.problems]
    if not ids or not wanted:
        return out
    (total,) = conn.execute(_DELTA_WRITE_BYTES, {**params, "channels": wanted, "ids": ids}).fetchone()
    if total > total_limit:
        for ch in wanted:
            out.problems[ch] = f"the writes to replay hold {total:,} bytes, more than the {total_limit:,} read for display"
        return out
    task_path = "task_path" if _has_task_path(conn) else "''"
    rows = conn.execute(_DELTA_WRITES.format(task_path=task_path), {**params, "channels": wanted, "ids": ids}).fetchall()
    out.writes = [tuple(r) for r in rows]
    return out


def _has_task_path(conn) -> bool:
    """Whether checkpoint_writes has task_path (added by migration 9): replay order sorts on it first."""
    row = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('checkpoint_writes') AND attname = 'task_path'"
        " AND NOT attisdropped"
    ).fetchone()
    return row is not None


# A snapshot of the channel anywhere in the thread's namespace: its items show
# whether list writes were appended as items or extended the list.
_ANY_SNAPSHOT = """
    SELECT type, coalesce(octet_length(blob), 0), blob FROM checkpoint_blobs
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND channel = %(channel)s AND type <> 'empty'
      AND octet_length(blob) <= %(limit)s
    ORDER BY octet_length(blob) DESC LIMIT 1
"""


def read_any_snapshot(conn, thread, ns, channel, *, limit):
    """(type, size, data) of the largest stored value of `channel` under `limit` bytes in the thread, or None."""
    return conn.execute(_ANY_SNAPSHOT, {"thread": thread, "ns": ns, "channel": channel, "limit": limit}).fetchone()
