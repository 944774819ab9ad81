"""One checkpoint's values, decoded for display: the shapes every kind's `read_values` returns.

A kind reads the stored rows (checkpoints/sources/<kind>/values.py); what
is common to all kinds lives here: the containers, the safe decoding of a
pending write, and the DeltaChannel replay (`apply_delta`), which rebuilds a
delta channel's value from rows a kind reads through two callables. No store
is read here.
"""

import json
from dataclasses import dataclass, field

from checkpoints import delta
from checkpoints.decode import decode_json_text, plain, safe_loads, summarize
from checkpoints.sources import DeltaRows

# The writes replayed for one checkpoint's delta channels are read up to this
# many times the per-value display limit.
DELTA_READ_FACTOR = 8


class ReadError(Exception):
    """A checkpoint's values cannot be read: the store is down, or no longer holds the checkpoint."""


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


def as_object(value):
    return value if isinstance(value, dict) else {}


def json_or_none(text):
    try:
        return json.loads(text) if text else None
    except (ValueError, TypeError):
        return None


def apply_delta(out, cid, parent, metadata, parent_metadata, read_rows, read_snapshot, limit, aes_key, digest=False):
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


def decode_write(task, idx, channel, type_, size, data, limit, aes_key, digest=False):
    if data is None and size:
        value = {"__truncated__": True, "type": type_, "size": size}
    else:
        value = safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest)
    return {"task_id": task, "idx": idx, "value": Value(channel, type_ or "", size, value)}
