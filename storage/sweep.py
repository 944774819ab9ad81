"""Orphan sweeps: the `sweep_orphans` contract (docs/architecture.md §4, §5 "Sweeps ...").

`sweep()` is the one function behind the command, the maintenance page and
the schedule; `run_sweep()` wraps it in a Run (audit log, progress bar, and
the lock: one sweep at a time).

Objects. An object under S3_PREFIX (or BLOB_ROOT) goes when no checkpoint or
write of any registered source names it and its LastModified is older than
the grace. In order:

1. Every listing begins (its first page is fetched), then every source is
   synced, so a successful sync started after the listing began: a reference
   committed before that sync is in the mirror. A source whose sync failed,
   or that has values it could not decode, blocks deletion (the dry run still
   reports).
2. The referenced keys are read from the mirror (BlobReference with at least
   one ReferenceUse) into a dict. Its size is bounded by the number of
   references, never by the number of objects, and it makes the listing's
   order irrelevant: S3-compatible servers need not list in byte order, so
   a merge join would need a sort of both sides; the dict needs neither.
   A sorted on-disk structure would only pay off with tens of millions of
   distinct references (about 150 bytes each here).
3. The listing streams one page at a time. Old unreferenced objects gather
   into batches of at most 1000 (S3's DeleteObjects limit); right before a
   batch is deleted its keys are re-checked against the sources themselves
   (_Recheck, through the `Recheck` of each store's kind), which catches
   references written since the sync and any the mirror's URI parser did
   not see. Nothing else is kept per
   object: memory does not grow with the size of the bucket.
4. Referenced keys the listing did not return are HEADed: those the store
   says are missing are the dangling references.

Database rows: `checkpoints.orphans.db_orphans` per source (which rows, and
how they go, is the store's kind's), then the touched threads' mirror is
refreshed.
"""

import heapq
import itertools
import os
import posixpath
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote

import psycopg
from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone

from checkpoints.dburl import redact
from checkpoints.jobs import SWEEP
from checkpoints.models import BlobReference, ReferenceUse, Source
from checkpoints.orphans import db_orphans
from checkpoints.runs import RunBusy, finish_run, heartbeat, start_run, throttled_progress
from checkpoints.sources import SourceError, first_line, registry
from checkpoints.sync import refresh_threads, register_default_source, sync_source
from checkpoints.units import duration_text, parse_duration
from checkpoints.uris import file_path_inside, parse_uri
from storage.stores import FileStore, StoreError, StoreUnavailable, store_for

CONTRACT_KEYS = (
    "dry_run", "sources", "objects_scanned", "orphans", "orphan_bytes", "deleted", "dangling", "db_orphans", "errors",
)
MIN_GRACE = timedelta(hours=1)
BATCH = 1000  # candidates re-checked, then deleted, together: S3's DeleteObjects limit
LIST_PAGE = 1000
MAX_LISTED_ERRORS = 1000  # the count of all of them is in `errors_total`
SAMPLE = 100  # orphans described in the result (the page's "what goes")


class SweepRefused(Exception):
    """The sweep was asked for with parameters it refuses (a grace under 1h without --force)."""


class SweepBusy(Exception):
    """Another sweep is running."""


class _RecheckFailed(Exception):
    """A source could not be searched: nothing of the batch may be deleted."""


# --- Parameters -----------------------------------------------------------------


def check_grace(grace=None, force=False) -> timedelta:
    """The grace as a timedelta (default SWEEP_GRACE); under 1h only with force.

    >>> check_grace("2h")
    datetime.timedelta(seconds=7200)
    >>> check_grace("1s", force=True)
    datetime.timedelta(seconds=1)
    >>> check_grace("30m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    storage.sweep.SweepRefused: a grace of 30m is under 1h: ... Use --force to sweep with it anyway.
    """
    if grace is None:
        grace = settings.SWEEP_GRACE
    if not isinstance(grace, timedelta):
        try:
            grace = parse_duration(grace)
        except ValueError as e:
            raise SweepRefused(f"--grace: {e}") from None
    if grace < timedelta(0):
        raise SweepRefused("the grace must not be negative")
    if grace < MIN_GRACE and not force:
        raise SweepRefused(
            f"a grace of {duration_text(grace)} is under 1h: an object that young may be an upload whose "
            "checkpoint is not written yet. Use --force to sweep with it anyway."
        )
    return grace


# --- Where objects live -----------------------------------------------------------


@dataclass
class _Scope:
    """One store and the part of it a sweep may touch."""

    family: str  # "s3" (s3:// and minio:// name the same bucket) or "file"
    store: object
    prefix: str  # listed, and nothing outside it is ever deleted
    label: str
    markers: tuple  # bytes; every needle of this scope starts with one of them
    bucket: str = ""
    roots: tuple = ()  # file: the real root first, then the configured one if it differs

    def list(self, page_size=LIST_PAGE):
        if self.family == "s3":
            return self.store.list(self.prefix, page_size=page_size)
        return self.store.list(self.prefix)

    def inside(self, key: str) -> bool:
        """Whether a listed or referenced key lies in the part a sweep may touch.

        >>> s3 = _Scope("s3", None, "uploads/", "", ())
        >>> s3.inside("uploads/a"), s3.inside("uploads/"), s3.inside("uploads"), s3.inside("other/uploads/a")
        (True, False, False, False)
        >>> f = _Scope("file", None, "/var/blobs/", "", (), roots=("/var/blobs",))
        >>> f.inside("/var/blobs/a/b"), f.inside("/var/blobs/../etc/passwd"), f.inside("/var/blobsX/a")
        (True, False, False)
        """
        if not key.startswith(self.prefix) or len(key) == len(self.prefix):
            return False
        if self.family == "s3":
            return True
        # Lexical checks only (cheap: this runs for every listed file); the
        # store resolves links when it deletes.
        rest = key[len(self.prefix) - 1 :] + "/"
        return "\x00" not in key and "/../" not in rest and "/./" not in rest and "//" not in rest

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}" if self.family == "s3" else f"file://{key}"

    def needles(self, key: str) -> set:
        """Byte strings whose presence in a stored value may name this object."""
        if self.family == "s3":
            return {f"{self.bucket}/{key}".encode()}  # s3://bucket/key and minio://bucket/key
        rel = key[len(self.roots[0]):]
        found = set()
        for root in self.roots:
            path = root + rel
            found.add(path.encode("utf-8", "surrogateescape"))
            found.add(quote(path, errors="surrogateescape").encode())  # file:///a%20b
        return found

    def keys_of(self, uri: str):
        """The keys in this scope that a referenced URI names (file: lexical and real path)."""
        try:
            parsed = parse_uri(uri)
        except ValueError:
            return ()
        if self.family == "s3":
            return (parsed.key,) if parsed.scheme in ("s3", "minio") and parsed.bucket == self.bucket else ()
        if parsed.scheme != "file":
            return ()
        keys = set()
        for root in self.roots:
            inside = file_path_inside(parsed.key, root)
            if inside is not None:
                keys.add(self.roots[0] + inside[len(root):])
                real = os.path.realpath(inside)
                if file_path_inside(real, self.roots[0]) == real:
                    keys.add(real)
        return tuple(keys)


def store_labels() -> list[tuple[str, str]]:
    """(family, label) of each store a sweep lists, named as its result's `stores` name them (see _scopes)."""
    out = []
    if settings.S3_BUCKET_NAME:
        out.append(("s3", f"s3://{settings.S3_BUCKET_NAME}/{settings.S3_PREFIX or ''}"))
    if settings.BLOB_ROOT:
        real = os.path.realpath(posixpath.normpath(str(settings.BLOB_ROOT)))
        out.append(("file", f"file://{real.rstrip('/')}/"))
    return out


def _scopes():
    scopes = []
    if settings.S3_BUCKET_NAME:
        bucket, prefix = settings.S3_BUCKET_NAME, settings.S3_PREFIX or ""
        scopes.append(_Scope(
            "s3", store_for("s3"), prefix, f"s3://{bucket}/{prefix}", (f"{bucket}/{prefix}".encode(),), bucket=bucket,
        ))
    if settings.BLOB_ROOT:
        configured = posixpath.normpath(str(settings.BLOB_ROOT))
        real = os.path.realpath(configured)
        roots = (real,) if real == configured else (real, configured)
        markers = set()
        for root in roots:
            markers.add((root.rstrip("/") + "/").encode("utf-8", "surrogateescape"))
            markers.add(quote(root.rstrip("/") + "/", errors="surrogateescape").encode())
        scopes.append(_Scope(
            "file", FileStore(real), real.rstrip("/") + "/", f"file://{real.rstrip('/')}/", tuple(sorted(markers)),
            roots=roots,
        ))
    return scopes


def _referenced(scopes) -> dict:
    """{family: {key: uri}} for every URI at least one mirrored checkpoint or write names.

    Classified with today's settings, not the sync's: a URI that was outside
    the prefix then and is inside now still protects its object.
    """
    refs = {s.family: {} for s in scopes}
    uses = ReferenceUse.objects.filter(reference=OuterRef("pk"))
    uris = BlobReference.objects.filter(Exists(uses)).values_list("uri", flat=True)
    for uri in uris.iterator(chunk_size=5000):
        for scope in scopes:
            for key in scope.keys_of(uri):
                refs[scope.family].setdefault(key, uri)
    return refs


# --- The re-check at the sources ------------------------------------------------


class Needles:
    """Find which of many byte strings occur in a value, in one pass over it.

    Every needle starts with one of a few markers (the bucket and prefix, the
    blob root), so a needle occurs exactly where a marker occurrence is
    followed by the rest of it: the value is scanned for the markers, and at
    each occurrence one dict lookup per distinct needle length decides. The
    cost is one pass over the value, not one per needle.

    >>> n = Needles([{b"b/up/a.pdf"}, {b"b/up/a"}, {b"b/up/c d.png"}])
    >>> sorted(n.search(b'\\xa4file\\xb0s3://b/up/a.pdf\\x03 and "see s3://b/up/c d.png"', [b"b/up/"]))
    [0, 1, 2]
    >>> n.search(b"s3://b/up/x", [b"b/up/"])
    set()
    """

    def __init__(self, needle_sets):
        self.by_length = {}
        for i, needles in enumerate(needle_sets):
            for needle in needles:
                self.by_length.setdefault(len(needle), {}).setdefault(needle, []).append(i)

    def search(self, data: bytes, markers) -> set:
        found = set()
        for marker in markers:
            at = data.find(marker)
            while at >= 0:
                for length, table in self.by_length.items():
                    hit = table.get(data[at : at + length])
                    if hit:
                        found.update(hit)
                at = data.find(marker, at + 1)
        return found


def _saver_prefixes(sources) -> list:
    """(bucket, key prefixes) of each registered checkpoint store kept in a bucket (S3): its objects are never swept."""
    found = []
    for source in sources:
        owned = registry.for_source(source).owned_prefixes(source.url)
        if owned:
            found.append(owned)
    return found


def _saver_owned(bucket, key, saver_prefixes) -> bool:
    """
    >>> _saver_owned("b", "cp/threads/t/_/x/payload", [("b", ("cp/threads/",))]), _saver_owned("b", "cp/x", [("b", ("cp/threads/",))])
    (True, False)
    """
    return any(b == bucket and key.startswith(prefixes) for b, prefixes in saver_prefixes)


class _Recheck:
    """Searches every source for candidate keys, right before they are deleted.

    Per source and batch, the source's kind (`registry.recheck_for`) streams
    the stored values that contain a marker of the scope, read in a fresh
    snapshot; they are searched here for all the batch's needles at once
    (Needles). Encrypted values written since the sweep's own sync cannot be
    searched, so the kind fails the batch on them.
    """

    def __init__(self, sources):
        self.sources = sources
        self.rechecks = {}

    def close(self):
        for recheck in self.rechecks.values():
            recheck.close()
        self.rechecks.clear()

    def referenced(self, scope, keys) -> set:
        """Indexes of the keys some row at some source may name."""
        needles = Needles([scope.needles(k) for k in keys])
        markers = list(scope.markers)
        found = set()
        for source in self.sources:
            since = (source.sync_state or {}).get("watermark")
            try:
                recheck = self.rechecks.get(source.pk)
                if recheck is None:
                    try:
                        recheck = self.rechecks[source.pk] = registry.recheck_for(source)
                    except ValueError as e:
                        raise SourceError(str(e)) from None
                for data in recheck.values(markers, since):
                    found |= needles.search(data, markers)
            except (SourceError, psycopg.Error, sqlite3.Error) as e:
                recheck = self.rechecks.pop(source.pk, None)
                if recheck is not None:
                    recheck.close()
                raise _RecheckFailed(f"re-check at source {source.name} failed: {first_line(e)}") from None
        return found


# --- The sweep ------------------------------------------------------------------


LARGEST = 10  # largest objects under the prefix kept in a sweep's result, for the storage page


@dataclass
class _StoreStats:
    store: str
    objects: int = 0
    bytes: int = 0  # of the objects listed under the prefix
    referenced: int = 0
    referenced_bytes: int = 0
    largest: list = field(default_factory=list)  # heap of (size, uri) while listing; a sorted list after
    young: int = 0
    candidates: int = 0
    kept_by_recheck: int = 0
    orphans: int = 0
    orphan_bytes: int = 0
    deleted: int = 0
    dangling: int = 0
    complete: bool = False
    error: str = ""


class _Sweep:
    def __init__(self, grace, dry_run, sync, progress, requested_by, origin, batch_size=BATCH, page_size=LIST_PAGE,
                 now=None):
        if not 1 <= batch_size <= BATCH:
            raise ValueError(f"batch_size must be between 1 and {BATCH} (S3 deletes at most {BATCH} keys a request)")
        self.batch_size, self.page_size = batch_size, page_size
        self.grace, self.dry_run, self.sync, self.now = grace, dry_run, sync, now
        self.progress, self.requested_by, self.origin = progress, requested_by, origin
        self.refusals = []  # why nothing may be deleted
        self.failures = []  # what went wrong (the run's error)
        self.recheck_broken = False
        self.result = {
            "dry_run": dry_run, "sources": [], "objects_scanned": 0, "orphans": 0, "orphan_bytes": 0, "deleted": 0,
            "dangling": [], "db_orphans": 0, "errors": [],
            "errors_total": 0, "grace": duration_text(grace), "stores": [], "refused": [], "warnings": [],
            "db_orphan_rows": {}, "kept_by_recheck": 0, "sample": [], "listing_started_at": None, "seconds": 0.0,
            "error": None,
        }

    # Bookkeeping

    @property
    def may_delete(self):
        return not self.dry_run and not self.refusals

    def refuse(self, reason):
        if reason not in self.refusals:
            self.refusals.append(reason)

    def error(self, entry):
        self.result["errors_total"] += 1
        if len(self.result["errors"]) < MAX_LISTED_ERRORS:
            self.result["errors"].append(entry)

    def report(self):
        if self.progress is not None:
            self.progress(self.result["objects_scanned"], 0)

    # The run

    def run(self) -> dict:
        started = time.monotonic()
        register_default_source()
        sources = list(Source.objects.order_by("name"))
        self.result["sources"] = [s.name for s in sources]
        if not sources:
            self.refuse("no source is registered: without references every object would look orphaned")
        scopes = _scopes()
        self.saver_prefixes = _saver_prefixes(sources)
        for scope in scopes:
            if scope.family == "s3" and not scope.prefix:
                self.result["warnings"].append(
                    f"S3_PREFIX is empty: the whole bucket {scope.bucket} is swept; "
                    "every writer into it must be a registered source"
                )

        # 1. Begin every listing, then sync: each successful sync starts after the listing began.
        self.listing_started = timezone.now()
        self.result["listing_started_at"] = self.listing_started.isoformat()
        # The grace counts back from the listing's start (or the `now` given:
        # tests age objects a server stamps with its own clock this way).
        # The check of each source's sync against the listing uses the real start.
        self.cutoff = (self.now or self.listing_started) - self.grace
        listings = []
        for scope in scopes:
            stats = _StoreStats(scope.label)
            self.result["stores"].append(stats)
            listing = scope.list(self.page_size)
            try:
                first = next(listing, None)
            except StoreError as e:
                self.store_failed(scope, stats, str(e))
                continue
            listings.append((scope, stats, itertools.chain([first], listing) if first is not None else iter(())))
        if self.sync:
            self.sync_sources(sources)
        for source in sources:
            source.refresh_from_db()
            self.check_source(source)

        # 2-4. Stream each listing against the mirror's references.
        refs = _referenced(scopes)
        self.recheck = _Recheck(sources)
        try:
            self.report()
            for scope, stats, listing in listings:
                self.sweep_store(scope, stats, listing, refs[scope.family])
        finally:
            self.recheck.close()
        del refs

        # Database orphans.
        for source in sources:
            self.sweep_db(source)

        r = self.result
        for stats in r["stores"]:
            stats.largest = [{"uri": uri, "size": size} for size, uri in sorted(stats.largest, reverse=True)]
        r["stores"] = [vars(s) for s in r["stores"]]
        r["refused"] = list(self.refusals)
        r["seconds"] = round(time.monotonic() - started, 3)
        r["error"] = self.error_text()
        return r

    def error_text(self):
        parts = list(self.failures)
        if self.refusals and not self.dry_run:
            parts.insert(0, "refused to delete objects: " + "; ".join(self.refusals))
        keyed = sum(1 for e in self.result["errors"] if "key" in e)
        if keyed:
            parts.append(f"{keyed} object(s) could not be deleted (see errors)")
        return "; ".join(parts) or None

    def sync_sources(self, sources):
        for source in sources:
            try:
                outcome = sync_source(source, requested_by=self.requested_by, origin=self.origin)
            except Exception as e:  # noqa: BLE001 - a source that cannot sync blocks deletion, recorded below
                outcome = {"error": f"{type(e).__name__}: {e}"}
            if outcome.get("error"):
                self.result["warnings"].append(f"sync of {source.name} failed: {outcome['error']}")

    def check_source(self, source):
        if not source.enabled:
            # Its mirror is as old as its last sync: objects it wrote since would look orphaned.
            self.refuse(
                f"source {source.name} is disabled: its references are as of its last sync; enable it, "
                "or remove it if it no longer writes into these stores"
            )
            return
        if source.references_unknown:
            self.refuse(
                f"source {source.name} has {source.undecodable_values} value(s) it could not decode "
                "(encrypted or corrupt): its references are unknown (set LANGGRAPH_AES_KEY for encrypted values)"
            )
        started = source.last_success_started_at
        if started is None or started < self.listing_started:
            when = started.isoformat() if started else "never"
            failed = source.last_sync_ok is False and source.last_error
            why = f" (last sync failed: {source.last_error})" if failed else ""
            self.refuse(
                f"source {source.name} was last synced successfully at {when}, before the listing began at "
                f"{self.listing_started.isoformat()}{why}: references written since may be missing"
            )

    def store_failed(self, scope, stats, message):
        stats.error = message
        self.failures.append(f"{scope.label}: {message}")
        self.error({"uri": scope.label, "error": message})

    def sweep_store(self, scope, stats, listing, refs):
        seen = set()
        batch = []
        r = self.result
        while True:
            try:
                obj = next(listing)
            except StopIteration:
                stats.complete = True
                break
            except StoreError as e:
                self.store_failed(scope, stats, f"listing stopped: {e}")
                break
            if not scope.inside(obj.key):
                continue  # never swept: outside the prefix or the blob root
            if scope.family == "s3" and _saver_owned(scope.bucket, obj.key, self.saver_prefixes):
                # An S3 checkpoint store's own object (manifest, payload, write, change entry):
                # its source owns it, never an orphan of the blob store.
                stats.objects += 1
                stats.referenced += 1
                stats.referenced_bytes += obj.size or 0
                r["objects_scanned"] += 1
                continue
            stats.objects += 1
            size = obj.size or 0
            stats.bytes += size
            if len(stats.largest) < LARGEST:
                heapq.heappush(stats.largest, (size, scope.uri(obj.key)))
            elif size > stats.largest[0][0]:
                heapq.heapreplace(stats.largest, (size, scope.uri(obj.key)))
            r["objects_scanned"] += 1
            if r["objects_scanned"] % 1000 == 0:
                self.report()
            if obj.key in refs:
                stats.referenced += 1
                stats.referenced_bytes += size
                seen.add(obj.key)
                continue
            if obj.last_modified is None or obj.last_modified > self.cutoff:
                stats.young += 1
                continue
            batch.append((obj.key, obj.size or 0, obj.last_modified))
            if len(batch) >= self.batch_size:
                ok = self.flush(scope, stats, batch)
                batch = []
                if not ok:
                    return
        # After a listing failure the last batch is still counted, but not deleted.
        if batch:
            self.flush(scope, stats, batch, delete=stats.complete)
        if stats.complete:
            self.find_dangling(scope, stats, refs, seen)
        self.report()

    def flush(self, scope, stats, batch, delete=True) -> bool:
        """Re-check a batch of candidates, count the orphans, delete them; False to stop this store."""
        stats.candidates += len(batch)
        kept = set()
        if not self.recheck_broken:
            try:
                kept = self.recheck.referenced(scope, [k for k, _, _ in batch])
            except _RecheckFailed as e:
                self.recheck_broken = True
                self.refuse(str(e))
                self.failures.append(str(e))
        survivors = [item for i, item in enumerate(batch) if i not in kept]
        stats.kept_by_recheck += len(kept)
        self.result["kept_by_recheck"] += len(kept)
        stats.orphans += len(survivors)
        self.result["orphans"] += len(survivors)
        size = sum(s for _, s, _ in survivors)
        stats.orphan_bytes += size
        self.result["orphan_bytes"] += size
        for key, s, modified in survivors[: max(0, SAMPLE - len(self.result["sample"]))]:
            self.result["sample"].append({"uri": scope.uri(key), "size": s, "last_modified": modified.isoformat()})
        if not (delete and self.may_delete and survivors):
            return True

        keys = [k for k, _, _ in survivors]
        errors = scope.store.delete_many(keys)
        failed = {e.key for e in errors}
        stats.deleted += sum(1 for k in keys if k not in failed)
        self.result["deleted"] += sum(1 for k in keys if k not in failed)
        whole = [e for e in errors if e.code in ("StoreUnavailable", "BatchFailed")]
        for e in errors:
            if e.code not in ("StoreUnavailable", "BatchFailed"):
                self.error({"key": e.key, "uri": scope.uri(e.key), "error": f"{e.code}: {e.message}".strip(": ")})
        if whole:
            # The request itself failed: one error for the store, and stop
            # here rather than send more requests a failing store will refuse.
            self.store_failed(scope, stats, f"delete stopped, {len(whole)} object(s) not deleted: {whole[0].message}")
            return False
        return True

    def find_dangling(self, scope, stats, refs, seen):
        reported = set(self.result["dangling"])
        for key, uri in refs.items():
            if key in seen or uri in reported or not scope.inside(key):
                continue
            try:
                info = scope.store.head(key)
            except StoreUnavailable as e:
                self.store_failed(scope, stats, f"checking referenced objects stopped: {e}")
                return
            except StoreError as e:
                self.error({"uri": uri, "error": str(e)})
                continue
            if not info.exists:
                reported.add(uri)
                stats.dangling += 1
                self.result["dangling"].append(uri)
                BlobReference.objects.filter(uri=uri).update(
                    exists=False, checked_at=timezone.now(), check_error="", size=None, etag="", last_modified=None
                )

    def sweep_db(self, source):
        try:
            found = db_orphans(source, self.cutoff, dry_run=self.dry_run)
        except (SourceError, psycopg.Error, sqlite3.Error) as e:
            message = f"database orphans of {source.name}: {first_line(e)}"
            self.failures.append(message)
            self.error({"uri": redact(source.url), "error": message})
            return
        self.result["db_orphans"] += found["blobs"] + found["writes"]
        self.result["db_orphan_rows"][source.name] = {"blobs": found["blobs"], "writes": found["writes"]}
        if found["thread_ids"]:
            refresh_threads(source, found["thread_ids"])


def sweep(*, grace=None, force=False, dry_run=False, requested_by=None, origin="command", progress=None, sync=True,
          batch_size=BATCH, page_size=LIST_PAGE, now=None) -> dict:
    """Sweep orphan objects and database rows; the sweep_orphans contract's keys and more.

    `grace` is a timedelta or DURATION text (default SWEEP_GRACE; under 1h
    only with `force`, else SweepRefused). `progress(objects_scanned, 0)` is
    called as the listing streams. With `sync=False` the sources are not
    synced first, so nothing can be deleted (their syncs predate the listing):
    a preview from the mirror as it is. Besides the contract's keys the
    result holds `stores` (per-store counts), `refused` (why nothing was
    deleted), `warnings`, `db_orphan_rows` (per source), `kept_by_recheck`,
    `sample` (orphans), `errors_total` and `error` (None, or the run's error:
    a refusal in a real run, a store or source failure, objects not deleted).
    `batch_size` (at most 1000) candidates are re-checked and deleted
    together; `page_size` objects are asked for per S3 LIST request.
    `now` fixes the clock the grace counts back from (default: when the
    listing begins), as prune's `now` does.
    """
    grace = check_grace(grace, force)
    return _Sweep(grace, dry_run, sync, progress, requested_by, origin, batch_size, page_size, now).run()


def contract_result(result) -> dict:
    """The keys of the sweep_orphans --json contract, nothing else."""
    return {k: result[k] for k in CONTRACT_KEYS}


def run_sweep(*, grace=None, force=False, dry_run=False, requested_by=None, origin="command", run=None, sync=True,
              now=None):
    """sweep() under a Run (kind `sweep`): audit log, progress, one sweep at a time.

    Returns the finished Run (`result` as sweep() returns it, `error` its
    error). Raises SweepRefused for a bad grace (before any Run is made) and
    SweepBusy when another sweep is running. `run` is a queued Run to use
    (the page's); by default one is created.
    """
    grace = check_grace(grace, force)
    try:
        run = start_run(
            SWEEP, None, parameters={"grace": duration_text(grace), "force": bool(force)},
            requested_by=requested_by, origin=origin, dry_run=dry_run, run=run,
        )
    except RunBusy as e:
        raise SweepBusy(str(e)) from None
    try:
        result = sweep(grace=grace, force=force, dry_run=dry_run, requested_by=requested_by, origin=origin,
                       progress=throttled_progress(run), sync=sync, now=now)
    except Exception as e:
        finish_run(run, result={}, error=f"{type(e).__name__}: {e}")
        raise
    heartbeat(run, done=result["objects_scanned"], total=result["objects_scanned"])
    return finish_run(run, result=result, error=result["error"] or "")
