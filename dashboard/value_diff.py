"""What changed between a checkpoint's channel values and its parent's.

Pure: it compares two `{channel: decoded value}` maps (plain JSON from
checkpoints.decode) and says, per channel, whether it was added, removed or
changed, and how: for a list the items appended or removed (LangChain
messages matched by id, shown with their role and a text excerpt), for a
dict the keys added, removed and changed down to MAX_DEPTH levels, for a
scalar the value before and after. Sizes (serialized bytes, from the source)
ride along for the table.
"""

import json
from dataclasses import dataclass, field

from checkpoints.decode import UNDECODABLE, summarize
from checkpoints.messages import as_message, text_of

MAX_DEPTH = 4  # dict levels compared key by key; deeper differences show as "changed"
MAX_DETAILS = 50  # lines shown per channel
TEXT_WIDTH = 100


@dataclass
class Detail:
    path: str  # where inside the channel: "", "[3]", "doc.pages", "message m-1"
    op: str  # appended, added, removed, changed
    text: str


@dataclass
class Change:
    channel: str
    kind: str  # added, removed, changed
    before_size: int | None = None
    after_size: int | None = None
    details: list = field(default_factory=list)
    hidden: int = 0  # details beyond MAX_DETAILS
    note: str = ""


def diff_values(before, after, before_sizes=None, after_sizes=None) -> list[Change]:
    """The channels whose value differs between `before` (the parent's values) and `after`.

    >>> [(c.channel, c.kind) for c in diff_values({"a": 1, "b": [1], "c": "x"}, {"a": 2, "b": [1], "d": True})]
    [('a', 'changed'), ('c', 'removed'), ('d', 'added')]
    >>> diff_values({"log": ["a"]}, {"log": ["a", "b"]}, {"log": 10}, {"log": 14})[0]
    Change(channel='log', kind='changed', before_size=10, after_size=14, details=[Detail(path='[1]', op='appended', text="'b'")], hidden=0, note='')
    """
    before_sizes, after_sizes = before_sizes or {}, after_sizes or {}
    out = []
    for channel in sorted(set(before) | set(after)):
        old, new = before.get(channel, _MISSING), after.get(channel, _MISSING)
        if old is _MISSING:
            change = Change(channel, "added", None, after_sizes.get(channel), [Detail("", "added", _text(new))])
        elif new is _MISSING:
            change = Change(channel, "removed", before_sizes.get(channel), None, [Detail("", "removed", _text(old))])
        elif old == new:
            continue
        else:
            change = Change(channel, "changed", before_sizes.get(channel), after_sizes.get(channel))
            if _undecodable(old) or _undecodable(new):
                change.note = "not decoded on one side (too large, encrypted or unreadable): sizes only"
            else:
                _diff(old, new, "", 0, change.details)
        if len(change.details) > MAX_DETAILS:
            change.hidden = len(change.details) - MAX_DETAILS
            change.details = change.details[:MAX_DETAILS]
        out.append(change)
    return out


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


def _undecodable(value) -> bool:
    return isinstance(value, dict) and any(k in value for k in UNDECODABLE) and len(value) <= 4


def _diff(old, new, path, depth, out):
    if isinstance(old, list) and isinstance(new, list):
        _diff_list(old, new, path, depth, out)
    elif isinstance(old, dict) and isinstance(new, dict) and not _is_marker(old) and not _is_marker(new):
        _diff_dict(old, new, path, depth, out)
    elif _same_type_marker(old, new):
        # Same object type (a pydantic model, a dataclass): compare its fields.
        _diff(old["value"], new["value"], path, depth, out)
    else:
        out.append(Detail(path, "changed", f"{_text(old, 45)} → {_text(new, 45)}"))


def _is_marker(value) -> bool:
    return any(isinstance(k, str) and k.startswith("__") and k.endswith("__") for k in value)


def _same_type_marker(old, new) -> bool:
    return (
        isinstance(old, dict) and isinstance(new, dict) and "__type__" in old and "value" in old
        and old.get("__type__") == new.get("__type__") and "value" in new and as_message(old) is None
    )


def _diff_dict(old, new, path, depth, out):
    if depth >= MAX_DEPTH:
        out.append(Detail(path, "changed", f"{summarize(old)} → {summarize(new)}"))
        return
    for key in old:
        if key not in new:
            out.append(Detail(_join(path, key), "removed", _text(old[key])))
    for key, value in new.items():
        if key not in old:
            out.append(Detail(_join(path, key), "added", _text(value)))
        elif old[key] != value:
            _diff(old[key], value, _join(path, key), depth + 1, out)


def _join(path, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _diff_list(old, new, path, depth, out):
    old_ids, new_ids = _message_ids(old), _message_ids(new)
    if old_ids is not None and new_ids is not None:
        _diff_messages(old, new, old_ids, new_ids, path, out)
        return
    # The common head and tail stay; what lies between was removed and added.
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    removed, added = old[head : len(old) - tail], new[head : len(new) - tail]
    if len(removed) == len(added) == 1 and depth < MAX_DEPTH:
        _diff(removed[0], added[0], f"{path}[{head}]", depth + 1, out)
        return
    for i, item in enumerate(removed):
        out.append(Detail(f"{path}[{head + i}]", "removed", _item_text(item)))
    op = "appended" if tail == 0 and not removed else "added"
    for i, item in enumerate(added):
        out.append(Detail(f"{path}[{head + i}]", op, _item_text(item)))


def _message_ids(items):
    """The ids of a list made only of messages that all have distinct ids, else None."""
    ids = []
    for item in items:
        message = as_message(item)
        if message is None or message.id is None:
            return None
        ids.append(message.id)
    return ids if len(set(ids)) == len(ids) else None


def _diff_messages(old, new, old_ids, new_ids, path, out):
    old_by_id = dict(zip(old_ids, old))
    new_set = set(new_ids)
    for mid, item in old_by_id.items():
        if mid not in new_set:
            out.append(Detail(f"{path}message {mid}", "removed", _message_text(item)))
    last_kept = max((i for i, mid in enumerate(new_ids) if mid in old_by_id), default=-1)
    for i, (mid, item) in enumerate(zip(new_ids, new)):
        if mid not in old_by_id:
            out.append(Detail(f"{path}message {mid}", "appended" if i > last_kept else "added", _message_text(item)))
        elif old_by_id[mid] != item:
            out.append(Detail(f"{path}message {mid}", "changed", _message_text(item)))


def _message_text(item) -> str:
    message = as_message(item)
    return f"{message.role}: {text_of(message, TEXT_WIDTH)}"


def _item_text(item) -> str:
    message = as_message(item)
    if message is not None:
        return f"{message.role}{' ' + message.id if message.id else ''}: {text_of(message, TEXT_WIDTH)}"
    return _text(item)


def _text(value, width=TEXT_WIDTH) -> str:
    """A short rendering of a value: scalars as JSON-ish text, containers by their summary.

    >>> _text("hi"), _text(3), _text(None), _text([1, 2]), _text({"a": 1})
    ("'hi'", '3', 'null', '[1, 2]', '{"a": 1}')
    >>> _text("x" * 200, width=10)
    "'xxxxxxxx…"
    >>> _text({"__bytes__": 5, "preview": "00"})
    'bytes 5 B'
    """
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (dict, list)):
        message = as_message(value)
        if message is not None:
            return _item_text(value)
        if isinstance(value, dict) and _is_marker(value):
            return summarize(value)  # bytes, an object, an undecodable value: its one-line description
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > width:
            return summarize(value)
    elif value is None or isinstance(value, bool):
        text = json.dumps(value)
    else:
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
