"""Mirror LangGraph checkpoint stores into the console's tables.

A sync reads a source in one consistent snapshot and re-reads, whole, every
thread that changed since the previous sync's snapshot (see the readers for
how each schema tells). Working thread by thread keeps the arithmetic of
docs/architecture.md §3 simple and exact: a checkpoint's blob and new bytes need its
thread's blob rows and its parent, and a thread's totals need all its rows.

Deletions at the source leave no trace to read, so after the changed threads
are mirrored the per-table row counts of the source are compared with the
mirror's; only when they differ are per-thread counts compared to find the
threads that lost rows.
"""

import gc
import json
import logging
import operator
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Sum
from django.dispatch import Signal
from django.utils import timezone

from checkpoints import decode, usage
from checkpoints import totals as running_totals
from checkpoints.bulk import JsonText, delete_pairs, execute_bound, insert_rows, json_value, reserve_ids, update_rows
from checkpoints.ids import source_thread_id, thread_key, uuid6_time
from checkpoints.ids import version_text as _version_text
from checkpoints.jobs import PRUNE, SYNC
from checkpoints.models import BlobReference, Checkpoint, DailyUsage, PruneMark, ReferenceUse, Source, Tag, Thread
from checkpoints.runs import RunBusy, fail_dead_runs, finish_run, heartbeat, lock_key, start_run
from checkpoints.sources import ScannedURIs, SourceError, TypedValues, first_line, open_reader, registry
from checkpoints.sources.registry import kind_of
from checkpoints.sources.capture import Capture, new_slot_name
from checkpoints.tags import extract_tags
from checkpoints.uris import classify

log = logging.getLogger(__name__)

# Sent after every sync of a source, successful or not; the storage app
# checks references on it (checkpoints never imports storage).
sync_finished = Signal()  # kwargs: source, result, threads (pks of the threads it rewrote; None: maybe all)
# Beyond this many rewritten threads the receivers are told "maybe all".
TOUCHED_LIMIT = 10_000

BATCH_THREADS = 2000
# Values decoded to look for references; larger ones make references unknown (the S3 saver's
# manifest `refs` are found with the same limit).
REFERENCE_DECODE_LIMIT = decode.REFERENCE_DECODE_LIMIT


class SyncRefused(Exception):
    """A sync that would do something surprising, such as wiping the mirror."""


class SyncIncomplete(Exception):
    """Some threads could not be mirrored; the rest were, and those are retried next time."""

    @classmethod
    def of(cls, failed):
        thread_id, reason = next(iter(failed.items()))
        return cls(f"{len(failed)} thread(s) could not be mirrored and are retried by the next sync; "
                   f"the first, {thread_id!r}: {reason}")


ENV_SOURCE = "default"
ENV_UNSET_REASON = "CHECKPOINT_DATABASE_URL is no longer set"


def register_default_source():
    """Create, update or disable the source `default` from CHECKPOINT_DATABASE_URL.

    The variable states what is wanted, every time a job starts: a new value
    replaces the URL (and enables the source, even one an operator had
    disabled: setting the variable is asking for it), and an unset variable
    disables the source it had registered, so a mistyped URL never leaves a
    source that fails every sync for good. Disabling keeps the mirror;
    removing it is the operator's call (the sources page, remove_source).
    """
    url = settings.CHECKPOINT_DATABASE_URL
    if not url:
        Source.objects.filter(name=ENV_SOURCE, registered_by_env=True).update(
            registered_by_env=False, enabled=False, disabled_reason=ENV_UNSET_REASON
        )
        return None
    source, created = Source.objects.get_or_create(
        name=ENV_SOURCE,
        defaults={"url": url, "kind": kind_of(url), "registered_by_env": True, "capture": settings.CHECKPOINT_CAPTURE},
    )
    if created:
        return source
    fields = {}
    if source.url != url:
        # Another database: its watermark means nothing there.
        fields.update(Source.repointed(url), enabled=True, disabled_reason="")
    if not source.registered_by_env:
        # Set again after being unset (or a source of that name made by hand): the variable owns it now.
        fields.update(registered_by_env=True, enabled=True, disabled_reason="")
    if source.capture != settings.CHECKPOINT_CAPTURE:
        fields["capture"] = settings.CHECKPOINT_CAPTURE
    if fields:
        for k, v in fields.items():
            setattr(source, k, v)
        source.save(update_fields=list(fields))
    return source


def disabled_error(source) -> str:
    reason = f" ({source.disabled_reason})" if source.disabled_reason else ""
    return f"skipped: source {source.name} is disabled{reason}; enable it on the sources page to sync it"


def sync_sources(name=None, *, full=False, requested_by=None, origin="command", wait=60.0) -> dict:
    """Sync every enabled source (or the one named); the sync_checkpoints contract.

    Disabled sources are left out of "every source"; one named explicitly
    answers with an error that says it is disabled.
    """
    register_default_source()
    sources = list(Source.objects.all())
    if name is not None:
        sources = [s for s in sources if s.name == name]
        if not sources:
            return {"sources": [_empty_result(name, f"no source named {name!r}")]}
    else:
        sources = [s for s in sources if s.enabled]
    results = [sync_source(s, full=full, requested_by=requested_by, origin=origin, wait=wait) for s in sources]
    return {"sources": results}


def sync_source(source, *, full=False, requested_by=None, origin="command", wait=60.0) -> dict:
    """Sync one source; never raises for a source problem, reports it in `error`."""
    started = time.monotonic()
    if not _still_enabled(source):
        return _empty_result(source.name, disabled_error(source))
    try:
        run = start_run(SYNC, source, parameters={"full": full}, requested_by=requested_by, origin=origin, wait=wait)
    except RunBusy as e:
        return _empty_result(source.name, f"skipped: {e}")
    # Read again now that the run holds the lock: a removal disables the
    # source, then waits for the running sync; this sync either shows up as
    # running to it or sees the source disabled here, never neither.
    if not _still_enabled(source):
        error = disabled_error(source)
        finish_run(run, result=_empty_result(source.name, error), error=error)
        return _empty_result(source.name, error)
    started_at = run.started_at
    stats = {"added": 0, "updated": 0, "removed": 0}
    touched = set()
    error = None
    totals = None
    # The slot's connection, when there is one, is closed by _record, just before
    # the run finishes: its confirmation runs on the server while the sync records itself.
    with commits_without_flush_wait(), ExitStack() as confirming:
        try:
            totals = _sync(source, full, stats, run, touched, confirming)
        except (SourceError, SyncRefused, SyncIncomplete) as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - recorded on the run and the source, then re-raised
            error = f"{type(e).__name__}: {e}"
            try:
                _record(source, run, started_at, stats, started, error, None, confirming=confirming)
            except DatabaseError:
                # The console's database itself failed (the usual way here): nothing
                # can be recorded, and a second, chained traceback would only bury
                # the first. fail_dead_runs() closes the run once it is reachable.
                log.warning("could not record the failed sync of %s", source, exc_info=True)
            raise
        return _record(source, run, started_at, stats, started, error, touched, totals, confirming=confirming,
                       notify=not isinstance(totals, _Unchanged))


def _still_enabled(source) -> bool:
    """Whether the source is enabled in the database now (a removed one is not)."""
    row = Source.objects.filter(pk=source.pk).values("enabled", "disabled_reason").first()
    if row is None:
        row = {"enabled": False, "disabled_reason": "removed"}
    source.enabled, source.disabled_reason = row["enabled"], row["disabled_reason"]
    return source.enabled


@contextmanager
def commits_without_flush_wait():
    """On PostgreSQL, commit without waiting for the WAL to reach the disk.

    A sync commits a dozen times besides its batches (progress, the run, the
    source's watermark, the day's usage, the reference check after it), and
    each waited for a disk flush: 40-90 ms apiece on a VM, most of an
    incremental sync. Each commit is still atomic and at once visible to
    other sessions; only a crash of the database server may lose the last
    fraction of a second of them, which the next sync repeats (the watermark
    goes back with the rows it covered) and fail_dead_runs() closes.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("RESET synchronous_commit")
        except DatabaseError:
            pass  # an aborted transaction: rolling it back undoes the SET as well


def _record(source, run, started_at, stats, started, error, touched, totals=None, notify=True, confirming=None):
    if totals is None:
        totals = usage.thread_totals(source)
    result = {
        "name": source.name,
        **stats,
        "threads": totals["threads"],
        "checkpoints": totals["checkpoints"],
        "seconds": round(time.monotonic() - started, 3),
        "error": error,
    }
    now = timezone.now()
    fields = {"last_sync_at": now, "last_sync_ok": error is None, "last_error": error or "",
              "last_sync_started_at": started_at}
    if error is None:
        fields["last_success_started_at"] = started_at
    Source.objects.filter(pk=source.pk).update(**fields)
    for k, v in fields.items():
        setattr(source, k, v)
    if confirming is not None:
        # The slot is free again before the run's lock is: the next sync, or a
        # removal dropping the slot, may start as soon as the run has finished.
        confirming.close()
    finish_run(run, result=result, error=error or "")
    threads = touched if touched is not None and len(touched) <= TOUCHED_LIMIT else None
    if notify:
        sync_finished.send(sender=Source, source=source, result=result, threads=threads)
    return result


def _empty_result(name, error):
    return {"name": name, "added": 0, "updated": 0, "removed": 0, "threads": 0, "checkpoints": 0,
            "seconds": 0.0, "error": error}


def _slot_of(source) -> str:
    """The source's replication slot name, chosen (and saved) on its first sync in logical mode."""
    slot = (source.sync_state or {}).get("slot")
    if not slot:
        slot = new_slot_name(source.name)
        source.sync_state = {**(source.sync_state or {}), "slot": slot}
        source.save(update_fields=["sync_state"])
    return slot


def _peek_changes(source, capture):
    """The changes a source's replication slot holds, or None when this sync must scan.

    The slot is created (with its publication) before the scan that covers
    what came before it, so nothing falls between the two.
    """
    if capture is None:
        return None
    created = capture.ensure()
    changes = None if created else capture.peek()
    status = capture.status()
    # What the slot holds back on the operator's server: shown and exported.
    source.sync_state["slot_status"] = {
        "retained_bytes": status.retained_bytes, "wal_status": status.wal_status,
        "checked_at": timezone.now().isoformat(),
    }
    Source.objects.filter(pk=source.pk).update(sync_state=source.sync_state)
    if created:
        log.info("source %s: new replication slot; this sync scans once", source)
        return None
    return None if changes.truncated else changes


class _Unchanged(dict):
    """The mirror's totals after a sync that found nothing to do: no reference check follows it."""


def _sync(source, full, stats, run, touched, confirming):
    if source.capture != "logical" or not registry.for_source(source).logical_capture:
        return _sync_with(source, full, stats, run, touched, None)
    # One connection to the slot for the whole sync: the peek, and the
    # confirmation once the mirror has committed (a no-change sync makes no
    # other). `confirming` closes it after the sync has recorded itself.
    capture = confirming.enter_context(Capture(source.url, _slot_of(source)))
    return _sync_with(source, full, stats, run, touched, capture)


def _sync_with(source, full, stats, run, touched, capture):
    aes_key = settings.LANGGRAPH_AES_KEY.encode() if settings.LANGGRAPH_AES_KEY else None
    # Marks of prunes that ended (or died) before this sync reads the source:
    # their threads are re-read, then the marks go. Read before the source's
    # snapshot, so that every deletion they stand for is in it.
    fail_dead_runs(lock_key(PRUNE, source))
    settled = _settled_marks(source)
    changes = _peek_changes(source, capture)
    if (changes is not None and not full and not changes.threads and not settled
            and not (source.sync_state or {}).get("retry")):
        # The slot says no LangGraph row changed: no reader, no counting, no
        # mirror work; the cost of a quiet source stays flat at any size.
        capture.confirm(changes.end_lsn, wait=False)
        mirror_totals = usage.thread_totals(source)  # one row: the running totals
        if not DailyUsage.objects.filter(source=source, day=mirror_totals["day"]).exists():
            usage.capture(source, mirror_totals)
        return _Unchanged(mirror_totals)
    with open_reader(source) as reader:
        if changes is not None:
            # Read in a snapshot that sees every transaction the slot reported.
            reader.cover_transactions(changes.xids)
        layout = reader.layout()
        now = reader.watermark()
        state = source.sync_state or {}
        since = None if full else state.get("watermark")
        quiet = changes is None and since is not None and reader.unchanged_since(since, now)
        # What the mirror holds before this sync: one row, the running totals.
        mirrored = running_totals.current(source.pk)["checkpoints"]
        if changes is not None:
            # Deletions arrive as deletions: no counting of the source's tables.
            totals, removing = None, changes.deleted_checkpoints
        elif since is not None and getattr(reader, "changes_include_deletions", False):
            # The store's own change index names deleted checkpoints and threads (S3): the
            # threads it names are re-read whole, nothing needs counting.
            totals, removing = None, 0
        elif quiet:
            totals, removing = None, 0
        else:
            totals = reader.totals()
            removing = mirrored - totals["checkpoints"]
        if removing > 0 and not full:
            # Checkpoints of threads our own prunes marked may be gone: the guard
            # is against a wrong URL, so it weighs the rest of the mirror only.
            # Read after the source's snapshot: a prune marks before it deletes.
            marked = Thread.objects.filter(
                source=source, thread_id__in=PruneMark.objects.filter(source=source).values("thread_id"),
            ).aggregate(n=Sum("checkpoints"))["n"] or 0
        if removing > 0 and not full and mirrored - marked and removing - marked > (mirrored - marked) / 2:
            raise SyncRefused(
                f"the source now holds {mirrored - removing} checkpoints where the mirror has {mirrored}: "
                "a sync would remove more than half of the mirror. If that is right (a big prune, a new "
                "database), run sync_checkpoints --full; if not, check the source URL."
            )
        if changes is not None and since is not None:
            changed = set(changes.threads)
        elif quiet:
            changed = set()
        elif since is not None:
            changed = reader.changed_thread_ids(since, now)
            if changed is None:  # the reader cannot tell what changed: compare everything
                since, changed = None, None

        if since is None:
            changed = set(reader.thread_ids()) | {
                source_thread_id(t) for t in Thread.objects.filter(source=source).values_list("thread_id", flat=True)
            }
        else:
            changed = set(changed) | {source_thread_id(t) for _, t in settled}
        # With change capture, a thread the slot names may hold rows the previous sync's
        # snapshot saw (committed after its peek) yet never mirrored, as it did not read
        # that thread: its rows are all read as new, so their references are not missed.
        context = _Context(source, since if changes is None else None, now, aes_key, stats, touched)
        context.settled_marks = {pk for pk, _ in settled}
        # Threads the previous sync could not mirror: read whole, since their
        # older rows were never seen (their references would be missed).
        retry = {_unhex(t) for t in state.get("retry", [])} - set(changed) if since is not None else set()
        run.progress_total = len(changed) + len(retry)
        appended = _appended_only(changes, changed, retry, settled) if since is not None else {}
        with _SourceReads(reader) as reads:
            if appended:
                appended = _mirrored_only(context, appended)
            rest = sorted(set(changed) - set(appended))  # read whole: rewritten, new or not mirrored
            # Both first reads queued at once: the mirror writes the threads read whole while
            # the source reads what the others gained.
            reads.ahead_threads(rest[:BATCH_THREADS], context.since, context.now)
            batches = _appended_batches(appended)
            if batches:
                reads.ahead_appended(batches[0])
            _process(reads, context, rest, run)
            whole = _process_appended(reads, context, batches, run)
            _process(reads, context, sorted(whole - set(rest)), run)
        if retry:
            whole = _Context(source, None, now, aes_key, stats, touched)
            whole.settled_marks, whole.deferred = context.settled_marks, context.deferred
            _process(reader, whole, sorted(retry), run)
            context.failed.update(whole.failed)
            context.undecodable += whole.undecodable
            changed = set(changed) | retry

        # Rows deleted in threads that did not otherwise change (the slot
        # reports deletions itself).
        mirror_totals = usage.thread_totals(source)
        suspects = set()
        compared = False
        for table, key in (("checkpoints", "checkpoints"), ("blobs", "blob_rows"), ("writes", "write_rows")):
            if totals is not None and mirror_totals[key] != totals[table]:
                compared = True
                source_counts = reader.thread_counts(table)
                field = {"checkpoints": "checkpoints", "blobs": "blob_rows", "writes": "write_rows"}[table]
                mirror_counts = {source_thread_id(t): n for t, n in
                                 Thread.objects.filter(source=source).values_list("thread_id", field)}
                suspects |= {t for t in source_counts.keys() | mirror_counts.keys()
                             if source_counts.get(t, 0) != mirror_counts.get(t, 0)}
        suspects -= set(changed) | context.failed.keys() | context.deferred
        if suspects:
            _process(reader, context, sorted(suspects), run)
        if compared or since is None:
            # This sync read every mirrored thread anyway: set the running
            # totals from the mirror too (a repair, should a writer ever bypass them).
            drift = running_totals.recount(source.pk)
            if drift:
                log.warning("source %s: the running totals had drifted from the mirror and were counted again: %s",
                            source, drift)
        if suspects or compared or since is None:
            mirror_totals = usage.thread_totals(source)

        _analyze_if_grown(stats, mirrored)
        usage.capture(source, mirror_totals)
        source.layout = layout
        source.sync_state = {"watermark": now, **{k: state[k] for k in ("slot", "slot_status") if k in state},
                             "space": _space(reader)}
        if getattr(reader, "problem_count", 0):
            # What this sync could not read (S3: payloads missing or corrupt, foreign objects): the sources page shows it.
            source.sync_state["problems"] = {"count": reader.problem_count, "first": reader.problems}
        if context.failed:  # in hex: an id may hold a NUL, which jsonb cannot
            source.sync_state["retry"] = sorted(t.encode("utf-8", "surrogatepass").hex() for t in context.failed)
        source.references_unknown = context.undecodable > 0 if since is None else (
            source.references_unknown or context.undecodable > 0
        )
        source.undecodable_values = context.undecodable if since is None else source.undecodable_values + context.undecodable
        source.save(update_fields=["layout", "sync_state", "references_unknown", "undecodable_values"])
    if changes is not None:
        # Only now that the mirror has committed: a crash before this line
        # makes the next sync see the same changes again.
        capture.confirm(changes.end_lsn, wait=False)
    _delete_marks([pk for pk, t in settled if source_thread_id(t) not in context.failed])
    if context.failed:
        raise SyncIncomplete.of(context.failed)
    return mirror_totals


def _settled_marks(source):
    """(pk, thread_id) of the source's prune marks whose prune is no longer running."""
    return list(PruneMark.objects.filter(source=source).exclude(run__state="running").values_list("pk", "thread_id"))


def _pruned_meanwhile(context, ids):
    """Threads (source ids) that a prune marked and that had not ended when this sync began reading.

    This sync may have read them before that prune deleted their rows: its
    copy must not overwrite the prune's refresh of the mirror (nor bring a
    deleted thread back). They are left as they are: the prune refreshes
    them when it is done, and the next sync, which finds the mark settled,
    re-reads them (also when the prune died first). See docs/architecture.md.
    """
    marks = PruneMark.objects.filter(source=context.source, thread_id__in=[thread_key(i) for i in ids])
    return {source_thread_id(t) for pk, t in marks.values_list("pk", "thread_id") if pk not in context.settled_marks}


def _delete_marks(pks, chunk=10_000):
    for i in range(0, len(pks), chunk):
        PruneMark.objects.filter(pk__in=pks[i : i + chunk])._raw_delete(PruneMark.objects.db)


def _space(reader) -> dict:
    """The source's tables on disk (dead rows, free pages: docs/architecture.md §7), or why not; never fails a sync.

    Read last, with the same read-only connection: on PostgreSQL a failed
    query ends the reader's transaction, and nothing is read after this.
    """
    try:
        found = reader.space()
    except SourceError as e:
        found = {"error": str(e)}
    return {**found, "checked_at": timezone.now().isoformat()}


ANALYZE_FRACTION = 0.1


def _analyze_if_grown(stats, mirrored_before):
    """Refresh the planner's statistics and visibility map of the mirror after a sync that changed a tenth of it.

    Autovacuum gets there too, but minutes later: until then the planner of a
    freshly filled mirror has no statistics and picks plans a hundred times
    slower (the tag browser took 600 ms instead of 5 after an initial sync),
    and its index-only scans visit the heap (the threads page: 59 ms instead
    of 41). VACUUM cannot run inside a transaction: there, only ANALYZE.
    """
    changed = stats["added"] + stats["updated"] + stats["removed"]
    if connection.vendor != "postgresql" or changed < max(1000, ANALYZE_FRACTION * mirrored_before):
        return False
    tables = ", ".join(connection.ops.quote_name(m._meta.db_table)
                       for m in (Thread, Tag, Checkpoint, BlobReference, ReferenceUse))
    try:
        if connection.in_atomic_block:
            with transaction.atomic(), connection.cursor() as cursor:  # a savepoint: a failure stays here
                cursor.execute("ANALYZE " + tables)
        else:
            with connection.cursor() as cursor:
                cursor.execute("VACUUM (ANALYZE) " + tables)
    except DatabaseError as e:
        # Housekeeping only (autovacuum gets there later): never fail the sync for it.
        log.warning("could not vacuum/analyze the mirror after a big sync: %s", e)
        return False
    return True


def refresh_threads(source, thread_ids):
    """Re-read these threads from the source and replace their mirror rows.

    For jobs that changed the source themselves (prune): the mirror follows
    at once, without waiting for the next sync.
    """
    aes_key = settings.LANGGRAPH_AES_KEY.encode() if settings.LANGGRAPH_AES_KEY else None
    stats = {"added": 0, "updated": 0, "removed": 0}
    with open_reader(source) as reader:
        context = _Context(source, None, None, aes_key, stats)
        _process(reader, context, sorted(set(thread_ids)), None)
    usage.capture(source)
    if context.failed:  # the next sync retries them: the counts differ from the source's
        raise SyncIncomplete.of(context.failed)
    return stats


class _Context:
    def __init__(self, source, since, now, aes_key, stats, touched=None):
        self.source = source
        self.since = since
        self.now = now
        self.aes_key = aes_key
        self.stats = stats
        self.touched = touched if touched is not None else set()  # pks of the threads rewritten
        self.undecodable = 0
        self.failed = {}  # thread_id -> why it could not be mirrored
        # A sync's: pks of the prune marks that were settled when it began
        # reading (see _pruned_meanwhile); None for a prune's own refresh.
        self.settled_marks = None
        self.deferred = set()  # threads left to a prune's refresh or the next sync
        # Source JSON text goes to a PostgreSQL mirror as it is; elsewhere Django stores parsed values.
        self.json_passthrough = connection.vendor == "postgresql"
        self.store_settings = {
            "bucket": settings.S3_BUCKET_NAME,
            "prefix": settings.S3_PREFIX,
            "blob_root": settings.BLOB_ROOT,
        }


class _SourceReads:
    """The source's reads, run on a second thread in the order they are asked for.

    The next rows are read while the mirror writes the ones before: the two
    databases work at the same time, and the drivers release the GIL while
    they wait. A read queued ahead (`ahead_*`) is taken by the first call for
    the same rows; one never taken is only wasted work.
    """

    def __init__(self, reader):
        self.reader = reader
        self._ahead = []  # (what, future)

    def __enter__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-read")
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)
        return False

    def _read(self, what, fn, *args):
        for i, (queued, future) in enumerate(self._ahead):
            if queued == what:
                del self._ahead[i]
                return future
        return self._pool.submit(fn, *args)

    def threads(self, thread_ids, since, now):
        return self._read(("threads", tuple(thread_ids), since, now), self.reader.read_threads, thread_ids, since, now)

    def appended(self, appended: dict):
        return self._read(("appended", tuple(appended)), self.reader.read_appended, appended)

    def ahead_threads(self, thread_ids, since, now) -> None:
        if thread_ids:
            self._ahead.append((("threads", tuple(thread_ids), since, now), self.threads(thread_ids, since, now)))

    def ahead_appended(self, appended: dict) -> None:
        self._ahead.append((("appended", tuple(appended)), self.appended(appended)))


def _process(reads, context, thread_ids, run):
    """Mirror these threads, batch by batch, each read while the one before is written.

    `reads` is a _SourceReads, or a reader (read through one of its own).
    """
    batches = [thread_ids[i : i + BATCH_THREADS] for i in range(0, len(thread_ids), BATCH_THREADS)]
    if not batches:
        return
    if not isinstance(reads, _SourceReads):
        with _SourceReads(reads) as own:
            return _process(own, context, thread_ids, run)
    done = 0
    with gc_paused():
        pending = reads.threads(batches[0], context.since, context.now)
        for i, batch in enumerate(batches):
            rows = pending.result()
            if i + 1 < len(batches):
                pending = reads.threads(batches[i + 1], context.since, context.now)
            _apply_isolated(context, rows)
            done += len(batch)
            if run is not None:
                heartbeat(run, done=done, total=max(run.progress_total, done))


def _appended_only(changes, changed, retry, settled) -> dict:
    """{thread id: capture.Appended} of the changed threads that only gained rows, as the slot tells.

    Those are mirrored by adding what they gained (_apply_appended) instead of
    being read whole: the cost of a sync then follows the rows written, not
    the length of the threads they were written to.
    """
    if changes is None or changes.truncated:
        return {}
    excluded = changes.rewritten | retry | {source_thread_id(t) for _, t in settled}
    return {t: a for t, a in changes.appended.items() if t in changed and t not in excluded}


def _mirrored_only(context, appended):
    """The threads of `appended` the mirror holds (the others have nothing to add to: read whole)."""
    mirrored = {source_thread_id(t) for t in Thread.objects.filter(
        source=context.source, thread_id__in=[thread_key(t) for t in appended]).values_list("thread_id", flat=True)}
    return {t: a for t, a in appended.items() if t in mirrored}


def _appended_batches(appended) -> list:
    """`appended` ({thread id: capture.Appended}) in batches of BATCH_THREADS, in thread id order."""
    ids = sorted(appended)
    return [{t: appended[t] for t in ids[i : i + BATCH_THREADS]} for i in range(0, len(ids), BATCH_THREADS)]


def _process_appended(reads, context, batches, run):
    """Mirror threads that only gained rows (_appended_batches); returns the threads to read whole instead.

    Each batch's rows are read while the mirror locks its threads (and while
    the batch before is written).
    """
    whole, done = set(), 0
    with gc_paused():
        pending = reads.appended(batches[0]) if batches else None
        for i, batch in enumerate(batches):
            following = reads.appended(batches[i + 1]) if i + 1 < len(batches) else None
            try:
                whole |= _apply_appended(context, pending, batch)
            except Exception as e:  # noqa: BLE001 - the threads are read whole instead, which isolates a bad one
                if isinstance(e, (SourceError, OperationalError, InterfaceError, connection.Database.OperationalError,
                                  connection.Database.InterfaceError)):
                    raise  # the source or the console failed, not a thread: no thread would fare better
                log.warning("source %s: adding what %d threads gained failed, reading them whole: %s",
                            context.source, len(batch), e)
                whole |= set(batch)
            pending = following
            done += len(batch)
            if run is not None:
                heartbeat(run, done=done, total=max(run.progress_total, done))
    return whole


_WRITE_FIELDS = ("write_count", "write_bytes", "logical_bytes", "new_bytes")


def _apply_appended(context, pending, appended):
    """Add to the mirror what threads gained, in one transaction; returns the threads left to read whole.

    `pending` is the future of their rows (read_appended), taken once their
    mirrored threads and checkpoints are locked and looked up.

    Exact because the slot reported only insertions for these threads since
    the position confirmed after the mirror last committed, so the mirror
    holds every other row of them and each figure moves by a difference:
    - an inserted checkpoint is added, unless the mirror holds it already
      (the previous sync's snapshot, taken after its peek, saw it), and with
      it the blobs its transaction inserted (PostgresSaver.put writes both
      in one transaction, so they were mirrored together or not at all);
    - a checkpoint that gained writes has its write figures counted again
      from all its writes, and its thread's move by the difference.
    Rows committed after the peek are left to the next sync, which hears of
    them. Whatever does not add up is read whole instead: blobs inserted
    without a checkpoint of their thread, writes to a checkpoint the mirror
    does not hold, an inserted checkpoint the snapshot does not see.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")  # as in _apply_batch
        existing, told = _lock_threads(context, [_Named(t) for t in appended])
        whole = {t for t in appended if t not in existing} - context.deferred
        pks = {n.thread_id: existing[n.thread_id].pk for n in told}
        # Every key the rows can have, as the slot told them: looked up while the rows are read.
        current = _mirrored_checkpoints({(pks[n.thread_id], ns, cid) for n in told
                                         for ns, cid in appended[n.thread_id].checkpoints.keys() | appended[n.thread_id].written})
        batch = [rows for rows in pending.result() if rows.thread_id in pks]
        plans = []
        for rows in batch:
            plan = _appended_plan(rows, appended[rows.thread_id], pks[rows.thread_id], current)
            if plan is None:
                whole.add(rows.thread_id)
            else:
                plans.append((rows, plan))
        if not plans:
            return whole
        # Of what the mirror knows, only the references of the blobs named again are needed here
        # (every checkpoint and write read by key is searched afresh).
        known = _known_references({rows.thread_id: existing[rows.thread_id] for rows, _ in plans}, blobs={
            (existing[rows.thread_id].pk, f"blob:{b.channel}@{b.version}")
            for rows, _ in plans for b in rows.blobs if not b.fresh
        })
        delta = running_totals.Delta()
        live, to_insert, to_update, old_tags = {}, [], [], {}
        write_locations = []
        source_pk = context.source.pk
        for rows, (adding, blob_keys) in plans:
            tid, thread_pk, old = rows.thread_id, pks[rows.thread_id], existing[rows.thread_id]
            known_here = known.get(tid, {})
            blob_size, blob_refs = _blob_index(context, rows.blobs, known_here)
            writes_by_ckpt, refs = _write_index(context, rows.writes, known_here)
            write_locations.extend((thread_pk, _write_location(w)) for w in rows.writes)
            versions_of = _channel_versions(rows.checkpoints)
            for key, versions in rows.parent_versions.items():
                versions_of.setdefault(key, _channel_versions([_Versions(*key, versions)])[key])
            records = []
            for c in adding:
                record, found = _checkpoint_record(context, c, versions_of, blob_size, blob_refs, writes_by_ckpt)
                record["problem"] = rows.problems.get((c.checkpoint_ns, c.checkpoint_id), "")
                records.append(record)
                refs.extend(found)
                refs.extend(_value_references(context, c, known_here))
                if record["problem"]:
                    context.undecodable += 1
                delta.checkpoint(record["created_at"], record["new_bytes"], +1)
                to_insert.append((source_pk, thread_pk, *_record_values(record)))
            thread = {f: getattr(old, f) for f in _THREAD_FIELDS}
            thread["write_rows"] += sum(r["write_count"] for r in records)
            thread["write_bytes"] += sum(r["write_bytes"] for r in records)
            updated = {}  # root checkpoint id -> its new write figures
            for ns, cid in {(w.checkpoint_ns, w.checkpoint_id) for w in rows.writes}:
                row = current.get((thread_pk, ns, cid))
                if row is None:
                    continue  # an added checkpoint: its record counted its writes
                count, size = writes_by_ckpt.get((ns, cid), (0, 0))
                if (count, size) == (row["write_count"], row["write_bytes"]):
                    continue
                figures = (count, size, row["row_bytes"] + row["blob_bytes"] + size,
                           row["new_bytes"] - row["write_bytes"] + size)
                to_update.append((row["pk"], *figures))
                context.stats["updated"] += 1
                thread["write_rows"] += count - row["write_count"]
                thread["write_bytes"] += size - row["write_bytes"]
                if ns == "":
                    updated[cid] = figures
                delta.checkpoint(row["created_at"], row["new_bytes"], -1)
                delta.checkpoint(row["created_at"], figures[3], +1)
            thread["blob_rows"] += len(blob_keys)
            thread["blob_bytes"] += sum(blob_size[(ns, ch, v)] for ns, ch, v in blob_keys)
            if records:
                thread["checkpoints"] += len(records)
                thread["first_checkpoint_at"] = min([thread["first_checkpoint_at"], *(r["created_at"] for r in records)])
                thread["last_checkpoint_at"] = max([thread["last_checkpoint_at"], *(r["created_at"] for r in records)])
                thread["checkpoint_bytes"] += sum(r["row_bytes"] for r in records)
                root = [r for r in records if r["checkpoint_ns"] == ""]
                latest = max(root, key=lambda r: r["checkpoint_id"]) if root else None
                if latest is not None and latest["checkpoint_id"] > (old.latest_checkpoint_id or ""):
                    thread["latest_checkpoint_id"] = latest["checkpoint_id"]
                    thread["logical_bytes"] = latest["logical_bytes"]
                    thread["tags"] = extract_tags(json_value(latest["metadata"]), settings.TAG_EXCLUDE)
            if thread["latest_checkpoint_id"] == old.latest_checkpoint_id and old.latest_checkpoint_id in updated:
                thread["logical_bytes"] = updated[old.latest_checkpoint_id][2]
            thread["stored_bytes"] = thread["checkpoint_bytes"] + thread["blob_bytes"] + thread["write_bytes"]
            delta.thread(old, -1)
            delta.thread(thread, +1)
            old_tags[tid] = old.tags if isinstance(old.tags, dict) else _REWRITE
            live[tid] = (thread, records, refs)
            context.stats["added"] += len(records)

        update_rows(Thread, _THREAD_FIELDS, [(pks[tid], *(t[f] for f in _THREAD_FIELDS)) for tid, (t, _, _) in live.items()])
        ckpt_pk = _insert_checkpoints(to_insert)
        update_rows(Checkpoint, _WRITE_FIELDS, to_update)
        _write_tags(context, live, pks, old_tags)
        # The writes read again replace their reference uses; the added checkpoints' uses are new.
        delete_pairs(ReferenceUse, ("thread", "location"), ("bigint", "text"), write_locations)
        if ckpt_pk is not None:
            ckpt_pk.update((key, row["pk"]) for key, row in current.items())
        _insert_uses(context, live, pks, ckpt_pk)
        if len(context.touched) <= TOUCHED_LIMIT:
            context.touched.update(pks[tid] for tid in live)
        running_totals.apply(context.source.pk, delta)
    return whole


_MIRRORED_FIELDS = ("created_at", "row_bytes", "blob_bytes", "new_bytes", "write_count", "write_bytes")


def _mirrored_checkpoints(keys):
    """{(thread pk, ns, checkpoint id): the row's pk and _MIRRORED_FIELDS} of these keys the mirror holds.

    On PostgreSQL one lookup of the unique key per key: filtering by thread
    and by id separately let the planner scan whole threads, or the table.
    """
    if not keys:
        return {}
    fields = ("pk", "thread_id", "checkpoint_ns", "checkpoint_id", *_MIRRORED_FIELDS)
    if connection.vendor != "postgresql":
        found = Checkpoint.objects.filter(thread_id__in={k[0] for k in keys}, checkpoint_id__in={k[2] for k in keys})
        rows = (r for r in found.values(*fields) if (r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"]) in keys)
        return {(r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"]): r for r in rows}
    threads, namespaces, ids = (list(column) for column in zip(*keys))
    rows = execute_bound(
        f"SELECT c.id, c.thread_id, c.checkpoint_ns, c.checkpoint_id, {', '.join('c.' + f for f in _MIRRORED_FIELDS)}"
        f" FROM unnest(%b::bigint[], %b::text[], %b::text[]) AS k(t, n, c)"
        f" JOIN {Checkpoint._meta.db_table} c ON c.thread_id = k.t AND c.checkpoint_ns = k.n AND c.checkpoint_id = k.c",
        [threads, namespaces, ids],
    )
    return {(r[1], r[2], r[3]): dict(zip(fields, r)) for r in rows}


def _appended_plan(rows, told, thread_pk, current):
    """(checkpoints to add, keys of the blobs to count) for one thread, or None when it must be read whole."""
    seen = {(c.checkpoint_ns, c.checkpoint_id): c for c in rows.checkpoints}
    if seen.keys() != told.checkpoints.keys():
        return None  # an inserted checkpoint the snapshot does not see: nothing to add up
    adding, mirrored_xids, adding_xids = [], set(), set()
    for key, c in seen.items():
        if (thread_pk, *key) in current:
            mirrored_xids.add(told.checkpoints[key])
        else:
            adding.append(c)
            adding_xids.add(told.checkpoints[key])
    if mirrored_xids & adding_xids:
        return None  # one transaction half mirrored: cannot be
    blob_keys = []
    for key, xid in told.blobs.items():
        if xid in adding_xids:
            blob_keys.append(key)
        elif xid not in mirrored_xids:
            return None  # blobs without a checkpoint of their own transaction: whose figures move is unknown
    found = {(b.checkpoint_ns, b.channel, b.version) for b in rows.blobs}
    if not set(blob_keys) <= found:
        return None  # a blob no inserted checkpoint names
    written = {(w.checkpoint_ns, w.checkpoint_id) for w in rows.writes} | told.written
    if any((thread_pk, *key) not in current and key not in seen for key in written):
        return None  # writes to a checkpoint the mirror does not hold: counted only by a whole read
    return adding, blob_keys


class _Named(NamedTuple):
    """A thread as _lock_threads takes it, before its rows are read."""

    thread_id: str


class _Versions(NamedTuple):
    """A parent checkpoint as _channel_versions reads it: its key and channel versions alone."""

    checkpoint_ns: str
    checkpoint_id: str
    channel_versions: object


def _apply_isolated(context, thread_rows):
    """Mirror a batch; if it fails, thread by thread, so one bad thread stops only itself.

    A thread that still fails keeps its previous mirror rows and is recorded
    in context.failed with the reason (a bug on odd data): the sync reports
    it and the next one retries it.
    """
    batches = [thread_rows]
    while batches:
        batch = batches.pop()
        stats, undecodable = dict(context.stats), context.undecodable
        try:
            _apply_batch(context, batch)
        except Exception as e:  # noqa: BLE001 - narrowed down to the thread, then reported
            context.stats.update(stats)  # what the rolled-back transaction counted
            context.undecodable = undecodable
            if isinstance(e, (OperationalError, InterfaceError, connection.Database.OperationalError,
                              connection.Database.InterfaceError)):
                raise  # the console's database is down, full or gone (COPY's errors come unwrapped): no thread would fare better
            if len(batch) > 1:
                batches.extend([rows] for rows in batch)
            else:
                context.failed[batch[0].thread_id] = f"{type(e).__name__}: {first_line(e)}"
                log.warning("thread %r of %s could not be mirrored: %s", batch[0].thread_id, context.source, e)


def _unhex(text) -> str:
    return bytes.fromhex(text).decode("utf-8", "surrogatepass")


@contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector for a batch job.

    A sync holds hundreds of thousands of small dicts and tuples at once, so
    every collection of the oldest generation walks them all: a third of the
    interpreter's time in a sync of 120,000 checkpoints (8.1 s of CPU with the
    collector, 5.5 s without). These objects form no cycles and reference
    counting frees them batch by batch; whatever cycles the libraries leave
    are collected when the collector is back.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _compute_thread(context, rows, known):
    """Mirror records of one thread: checkpoints, totals, tags, references.

    `known` holds the references found earlier in rows that were not fetched
    again this time (unchanged rows): {(kind, ns, id, location): uris}.
    Returns (thread fields or None when the thread is gone, checkpoint
    records, references as (ns, checkpoint_id, location, uris)).
    """
    blob_size, blob_refs = _blob_index(context, rows.blobs, known)
    writes_by_ckpt, refs = _write_index(context, rows.writes, known)
    versions_of = _channel_versions(rows.checkpoints)
    records = []
    for c in rows.checkpoints:
        record, found = _checkpoint_record(context, c, versions_of, blob_size, blob_refs, writes_by_ckpt)
        record["problem"] = rows.problems.get((c.checkpoint_ns, c.checkpoint_id), "")
        records.append(record)
        refs.extend(found)
        refs.extend(_value_references(context, c, known))
        if record["problem"]:  # partly unreadable: its references are unknown
            context.undecodable += 1
    thread = _thread_fields(records, rows) if records else None
    return thread, records, refs


def _blob_index(context, blobs, known):
    """Blob sizes by (ns, channel, version), and the URIs in each blob that has any."""
    blob_size = {}
    blob_refs = {}  # (ns, channel, version) -> set of URIs
    for b in blobs:
        key = (b.checkpoint_ns, b.channel, b.version)
        blob_size[key] = b.size
        if b.data is not None:
            uris = _uris_in(context, b.type, b.data)
        elif not b.fresh:
            uris = known.get(("blob", b.checkpoint_ns, b.channel, b.version))
        else:
            uris = None
        if uris:
            blob_refs[key] = uris
    return blob_size, blob_refs


def _write_index(context, writes, known):
    """Pending writes per checkpoint ([count, bytes] by (ns, checkpoint_id)), and the references in them."""
    writes_by_ckpt = defaultdict(lambda: [0, 0])
    refs = []  # (ns, checkpoint_id, location, uris)
    for w in writes:
        agg = writes_by_ckpt[(w.checkpoint_ns, w.checkpoint_id)]
        agg[0] += 1
        agg[1] += w.size
        if w.data is not None:
            uris = _uris_in(context, w.type, w.data)
        elif not w.fresh and known:
            uris = known.get(("write", _write_location(w)))
        else:
            uris = None
        if uris:
            refs.append((w.checkpoint_ns, w.checkpoint_id, _write_location(w), uris))
    return writes_by_ckpt, refs


def _channel_versions(checkpoints):
    """Each checkpoint's channel versions as text, by (ns, checkpoint_id)."""
    versions_of = {}
    for c in checkpoints:
        cv = c.channel_versions
        versions_of[(c.checkpoint_ns, c.checkpoint_id)] = (
            {k: v if type(v) is str else _version_text(v) for k, v in cv.items()} if isinstance(cv, dict) else {}
        )
    return versions_of


def _checkpoint_record(context, c, versions_of, blob_size, blob_refs, writes_by_ckpt):
    """One checkpoint's mirror record (sizes per docs/architecture.md §3), and the references of its blobs."""
    key = (c.checkpoint_ns, c.checkpoint_id)
    versions = versions_of[key]
    parent = versions_of.get((c.checkpoint_ns, c.parent_checkpoint_id)) if c.parent_checkpoint_id else None
    refs = []
    blob_bytes = new_blob_bytes = 0
    for channel, version in versions.items():
        size = blob_size.get((c.checkpoint_ns, channel, version))
        if size is None:
            continue
        blob_bytes += size
        if parent is None or parent.get(channel) != version:
            new_blob_bytes += size
        uris = blob_refs.get((c.checkpoint_ns, channel, version))
        if uris:
            refs.append((c.checkpoint_ns, c.checkpoint_id, f"blob:{channel}@{version}", uris))
    write_count, write_bytes = writes_by_ckpt.get(key, (0, 0))
    metadata = c.metadata
    if c.metadata_is_text:  # PostgreSQL's JSON text, copied as is; SQL read step and source
        metadata = JsonText(metadata) if context.json_passthrough else json.loads(metadata)
        step, origin = _int_or_none(c.meta_step), c.meta_source
    else:
        metadata = metadata if metadata is not None else {}
        step = metadata.get("step") if isinstance(metadata, dict) else None
        origin = metadata.get("source") if isinstance(metadata, dict) else None
    created = uuid6_time(c.checkpoint_id) or _parse_ts(c.ts) or timezone.now()
    record = {
        "checkpoint_ns": c.checkpoint_ns,
        "checkpoint_id": c.checkpoint_id,
        "parent_checkpoint_id": c.parent_checkpoint_id or "",
        "created_at": created,
        "step": step if isinstance(step, int) and not isinstance(step, bool) and abs(step) < 2**31 else None,
        "origin": origin[:32] if isinstance(origin, str) else "",
        "metadata": metadata,
        "row_bytes": c.row_bytes,
        "blob_bytes": blob_bytes,
        "write_bytes": write_bytes,
        "write_count": write_count,
        "logical_bytes": c.row_bytes + blob_bytes + write_bytes,
        "new_bytes": c.row_bytes + write_bytes + new_blob_bytes,
    }
    return record, refs


def _value_references(context, c, known):
    """References in the checkpoint row itself: PostgreSQL's inline primitives, or SQLite's whole serialized checkpoint."""
    refs = []
    values = None
    if isinstance(c.inline_values, TypedValues):  # S3: every value as serialized, per channel
        for channel, (type_, data) in c.inline_values.items():
            uris = _uris_in(context, type_, data)
            if uris:
                refs.append((c.checkpoint_ns, c.checkpoint_id, f"value:{channel}", uris))
    elif isinstance(c.inline_values, dict):
        values = c.inline_values
    elif isinstance(c.value_data, ScannedURIs):  # too large to decode: scanned raw, channel unknown
        if c.value_data:
            refs.append((c.checkpoint_ns, c.checkpoint_id, "value:*", set(c.value_data)))
    elif c.value_data is not None:
        # Strings and bytes values alike, per channel, without the display copy.
        by_channel, whole = decode.checkpoint_references(c.value_type, c.value_data, limit=REFERENCE_DECODE_LIMIT,
                                                         aes_key=context.aes_key)
        if not whole:
            context.undecodable += 1
        refs.extend((c.checkpoint_ns, c.checkpoint_id, f"value:{channel}", uris)
                    for channel, uris in by_channel.items())
    elif not c.fresh and c.inline_values is None and c.channel_versions is None:
        for key, uris in known.items():
            if key[0] == "value" and key[1] == c.checkpoint_ns and key[2] == c.checkpoint_id:
                refs.append((key[1], key[2], key[3], uris))
    for channel, value in (values or {}).items():
        uris = decode.find_references(value)
        if uris:
            refs.append((c.checkpoint_ns, c.checkpoint_id, f"value:{channel}", uris))
    return refs


def _thread_fields(records, rows):
    """A thread's totals and tags (those of its latest root checkpoint), from its records and rows."""
    root = [r for r in records if r["checkpoint_ns"] == ""]
    latest = max(root, key=lambda r: r["checkpoint_id"]) if root else None
    checkpoint_bytes = sum(r["row_bytes"] for r in records)
    blob_total = sum(b.size for b in rows.blobs)
    write_total = sum(w.size for w in rows.writes)
    return {
        "checkpoints": len(records),
        "first_checkpoint_at": min(r["created_at"] for r in records),
        "last_checkpoint_at": max(r["created_at"] for r in records),
        "latest_checkpoint_id": latest["checkpoint_id"] if latest else "",
        "logical_bytes": latest["logical_bytes"] if latest else 0,
        "checkpoint_bytes": checkpoint_bytes,
        "blob_bytes": blob_total,
        "write_bytes": write_total,
        "stored_bytes": checkpoint_bytes + blob_total + write_total,
        "blob_rows": len(rows.blobs),
        "write_rows": len(rows.writes),
        "tags": extract_tags(json_value(latest["metadata"]), settings.TAG_EXCLUDE) if latest else {},
    }


def _int_or_none(text):
    """A JSON number read as text by SQL, if it is an integer.

    >>> _int_or_none("3"), _int_or_none("-2"), _int_or_none("3.0"), _int_or_none(None)
    (3, -2, None, None)
    """
    if text is None:
        return None
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if digits.isdigit() else None


def _write_location(w):
    return f"write:{w.task_id}/{w.idx}/{w.channel}"


def _uris_in(context, type_, data):
    if isinstance(data, ScannedURIs):  # a large value the reader scanned in windows
        return set(data)
    uris, whole = decode.references_in(type_, data, limit=REFERENCE_DECODE_LIMIT, aes_key=context.aes_key)
    if not whole:
        context.undecodable += 1
    return uris


def _parse_ts(ts):
    if not ts:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(ts)
    except ValueError:
        return None


_CHANGE_FIELDS = ("parent_checkpoint_id", "created_at", "step", "origin", "metadata", "problem", "row_bytes", "blob_bytes",
                  "write_bytes", "write_count", "logical_bytes", "new_bytes")
_THREAD_FIELDS = ("checkpoints", "first_checkpoint_at", "last_checkpoint_at", "latest_checkpoint_id", "logical_bytes",
                  "checkpoint_bytes", "blob_bytes", "write_bytes", "stored_bytes", "blob_rows", "write_rows", "tags")


def _apply_batch(context, thread_rows):
    """Mirror one batch of threads read from the source, in one transaction of the console's database."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # The mirror can be rebuilt from the sources, and commits land in
            # order (a lost batch implies a lost watermark): no need to wait
            # for each batch's WAL flush.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        existing, thread_rows = _lock_threads(context, thread_rows)
        known = _known_references(existing) if context.since is not None and existing else {}
        computed = {rows.thread_id: _compute_thread(context, rows, known.get(rows.thread_id, {})) for rows in thread_rows}
        # What the batch changes in the source's running totals: its locked
        # threads as they were out, as they are written in.
        delta = running_totals.Delta()
        for t in existing.values():
            delta.thread(t, -1)

        # Threads gone from the source.
        gone = [t.pk for tid, t in existing.items() if computed[tid][0] is None]
        if gone:
            context.stats["removed"] += Checkpoint.objects.filter(thread_id__in=gone).count()
            delta.checkpoints_of(gone, -1)
            _delete_threads(gone)

        live = {tid: c for tid, c in computed.items() if c[0] is not None}
        for thread, _, _ in live.values():
            delta.thread(thread, +1)
        if live:
            pks, old_threads, old_tags = _write_threads(context, existing, live)
            ckpt_pk = _write_checkpoints(context, live, pks, old_threads, delta)
            _write_tags(context, live, pks, old_tags)
            _write_references(context, live, pks, old_threads, ckpt_pk)
        running_totals.apply(context.source.pk, delta)  # last: the row stays locked until the commit


def _lock_threads(context, thread_rows):
    """Lock the batch's mirrored threads; leave out those a running prune marked.

    Returns ({source thread id: Thread} of the threads mirrored before, the
    rows still to mirror).
    """
    ids = [rows.thread_id for rows in thread_rows]
    # Locked until the batch commits: a prune refreshing the same threads
    # waits instead of deleting a thread this batch then writes rows for
    # (the mirror has no foreign keys to refuse them).
    # Keyed by the source's id; the mirror holds thread_key() of it (NUL escaped).
    existing = {source_thread_id(t.thread_id): t for t in Thread.objects.select_for_update().filter(
        source=context.source, thread_id__in=[thread_key(i) for i in ids]).order_by("pk")}  # one lock order for all: no deadlock
    if context.settled_marks is not None:
        # Checked under the lock: a prune's refresh of these threads has
        # either committed already (its mark is seen) or waits for ours.
        deferred = _pruned_meanwhile(context, ids)
        if deferred:
            context.deferred |= deferred
            thread_rows = [rows for rows in thread_rows if rows.thread_id not in deferred]
            existing = {tid: t for tid, t in existing.items() if tid not in deferred}
    return existing, thread_rows


def _write_threads(context, existing, live):
    """Update the threads mirrored before, insert the new ones.

    Returns ({source thread id: pk}, the Thread objects updated, their tags
    before: {source thread id: tags or _REWRITE}).
    """
    old_threads = []
    old_tags = {}
    for tid, (thread, _, _) in live.items():
        obj = existing.get(tid)
        if obj is not None:
            # A full sync (or odd JSON) rewrites the thread's tag rows whole: a repair.
            old_tags[tid] = obj.tags if context.since is not None and isinstance(obj.tags, dict) else _REWRITE
            for f in _THREAD_FIELDS:
                setattr(obj, f, thread[f])
            old_threads.append(obj)
    if old_threads:
        update_rows(Thread, _THREAD_FIELDS, [(t.pk, *(getattr(t, f) for f in _THREAD_FIELDS)) for t in old_threads])
    new_ids = [tid for tid in live if tid not in existing]
    pks = {tid: existing[tid].pk for tid in live if tid in existing}
    pks.update(_insert_threads(context.source, [(tid, live[tid][0]) for tid in new_ids]))
    if len(context.touched) <= TOUCHED_LIMIT:
        context.touched.update(pks.values())
    return pks, old_threads, old_tags


def _write_checkpoints(context, live, pks, old_threads, delta):
    """Checkpoints: insert the new, update the changed, delete the vanished; the day's figures into `delta`.

    Returns {(thread pk, ns, checkpoint_id): pk} of every checkpoint of the
    batch when the new rows' keys were reserved up front (PostgreSQL), else None.
    """
    current = {}
    if old_threads:
        for row in Checkpoint.objects.filter(thread__in=old_threads).values(
            "pk", "thread_id", "checkpoint_ns", "checkpoint_id", *_CHANGE_FIELDS
        ):
            current[(row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])] = row
            delta.checkpoint(row["created_at"], row["new_bytes"], -1)
    to_insert, to_update, seen = [], [], set()
    source_pk = context.source.pk  # a property: looked up once, not per checkpoint
    for tid, (_, records, _) in live.items():
        thread_pk = pks[tid]
        for r in records:
            delta.checkpoint(r["created_at"], r["new_bytes"], +1)
            key = (thread_pk, r["checkpoint_ns"], r["checkpoint_id"])
            old = current.get(key) if current else None
            if old is None:
                to_insert.append((source_pk, thread_pk, *_record_values(r)))
            else:
                seen.add(key)
                if any(old[f] != json_value(r[f]) for f in _CHANGE_FIELDS):
                    to_update.append((old["pk"], *(r[f] for f in _CHANGE_FIELDS)))
    vanished = [row["pk"] for key, row in current.items() if key not in seen]
    if vanished:
        ReferenceUse.objects.filter(checkpoint_id__in=vanished)._raw_delete(ReferenceUse.objects.db)
        Checkpoint.objects.filter(pk__in=vanished)._raw_delete(Checkpoint.objects.db)
    ckpt_pk = _insert_checkpoints(to_insert)
    update_rows(Checkpoint, _CHANGE_FIELDS, to_update)
    context.stats["added"] += len(to_insert)
    context.stats["updated"] += len(to_update)
    context.stats["removed"] += len(vanished)
    if ckpt_pk is None:
        return None
    # Every checkpoint's pk is known: the ones just inserted and those kept.
    ckpt_pk.update((key, row["pk"]) for key, row in current.items() if key in seen)
    return ckpt_pk


def _insert_checkpoints(rows):
    """Insert checkpoint rows (source pk, thread pk, *_RECORD_FIELDS); returns {(thread pk, ns, id): pk}
    when their keys were reserved up front (PostgreSQL), else None."""
    columns = ("source_id", "thread_id", *_RECORD_FIELDS)
    new_pks = reserve_ids(Checkpoint, len(rows))
    if new_pks is not None:
        columns = ("id", *columns)
        rows = [(pk, *row) for pk, row in zip(new_pks, rows)]
    insert_rows(Checkpoint, columns, rows)
    if new_pks is None:
        return None
    return {(row[2], row[3], row[4]): row[0] for row in rows}


def _write_tags(context, live, pks, old_tags):
    """Tags of the latest root checkpoint; for a thread mirrored before, only what changed.

    Thread.tags holds what its Tag rows hold. Most re-read threads keep
    their tags, and rewriting them anyway cleared the visibility map of the
    tag table page by page, which the tag browser's index-only scans need
    until autovacuum comes by.
    """
    source_pk = context.source.pk
    stale, fresh, rewrite = [], [], []
    for tid, (thread, _, _) in live.items():
        before, after = old_tags.get(tid), thread["tags"]
        if before is None or before is _REWRITE:
            fresh.extend((source_pk, pks[tid], k, v) for k, v in after.items())
            if before is _REWRITE:
                rewrite.append(pks[tid])
        elif before != after:
            stale.extend((pks[tid], k) for k, v in before.items() if after.get(k) != v)
            fresh.extend((source_pk, pks[tid], k, v) for k, v in after.items() if before.get(k) != v)
    if rewrite:
        Tag.objects.filter(thread_id__in=rewrite)._raw_delete(Tag.objects.db)
    delete_pairs(Tag, ("thread", "key"), ("bigint", "text"), stale)
    insert_rows(Tag, ("source_id", "thread_id", "key", "value"), fresh)


def _write_references(context, live, pks, old_threads, ckpt_pk):
    """Replace the batch's reference uses: which checkpoint holds which URI, where."""
    if old_threads:
        ReferenceUse.objects.filter(thread__in=old_threads)._raw_delete(ReferenceUse.objects.db)
    _insert_uses(context, live, pks, ckpt_pk)


def _insert_uses(context, live, pks, ckpt_pk):
    """Insert the reference uses found in `live` threads (refs as _compute_thread returns them)."""
    uses = {
        (tid, ns, cid, location, uri)
        for tid, (_, _, refs) in live.items()
        for ns, cid, location, uris in refs
        for uri in uris
    }
    if not uses:
        return
    refs = _references_for({u[4] for u in uses}, context)
    if ckpt_pk is None:
        ckpt_pk = dict(
            ((t, ns, cid), pk) for pk, t, ns, cid in Checkpoint.objects.filter(
                thread_id__in={pks[u[0]] for u in uses}
            ).values_list("pk", "thread_id", "checkpoint_ns", "checkpoint_id")
        )
    insert_rows(ReferenceUse, ("reference_id", "thread_id", "checkpoint_id", "location"), [
        (refs[uri], pks[tid], ckpt_pk.get((pks[tid], ns, cid)), location)
        for tid, ns, cid, location, uri in uses
    ])


_RECORD_FIELDS = ("checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "created_at", "step", "origin", "problem",
                  "metadata", "row_bytes", "blob_bytes", "write_bytes", "write_count", "logical_bytes", "new_bytes")
_record_values = operator.itemgetter(*_RECORD_FIELDS)


def _known_references(existing, blobs=None):
    """References found earlier in rows that are not fetched again, per thread.

    `blobs`, when given, narrows them to these (thread pk, "blob:<channel>@<version>") locations.
    """
    known = defaultdict(lambda: defaultdict(set))
    # No joins to the thread and reference tables: with them the planner
    # hashed the whole reference table and walked the thread index (55-90 ms
    # for the 160 threads of an incremental sync; 23 ms like this).
    thread_ids = {t.pk: thread_id for thread_id, t in existing.items()}
    fields = ("thread_id", "checkpoint__checkpoint_ns", "checkpoint__checkpoint_id", "location", "reference_id")
    if blobs is None:
        uses = list(ReferenceUse.objects.filter(thread_id__in=list(thread_ids)).values_list(*fields))
    elif not blobs:
        return known
    elif connection.vendor == "postgresql":
        # By key: only the uses asked for are joined to their checkpoint rows (random pages of the
        # largest table), not every use of every thread.
        pairs = sorted(blobs)
        uses = execute_bound(
            f"SELECT u.thread_id, c.checkpoint_ns, c.checkpoint_id, u.location, u.reference_id"
            f" FROM unnest(%b::bigint[], %b::text[]) AS k(t, l)"
            f" JOIN {ReferenceUse._meta.db_table} u ON u.thread_id = k.t AND u.location = k.l"
            f" LEFT JOIN {Checkpoint._meta.db_table} c ON c.id = u.checkpoint_id",
            [[p[0] for p in pairs], [p[1] for p in pairs]],
        )
    else:
        uses = [u for u in ReferenceUse.objects.filter(
            thread_id__in={p[0] for p in blobs}, location__in={p[1] for p in blobs}).values_list(*fields)
            if (u[0], u[3]) in blobs]
    uris = dict(BlobReference.objects.filter(pk__in={u[4] for u in uses}).values_list("pk", "uri")) if uses else {}
    for thread_pk, ns, cid, location, reference_pk in uses:
        thread_id, uri = thread_ids[thread_pk], uris.get(reference_pk)
        if uri is None:
            continue
        kind, _, rest = location.partition(":")
        if kind == "blob":
            channel, _, version = rest.rpartition("@")
            known[thread_id][("blob", ns, channel, version)].add(uri)
        elif kind == "write":
            # By location alone (its task id is unique in the thread): the
            # write's checkpoint row may be gone, and its link with it.
            known[thread_id][("write", location)].add(uri)
        else:
            known[thread_id][(kind, ns, cid, location)].add(uri)
    return known


_REWRITE = object()  # old_tags marker: replace all of a thread's tag rows


def _delete_threads(pks):
    """Delete threads and everything hanging off them, in SQL: no rows loaded."""
    db = Thread.objects.db
    ReferenceUse.objects.filter(thread_id__in=pks)._raw_delete(db)
    Tag.objects.filter(thread_id__in=pks)._raw_delete(db)
    Checkpoint.objects.filter(thread_id__in=pks)._raw_delete(db)
    Thread.objects.filter(pk__in=pks)._raw_delete(db)


def _insert_threads(source, items):
    """Insert new threads, given by the source's ids (stored as thread_key()); return {source id: pk}."""
    if not items:
        return {}
    ids = reserve_ids(Thread, len(items))
    if ids is not None:
        rows = [(pk, source.pk, thread_key(tid), 0, *(thread[f] for f in _THREAD_FIELDS))
                for pk, (tid, thread) in zip(ids, items)]
        insert_rows(Thread, ("id", "source_id", "thread_id", "external_bytes", *_THREAD_FIELDS), rows)
        return {tid: pk for pk, (tid, _) in zip(ids, items)}
    objs = [Thread(source=source, thread_id=thread_key(tid), **{f: thread[f] for f in _THREAD_FIELDS})
            for tid, thread in items]
    Thread.objects.bulk_create(objs, batch_size=1000)
    if objs[0].pk is None:
        return {source_thread_id(t): pk for t, pk in Thread.objects.filter(
            source=source, thread_id__in=[t.thread_id for t in objs]).values_list("thread_id", "pk")}
    return {source_thread_id(t.thread_id): t.pk for t in objs}


def _references_for(uris, context):
    """{uri: BlobReference pk}, creating the references not seen before."""
    found = dict(BlobReference.objects.filter(uri__in=list(uris)).values_list("uri", "pk"))
    # In URI order: two syncs creating overlapping references lock them in one order, never deadlock.
    missing = [BlobReference(uri=u, store=classify(u, **context.store_settings)) for u in sorted(uris) if u not in found]
    if missing:
        # ignore_conflicts: another source's sync may create the same reference meanwhile.
        BlobReference.objects.bulk_create(missing, ignore_conflicts=True, batch_size=1000)
        found.update(BlobReference.objects.filter(uri__in=[m.uri for m in missing]).values_list("uri", "pk"))
    return found
