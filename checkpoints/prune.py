"""Prune: delete old checkpoints from a LangGraph source (the prune_checkpoints contract).

One function, `prune()`, does the work for the command, the maintenance page
and the schedule; `run_prune()` wraps it in a Run (the audit log and the
lock) and brings the mirror up to date afterwards.

The rules are those of `PostgresSaver.prune(strategy="keep_latest")`, with an
age and N (docs/architecture.md §4):

- a checkpoint goes when it is older than the age (its uuid6 time) and outside
  the last N of its namespace; a subgraph call's namespace (one with a ":")
  goes with the root checkpoint its `metadata.parents['']` names, and stays
  while that one stays;
- kept rows whose parent goes get a NULL parent; the writes of removed
  checkpoints go; on PostgreSQL the blob rows that removed checkpoints named
  and no remaining checkpoint of the same thread and namespace names go
  (like `_garbage_blobs`: orphans left by others are the sweep's business);
- with `whole_threads`, a thread idle for longer than the age goes whole;
- threads that must not be touched are skipped with a reason: `delta_channel`,
  `pending_writes` (writes on the latest root checkpoint: waiting at an
  interrupt, or a step in flight) and `active` (a checkpoint or write newer
  than PRUNE_ACTIVE_WINDOW), in that order of precedence. A thread is listed
  as skipped only when the policy would have removed something from it.

The mirror only proposes candidate threads (tag filters). What goes is
decided by `select()` from the source rows read inside the thread's own
transaction, and the real run deletes exactly that selection in that same
transaction, so a dry run and a real run on the same data select the same
rows. Reading and deleting are the store's: each kind's `Maintenance`
(`checkpoints/sources/<kind>/maintenance.py`, picked by
`registry.maintenance_for`) holds its transaction rules (PostgreSQL runs each
thread at REPEATABLE READ, SQLite under its write lock, S3 re-reads before
deleting) and says which failures this module retries from a fresh read.
This module holds the policy, `select()` and the orchestration; the rows both
sides exchange are `checkpoints.prune_rows`'.
"""

import random
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from checkpoints.ids import is_uuid6, source_thread_id, thread_key, uuid6_floor, uuid6_time, version_text
from checkpoints.jobs import PRUNE
from checkpoints.models import PruneMark, Thread
from checkpoints.prune_rows import PruneMismatch, Row, Selection, ThreadSnapshot, WriteGroup  # noqa: F401 - re-exported
from checkpoints.runs import RunBusy, finish_run, start_run, throttled_progress
from checkpoints.sources import SourceError, first_line, open_reader, registry
from checkpoints.sync import refresh_threads
from checkpoints.tags import MAX_VALUE, split_tag, tag_value
from checkpoints.units import duration_text, parse_duration

SKIP_REASONS = ("delta_channel", "pending_writes", "active")
ATTEMPTS = 5  # per thread, on conflicts, serialization failures, deadlocks and SQLite lock timeouts
SAMPLE_THREADS = 50  # threads described in the preview's "what goes" sample
SAMPLE_CHECKPOINTS = 5  # checkpoint keys shown per sampled thread
MARK_AHEAD = 500  # threads marked (PruneMark) in one commit before any of them is pruned
CONTRACT_KEYS = (
    "dry_run", "threads", "checkpoints", "writes", "blobs", "bytes",
    "disk_bytes_before", "disk_bytes_after", "skipped",
)


class PruneBusy(Exception):
    """A prune of the same source is already running."""


# --- Policy ------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePolicy:
    """What to prune: the command's options, the page's form, a saved schedule.

    `keep_last` 0 is allowed with `whole_threads` only, and then a thread that
    does not go whole still keeps its latest checkpoint: no thread ever loses
    its latest state without going whole.

    >>> PrunePolicy(timedelta(days=30), keep_last=2, tags=(("tenant", "acme"),)).as_parameters()
    {'older_than': '30d', 'keep_last': 2, 'tags': ['tenant=acme'], 'threads': False}
    >>> PrunePolicy.from_parameters(PrunePolicy.from_options("90m", 3, ["a=b=c"], True).as_parameters())
    PrunePolicy(older_than=datetime.timedelta(seconds=5400), keep_last=3, tags=(('a', 'b=c'),), whole_threads=True, vacuum=False)
    >>> PrunePolicy.from_options("30d", keep_last=0)
    Traceback (most recent call last):
    ...
    ValueError: --keep-last must be at least 1 (0 is only allowed with --threads)
    >>> PrunePolicy.from_options("30d", tags=["tenant"])
    Traceback (most recent call last):
    ...
    ValueError: 'tenant' is not key=value
    """

    older_than: timedelta
    keep_last: int = 1
    tags: tuple = ()
    whole_threads: bool = False
    # A plain VACUUM of the pruned tables after a real run (never VACUUM FULL).
    vacuum: bool = False

    def __post_init__(self):
        if self.older_than < timedelta(0):
            raise ValueError("--older-than must not be negative")
        if self.keep_last < 0 or (self.keep_last == 0 and not self.whole_threads):
            raise ValueError("--keep-last must be at least 1 (0 is only allowed with --threads)")

    @classmethod
    def from_options(cls, older_than, keep_last=1, tags=(), whole_threads=False, vacuum=False):
        """From the strings a user typed: `30d`, `tenant=acme`."""
        age = older_than if isinstance(older_than, timedelta) else parse_duration(older_than)
        pairs = tuple(split_tag(t, "=") for t in tags)
        return cls(age, int(keep_last), pairs, bool(whole_threads), bool(vacuum))

    @classmethod
    def from_parameters(cls, parameters):
        """The inverse of `as_parameters` (saved policies, run history)."""
        return cls.from_options(
            parameters["older_than"], parameters.get("keep_last", 1),
            parameters.get("tags", ()), parameters.get("threads", False), parameters.get("vacuum", False),
        )

    def as_parameters(self) -> dict:
        """The policy as a Run's or a saved policy's parameters.

        `vacuum` appears only when asked for, so the parameters of runs and
        policies saved before it existed read the same.

        >>> PrunePolicy(timedelta(hours=1), vacuum=True).as_parameters()["vacuum"]
        True
        """
        parameters = {
            "older_than": duration_text(self.older_than),
            "keep_last": self.keep_last,
            "tags": [f"{k}={v}" for k, v in self.tags],
            "threads": self.whole_threads,
        }
        if self.vacuum:
            parameters["vacuum"] = True
        return parameters


# --- What goes from one thread ------------------------------------------------


def select(snapshot: ThreadSnapshot, policy: PrunePolicy, *, cut, active_after):
    """What the policy removes from this thread: a Selection, or None when nothing.

    `cut`: checkpoints created before it are old; `active_after`: activity after
    it makes the thread active. Dry run and real run both call this, on rows
    read in the transaction that deletes.

    >>> from datetime import datetime, UTC
    >>> from checkpoints.ids import uuid6_floor
    >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
    >>> ids = [uuid6_floor(t0 + timedelta(minutes=m)) for m in range(4)]
    >>> rows = [Row("", i, parent=p, bytes=10, versions={"m": str(n)})
    ...         for n, (i, p) in enumerate(zip(ids, [None] + ids))]
    >>> snap = ThreadSnapshot("t", rows, blobs={("", "m", str(n)): 5 for n in range(4)})
    >>> policy = PrunePolicy(timedelta(hours=1), keep_last=1)
    >>> sel = select(snap, policy, cut=t0 + timedelta(minutes=2, seconds=30), active_after=t0 + timedelta(days=1))
    >>> [ids.index(i) for _, i in sel.checkpoints], [v for _, _, v in sel.blobs], sel.bytes
    ([0, 1, 2], ['0', '1', '2'], 45)
    >>> [ids.index(i) for _, i in sel.parents]
    [3]
    >>> select(snap, policy, cut=t0, active_after=t0) is None
    True
    >>> select(snap, policy, cut=t0 + timedelta(days=1), active_after=t0).skip
    'active'
    """
    if not snapshot.checkpoints:
        return None
    if policy.tags and not _tags_match(snapshot.latest_metadata, policy.tags):
        return None
    # uuid6 ids sort by time: comparing the text with the smallest id at the
    # cut is comparing times (ids that are not lowercase uuid6 have no time:
    # never old, never idle).
    old_below = uuid6_floor(cut)
    active_from = uuid6_floor(active_after + timedelta(microseconds=1))
    activity = [c.id for c in snapshot.checkpoints] + [cid for _, cid in snapshot.writes]
    idle = policy.whole_threads and all(cid < old_below and is_uuid6(cid) for cid in activity)
    if idle:
        removed = {(c.ns, c.id) for c in snapshot.checkpoints}
        write_keys = set(snapshot.writes)
        blobs = set(snapshot.blobs)
    else:
        removed = _trimmed(snapshot, max(policy.keep_last, 1), old_below)
        write_keys = removed & snapshot.writes.keys()
        blobs = _garbage_blobs(snapshot, removed)
    if not removed and not write_keys:
        return None

    root_rows = [c.id for c in snapshot.checkpoints if c.ns == ""]
    latest_root = max(root_rows) if root_rows else None
    skip = None
    if snapshot.delta:
        skip = "delta_channel"
    elif latest_root is not None and ("", latest_root) in snapshot.writes:
        skip = "pending_writes"
    elif any(cid >= active_from and is_uuid6(cid) for cid in activity):
        skip = "active"

    parents = sorted(
        (c.ns, c.id) for c in snapshot.checkpoints
        if (c.ns, c.id) not in removed and c.parent and (c.ns, c.parent) in removed
    )
    row_bytes = sum(c.bytes for c in snapshot.checkpoints if (c.ns, c.id) in removed)
    write_rows = sum(snapshot.writes[k].count for k in write_keys)
    write_bytes = sum(snapshot.writes[k].bytes for k in write_keys)
    blob_bytes = sum(snapshot.blobs[k] for k in blobs)
    return Selection(
        thread_id=snapshot.thread_id,
        checkpoints=sorted(removed),
        writes=sorted(write_keys),
        blobs=sorted(blobs),
        parents=parents,
        write_rows=write_rows,
        bytes=row_bytes + write_bytes + blob_bytes,
        whole=idle,
        skip=skip,
    )


def _trimmed(snapshot, keep_last, old_below):
    """Checkpoints outside the last `keep_last` of their namespace with an id below `old_below`."""
    by_ns = defaultdict(list)
    for c in snapshot.checkpoints:
        if ":" not in c.ns:
            by_ns[c.ns].append(c)
    removed = set()
    for ns, rows in by_ns.items():
        # LangGraph's own order: the latest checkpoint is the greatest id.
        rows.sort(key=lambda c: c.id, reverse=True)
        kept = rows[:keep_last]
        for c in rows[keep_last:]:
            if c.id < old_below and is_uuid6(c.id):
                removed.add((ns, c.id))
            else:
                kept.append(c)
        # A checkpoint saved before format v4 reads its pending sends from its
        # parent's writes (as keep_latest keeps that parent, so do we).
        for c in kept:
            if c.legacy and c.parent and (ns, c.parent) in removed:
                group = snapshot.writes.get((ns, c.parent))
                if group is not None and group.tasks:
                    removed.discard((ns, c.parent))
    removed_roots = {cid for ns, cid in removed if ns == ""}
    for c in snapshot.checkpoints:
        if ":" in c.ns and c.root is not None and c.root in removed_roots:
            removed.add((c.ns, c.id))
    return removed


def _garbage_blobs(snapshot, removed):
    """Blob rows a removed checkpoint names and no remaining one of its namespace does.

    >>> rows = [Row("", "a", versions={"m": "1", "n": "1"}), Row("", "b", versions={"m": "2", "n": "1"})]
    >>> snap = ThreadSnapshot("t", rows, blobs={("", "m", "1"): 5, ("", "n", "1"): 5, ("", "m", "2"): 5, ("", "x", "9"): 5})
    >>> sorted(_garbage_blobs(snap, {("", "a")}))
    [('', 'm', '1')]
    """
    if not snapshot.blobs or not removed:
        return set()
    freed, referenced = set(), set()
    for c in snapshot.checkpoints:
        if not c.versions:
            continue
        target = freed if (c.ns, c.id) in removed else referenced
        for channel, version in c.versions.items():
            target.add((c.ns, channel, version if type(version) is str else version_text(version)))
    return (freed - referenced) & snapshot.blobs.keys()


def _tags_match(metadata, tags) -> bool:
    """Whether the latest root checkpoint's metadata carries every tag (as the mirror renders them).

    >>> _tags_match({"tenant": "acme", "n": 2, "ok": True}, [("tenant", "acme"), ("n", "2"), ("ok", "true")])
    True
    >>> _tags_match({"tenant": "acme"}, [("tenant", "globex")]), _tags_match(None, [("a", "b")])
    (False, False)
    """
    if not isinstance(metadata, dict):
        return False
    for key, value in tags:
        text = tag_value(metadata.get(key))
        if text is None or text[:MAX_VALUE] != value:
            return False
    return True


# --- The run ------------------------------------------------------------------


def prune(source, policy: PrunePolicy, *, dry_run: bool, now=None, progress=None, on_selection=None, run=None) -> dict:
    """Prune one source by `policy`; return the contract's counts (plus a sample and details).

    `now` fixes the clock (the age and the active window count back from it);
    `progress(done, total)` is called as threads are done, `on_selection` with
    every thread's Selection (skipped ones too) once it is committed. A real
    run marks the threads (PruneMark, for `run`) before it changes them at the
    source, MARK_AHEAD at a time, so that a sync knows the deletions are ours
    even if this process dies before the mirror follows. Raises SourceError
    when the source cannot be read. Threads that fail even after retries are
    listed in `errors` and left as they were.
    """
    started = time.monotonic()
    now = now or timezone.now()
    cut = now - policy.older_than
    active_after = now - settings.PRUNE_ACTIVE_WINDOW
    with open_reader(source) as reader:
        reader.layout()  # refuses non-LangGraph and shallow schemas with a clear message
    backend = registry.maintenance_for(source)

    def choose(snapshot):
        return select(snapshot, policy, cut=cut, active_after=active_after)

    result = {
        "dry_run": dry_run, "threads": 0, "checkpoints": 0, "writes": 0, "blobs": 0, "bytes": 0,
        "disk_bytes_before": 0, "disk_bytes_after": 0, "skipped": [],
        "source": source.name, "cut": cut.isoformat(), "now": now.isoformat(),
        "candidates": 0, "whole_threads": 0, "parents_nulled": 0, "retries": 0,
        "sample": [], "errors": [], "seconds": 0.0, "thread_ids": [],
    }
    main = backend.connect()
    try:
        result["disk_bytes_before"] = backend.disk_bytes(main)
        only = None
        if policy.tags:
            only = _mirror_threads(source, policy.tags)
        candidates = backend.candidates(main, uuid6_floor(cut), only) if only is None or only else []
        result["candidates"] = total = len(candidates)
        if progress:
            progress(0, total)

        def work(conn, thread_id):
            attempts = [0]
            try:
                selection = _with_retries(backend, conn, thread_id, choose, dry_run, bool(policy.tags), attempts)
            except Exception as e:  # noqa: BLE001 - one thread's failure must not stop the others
                if backend.broken(conn):
                    raise
                return thread_id, None, attempts[0] - 1, f"{type(e).__name__}: {e}"
            return thread_id, selection, attempts[0] - 1, None

        ids = candidates if dry_run else _marked_ahead(source, run, candidates)
        for done, (thread_id, selection, retries, error) in enumerate(_each(backend, main, ids, total, work), 1):
            result["retries"] += retries
            if error is not None:
                result["errors"].append({"thread_id": thread_key(thread_id), "error": error})
            if selection is not None:
                _add(result, selection)
                if on_selection:
                    on_selection(selection)
            if progress:
                progress(done, total)
        if policy.vacuum and not dry_run:
            result["vacuum"] = _vacuum(backend, main)
        result["disk_bytes_after"] = backend.disk_bytes(main)
    finally:
        backend.release(main)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _marked_ahead(source, run, thread_ids):
    """The thread ids, each marked (PruneMark) in the console's database before it is handed out.

    One commit per MARK_AHEAD threads, taken before any of them is pruned:
    a mark may precede its thread's delete by a few seconds, never follow it.
    Marking a thread that then loses nothing costs a sync one re-read.
    """
    for i in range(0, len(thread_ids), MARK_AHEAD):
        chunk = thread_ids[i : i + MARK_AHEAD]
        PruneMark.objects.bulk_create([PruneMark(source=source, run=run, thread_id=thread_key(t)) for t in chunk])
        yield from chunk


def _vacuum(backend, main) -> dict:
    """VACUUM the pruned tables; {"before", "after", "seconds"} (dead rows or free pages, bytes), or {"error"}.

    A VACUUM that fails (a lock it waited for too long, say) leaves the
    prune done: the error is reported with the run.
    """
    started = time.monotonic()
    try:
        backend.flush_stats(main)  # this connection's own deletes
        before = backend.space(main)
        backend.vacuum(main)
        after = backend.space(main)
    except Exception as e:  # noqa: BLE001 - reported, the prune itself is done
        return {"error": f"{type(e).__name__}: {first_line(e)}", "seconds": round(time.monotonic() - started, 3)}
    return {"before": before, "after": after, "seconds": round(time.monotonic() - started, 3)}


def _each(backend, main, candidates, count, work):
    """work(conn, thread_id) for every candidate (`count` of them), in order, on `backend.workers` connections."""
    if backend.workers <= 1 or count < 2:
        for thread_id in candidates:
            yield work(main, thread_id)
        return
    local = threading.local()
    opened, lock = [], threading.Lock()

    def run(thread_id):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = backend.connect()
            with lock:
                opened.append(conn)
        return work(conn, thread_id)

    # A bounded window of submitted threads: memory stays flat on millions of threads.
    window = deque()
    pool = ThreadPoolExecutor(backend.workers, thread_name_prefix="prune")
    try:
        for thread_id in candidates:
            window.append(pool.submit(run, thread_id))
            if len(window) >= 64 * backend.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()
        pool.shutdown(wait=True)
        for conn in opened:
            backend.release(conn)


def _with_retries(backend, conn, thread_id, choose, dry_run, metadata, attempts):
    for attempt in range(ATTEMPTS):
        attempts[0] = attempt + 1
        try:
            return backend.prune_thread(conn, thread_id, choose, dry_run, metadata=metadata)
        except Exception as e:
            if not backend.retryable(e) or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.02 * 2**attempt * (1 + random.random()))


def _add(result, selection):
    if selection.skip is not None:
        result["skipped"].append({"thread_id": thread_key(selection.thread_id), "reason": selection.skip})
        return
    result["threads"] += 1
    result["thread_ids"].append(selection.thread_id)  # the source's ids, for refresh_threads
    result["checkpoints"] += len(selection.checkpoints)
    result["writes"] += selection.write_rows
    result["blobs"] += len(selection.blobs)
    result["bytes"] += selection.bytes
    result["parents_nulled"] += len(selection.parents)
    result["whole_threads"] += selection.whole
    if len(result["sample"]) < SAMPLE_THREADS:
        result["sample"].append({
            "thread_id": thread_key(selection.thread_id),
            "whole": selection.whole,
            "count": len(selection.checkpoints),
            "checkpoints": [
                {"checkpoint_ns": ns, "checkpoint_id": cid, "created_at": _iso(uuid6_time(cid))}
                for ns, cid in selection.checkpoints[:SAMPLE_CHECKPOINTS]
            ],
        })


def _iso(moment):
    return moment.isoformat() if moment is not None else None


def _mirror_threads(source, tags):
    """Source thread ids whose mirrored tags carry every (key, value): candidates only, re-checked at the source."""
    qs = Thread.objects.filter(source=source)
    for key, value in tags:
        # One filter() per tag: each gets its own join, so all must match.
        qs = qs.filter(tag_rows__key=key, tag_rows__value=value)
    return {source_thread_id(t) for t in qs.values_list("thread_id", flat=True)}


def contract_result(result) -> dict:
    """The keys of the prune_checkpoints --json contract, nothing else."""
    return {k: result[k] for k in CONTRACT_KEYS}


def run_prune(source, policy, *, dry_run, requested_by=None, origin="command", now=None, run=None):
    """Prune under a Run (audit log, progress, one at a time per source); refresh the mirror after.

    Returns the finished Run (state done or failed, `result` as `prune` returns
    it without the thread id list). Raises PruneBusy when a prune of the
    source is already running.
    """
    try:
        run = start_run(
            PRUNE, source, parameters=policy.as_parameters(), requested_by=requested_by,
            origin=origin, dry_run=dry_run, run=run,
        )
    except RunBusy:
        raise PruneBusy(f"a prune of {source.name} is already running") from None
    try:
        result = prune(source, policy, dry_run=dry_run, now=now, progress=throttled_progress(run), run=run)
    except SourceError as e:
        return finish_run(run, result={}, error=str(e))
    except Exception as e:
        finish_run(run, result={}, error=f"{type(e).__name__}: {e}")
        raise
    errors = []
    if result["errors"]:
        names = ", ".join(repr(e["thread_id"]) for e in result["errors"][:10])
        errors.append(f"{len(result['errors'])} thread(s) failed (see the result): {names}")
    if (result.get("vacuum") or {}).get("error"):
        errors.append(f"the prune is done but VACUUM failed: {result['vacuum']['error']}")
    touched = result.pop("thread_ids")
    if not dry_run and touched:
        try:
            refresh_threads(source, touched)
        except Exception as e:  # noqa: BLE001 - the prune is done; the next sync catches the mirror up
            errors.append(f"the prune is done but the mirror was not refreshed: {type(e).__name__}: {e}")
    return finish_run(run, result=result, error="; ".join(errors))
