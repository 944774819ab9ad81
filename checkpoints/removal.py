"""Removing a source: its mirror leaves the console, the checkpoint database is never touched.

`removal_preview()` counts what leaves (from the mirror's per-thread totals:
a few aggregate queries), `remove_source()` deletes it as a Run of kind
"remove" (the audit log), thread batch by thread batch so that a mirror of
millions of rows is never loaded into Python nor held in one transaction.
The sources page and the `remove_source` command both call these.

A sync writing the source while it goes would leave rows behind (the mirror
has no foreign keys to refuse them), so the removal first disables the
source, then waits for a sync already running to end; sync_source() reads
`enabled` again once it holds its lock (see there), so one of the two always
sees the other.
"""

import time

from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from checkpoints import totals as running_totals
from checkpoints.jobs import REMOVE, SYNC
from checkpoints.models import BlobReference, DailyUsage, ReferenceUse, Run, Source, Thread
from checkpoints.runs import RunBusy, fail_dead_runs, finish_run, heartbeat, lock_key, start_run

BATCH_THREADS = 2000
SYNC_WAIT = 600  # seconds a removal waits for a running sync of the source


class RemovalRefused(Exception):
    """The source cannot be removed now (see the message)."""


def release_slot(source) -> str | None:
    """Drop the source's logical replication slot, if it has one; say what happened (None: no slot).

    A slot retains WAL on the operator's server for as long as nobody reads
    it: a source that is no longer synced (disabled, removed, pointed at
    another database) must not keep one. A later sync of an enabled source
    creates a new slot and scans once (see checkpoints/sources/capture.py).
    """
    from checkpoints.sources import SourceError, first_line, registry
    from checkpoints.sources.capture import drop_slot

    slot = (source.sync_state or {}).get("slot")
    if not slot or not registry.for_source(source).logical_capture:
        return None
    try:
        dropped = drop_slot(source.url, slot)
    except SourceError as e:
        return (f"could not drop the replication slot {slot} ({first_line(e)}): drop it on that server with "
                f"SELECT pg_drop_replication_slot('{slot}')")
    state = {k: v for k, v in source.sync_state.items() if k != "slot"}
    Source.objects.filter(pk=source.pk).update(sync_state=state)
    source.sync_state = state
    return f"dropped the replication slot {slot}" if dropped else None


def removal_preview(source) -> dict:
    """What leaves the mirror with this source: counts and bytes."""
    totals = Thread.objects.filter(source=source).aggregate(
        threads=Count("id"), checkpoints=Sum("checkpoints"), writes=Sum("write_rows"), blobs=Sum("blob_rows"),
        stored_bytes=Sum("stored_bytes"),
    )
    preview = {k: v or 0 for k, v in totals.items()}
    preview.update(_reference_counts(source))
    preview["usage_days"] = DailyUsage.objects.filter(source=source).count()
    return preview


def _reference_counts(source) -> dict:
    """ReferenceUse rows of the source, and the objects no other source names.

    Those objects become unreferenced: a later sweep may delete them once the
    grace has passed. The page says so.
    """
    uses = ReferenceUse.objects.filter(thread__source=source)
    references = uses.count()
    mine = uses.values("reference_id").distinct()
    shared = ReferenceUse.objects.filter(reference_id__in=mine).exclude(thread__source=source).values("reference_id")
    only_here = BlobReference.objects.filter(pk__in=mine).exclude(pk__in=shared).count() if references else 0
    return {"references": references, "only_here": only_here}


def check_removable(source):
    """Raise RemovalRefused when removing the source now would be undone or unsafe."""
    from django.conf import settings

    if source.registered_by_env and settings.CHECKPOINT_DATABASE_URL:
        raise RemovalRefused(
            f"source {source.name} is registered by CHECKPOINT_DATABASE_URL: the next job would register it "
            "again. Unset the variable (the source is then disabled), then remove it."
        )
    busy = Run.objects.filter(source=source, state__in=["queued", "running"]).exclude(kind__in=[SYNC, REMOVE])
    holder = busy.first()
    if holder is not None:
        raise RemovalRefused(
            f"a {holder.get_kind_display().lower()} of {source.name} is {holder.state} (run #{holder.pk}): "
            "wait for it to finish"
        )


def remove_source(source, *, requested_by=None, origin="command", run=None, sync_wait=SYNC_WAIT) -> Run:
    """Delete the source and its whole mirror as a Run of kind "remove"; return the finished Run.

    The Run keeps the source's name in its parameters (its foreign key is
    emptied when the source goes) and the preview's counts beside what was
    removed. Raises RemovalRefused (nothing changed, the run failed) or
    RunBusy (another removal of it is running).
    """
    parameters = {"source": source.name, "url": source.display_url, **(run.parameters if run else {})}
    if run is not None:
        run.parameters = parameters
        Run.objects.filter(pk=run.pk).update(parameters=parameters)
    run = start_run(REMOVE, source, parameters=parameters, requested_by=requested_by, origin=origin, run=run)
    try:
        check_removable(source)
    except RemovalRefused as e:
        finish_run(run, result={}, error=str(e))
        raise
    preview = removal_preview(source)
    who = getattr(requested_by, "username", None) or origin
    Source.objects.filter(pk=source.pk).update(enabled=False, disabled_reason=f"being removed (run #{run.pk}, {who})")
    try:
        _wait_for_sync(source, sync_wait)
        source.refresh_from_db(fields=["sync_state"])
        slot_note = release_slot(source)
        removed = _delete_mirror(source, run, preview["threads"])
        if slot_note:
            removed["slot"] = slot_note
    except Exception as e:
        # Stopped half-way: the source stays, disabled, with what is left of its mirror; removing it again finishes.
        finish_run(run, result={"preview": preview}, error=f"{type(e).__name__}: {e}")
        raise
    removed["preview"] = preview
    return finish_run(run, result=removed)


def _wait_for_sync(source, wait):
    key = lock_key(SYNC, source)
    deadline = time.monotonic() + wait
    while Run.objects.filter(lock_key=key, state="running").exists():
        fail_dead_runs(key)
        if time.monotonic() >= deadline:
            raise RunBusy(f"a sync of {source.name} is still running after {wait} s; try again when it has finished")
        time.sleep(0.5)


def _delete_mirror(source, run, total_threads) -> dict:
    from checkpoints.sync import _delete_threads

    counts = {"threads": 0, "checkpoints": 0, "writes": 0, "blobs": 0, "stored_bytes": 0}
    counts.update(_reference_counts(source))  # counted before they go
    heartbeat(run, done=0, total=total_threads)
    while True:
        with transaction.atomic():
            batch = list(Thread.objects.filter(source=source).order_by("pk")[:BATCH_THREADS].values_list("pk", flat=True))
            if not batch:
                break
            # Out of the source's running totals too (a removal that fails
            # halfway leaves a source whose totals match what is left).
            delta = running_totals.Delta()
            for thread in Thread.objects.filter(pk__in=batch).only(
                    "first_checkpoint_at", *running_totals.THREAD_SUMS):
                delta.thread(thread, -1)
            delta.checkpoints_of(batch, -1)
            _delete_threads(batch)
            running_totals.apply(source.pk, delta)
        counts["threads"] += len(batch)
        for k, field in (("checkpoints", "checkpoints"), ("writes", "write_rows"), ("blobs", "blob_rows"),
                         ("stored_bytes", "stored_bytes")):
            counts[k] -= delta.values[field]
        heartbeat(run, done=counts["threads"], total=max(total_threads, counts["threads"]))
    with transaction.atomic():
        counts["usage_days"] = DailyUsage.objects.filter(source=source).count()
        # What is left hangs off the source row alone: usage days, saved
        # policies (deleted with it), runs (kept, their source emptied).
        Source.objects.filter(pk=source.pk).delete()
    counts["removed_at"] = timezone.now().isoformat()
    return counts
