"""DeltaChannel values rebuilt from storage, without calling user code (issue 14.1).

A `DeltaChannel` (langgraph >= 1.2, beta) stores no value in most
checkpoints: every `snapshot_frequency` updates it stores a `_DeltaSnapshot`
of its value, and in between the value is that snapshot (the *seed*) plus the
writes of the checkpoints since it, replayed through the channel's reducer.
LangGraph finds them with `get_delta_channel_history`: walk the parent chain
from the checkpoint's parent, collecting each ancestor's writes to the
channel, until an ancestor stores a value for it (that value is the seed; no
such ancestor: start empty). Writes replay oldest checkpoint first, and within
one checkpoint in `writes_sort_key` order, `(task_path, task_id, idx)`.

The reducer is user code, and the console never runs it. It replays the two
shapes it can do exactly, on the safely decoded values:

- `append`: `operator.add` on a list, each write one more item;
- `messages`: LangGraph's `_messages_delta_reducer`: writes are messages or
  lists of them; a message with a known id replaces it in place, a
  `RemoveMessage` removes its id, `RemoveMessage(REMOVE_ALL_MESSAGES)` clears
  everything before it, a message without an id is appended.

Storage does not name the reducer: the shape is read from the writes and the
seed. Writes that fit neither (or a seed that contradicts the guess: list
writes over a seed holding no list at all is a reducer that extends, not
`operator.add`) are left as they are, and the page says so.
"""

from dataclasses import dataclass, field

from checkpoints.decode import is_undecodable
from checkpoints.messages import REMOVE_ALL_MESSAGES, as_message, is_remove

# Metadata keys that name a thread's delta channels: the released name and the alpha one.
COUNTER_KEYS = ("counters_since_delta_snapshot", "delta_updates_since_snapshot")
SNAPSHOT = "__delta_snapshot__"
_OVERWRITE = "__overwrite__"


@dataclass
class DeltaWrite:
    checkpoint_id: str
    task_id: str
    task_path: str
    idx: int
    value: object  # decoded (checkpoints.decode)
    size: int

    def sort_key(self):
        return (self.task_path, self.task_id, self.idx)


@dataclass
class History:
    """What LangGraph replays for one channel at one checkpoint."""

    channel: str
    seed_checkpoint_id: str | None = None  # None: no ancestor stores a value, start empty
    seed: object = None  # decoded stored value, snapshot marker included
    writes: list = field(default_factory=list)  # DeltaWrite, in replay order
    problem: str = ""  # why the history could not be read whole
    # Without a seed: a stored value of the channel elsewhere in the thread, whose
    # items tell appended list writes from extended ones (None: none found).
    evidence: object = None

    @property
    def has_seed(self):
        return self.seed_checkpoint_id is not None


@dataclass
class Result:
    value: object = None
    shape: str = ""  # append, messages, or "" when not reconstructed
    note: str = ""  # why not, when not


def delta_channels(metadata, values) -> set:
    """The delta channels a checkpoint shows: named by its snapshot counters, or holding a snapshot.

    The loop counts every delta channel at every checkpoint until it snapshots
    it, so a channel missing from the counters has a snapshot right there.

    >>> sorted(delta_channels({"counters_since_delta_snapshot": {"log": [1, 2]}}, {"m": {"__delta_snapshot__": []}, "n": 1}))
    ['log', 'm']
    >>> delta_channels(None, {})
    set()
    """
    out = set()
    if isinstance(metadata, dict):
        for key in COUNTER_KEYS:
            counters = metadata.get(key)
            if isinstance(counters, dict):
                out.update(k for k in counters if isinstance(k, str))
    out.update(k for k, v in values.items() if is_snapshot(v))
    return out


def is_snapshot(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and SNAPSHOT in value


def unwrap(value):
    """A stored value as the channel holds it: a snapshot's content, or a plain (pre-delta) value.

    >>> unwrap({"__delta_snapshot__": [1]}), unwrap([2])
    ([1], [2])
    """
    return value[SNAPSHOT] if is_snapshot(value) else value


def replay_order(chain, writes) -> list:
    """Writes in LangGraph's replay order: `chain` is the walk, newest first; writes outside it are dropped.

    >>> w = lambda c, path, task, idx: DeltaWrite(c, task, path, idx, f"{c}{path}{task}{idx}", 1)
    >>> [x.value for x in replay_order(["c2", "c1"], [w("c2", "", "t", 0), w("c1", "b", "t", 0), w("c1", "a", "u", 1), w("c0", "", "t", 0)])]
    ['c1au1', 'c1bt0', 'c2t0']
    """
    position = {cid: i for i, cid in enumerate(chain)}
    kept = [w for w in writes if w.checkpoint_id in position]
    return sorted(kept, key=lambda w: (-position[w.checkpoint_id], w.sort_key()))


def reconstruct(history: History) -> Result:
    """The channel's value from its seed and writes, for the shapes the console replays exactly.

    >>> reconstruct(History("log", "c1", {"__delta_snapshot__": ["a"]}, [DeltaWrite("c2", "t", "", 0, "b", 1)]))
    Result(value=['a', 'b'], shape='append', note='')
    >>> reconstruct(History("log", None, None, [DeltaWrite("c2", "t", "", 0, ["b"], 1)])).value
    [['b']]
    >>> reconstruct(History("log", None, None, [DeltaWrite("c2", "t", "", 0, ["b"], 1)], evidence={"__delta_snapshot__": ["a"]})).shape
    ''
    >>> reconstruct(History("log", "c1", {"__delta_snapshot__": [["a"], "b"]}, [DeltaWrite("c2", "t", "", 0, ["c"], 1)])).value
    [['a'], 'b', ['c']]
    >>> reconstruct(History("log", "c1", {"__delta_snapshot__": ["a"]}, [DeltaWrite("c2", "t", "", 0, ["b"], 1)])).shape
    ''
    """
    if history.problem:
        return Result(note=history.problem)
    base = unwrap(history.seed) if history.has_seed else []
    if is_undecodable(base):
        return Result(note="the snapshot could not be decoded (too large, encrypted or unreadable)")
    values = [w.value for w in history.writes]
    if any(is_undecodable(v) for v in values):
        return Result(note="a write could not be decoded (too large, encrypted or unreadable)")
    # The last Overwrite resets the value; the writes after it apply on top (DeltaChannel.replay_writes).
    start = 0
    for i, v in enumerate(values):
        overwritten, new_base = _overwrite(v)
        if overwritten:
            base, start = ([] if new_base is None else new_base), i + 1
    values = values[start:]
    if not isinstance(base, list):
        return Result(note=f"the stored value is a {type(base).__name__}, not a list")
    if not values:
        return Result(list(base), "messages" if base and _all_messages(base) else "append")
    if _fits_messages(base, values):
        return Result(_merge_messages(base, values), "messages")
    if any(isinstance(v, list) for v in values):
        # operator.add keeps each list write as one item; a reducer that extends
        # the list looks the same in the writes. The stored items tell them apart.
        stored = base if base else unwrap(history.evidence) if history.evidence is not None else []
        # Only an extending reducer leaves no list among the stored items.
        if isinstance(stored, list) and stored and not any(isinstance(item, list) for item in stored):
            return Result(note="the writes are lists but no stored item is: a reducer that extends the list, "
                               "which the console does not replay")
        if not stored:
            return Result(base + values, "append", "assumed operator.add: no snapshot of this channel shows whether "
                                                   "its list writes are appended as items or extend the list")
    return Result(base + values, "append")


def _overwrite(value):
    if isinstance(value, dict):
        if len(value) == 1 and _OVERWRITE in value:
            return True, value[_OVERWRITE]
        if value.get("type") == _OVERWRITE and "value" in value:
            return True, value["value"]
        if value.get("__type__") == "langgraph.types.Overwrite" and isinstance(value.get("value"), dict):
            return True, value["value"].get("value")
    return False, None


def _flatten(writes):
    flat = []
    for w in writes:
        if isinstance(w, list):
            flat.extend(w)
        else:
            flat.append(w)
    return flat


def _all_messages(items) -> bool:
    return all(as_message(item) is not None for item in items)


def _fits_messages(base, writes) -> bool:
    flat = _flatten(writes)
    if not flat or not _all_messages(flat) or not _all_messages(base):
        return False
    # operator.add over lists of messages keeps each write as one nested list.
    return not (base and all(isinstance(item, list) for item in base))


def _merge_messages(state, writes):
    """`_messages_delta_reducer`, on decoded messages."""
    msgs = _flatten(writes)
    for i in range(len(msgs) - 1, -1, -1):
        m = as_message(msgs[i])
        if is_remove(m) and m.id == REMOVE_ALL_MESSAGES:
            state, msgs = [], msgs[i + 1 :]
            break
    index = {}
    for i, item in enumerate(state):
        mid = as_message(item).id
        if mid is not None:
            index[mid] = i
    result = list(state)
    for item in msgs:
        m = as_message(item)
        if m.id is None:
            result.append(item)
        elif is_remove(m):
            if m.id in index:
                result[index.pop(m.id)] = None
        elif m.id in index:
            result[index[m.id]] = item
        else:
            index[m.id] = len(result)
            result.append(item)
    return [item for item in result if item is not None]
