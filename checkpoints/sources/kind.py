"""The interface every kind of checkpoint store implements (docs/architecture.md, "Source kinds").

A kind (PostgreSQL, SQLite, ...) is one package under `checkpoints/sources/`
whose `KIND` implements `SourceKind`; `checkpoints.sources.registry` picks it
by `Source.kind`, or by the URL's scheme for a URL not yet saved. Nothing
outside `checkpoints/sources/` reads or writes a store's own data: the sync
reads through a `Reader`, the checkpoint page through `read_values`, prune
through a `Maintenance`, the sweep through `orphans` and a `Recheck`. What the
rows mean (selection, policy, orchestration, decoding) stays with the callers;
what the rows are, how they are read consistently and deleted safely, is the
kind's.

Callers reach a kind through the registry: `open_reader` for the sync,
`registry.for_source(source).read_values` for the checkpoint page,
`registry.maintenance_for` for prune, `registry.recheck_for` and
`checkpoints.orphans.db_orphans` for the sweep. Where a page or a job behaves
differently by kind, it asks one of the kind's capabilities (`shares_blobs`,
`logical_capture`, `layout_reads_data`), never its name.

Errors: a store that cannot be opened or read raises `SourceError` (its
message names the store, never a password); `read_values` raises `ReadError`.
Maintenance methods let driver errors through: prune decides which to retry by
asking `Maintenance.retryable`.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol


class Reader(Protocol):
    """A read-only view of a store in one consistent snapshot, for a sync; a context manager.

    Opening never creates anything. `layout()` refuses a store that is not
    LangGraph's or whose layout the console cannot read. Sizes are the
    contract's (docs/architecture.md §3), computed at the store; values are
    fetched only where they may hold a blob URI (and scanned in windows when
    larger than `checkpoints.sources.WHOLE_VALUE_LIMIT`).
    """

    kind: str

    def __enter__(self) -> "Reader": ...

    def __exit__(self, *exc) -> bool: ...

    def layout(self) -> str:
        """The layout's name (`standard`), or SourceError saying why the store cannot be read."""

    def space(self) -> dict:
        """What the store holds on disk and whether anything reclaims deleted rows' space (`kind` names the shape)."""

    def watermark(self) -> dict:
        """This snapshot's position, JSON-able: the next sync's `since`."""

    def unchanged_since(self, since: dict, now: dict) -> bool:
        """True only when nothing can have changed since `since` (exact; False when unsure)."""

    def changed_thread_ids(self, since: dict, now: dict) -> set | None:
        """Thread ids with rows written since `since` (late commits included); None: compare everything."""

    def totals(self) -> dict:
        """{"checkpoints", "blobs", "writes"}: row counts of the whole store."""

    def thread_ids(self) -> list:
        """Every thread id with a checkpoint."""

    def thread_counts(self, table: str) -> dict:
        """{thread_id: rows} of "checkpoints", "blobs" or "writes"."""

    def read_threads(self, thread_ids: Iterable, since: dict | None = None, now: dict | None = None) -> list:
        """A `ThreadRows` per id: every row of the thread, `fresh` telling rows written since `since`."""


class Maintenance(Protocol):
    """What prune does to a store: per-thread transactions that read, select and delete.

    Everything `checkpoints.prune.prune()` calls, in its order: `connect()`,
    `disk_bytes()`, `candidates()`, then `prune_thread()` per candidate (on up
    to `workers` connections, retried while `retryable()`), after a real run
    with `vacuum` `flush_stats()`, `space()`, `vacuum()`, `space()`, then
    `disk_bytes()` and `release()`. The rows exchanged are
    `checkpoints.prune_rows`' (ThreadSnapshot in, Selection out); the policy
    stays with prune, which hands in `choose`.
    """

    workers: int  # connections prune may use at once, one thread at a time on each

    def connect(self):
        """A connection for writing (never creating the store); SourceError when it cannot be opened."""

    def release(self, conn) -> None:
        """Close a connection `connect()` opened."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether a thread that failed with `exc` may be tried again from a fresh read."""

    def broken(self, conn) -> bool:
        """Whether `conn` is unusable (prune stops instead of moving on to the next thread)."""

    def candidates(self, conn, floor: str, only: Iterable | None = None) -> list:
        """Sorted thread ids with a checkpoint id below `floor` (a uuid6 bound), within `only` when given."""

    def prune_thread(self, conn, thread_id, choose: Callable, dry_run: bool, *, metadata: bool = False):
        """Read the thread as a `ThreadSnapshot`, call `choose(snapshot)` for a `Selection` (or None) and,
        unless `dry_run` or the selection is skipped, delete exactly it, all in one transaction that sees
        what it deletes (S3, which has no transactions: re-read and compared right before deleting); return
        the selection. `metadata`: the snapshot must carry the latest root checkpoint's metadata (tag
        filters). Rows that changed between the read and the delete raise `prune_rows.Conflict` (retryable);
        deleted counts that differ from the selection otherwise roll back and raise `PruneMismatch`."""

    def disk_bytes(self, conn) -> int:
        """What the store's checkpoint data takes on disk (tables, the file, or stored objects), in bytes."""

    def flush_stats(self, conn) -> None:
        """Make this connection's deletes count in `space()` (PostgreSQL's statistics)."""

    def space(self, conn) -> dict:
        """What a vacuum changes (dead rows or free pages, bytes)."""

    def vacuum(self, conn) -> None:
        """Reclaim deleted rows' space without blocking the agents for long."""


class Recheck(Protocol):
    """A sweep's last look at a store before it deletes objects, opened on first use and kept across batches.

    The sweep (storage/sweep.py `_Recheck`) gets one per source from
    `registry.recheck_for(source)`, and searches what `values()` yields for
    the batch's candidate keys itself: a kind only knows how to read its values.
    """

    def values(self, markers: list, since: dict | None) -> Iterator[bytes]:
        """Each stored value (checkpoint, blob or write) that may contain one of `markers` (bytes), read in a
        fresh snapshot and streamed: memory stays flat. Values may be skipped only where no marker occurs.
        Raises SourceError, once the values are yielded (or as soon as it meets one), when values written
        since the sync's watermark `since` (None: any) are encrypted, hence unsearchable: the batch must
        not be deleted. Driver errors pass through; the sweep then closes this Recheck and stops deleting."""

    def close(self) -> None: ...


class SourceKind(Protocol):
    """One kind of LangGraph checkpoint store: everything the console does with the store's own data."""

    name: str  # Source.kind, as in checkpoints.sources.registry.KINDS
    # Capabilities: what callers ask instead of comparing `name`.
    shares_blobs: bool  # checkpoints share stored values (blob rows), so new bytes can differ from logical bytes
    logical_capture: bool  # the sync can follow the store by logical decoding (checkpoints/sources/capture.py)
    layout_reads_data: bool  # `Reader.layout()` already reads the store's data (a check needs no `totals()`)

    def check_url(self, url: str) -> None:
        """ValueError with what to write instead, for a URL of this scheme this kind cannot open."""

    def reader(self, url: str, *, connect_timeout: int = 10) -> Reader:
        """A read-only reader (a context manager: nothing is opened before `with`)."""

    def read_values(self, url: str, key: tuple, parent: str | None, *, limit: int, aes_key: bytes | None = None,
                    digest: bool = False, memo=None):
        """One checkpoint's channel values and pending writes, with its parent's for the diff, read in one
        snapshot and decoded safely (`checkpoints.sources.values.CheckpointValues`); ReadError when the
        store cannot be read or no longer holds it. `key` is the store's (thread_id, checkpoint_ns,
        checkpoint_id); values over `limit` bytes come as their size; `digest` adds bytes' sha256.
        `memo`: as in `read_writes`."""

    def read_writes(self, url: str, key: tuple, *, limit: int, aes_key: bytes | None = None, digest: bool = False,
                    memo=None) -> list:
        """The checkpoint's pending writes, read now (they may arrive after it; the page caches the rest),
        decoded as in `read_values`; ReadError when the store no longer holds the checkpoint.

        `memo` (optional): a cache of what was read of stored objects that are immutable under their
        name and version, `get_many([parts]) -> {parts: value}` and `put_many({parts: value})`
        (dashboard.snapshot_cache.OBJECTS). Kinds that read such objects (the S3 store: write objects
        and manifests, keyed by key, ETag and size) may keep them there; the others ignore it."""

    def maintenance(self, url: str) -> Maintenance:
        """The prune side of the store (nothing is opened before `connect()`)."""

    def orphans(self, url: str, floor: str, *, dry_run: bool) -> dict:
        """Count (dry run) or delete the store's orphan rows older than `floor` (a uuid6 bound), sparing
        DeltaChannel threads and threads active since it; {"blobs", "writes", "thread_ids"} (touched
        threads, real run only). The count and the delete select the same rows. Refuses (SourceError) a
        layout it cannot read. `checkpoints.orphans.db_orphans` calls it for the sweep."""

    def recheck(self, url: str) -> Recheck:
        """A Recheck of the store, opened read-only (nothing is opened before its first `values()`)."""

    def space_report(self, found: dict) -> dict:
        """The reader's `space()` report as the sync stored it, ready for the pages: its figures plus
        `warnings` (what the operator should fix), `template` (the maintenance page's panel) and
        `brief_template` (the sources page's cell), partials under templates/space/."""

    def owned_prefixes(self, url: str) -> tuple | None:
        """(bucket, key prefixes) of objects that are the store's own data (an S3 store's), which a sweep
        of a blob store never deletes; None for a store that keeps nothing in a bucket."""


class Lifecycle(Protocol):
    """A store whose bucket expires and archives its objects itself (the S3 kind): an optional
    capability, offered by a kind through `lifecycle(url) -> Lifecycle`; kinds without it have no
    such method (`checkpoints.lifecycle` refuses them)."""

    def plan(self, policy: dict) -> dict:
        """What applying the saver's lifecycle `policy` (checkpoints.s3layout.lifecycle_rules' options)
        would do: {"bucket", "prefix", "before", "after" (the saver's rules), "added", "removed",
        "changed", "unchanged" (rule IDs), "other_rules" (rules of other prefixes, kept), "applied"};
        reads only. SourceError when the bucket cannot be read or the policy is bad."""

    def apply(self, policy: dict) -> dict:
        """Read the bucket's configuration again and put it with the saver's rules replaced; the same
        report as `plan`, "applied" true."""
