"""Reference checks: HEAD the objects that checkpoints name, record what S3 says.

`check_references()` is a plain function: the `check_references` command, the
task schedule and the after-sync hook (storage.apps) all call it. It never
raises for a store problem: a store that is down leaves its references
unchecked with the reason in `check_error` (those known to be missing stay
missing), and the reason comes back in `error` for the run to record. Pages read only these columns, so they render
whatever the store's state.
"""

import json
import logging
import time

from django.db import connection
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from checkpoints.jobs import REFCHECK
from checkpoints.models import BlobReference, ReferenceUse, Thread
from checkpoints.runs import RunBusy, finish_run, heartbeat, start_run
from storage.stores import ForeignURI, S3Store, StoreError, StoreNotConfigured, StoreUnavailable, locate

log = logging.getLogger(__name__)

BATCH = 500
# Per-object failures listed in the result (all of them are in check_error).
MAX_LISTED_ERRORS = 20
# After a sync, this many of the source's references are checked: unchecked
# ones first, then the longest unchecked, so every reference comes round.
AFTER_SYNC_LIMIT = 1000
FIELDS = ["size", "content_type", "last_modified", "etag", "exists", "checked_at", "check_error"]


def references_to_check(*, only_unchecked=False, source=None):
    """Non-foreign references that at least one mirrored checkpoint or write names."""
    uses = ReferenceUse.objects.filter(reference=OuterRef("pk"))
    if source is not None:
        uses = uses.filter(thread__source=source)
    # The stores by name, not "not foreign": an index range on (store, exists) instead of a
    # scan of every reference, which the check after each sync paid (31 ms twice at 5 M
    # checkpoints whose 176 k references were all foreign).
    checked = [store for store, _ in BlobReference.STORE_CHOICES if store != "foreign"]
    refs = BlobReference.objects.filter(store__in=checked).filter(Exists(uses))
    if only_unchecked:
        refs = refs.filter(exists__isnull=True)
    return refs


def check_references(only_unchecked=False, limit=None, *, source=None, progress=None, threads=None) -> dict:
    """HEAD referenced objects and record size, type, last-modified, ETag and existence.

    Returns {"checked", "present", "missing", "unchecked", "skipped",
    "threads_updated", "seconds", "error", "errors"}: `unchecked` counts the
    references the stores could not tell about, `skipped` those now outside
    the configured stores, `error` is None or why a store could not be read,
    `errors` lists per-object refusals (AccessDenied, ...).

    `threads`: pks of threads whose references changed otherwise (a sync
    rewrote them); with it, external bytes are recomputed only for those and
    for the users of objects whose state or size this check changed. None
    recomputes every thread.
    """
    started = time.monotonic()
    refs = references_to_check(only_unchecked=only_unchecked, source=source)
    if limit is not None:
        # Never-checked first, then the stalest: repeated limited runs cover everything.
        pks = list(refs.order_by(F("checked_at").asc(nulls_first=True), "pk").values_list("pk", flat=True)[:limit])
        batches = (pks[i : i + BATCH] for i in range(0, len(pks), BATCH))
    else:
        batches = _keyset_batches(refs)

    counts = {"checked": 0, "present": 0, "missing": 0, "unchecked": 0, "skipped": 0}
    errors = []
    down = {}  # store family -> why it cannot be read
    done = 0
    moved = []  # references whose existence or size changed
    for pks in batches:
        batch = list(BlobReference.objects.filter(pk__in=pks).order_by("pk"))
        changed = []
        for ref in batch:
            known = (ref.exists, ref.size)
            outcome = _check_one(ref, down)
            if (ref.exists, ref.size) != known:
                moved.append(ref.pk)
            counts[outcome] += 1
            if outcome != "skipped":
                changed.append(ref)
            if outcome == "unchecked" and ref.check_error and ref.check_error not in down.values():
                if len(errors) < MAX_LISTED_ERRORS:
                    errors.append({"uri": ref.uri, "error": ref.check_error})
            if outcome in ("present", "missing"):
                counts["checked"] += 1
        BlobReference.objects.bulk_update(changed, FIELDS)
        done += len(batch)
        if progress is not None:
            progress(done)

    if threads is not None:
        threads = set(threads) | set(
            ReferenceUse.objects.filter(reference_id__in=moved).values_list("thread_id", flat=True).distinct()
        )
    threads_updated = update_external_bytes(source=source, threads=threads)
    error = "; ".join(dict.fromkeys(down.values())) or None
    if error:
        log.warning("reference check: %s", error)
    return {
        **counts,
        "threads_updated": threads_updated,
        "seconds": round(time.monotonic() - started, 3),
        "error": error,
        "errors": errors,
    }


def _keyset_batches(refs):
    # Keyset pagination: flat memory and no long-lived cursor while rows are updated.
    last = 0
    while True:
        pks = list(refs.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:BATCH])
        if not pks:
            return
        yield pks
        last = pks[-1]


def _check_one(ref, down) -> str:
    """HEAD one reference, updating it in memory; return the outcome counted."""
    try:
        store, key = locate(ref.uri)
    except ForeignURI:
        return "skipped"  # settings changed since the sync classified it; the next sync will
    except StoreNotConfigured as e:
        return _unchecked(ref, down.setdefault("s3", str(e)))
    family = "s3" if isinstance(store, S3Store) else "file"
    if family in down:
        # One failure per store, not one timeout per object while it is down.
        return _unchecked(ref, down[family])
    try:
        info = store.head(key)
    except (StoreUnavailable, StoreNotConfigured) as e:
        return _unchecked(ref, down.setdefault(family, str(e)))
    except StoreError as e:
        return _unchecked(ref, str(e))
    ref.exists = info.exists
    ref.checked_at = timezone.now()
    ref.check_error = ""
    if info.exists:
        ref.size, ref.content_type, ref.last_modified, ref.etag = (
            info.size, info.content_type[:200], info.last_modified, info.etag[:200]
        )
        return "present"
    ref.size, ref.content_type, ref.last_modified, ref.etag = None, "", None, ""
    return "missing"


def _unchecked(ref, message) -> str:
    # The last known size and time stay for reference; `exists` says we cannot
    # tell now. An object known to be missing stays missing: a store that does
    # not answer is no news that it came back, and turning it "unchecked"
    # would hide a dangling reference (the dangling count fell during outages).
    # A present one does become unchecked: its presence is what we cannot vouch for.
    if ref.exists is not False:
        ref.exists = None
    ref.check_error = message
    return "unchecked"


def update_external_bytes(*, source=None, threads=None) -> int:
    """Thread.external_bytes = the sizes of the present objects it references, each once.

    The sums run in one grouped query (an object named by many checkpoints
    of a thread counts once: DISTINCT before SUM); only threads whose figure
    changed are written. A correlated UPDATE over every thread was minutes
    on a 100,000-thread mirror.
    """
    uses = ReferenceUse._meta.db_table
    refs = BlobReference._meta.db_table
    threads_table = Thread._meta.db_table
    if threads is not None and not threads:
        return 0
    conditions, params = [], []
    if source is not None:
        conditions.append("t.source_id = %s")
        params.append(source.pk)
    if threads is not None:
        if connection.vendor == "postgresql":
            conditions.append("t.id = ANY(%s)")
            params.append(sorted(threads))
        else:  # SQLite, the embedded default: no arrays; one JSON parameter whatever the count
            conditions.append("t.id IN (SELECT value FROM json_each(%s))")
            params.append(json.dumps(sorted(threads)))
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT u.thread_id, SUM(r.size)
            FROM (SELECT DISTINCT u.thread_id, u.reference_id
                  FROM {uses} u JOIN {threads_table} t ON t.id = u.thread_id {where}) u
            JOIN {refs} r ON r.id = u.reference_id AND r.{connection.ops.quote_name("exists")} AND r.size IS NOT NULL
            GROUP BY u.thread_id
            """,
            params,
        )
        totals = {thread_id: int(total) for thread_id, total in cursor.fetchall()}
    candidates = Thread.objects.filter(
        Q(external_bytes__gt=0) | Q(Exists(ReferenceUse.objects.filter(thread_id=OuterRef("pk"))))
    )
    if source is not None:
        candidates = candidates.filter(source=source)
    if threads is not None:
        candidates = candidates.filter(pk__in=sorted(threads))
    changed = [
        Thread(pk=pk, external_bytes=totals.get(pk, 0))
        for pk, current in candidates.values_list("pk", "external_bytes")
        if current != totals.get(pk, 0)
    ]
    Thread.objects.bulk_update(changed, ["external_bytes"], batch_size=1000)
    return len(changed)


def run_reference_check(*, source=None, only_unchecked=False, limit=None, origin="command", requested_by=None, wait=0.0,
                        threads=None):
    """check_references() recorded as a Run (kind `refcheck`): the audit log and the error.

    Returns the result dict; `error` says why when it failed or was skipped.
    """
    params = {"only_unchecked": only_unchecked, "limit": limit}
    try:
        run = start_run(REFCHECK, source, parameters=params, requested_by=requested_by, origin=origin, wait=wait)
    except RunBusy as e:
        return {"checked": 0, "present": 0, "missing": 0, "unchecked": 0, "skipped": 0, "threads_updated": 0,
                "seconds": 0.0, "error": f"skipped: {e}", "errors": [], "run": None}
    try:
        total = references_to_check(only_unchecked=only_unchecked, source=source).count()
        heartbeat(run, done=0, total=min(total, limit) if limit is not None else total)
        result = check_references(
            only_unchecked=only_unchecked, limit=limit, source=source, progress=lambda n: heartbeat(run, done=n),
            threads=threads,
        )
    except Exception as e:
        finish_run(run, error=f"{type(e).__name__}: {e}")
        raise
    finish_run(run, result=result, error=result["error"] or "")
    return {**result, "run": run.pk}


def check_after_sync(sender, source, result, threads=None, **kwargs):
    """sync_finished receiver: check the source's newest and stalest references."""
    try:
        run_reference_check(source=source, limit=AFTER_SYNC_LIMIT, origin="sync", threads=threads)
    except Exception:  # a failed check must not turn a finished sync into a failed task
        log.exception("reference check after the sync of %s failed", source)
