"""Test clocks: old LangGraph checkpoints without sleeping, margins of hours.

A test whose outcome depends on a margin of a few seconds fails on a loaded
machine (a "fresh" thread written 2 s before the cut ages past it while the
test waits for a CPU). So the tests make age explicit instead:

- `written_ago(delta)`: the LangGraph checkpoints (and their write rows, which
  carry the checkpoint's id) written inside the block get uuid6 ids `delta`
  in the past. Everything here reads a checkpoint's age from its uuid6 id
  (docs/architecture.md §3: created_at is the uuid6 time), so they are that old, and the
  rows written after the block are `delta` younger: margins of hours.
- `OLD`, `HOUR`: the margins the tests use with it.

Files get their age with os.utime; S3 objects cannot (the server sets
LastModified), so sweeps over them pass `now` (the time the grace counts
back from) instead.
"""

import time as _time
from contextlib import contextmanager
from datetime import timedelta

import langgraph.checkpoint.base.id as _lg_id

HOUR = timedelta(hours=1)
# How far back `written_ago` puts "old" data by default: two hours, so that a
# cut one hour back falls an hour away from both old and fresh rows.
OLD = timedelta(hours=2)


class _ShiftedTime:
    """The `time` module as langgraph.checkpoint.base.id uses it, `offset_ns` behind."""

    def __init__(self, offset_ns):
        self.offset_ns = offset_ns

    def time_ns(self):
        return _time.time_ns() - self.offset_ns

    def __getattr__(self, name):
        return getattr(_time, name)


@contextmanager
def written_ago(delta=OLD):
    """LangGraph checkpoint ids made inside this block are `delta` older than the real clock.

    LangGraph makes every checkpoint id with uuid6() from
    langgraph.checkpoint.base.id, which reads time.time_ns() and never goes
    below the last id it made (so ids stay ordered): both are shifted here,
    and restored on the way out, so that ids made afterwards are real-time.
    """
    saved_time, saved_last = _lg_id.time, _lg_id._last_v6_timestamp
    _lg_id.time = _ShiftedTime(int(delta.total_seconds() * 1e9))
    _lg_id._last_v6_timestamp = None
    try:
        yield
    finally:
        _lg_id.time = saved_time
        _lg_id._last_v6_timestamp = saved_last
