"""Read one checkpoint's values from its source, read-only, for the checkpoint page.

The mirror keeps sizes and metadata, not values: the page reads the one
checkpoint (and its parent's channel versions, for the diff) straight from
the LangGraph database. Values are decoded with the safe decoder (no import,
no unpickling), and a value larger than DISPLAY_DECODE_LIMIT is never fetched
whole: SQL returns its size only.
"""

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import ormsgpack

from checkpoints import delta
from checkpoints.dburl import parse_database_url, redact
from checkpoints.decode import decode_json_text, plain, safe_loads, summarize
from checkpoints.ids import source_thread_id
from checkpoints.sources import DeltaRows, first_line
from checkpoints.sources.sqlite import byte_length
from dashboard.value_diff import diff_values

CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 10_000
# A SQLite checkpoint is one serialized value holding every channel: it is
# read whole, up to this many times the per-value display limit.
SQLITE_WHOLE_FACTOR = 8


class ReadError(Exception):
    pass


@dataclass
class Value:
    """One channel value or write, decoded whole (up to the size limit); display caps apply when shown."""

    name: str
    type: str
    size: int | None
    value: object
    version: str = ""
    # DeltaChannel provenance (checkpoints.delta): None for an ordinary channel.
    delta: "DeltaSource | None" = None

    @property
    def summary(self):
        return summarize(self.value)

    @property
    def pretty(self):
        return json.dumps(plain(self.value), indent=2, ensure_ascii=False, sort_keys=False)


@dataclass
class DeltaSource:
    """Where a DeltaChannel value comes from.

    status: "snapshot" (stored at this checkpoint), "reconstructed" (seed plus
    writes replayed by the console) or "raw" (shapes the console does not
    replay: the seed and the writes are shown as they are, `note` says why).
    """

    status: str
    shape: str = ""
    seed_checkpoint_id: str | None = None
    seed: object = None
    writes: list = field(default_factory=list)  # checkpoints.delta.DeltaWrite, replay order
    note: str = ""
    links: dict = field(default_factory=dict)  # checkpoint id -> mirror pk, filled by the page

    @property
    def seed_pk(self):
        return self.links.get(self.seed_checkpoint_id)

    @property
    def seed_summary(self):
        return summarize(self.seed)

    @property
    def rows(self):
        """The replayed writes for a table: (checkpoint id, mirror pk or None, write)."""
        return [(w.checkpoint_id, self.links.get(w.checkpoint_id), w, summarize(w.value)) for w in self.writes]


@dataclass
class CheckpointValues:
    channels: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    versions: dict | None = None
    parent_versions: dict | None = None
    # The parent's channel values, read in the same snapshot; None without a parent.
    parent_channels: list | None = None
    channel_sizes: dict = field(default_factory=dict)
    parent_sizes: dict = field(default_factory=dict)
    note: str = ""

    def diff(self):
        """What changed since the parent (dashboard.value_diff), or None when the parent could not be read."""
        if self.parent_channels is None:
            return None
        return diff_values(
            {v.name: v.value for v in self.parent_channels},
            {v.name: v.value for v in self.channels},
            self.parent_sizes,
            self.channel_sizes,
        )


def read_values(source, checkpoint, *, limit, aes_key=None, digest=False) -> CheckpointValues:
    """Values, writes and channel versions of a mirrored checkpoint; ReadError if the source cannot tell.

    `digest` adds the sha256 of every bytes value (the state API names bytes by it).
    """
    # The source's own id: the mirror escapes NUL (checkpoints.ids.thread_key).
    key = (source_thread_id(checkpoint.thread.thread_id), checkpoint.checkpoint_ns, checkpoint.checkpoint_id)
    parent = checkpoint.parent_checkpoint_id or None
    if source.kind == "s3":
        return _read_s3(source.url, key, parent, limit, aes_key, digest)
    if source.kind == "postgres":
        return _read_postgres(source.url, key, parent, limit, aes_key, digest)
    return _read_sqlite(source.url, key, parent, limit, aes_key, digest)


def read_writes(source, checkpoint, *, limit, aes_key=None, digest=False) -> list:
    """The pending writes of a mirrored checkpoint, read now (they arrive after it); ReadError if it is gone.

    What dashboard.snapshot_cache adds to the values it kept: a checkpoint
    never changes, its writes may.
    """
    thread, ns, cid = source_thread_id(checkpoint.thread.thread_id), checkpoint.checkpoint_ns, checkpoint.checkpoint_id
    gone = "this checkpoint is no longer in the source (pruned or deleted since the last sync)"
    if source.kind == "s3":
        found = _s3_checkpoint(source.url, (thread, ns, cid), limit, with_writes=True)
        if found is None:
            raise ReadError(gone)
        return [_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in found.writes]
    if source.kind == "postgres":
        import psycopg

        params = {"thread": thread, "ns": ns, "id": cid, "limit": limit}
        try:
            with psycopg.connect(source.url, connect_timeout=CONNECT_TIMEOUT, autocommit=False) as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                if conn.execute(_PG_EXISTS, params).fetchone() is None:
                    raise ReadError(gone)
                rows = conn.execute(_PG_WRITES, params).fetchall()
                conn.rollback()
        except psycopg.Error as e:
            raise ReadError(f"cannot read {redact(source.url)}: {first_line(e)}") from None
    else:
        path = Path(parse_database_url(source.url)["NAME"])
        if not path.is_file():
            raise ReadError(f"{source.url}: no such SQLite file")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
            try:
                conn.execute("BEGIN")
                if conn.execute(_SQLITE_EXISTS, (thread, ns, cid)).fetchone() is None:
                    raise ReadError(gone)
                rows = conn.execute(_SQLITE_WRITES, (limit, thread, ns, cid)).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise ReadError(f"cannot read {source.url}: {e}") from None
    return [_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in rows]


def _object(value):
    return value if isinstance(value, dict) else {}


def _json_or_none(text):
    try:
        return json.loads(text) if text else None
    except (ValueError, TypeError):
        return None


# --- DeltaChannel values ---------------------------------------------------------

# The writes replayed for one checkpoint's delta channels are read up to this
# many times the per-value display limit.
DELTA_READ_FACTOR = 8


def _apply_delta(out, cid, parent, metadata, parent_metadata, read_rows, read_snapshot, limit, aes_key, digest=False):
    """Give the delta channels of `out` (and of its parent) their values, as LangGraph rebuilds them.

    A snapshot stored at the checkpoint is its value; otherwise the seed and
    the writes of the ancestors since it are read (`read_rows(start, channels)`,
    from the parent) and replayed by checkpoints.delta for the shapes it can
    do exactly. The parent's value comes from the same walk, minus its own writes.
    `read_snapshot(channel)` finds a stored value elsewhere in the thread when
    the walk found none and the shape needs one.
    """
    mine = {v.name: v for v in out.channels}
    theirs = {v.name: v for v in out.parent_channels} if out.parent_channels is not None else None
    channels = delta.delta_channels(metadata, {k: v.value for k, v in mine.items()})
    if theirs is not None:
        channels |= delta.delta_channels(parent_metadata, {k: v.value for k, v in theirs.items()})
    if not channels:
        return
    for values in (mine, theirs or {}):
        for name, v in values.items():
            if name in channels and delta.is_snapshot(v.value):
                v.value = delta.unwrap(v.value)
                v.delta = DeltaSource("snapshot")
    need_mine = {ch for ch in channels if ch not in mine}
    need_theirs = {ch for ch in channels if theirs is not None and ch not in theirs}
    todo = sorted(need_mine | need_theirs)
    if not todo:
        return
    rows = read_rows(parent, todo) if parent else DeltaRows(chains={ch: [] for ch in todo})
    writes = [_delta_write(r, limit, aes_key, digest) for r in rows.writes]
    for ch in todo:
        seed_cid, seed = None, None
        if ch in rows.seeds:
            seed_cid, type_, size, data = rows.seeds[ch]
            seed = _decode_seed(type_, size, data, limit, aes_key, digest)
        chain = rows.chains.get(ch, [])
        ch_writes = [w[1] for w in writes if w[0] == ch]
        evidence = None
        if seed_cid is None and any(isinstance(w.value, list) for w in ch_writes):
            found = read_snapshot(ch)
            evidence = _decode_seed(*found, limit, aes_key) if found else None
        if ch in need_mine:
            history = delta.History(ch, seed_cid, seed, delta.replay_order(chain, ch_writes),
                                    rows.problems.get(ch, ""), evidence)
            if out.versions is not None and ch not in out.versions:
                history = delta.History(ch)  # never written on this branch: the reducer's empty start
            out.channels.append(_delta_value(ch, history, (out.versions or {}).get(ch, "")))
            out.channel_sizes[ch] = out.channels[-1].size
        if ch in need_theirs:
            # The parent's own writes made this checkpoint: they are not part of its value.
            history = delta.History(ch, seed_cid, seed, delta.replay_order(chain[1:], ch_writes),
                                    rows.problems.get(ch, ""), evidence)
            if out.parent_versions is not None and ch not in out.parent_versions:
                history = delta.History(ch)
            out.parent_channels.append(_delta_value(ch, history, (out.parent_versions or {}).get(ch, "")))
            out.parent_sizes[ch] = out.parent_channels[-1].size
    out.channels.sort(key=lambda v: v.name)
    if out.parent_channels is not None:
        out.parent_channels.sort(key=lambda v: v.name)


def _delta_write(row, limit, aes_key, digest=False):
    checkpoint_id, task_id, task_path, idx, channel, type_, size, data = row
    if data is None and size:
        value = {"__truncated__": True, "type": type_, "size": size}
    else:
        value = safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest)
    return channel, delta.DeltaWrite(checkpoint_id, task_id, task_path or "", idx, value, size)


def _decode_seed(type_, size, data, limit, aes_key=None, digest=False):
    if type_ == "decoded":
        return data
    if data is None:
        return {"__truncated__": True, "type": type_, "size": size}
    if type_ == "inline json":
        return decode_json_text(data, limit=limit, clip=False)
    return safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest)


def _delta_value(channel, history, version) -> Value:
    result = delta.reconstruct(history)
    size = sum(w.size for w in history.writes)
    source = DeltaSource(
        "reconstructed" if result.shape else "raw", result.shape, history.seed_checkpoint_id,
        delta.unwrap(history.seed) if history.has_seed else None, history.writes, result.note,
    )
    if result.shape:
        return Value(channel, "reconstructed", size, result.value, version, source)
    shown = {
        "seed_checkpoint_id": source.seed_checkpoint_id,
        "seed": source.seed,
        "writes": [{"checkpoint_id": w.checkpoint_id, "task_id": w.task_id, "idx": w.idx, "value": w.value}
                   for w in history.writes],
    }
    return Value(channel, "delta writes", size, {"__delta__": shown}, version, source)


# --- PostgreSQL ------------------------------------------------------------------

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
_PG_EXISTS = """
    SELECT 1 FROM checkpoints WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(id)s
"""
_PG_WRITES = """
    SELECT task_id, idx, channel, type, coalesce(octet_length(blob), 0),
           CASE WHEN octet_length(blob) <= %(limit)s THEN blob END
    FROM checkpoint_writes
    WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(id)s
    ORDER BY task_id, idx
"""


def _read_postgres(url, key, parent, limit, aes_key, digest=False):
    import psycopg

    from checkpoints.sources import postgres as postgres_source

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
                return postgres_source.read_delta_rows(
                    conn, thread, ns, start, channels, limit=limit, total_limit=limit * DELTA_READ_FACTOR)

            def read_snapshot(channel):
                return postgres_source.read_any_snapshot(conn, thread, ns, channel, limit=limit)

            _apply_delta(out, cid, parent, versions[cid][2], versions.get(parent, (None, None, None))[2],
                         read_rows, read_snapshot, limit, aes_key, digest)
            conn.rollback()
    except psycopg.Error as e:
        raise ReadError(f"cannot read {redact(url)}: {first_line(e)}") from None
    return out


def _postgres_values(versions, inline, blobs, writes, cid, parent, limit, aes_key, digest=False):
    out = CheckpointValues()
    out.versions = _object(versions[cid][0])
    if parent in versions:
        out.parent_versions = _object(versions[parent][0])
    sizes = {cid: dict(_object(versions[cid][1]))}
    if parent in versions:
        sizes[parent] = dict(_object(versions[parent][1]))
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
        own = _object(versions[checkpoint_id][0])
        channels[checkpoint_id].append(Value(channel, "inline json", size, value, str(own.get(channel, ""))))
    out.channels = sorted(channels[cid], key=lambda v: v.name)
    if parent in versions:
        out.parent_channels = sorted(channels[parent], key=lambda v: v.name)
    out.channel_sizes = sizes.get(cid, {})
    out.parent_sizes = sizes.get(parent, {})
    out.writes = [_write(task, idx, channel, type_, size, data, limit, aes_key, digest) for task, idx, channel, type_, size, data in writes]
    return out


def _write(task, idx, channel, type_, size, data, limit, aes_key, digest=False):
    if data is None and size:
        value = {"__truncated__": True, "type": type_, "size": size}
    else:
        value = safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest)
    return {"task_id": task, "idx": idx, "value": Value(channel, type_ or "", size, value)}


# --- S3 (an S3Saver store) -----------------------------------------------------------


def _s3_checkpoint(url, key, limit, *, with_writes):
    """The stored checkpoint (checkpoints.sources.s3.reader.read_checkpoint); ReadError naming the object."""
    from checkpoints.s3layout import S3CheckpointError
    from checkpoints.sources import SourceError
    from checkpoints.sources.s3 import S3Reader, settings_for
    from checkpoints.sources.s3.reader import read_checkpoint

    try:
        with S3Reader(url, settings_for(url), workers=1) as reader:
            return read_checkpoint(reader, key, limit=limit, with_writes=with_writes)
    except (SourceError, S3CheckpointError) as e:
        raise ReadError(first_line(e)) from None


def _read_s3(url, key, parent, limit, aes_key, digest=False):
    """A checkpoint of an S3 store: its payload's values, its writes, and its parent's values for the diff.

    Each checkpoint keeps all its values in its own payload object, so a
    payload above S3_WHOLE_FACTOR times the display limit is not fetched
    (sizes only). DeltaChannel values are shown as stored, not replayed.
    """
    thread, ns, cid = key
    whole = limit * SQLITE_WHOLE_FACTOR
    found = _s3_checkpoint(url, key, whole, with_writes=True)
    if found is None:
        raise ReadError("this checkpoint is no longer in the source (pruned or deleted since the last sync)")
    out = CheckpointValues()
    out.channels, out.versions, out.channel_sizes = _s3_channels(found, limit, aes_key, digest)
    if parent:
        try:
            before = _s3_checkpoint(url, (thread, ns, parent), whole, with_writes=False)
        except ReadError:
            before = None
        if before is not None:
            out.parent_channels, out.parent_versions, out.parent_sizes = _s3_channels(before, limit, aes_key, digest)
    out.writes = [_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in found.writes]
    if found.manifest.get("delta"):
        out.note = "DeltaChannel values are shown as this checkpoint stores them (not replayed from older checkpoints)."
    return out


def _s3_channels(found, limit, aes_key, digest):
    versions = _object(found.manifest.get("channel_versions"))
    channels = []
    for channel, (type_, data) in sorted(found.values.items()):
        size = found.sizes.get(channel)
        if data is None or (size or 0) > limit:
            value = {"__truncated__": True, "type": type_, "size": size}
        else:
            value = safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest)
        channels.append(Value(channel, type_ or "", size, value, str(versions.get(channel, ""))))
    return channels, versions, {ch: s for ch, s in found.sizes.items() if s is not None}


# --- SQLite ------------------------------------------------------------------------

# Sizes by byte_length(): a value above the limit is never loaded, not even for its size.
_SQLITE_CHECKPOINTS = f"""
    SELECT checkpoint_id, type, {byte_length('checkpoint')},
           CASE WHEN {byte_length('checkpoint')} <= ? THEN CAST(checkpoint AS BLOB) END,
           CAST(metadata AS TEXT)
    FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id IN (?, ?)
"""
_SQLITE_EXISTS = "SELECT 1 FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
_SQLITE_WRITES = f"""
    SELECT task_id, idx, channel, type, {byte_length('value')},
           CASE WHEN {byte_length('value')} <= ? THEN CAST(value AS BLOB) END
    FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?
    ORDER BY task_id, idx
"""


def _read_sqlite(url, key, parent, limit, aes_key, digest=False):
    from checkpoints.sources import sqlite as sqlite_source

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
            out.writes = [_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in writes]

            def read_rows(start, channels):
                return sqlite_source.read_delta_rows(
                    conn, thread, ns, start, channels, limit=limit, total_limit=whole, aes_key=aes_key, digest=digest)

            def read_snapshot(channel):
                return sqlite_source.read_any_snapshot(conn, thread, ns, channel, limit=whole, after=cid)

            if not out.note:
                _apply_delta(out, cid, parent, _json_or_none(metadata), _json_or_none(parent_metadata),
                             read_rows, read_snapshot, limit, aes_key, digest)
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ReadError(f"cannot read {url}: {e}") from None
    return out


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
        channels = [Value(k, type_, None, v) for k, v in sorted(_object(whole.get("channel_values")).items())]
        return channels, _object(whole.get("channel_versions")), {}, ""
    try:
        raw = ormsgpack.unpackb(bytes(data), ext_hook=_raw_ext, option=ormsgpack.OPT_NON_STR_KEYS)
    except (ValueError, TypeError) as e:
        return [Value("(whole checkpoint)", type_, size, {"__error__": f"corrupt msgpack: {e}", "size": size})], None, {}, ""
    if not isinstance(raw, dict):
        return [], None, {}, "the checkpoint is not a map"
    versions = {str(k): str(v) for k, v in _object(raw.get("channel_versions")).items()}
    channels, sizes = [], {}
    for name, value in sorted(_object(raw.get("channel_values")).items(), key=lambda kv: str(kv[0])):
        packed = ormsgpack.packb(value, option=ormsgpack.OPT_NON_STR_KEYS)
        sizes[str(name)] = len(packed)
        decoded = safe_loads("msgpack", packed, limit=limit, aes_key=aes_key, clip=False, digest=digest)
        channels.append(Value(str(name), "msgpack", len(packed), decoded, versions.get(str(name), "")))
    return channels, versions, sizes, ""
