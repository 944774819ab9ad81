"""Refuse checkpoints and pending writes larger than a limit, for any saver.

Django-free: agent processes wrap their LangGraph saver with it::

    checkpointer = limit_size(PostgresSaver(conn))              # CHECKPOINT_SIZE_LIMIT, 10MB
    graph = builder.compile(checkpointer=checkpointer)

The size of a checkpoint is the sum of its channel values as the saver's own
serializer writes them (the bytes that would be stored); pending writes are
measured per `put_writes` call. Over the limit, `CheckpointTooLarge` is
raised before the wrapped saver is called, so nothing is written.

`DelegatingSaver` is the shared base of this wrapper and of
`storage.offload.OffloadingSaver`: a `BaseCheckpointSaver` (LangGraph checks
isinstance) that forwards every call and attribute to the saver it wraps.
It also holds back pending writes whose checkpoint was refused or failed:
LangGraph keeps running the next step while a checkpoint is saved in the
background, and without this its writes would land on a checkpoint that was
never written (CheckpointNotStored is raised for them instead).
"""

import asyncio
import copy
import inspect
import os
import threading
import time
from collections import OrderedDict

from langgraph.checkpoint.base import BaseCheckpointSaver

from checkpoints import units

DEFAULT_LIMIT = 10_000_000
# Sizes of channel values already measured, keyed by (thread, namespace,
# channel, version): an unchanged channel is not serialized again every step.
_SIZE_CACHE_ENTRIES = 4096


def env_value(name, default, parse):
    """Read one environment variable; a bad value names the variable.

    >>> os.environ["_SL_DOCTEST"] = "ten"
    >>> env_value("_SL_DOCTEST", 1, units.parse_size)
    Traceback (most recent call last):
    ...
    ValueError: _SL_DOCTEST='ten' is invalid: 'ten' is not a size: use bytes or a number with KB, MB, GB or TB
    >>> env_value("_SL_UNSET_DOCTEST", 7, units.parse_size)
    7
    """
    raw = os.environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return parse(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is invalid: {e}") from None


class CheckpointTooLarge(ValueError):
    """A checkpoint or a batch of pending writes is larger than the limit."""

    def __init__(self, message, *, thread_id, checkpoint_ns, size, limit, channels, task_id=None):
        super().__init__(message)
        self.thread_id = thread_id
        self.checkpoint_ns = checkpoint_ns
        self.size = size
        self.limit = limit
        self.channels = channels  # [(name, bytes)], largest first
        self.task_id = task_id  # set when pending writes were refused


def too_large_message(thread_id, checkpoint_ns, size, limit, sizes, writes_from=None):
    """The error text, naming the largest channels.

    >>> too_large_message("t1", "", 15_000_000, 10_000_000, {"doc": 14_900_000, "n": 3})
    "checkpoint for thread 't1' is 15.0 MB, exceeds limit 10 MB; largest channels: doc 14.9 MB, n 3 B"
    >>> print(too_large_message("t1", "sub:1", 12_000_000, 10_000_000, {"doc": 12_000_000}, "node 'attach'"))
    ... # doctest: +NORMALIZE_WHITESPACE
    checkpoint for thread 't1' namespace 'sub:1' is 12.0 MB, exceeds limit 10 MB;
    largest channels: doc 12.0 MB (pending writes from node 'attach')
    """
    where = f"thread {thread_id!r}" + (f" namespace {checkpoint_ns!r}" if checkpoint_ns else "")
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    channels = ", ".join(f"{name} {units.format_bytes(n)}" for name, n in largest)
    message = (
        f"checkpoint for {where} is {units.format_bytes(size)}, "
        f"exceeds limit {units.format_limit(limit)}; largest channels: {channels}"
    )
    if writes_from:
        message += f" (pending writes from {writes_from})"
    return message


def _writer(task_id, task_path):
    """Who produced a batch of writes, for the error message.

    >>> _writer("1f0a", "~__pregel_pull, attach")
    "node 'attach'"
    >>> _writer("1f0a", "")
    "task '1f0a'"
    """
    prefix = "~__pregel_pull, "
    if task_path.startswith(prefix) and "," not in task_path[len(prefix) :]:
        return f"node {task_path[len(prefix):]!r}"
    return f"task {task_id!r}"


class CheckpointNotStored(RuntimeError):
    """Pending writes held back because their checkpoint was not written."""


class _WriteGate:
    """Keep pending writes from landing on a checkpoint that was not written.

    LangGraph saves checkpoints in the background while the next step runs,
    so after a refused (or failed) `put` the following step's tasks still
    call `put_writes` against it: rows naming a checkpoint that does not
    exist. Writes wait here for the puts of their thread that are under way
    (only puts of earlier or the same checkpoints); once a put failed, writes
    for that checkpoint or any later one are refused until a later
    checkpoint of the thread is stored (a new run).
    """

    # A put is submitted before its step's writes, but it registers when it
    # starts running; give a just-submitted put this long to show up.
    REGISTER_WINDOW = 0.5
    INFLIGHT_TIMEOUT = 600.0
    POLL = 0.002

    def __init__(self):
        self._lock = threading.Lock()
        self._inflight = {}  # (thread, ns) -> {checkpoint_id: count}
        self._failed = OrderedDict()  # (thread, ns) -> earliest failed checkpoint_id

    def started(self, key, checkpoint_id):
        with self._lock:
            ids = self._inflight.setdefault(key, {})
            ids[checkpoint_id] = ids.get(checkpoint_id, 0) + 1

    def finished(self, key, checkpoint_id, stored):
        with self._lock:
            ids = self._inflight.get(key, {})
            ids[checkpoint_id] -= 1
            if not ids[checkpoint_id]:
                del ids[checkpoint_id]
            if not ids:
                self._inflight.pop(key, None)
            failed = self._failed.get(key)
            if not stored:
                self._failed[key] = checkpoint_id if failed is None else min(failed, checkpoint_id)
                self._failed.move_to_end(key)
                while len(self._failed) > 10_000:
                    self._failed.popitem(last=False)
            elif failed is not None and checkpoint_id > failed:
                del self._failed[key]  # the thread moved on: a later checkpoint is stored

    def verdict(self, key, checkpoint_id, waited):
        """"go", "wait" or "refuse" for writes against checkpoint_id."""
        with self._lock:
            busy = any(i <= checkpoint_id for i in self._inflight.get(key, ()))
            failed = self._failed.get(key)
        if busy and waited < self.INFLIGHT_TIMEOUT:
            return "wait"
        if failed is None or checkpoint_id < failed:
            return "go"
        if checkpoint_id == failed or waited >= self.REGISTER_WINDOW:
            return "refuse"
        return "wait"

    @staticmethod
    def key(config):
        configurable = config.get("configurable", {})
        return (configurable.get("thread_id"), configurable.get("checkpoint_ns", "")), configurable.get("checkpoint_id")

    def refused(self, config, checkpoint_id):
        (thread_id, ns), _ = self.key(config)
        where = f"thread {thread_id!r}" + (f" namespace {ns!r}" if ns else "")
        return CheckpointNotStored(
            f"pending writes for {where} not stored: their checkpoint {checkpoint_id} was not written"
        )

    def wait(self, config):
        key, checkpoint_id = self.key(config)
        if checkpoint_id is None:
            return
        start = time.monotonic()
        while True:
            verdict = self.verdict(key, checkpoint_id, time.monotonic() - start)
            if verdict == "go":
                return
            if verdict == "refuse":
                raise self.refused(config, checkpoint_id)
            time.sleep(self.POLL)

    async def await_(self, config):
        # Polls rather than blocking a worker thread: ten concurrent runs
        # must not exhaust the default executor the puts themselves need.
        key, checkpoint_id = self.key(config)
        if checkpoint_id is None:
            return
        start = time.monotonic()
        while True:
            verdict = self.verdict(key, checkpoint_id, time.monotonic() - start)
            if verdict == "go":
                return
            if verdict == "refuse":
                raise self.refused(config, checkpoint_id)
            await asyncio.sleep(self.POLL)


def _saver_with_allowlist(saver, extra_allowlist):
    # BaseCheckpointSaver.with_allowlist only knows JsonPlusSerializer and
    # EncryptedSerializer; a serializer that offers with_msgpack_allowlist
    # itself (the offload wrapper) is asked directly so strict mode holds.
    if isinstance(saver, DelegatingSaver):
        return saver.with_allowlist(extra_allowlist)
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = saver.serde
    derive = getattr(serde, "with_msgpack_allowlist", None)
    if derive is None or isinstance(serde, JsonPlusSerializer):
        return saver.with_allowlist(extra_allowlist)
    derived = derive(extra_allowlist)
    if derived is serde:
        return saver
    clone = copy.copy(saver)
    clone.serde = derived
    return clone


# BaseCheckpointSaver's methods that a saver may leave unimplemented (the
# base raises NotImplementedError, or walks get_tuple for the delta history).
_OPTIONAL_METHODS = tuple(
    prefix + name
    for name in (
        "get_tuple", "list", "put", "put_writes", "delete_thread", "delete_for_runs",
        "copy_thread", "prune", "get_delta_channel_history",
    )
    for prefix in ("", "a")
)
_variants = {}
_variants_lock = threading.Lock()


def _wrapper_class(cls, saver):
    """`cls`, or a subclass of it without the methods `saver`'s class lacks.

    Callers (langgraph-checkpoint-conformance, and code that checks for
    `prune` support the same way) decide what a saver can do by whether its
    class overrides BaseCheckpointSaver's method; a wrapper that forwarded
    `prune` to an InMemorySaver would claim a capability that then raises.
    So the subclass puts BaseCheckpointSaver's own functions back for those.
    """
    base = cls.__dict__.get("_wraps_as", cls)
    missing = tuple(
        name for name in _OPTIONAL_METHODS if getattr(type(saver), name, None) is getattr(BaseCheckpointSaver, name)
    )
    if not missing:
        return base
    with _variants_lock:
        variant = _variants.get((base, missing))
        if variant is None:
            attrs = {name: getattr(BaseCheckpointSaver, name) for name in missing}
            attrs.update(__module__=base.__module__, __qualname__=base.__qualname__, __doc__=base.__doc__)
            attrs["_wraps_as"] = base
            variant = _variants[(base, missing)] = type(base.__name__, (base,), attrs)
    return variant


class DelegatingSaver(BaseCheckpointSaver):
    """A checkpointer that forwards everything to `saver`.

    Subclasses override the calls they need to inspect. Attributes the base
    class does not define (`setup`, `conn`, `lock`, ...) are the wrapped
    saver's, so code written for the wrapped saver keeps working.

    An instance's class has exactly the wrapped saver's optional methods
    (`prune`, `copy_thread`, `delete_for_runs`, the async forms, ...): see
    `_wrapper_class`. copy.copy keeps the class (no `saver` argument then).
    """

    def __new__(cls, saver=None, *args, **kwargs):
        if isinstance(saver, BaseCheckpointSaver):
            cls = _wrapper_class(cls, saver)
        return super().__new__(cls)

    def __init__(self, saver):
        if not isinstance(saver, BaseCheckpointSaver):
            raise TypeError(f"expected a LangGraph checkpoint saver, got {type(saver).__name__}")
        self.saver = saver
        self._writes_take_path = "task_path" in inspect.signature(saver.put_writes).parameters
        self._awrites_take_path = "task_path" in inspect.signature(saver.aput_writes).parameters
        self._gate = _WriteGate()

    def __getattr__(self, name):
        # Guard the names copy/pickle probe before __init__ has run.
        if name == "saver" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.saver, name)

    def __repr__(self):
        return f"{type(self).__name__}({self.saver!r})"

    @property
    def serde(self):
        return self.saver.serde

    @serde.setter
    def serde(self, value):
        self.saver.serde = value

    @property
    def config_specs(self):
        return self.saver.config_specs

    def with_allowlist(self, extra_allowlist):
        inner = _saver_with_allowlist(self.saver, extra_allowlist)
        if inner is self.saver:
            return self
        clone = copy.copy(self)
        clone.saver = inner
        return clone

    def get_next_version(self, current, channel):
        return self.saver.get_next_version(current, channel)

    # --- sync ---------------------------------------------------------------
    def get_tuple(self, config):
        return self.saver.get_tuple(config)

    def list(self, config, *, filter=None, before=None, limit=None):
        return self.saver.list(config, filter=filter, before=before, limit=limit)

    def put(self, config, checkpoint, metadata, new_versions):
        key, _ = _WriteGate.key(config)
        self._gate.started(key, checkpoint["id"])
        stored = False
        try:
            result = self._put(config, checkpoint, metadata, new_versions)
            stored = True
            return result
        finally:
            self._gate.finished(key, checkpoint["id"], stored)

    def put_writes(self, config, writes, task_id, task_path=""):
        self._gate.wait(config)
        return self._put_writes(config, writes, task_id, task_path)

    # Subclasses change these; put/put_writes keep the write gate around them.
    def _put(self, config, checkpoint, metadata, new_versions):
        return self.saver.put(config, checkpoint, metadata, new_versions)

    def _put_writes(self, config, writes, task_id, task_path):
        if self._writes_take_path:
            return self.saver.put_writes(config, writes, task_id, task_path)
        return self.saver.put_writes(config, writes, task_id)

    def delete_thread(self, thread_id):
        return self.saver.delete_thread(thread_id)

    def delete_for_runs(self, run_ids):
        return self.saver.delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id, target_thread_id):
        return self.saver.copy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids, *, strategy="keep_latest"):
        return self.saver.prune(thread_ids, strategy=strategy)

    def get_delta_channel_history(self, *, config, channels):
        return self.saver.get_delta_channel_history(config=config, channels=channels)

    # --- async --------------------------------------------------------------
    async def aget_tuple(self, config):
        return await self.saver.aget_tuple(config)

    async def alist(self, config, *, filter=None, before=None, limit=None):
        async for item in self.saver.alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(self, config, checkpoint, metadata, new_versions):
        key, _ = _WriteGate.key(config)
        self._gate.started(key, checkpoint["id"])  # before the first await: in submission order
        stored = False
        try:
            result = await self._aput(config, checkpoint, metadata, new_versions)
            stored = True
            return result
        finally:
            self._gate.finished(key, checkpoint["id"], stored)

    async def aput_writes(self, config, writes, task_id, task_path=""):
        await self._gate.await_(config)
        return await self._aput_writes(config, writes, task_id, task_path)

    async def _aput(self, config, checkpoint, metadata, new_versions):
        return await self.saver.aput(config, checkpoint, metadata, new_versions)

    async def _aput_writes(self, config, writes, task_id, task_path):
        if self._awrites_take_path:
            return await self.saver.aput_writes(config, writes, task_id, task_path)
        return await self.saver.aput_writes(config, writes, task_id)

    async def adelete_thread(self, thread_id):
        return await self.saver.adelete_thread(thread_id)

    async def adelete_for_runs(self, run_ids):
        return await self.saver.adelete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id, target_thread_id):
        return await self.saver.acopy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids, *, strategy="keep_latest"):
        return await self.saver.aprune(thread_ids, strategy=strategy)

    async def aget_delta_channel_history(self, *, config, channels):
        return await self.saver.aget_delta_channel_history(config=config, channels=channels)


class SizeLimitedSaver(DelegatingSaver):
    """Refuse checkpoints and pending writes above `limit` bytes.

    `limit` is bytes or a size string ("10MB", powers of 1000); by default
    CHECKPOINT_SIZE_LIMIT, else 10 MB. The check runs before the wrapped saver
    is called; the async forms measure in a worker thread so the event loop
    (and AsyncSqliteSaver's lock) is not held while large values serialize.
    """

    def __init__(self, saver, limit=None):
        super().__init__(saver)
        if limit is None:
            limit = env_value("CHECKPOINT_SIZE_LIMIT", DEFAULT_LIMIT, units.parse_size)
        self.limit = units.parse_size(limit)
        self._sizes = OrderedDict()
        self._sizes_lock = threading.Lock()

    def _measure(self, value):
        serde = self.saver.serde
        # The offload serializer can say how large a value will be once
        # offloaded without uploading anything: a refused checkpoint then
        # leaves nothing behind, not even objects in the bucket.
        dumps = getattr(serde, "measure_typed", None) or serde.dumps_typed
        _, data = dumps(value)
        return len(data) if data is not None else 0

    def _channel_size(self, key, value):
        if key is None:
            return self._measure(value)
        with self._sizes_lock:
            size = self._sizes.get(key)
            if size is not None:
                self._sizes.move_to_end(key)
                return size
        size = self._measure(value)
        with self._sizes_lock:
            self._sizes[key] = size
            while len(self._sizes) > _SIZE_CACHE_ENTRIES:
                self._sizes.popitem(last=False)
        return size

    def check_checkpoint(self, config, checkpoint):
        """Raise CheckpointTooLarge if `checkpoint` exceeds the limit."""
        configurable = config.get("configurable", {})
        thread_id = configurable.get("thread_id")
        ns = configurable.get("checkpoint_ns", "")
        versions = checkpoint.get("channel_versions") or {}
        sizes = {}
        for channel, value in checkpoint.get("channel_values", {}).items():
            if channel == "__start__" and type(value) is dict:
                # The input checkpoint holds the whole input under __start__:
                # name the input keys, which are the channels being written.
                for key, item in value.items():
                    sizes[str(key)] = sizes.get(str(key), 0) + self._measure(item)
                continue
            version = versions.get(channel)
            # Only string versions (random-suffixed, as the SQL savers make
            # them) are unique per value; integer versions repeat across forks.
            key = (thread_id, ns, channel, version) if isinstance(version, str) else None
            sizes[channel] = self._channel_size(key, value)
        total = sum(sizes.values())
        if total > self.limit:
            raise CheckpointTooLarge(
                too_large_message(thread_id, ns, total, self.limit, sizes),
                thread_id=thread_id,
                checkpoint_ns=ns,
                size=total,
                limit=self.limit,
                channels=sorted(sizes.items(), key=lambda item: -item[1]),
            )

    def check_writes(self, config, writes, task_id, task_path=""):
        """Raise CheckpointTooLarge if one batch of pending writes exceeds the limit."""
        configurable = config.get("configurable", {})
        thread_id = configurable.get("thread_id")
        ns = configurable.get("checkpoint_ns", "")
        sizes = {}
        for channel, value in writes:
            sizes[channel] = sizes.get(channel, 0) + self._measure(value)
        total = sum(sizes.values())
        if total > self.limit:
            raise CheckpointTooLarge(
                too_large_message(thread_id, ns, total, self.limit, sizes, _writer(task_id, task_path)),
                thread_id=thread_id,
                checkpoint_ns=ns,
                size=total,
                limit=self.limit,
                channels=sorted(sizes.items(), key=lambda item: -item[1]),
                task_id=task_id,
            )

    def _put(self, config, checkpoint, metadata, new_versions):
        self.check_checkpoint(config, checkpoint)
        return super()._put(config, checkpoint, metadata, new_versions)

    def _put_writes(self, config, writes, task_id, task_path):
        self.check_writes(config, writes, task_id, task_path)
        return super()._put_writes(config, writes, task_id, task_path)

    async def _aput(self, config, checkpoint, metadata, new_versions):
        await asyncio.to_thread(self.check_checkpoint, config, checkpoint)
        return await super()._aput(config, checkpoint, metadata, new_versions)

    async def _aput_writes(self, config, writes, task_id, task_path):
        await asyncio.to_thread(self.check_writes, config, writes, task_id, task_path)
        return await super()._aput_writes(config, writes, task_id, task_path)


def limit_size(saver, limit=None):
    """Wrap `saver` so checkpoints and writes above `limit` are refused."""
    return SizeLimitedSaver(saver, limit)
