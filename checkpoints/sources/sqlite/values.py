"""One SQLite checkpoint's values for display (SourceKind.read_values), and its DeltaChannel history.

SqliteSaver keeps the whole serialized checkpoint in one value: it is read
whole, up to SQLITE_WHOLE_FACTOR times the display limit, and split into its
channels here (each re-packed on its own to measure and decode it).
"""

import sqlite3
from pathlib import Path

import ormsgpack

from checkpoints.dburl import parse_database_url
from checkpoints.decode import safe_loads
from checkpoints.sources import DeltaRows
from checkpoints.sources.sqlite.reader import byte_length
from checkpoints.sources.values import CheckpointValues, ReadError, Value, apply_delta, as_object, decode_write, json_or_none

# A SQLite checkpoint is one serialized value holding every channel: it is
# read whole, up to this many times the per-value display limit.
SQLITE_WHOLE_FACTOR = 8
GONE = "this checkpoint is no longer in the source (pruned or deleted since the last sync)"

# Sizes by byte_length(): a value above the limit is never loaded, not even for its size.
_SQLITE_CHECKPOINTS = f"""
    SELECT checkpoint_id, type, {byte_length('checkpoint')},
           CASE WHEN {byte_length('checkpoint')} <= ? THEN CAST(checkpoint AS BLOB) END,
           CAST(metadata AS TEXT)
    FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id IN (?, ?)
"""
# The checkpoint's row and its writes in one statement: no row when it is gone, one of NULLs without writes.
_SQLITE_FRESH_WRITES = f"""
    SELECT w.task_id, w.idx, w.channel, w.type, {byte_length('w.value')},
           CASE WHEN {byte_length('w.value')} <= ? THEN CAST(w.value AS BLOB) END
    FROM checkpoints c
    LEFT JOIN writes w ON w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id
    WHERE c.thread_id = ? AND c.checkpoint_ns = ? AND c.checkpoint_id = ?
    ORDER BY w.task_id, w.idx
"""
_SQLITE_WRITES = f"""
    SELECT task_id, idx, channel, type, {byte_length('value')},
           CASE WHEN {byte_length('value')} <= ? THEN CAST(value AS BLOB) END
    FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?
    ORDER BY task_id, idx
"""


def read_values(url, key, parent, *, limit, aes_key=None, digest=False) -> CheckpointValues:
    """SourceKind.read_values: the checkpoint `key` and its parent in one read transaction of the file."""
    thread, ns, cid = key
    path = Path(parse_database_url(url)["NAME"])
    if not path.is_file():
        raise ReadError(f"{url}: no such SQLite file")
    whole = limit * SQLITE_WHOLE_FACTOR
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            conn.execute("BEGIN")  # one read snapshot for the checkpoint, its parent and their history
            rows = {r[0]: r[1:] for r in conn.execute(_SQLITE_CHECKPOINTS, (whole, thread, ns, cid, parent or cid))}
            writes = conn.execute(_SQLITE_WRITES, (limit, thread, ns, cid)).fetchall()
            if cid not in rows:
                raise ReadError("this checkpoint is no longer in the source (pruned or deleted since the last sync)")
            out = CheckpointValues()
            type_, size, data, metadata = rows[cid]
            parsed = _split_sqlite_checkpoint(type_, size, data, limit, aes_key, digest)
            out.channels, out.versions, out.channel_sizes, out.note = parsed
            parent_metadata = None
            if parent in rows:
                *parent_row, parent_metadata = rows[parent]
                parent_channels, out.parent_versions, out.parent_sizes, parent_note = _split_sqlite_checkpoint(
                    *parent_row, limit, aes_key, digest)
                # A parent too large to read has unknown values, not none.
                out.parent_channels = None if parent_note else parent_channels
            out.writes = [decode_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in writes]

            def read_rows(start, channels):
                return read_delta_rows(
                    conn, thread, ns, start, channels, limit=limit, total_limit=whole, aes_key=aes_key, digest=digest)

            def read_snapshot(channel):
                return read_any_snapshot(conn, thread, ns, channel, limit=whole, after=cid)

            if not out.note:
                apply_delta(out, cid, parent, json_or_none(metadata), json_or_none(parent_metadata),
                             read_rows, read_snapshot, limit, aes_key, digest)
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ReadError(f"cannot read {url}: {e}") from None
    return out


def read_writes(url, key, *, limit, aes_key=None, digest=False) -> list:
    """SourceKind.read_writes: the checkpoint's pending writes, read now (they arrive after it)."""
    thread, ns, cid = key
    path = Path(parse_database_url(url)["NAME"])
    if not path.is_file():
        raise ReadError(f"{url}: no such SQLite file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(_SQLITE_FRESH_WRITES, (limit, thread, ns, cid)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ReadError(f"cannot read {url}: {e}") from None
    if not rows:
        raise ReadError(GONE)
    return [decode_write(task, idx, channel, t, s, d, limit, aes_key, digest)
            for task, idx, channel, t, s, d in rows if task is not None]


def _raw_ext(code, data):
    # Keep extension values as raw bytes: nothing the data names is built.
    return ormsgpack.Ext(code, data)


def _split_sqlite_checkpoint(type_, size, data, limit, aes_key, digest=False):
    """(channels, channel_versions, sizes, note) of a whole serialized SQLite checkpoint.

    Each channel value is re-packed on its own to measure and decode it: the
    same encoder LangGraph used gives the same bytes for that value.
    """
    if data is None:
        return [], None, {}, f"the checkpoint is {size:,} bytes, too large to read for display"
    if type_ != "msgpack":
        # Encrypted (or another serializer): decode it whole, sizes per channel unknown.
        whole = safe_loads(type_, data, limit=None, aes_key=aes_key, clip=False, digest=digest)
        if not isinstance(whole, dict) or "channel_values" not in whole:
            return [Value("(whole checkpoint)", type_ or "", size, whole)], None, {}, ""
        channels = [Value(k, type_, None, v) for k, v in sorted(as_object(whole.get("channel_values")).items())]
        return channels, as_object(whole.get("channel_versions")), {}, ""
    try:
        raw = ormsgpack.unpackb(bytes(data), ext_hook=_raw_ext, option=ormsgpack.OPT_NON_STR_KEYS)
    except (ValueError, TypeError) as e:
        return [Value("(whole checkpoint)", type_, size, {"__error__": f"corrupt msgpack: {e}", "size": size})], None, {}, ""
    if not isinstance(raw, dict):
        return [], None, {}, "the checkpoint is not a map"
    versions = {str(k): str(v) for k, v in as_object(raw.get("channel_versions")).items()}
    channels, sizes = [], {}
    for name, value in sorted(as_object(raw.get("channel_values")).items(), key=lambda kv: str(kv[0])):
        packed = ormsgpack.packb(value, option=ormsgpack.OPT_NON_STR_KEYS)
        sizes[str(name)] = len(packed)
        decoded = safe_loads("msgpack", packed, limit=limit, aes_key=aes_key, clip=False, digest=digest)
        channels.append(Value(str(name), "msgpack", len(packed), decoded, versions.get(str(name), "")))
    return channels, versions, sizes, ""


# --- DeltaChannel history (checkpoints.delta) ----------------------------------------

# LangGraph's own walk (langgraph.checkpoint.sqlite._delta.DELTA_STAGE1_SQL):
# follow parent_checkpoint_id from the start, one primary-key lookup a step
# (CROSS JOIN keeps the chain the outer loop), streamed so that it stops when
# every channel found a stored value. SQLite keeps channel_values inside the
# serialized checkpoint, so each visited row is unpacked to look at its keys.
_DELTA_WALK = (
    "WITH RECURSIVE ancestors(checkpoint_id, parent_checkpoint_id, type, checkpoint, depth) AS ("
    " SELECT checkpoint_id, parent_checkpoint_id, type, checkpoint, 0 FROM checkpoints"
    " WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
    " UNION ALL"
    " SELECT c.checkpoint_id, c.parent_checkpoint_id, c.type, c.checkpoint, a.depth + 1"
    " FROM ancestors a CROSS JOIN checkpoints c ON c.checkpoint_id = a.parent_checkpoint_id"
    " WHERE c.thread_id = ? AND c.checkpoint_ns = ? AND a.depth < ?"
    ") SELECT checkpoint_id, type, coalesce(length(CAST(checkpoint AS BLOB)), 0),"
    " CASE WHEN coalesce(length(CAST(checkpoint AS BLOB)), 0) <= ? THEN CAST(checkpoint AS BLOB) END FROM ancestors"
)


def read_delta_rows(conn, thread, ns, start, channels, *, limit, total_limit, aes_key=None, digest=False, max_depth=10_000):
    """The DeltaRows of `channels` walking from checkpoint `start` (see the PostgreSQL reader).

    A seed is the channel's entry in a checkpoint's channel_values, re-packed
    on its own: (checkpoint_id, "msgpack", size, bytes); from an encrypted
    checkpoint it comes decoded: (checkpoint_id, "decoded", None, value).
    """
    out = DeltaRows(chains={ch: [] for ch in channels})
    open_, seen = set(channels), set()
    rows = conn.execute(_DELTA_WALK, (thread, ns, start, thread, ns, max_depth, total_limit))
    try:
        for cid, type_, size, data in rows:
            if cid in seen:  # INSERT OR REPLACE can make a loop: stop where LangGraph's walk does
                break
            seen.add(cid)
            for ch in open_:
                out.chains[ch].append(cid)
            if data is None:
                for ch in open_:
                    out.problems[ch] = f"checkpoint {cid} is {size:,} bytes, too large to read for display"
                open_ = set()
                break
            values = _channel_values(type_, data, aes_key, digest, ormsgpack, safe_loads)
            if values is None:
                for ch in open_:
                    out.problems[ch] = f"checkpoint {cid} could not be decoded (encrypted without the key, or corrupt)"
                open_ = set()
                break
            for ch in [ch for ch in open_ if ch in values]:
                value = values[ch]
                if isinstance(value, tuple):  # decoded from an encrypted checkpoint
                    out.seeds[ch] = (cid, "decoded", None, value[1])
                else:
                    packed = ormsgpack.packb(value, option=ormsgpack.OPT_NON_STR_KEYS)
                    out.seeds[ch] = (cid, "msgpack", len(packed), packed)
                open_.discard(ch)
            if not open_:
                break
    finally:
        rows.close()
    if open_ and len(seen) > max_depth:
        for ch in open_:
            out.problems[ch] = f"more than {max_depth:,} checkpoints since the last snapshot: not replayed for display"
    wanted = [ch for ch in channels if ch not in out.problems]
    ids = sorted({cid for ch in wanted for cid in out.chains[ch]})
    if not ids:
        return out
    has_path = any(r[1] == "task_path" for r in conn.execute("SELECT * FROM pragma_table_info('writes')"))
    path = "task_path" if has_path else "''"
    total, found = 0, []
    for i in range(0, len(ids), 400):
        chunk = ids[i : i + 400]
        found += conn.execute(
            f"SELECT checkpoint_id, task_id, {path}, idx, channel, type, coalesce(length(CAST(value AS BLOB)), 0),"
            f" CASE WHEN coalesce(length(CAST(value AS BLOB)), 0) <= ? THEN CAST(value AS BLOB) END"
            f" FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND channel IN ({', '.join('?' * len(wanted))})"
            f" AND checkpoint_id IN ({', '.join('?' * len(chunk))})",
            (limit, thread, ns, *wanted, *chunk),
        ).fetchall()
        total = sum(r[6] for r in found)
        if total > total_limit:
            for ch in wanted:
                out.problems[ch] = f"the writes to replay hold more than the {total_limit:,} bytes read for display"
            return out
    out.writes = [tuple(r) for r in found]
    return out


def _channel_values(type_, data, aes_key, digest, ormsgpack, safe_loads):
    """{channel: raw value} of a serialized checkpoint, None when it cannot be read.

    Plain msgpack is unpacked keeping extension values as raw bytes (nothing
    is built from them); an encrypted checkpoint is decrypted and decoded
    safely, and each value is then handed back as ("decoded", value).
    """
    if type_ == "msgpack":
        try:
            whole = ormsgpack.unpackb(bytes(data), ext_hook=lambda code, payload: ormsgpack.Ext(code, payload),
                                      option=ormsgpack.OPT_NON_STR_KEYS)
        except (ValueError, TypeError):
            return None
    else:
        whole = safe_loads(type_, data, limit=None, aes_key=aes_key, clip=False, digest=digest)
        if not isinstance(whole, dict) or "channel_values" not in whole:
            return None
        values = whole.get("channel_values")
        return {str(k): ("decoded", v) for k, v in values.items()} if isinstance(values, dict) else {}
    values = whole.get("channel_values") if isinstance(whole, dict) else None
    return {str(k): v for k, v in values.items()} if isinstance(values, dict) else {}


def read_any_snapshot(conn, thread, ns, channel, *, limit, after, scan=200):
    """(type, size, data) of the first stored value of `channel` in the next `scan` checkpoints after `after`, or None.

    Its items show whether list writes were appended as items or extended the list.
    """
    rows = conn.execute(
        "SELECT type, checkpoint FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id > ?"
        " AND type = 'msgpack' AND coalesce(length(CAST(checkpoint AS BLOB)), 0) <= ? ORDER BY checkpoint_id LIMIT ?",
        (thread, ns, after, limit, scan),
    )
    for _type, data in rows:
        values = _channel_values("msgpack", data, None, False, ormsgpack, None)
        if values and channel in values:
            packed = ormsgpack.packb(values[channel], option=ormsgpack.OPT_NON_STR_KEYS)
            return "msgpack", len(packed), packed
    return None
