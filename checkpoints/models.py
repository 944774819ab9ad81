"""The mirror of LangGraph checkpoint stores.

Rows here are derived from the sources by `sync_checkpoints`; the sources stay
the truth. Byte figures are serialized bytes measured by SQL on the source
(docs/architecture.md §3), so each one can be checked against the source with SQL.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from checkpoints import jobs
from checkpoints.dburl import redact
from checkpoints.sources import registry
from checkpoints.sources.registry import kind_of


class Source(models.Model):
    # One per kind of store (checkpoints.sources.registry): a new kind needs no migration.
    KIND_CHOICES = registry.choices

    name = models.SlugField(unique=True, help_text="Short name used in URLs and commands.")
    url = models.TextField(help_text="Database URL of the LangGraph checkpoint store (read-only for syncing).")
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, help_text="Detected from the URL.")
    layout = models.CharField(max_length=32, blank=True, help_text="Schema layout detected at the last sync.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When the source was registered.")
    last_sync_started_at = models.DateTimeField(null=True, blank=True, help_text="Start of the last sync that finished.")
    last_sync_at = models.DateTimeField(null=True, blank=True, help_text="End of the last sync, successful or not.")
    last_sync_ok = models.BooleanField(null=True, help_text="Whether the last sync succeeded.")
    last_success_started_at = models.DateTimeField(
        null=True, blank=True, help_text="Start of the last successful sync (sweeps compare against it)."
    )
    last_error = models.TextField(blank=True, help_text="Error of the last sync, empty when it succeeded.")
    references_unknown = models.BooleanField(
        default=False,
        help_text="Some values could not be decoded (encrypted, corrupt): references may be missing.",
    )
    undecodable_values = models.BigIntegerField(default=0, help_text="Values the last sync could not decode.")
    sync_state = models.JSONField(default=dict, blank=True, help_text="Watermarks of the incremental sync.")
    enabled = models.BooleanField(
        default=True, help_text="Synced on schedule; a disabled source keeps its mirror and is skipped by syncs."
    )
    disabled_reason = models.CharField(max_length=300, blank=True, help_text="Why and by whom it was disabled.")
    registered_by_env = models.BooleanField(
        default=False,
        help_text="Registered (and kept up to date) by CHECKPOINT_DATABASE_URL; disabled when the variable is unset.",
    )
    CAPTURE_CHOICES = [("scan", "Scan"), ("logical", "Logical decoding")]
    capture = models.CharField(
        max_length=16, choices=CAPTURE_CHOICES, default="scan",
        help_text="How a sync finds what changed: scan the tables, or read a logical replication slot (PostgreSQL).",
    )

    class Meta:
        ordering = ["name"]
        permissions = [("manage_sources", "Can add, edit, disable and remove sources")]

    def __str__(self):
        return self.name

    @property
    def display_url(self):
        return redact(self.url)

    @staticmethod
    def repointed(url) -> dict:
        """The fields to set when a source is pointed at `url`, another store.

        Its kind follows the URL, and the sync's watermark is dropped: a
        watermark of the old store means nothing in the new one. Callers add
        what they know besides (the layout a check found, a cleared error).

        >>> Source.repointed("sqlite:///tmp/a.db")
        {'url': 'sqlite:///tmp/a.db', 'kind': 'sqlite', 'sync_state': {}}
        """
        return {"url": url, "kind": kind_of(url), "sync_state": {}}


class Thread(models.Model):
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="threads", help_text="Where the thread lives.")
    thread_id = models.TextField(help_text="LangGraph thread_id, exactly as stored; NUL shown as ␀ (checkpoints.ids.thread_key).")
    checkpoints = models.IntegerField(default=0, help_text="Checkpoint rows in all namespaces.")
    first_checkpoint_at = models.DateTimeField(null=True, blank=True, help_text="Time of the oldest checkpoint.")
    last_checkpoint_at = models.DateTimeField(null=True, blank=True, help_text="Time of the newest checkpoint.")
    latest_checkpoint_id = models.CharField(max_length=64, blank=True, help_text="Latest checkpoint in the root namespace.")
    logical_bytes = models.BigIntegerField(default=0, help_text="Serialized bytes of the latest root checkpoint's state.")
    stored_bytes = models.BigIntegerField(default=0, help_text="Serialized bytes of all of the thread's rows.")
    external_bytes = models.BigIntegerField(default=0, help_text="Bytes of the referenced external objects, when checked.")
    checkpoint_bytes = models.BigIntegerField(default=0, help_text="Serialized bytes of its checkpoint rows.")
    blob_bytes = models.BigIntegerField(default=0, help_text="Serialized bytes of its checkpoint_blobs rows, orphans included.")
    write_bytes = models.BigIntegerField(default=0, help_text="Serialized bytes of its write rows, orphans included.")
    blob_rows = models.IntegerField(default=0, help_text="checkpoint_blobs rows of the thread at the source, orphans included.")
    write_rows = models.IntegerField(default=0, help_text="Write rows of the thread at the source, orphans included.")
    tags = models.JSONField(default=dict, blank=True, help_text="Scalar user metadata of the latest root checkpoint.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "thread_id"], name="thread_unique_per_source")]
        indexes = [
            models.Index(fields=["source", "last_checkpoint_at"], name="thread_activity_idx"),
            models.Index(fields=["last_checkpoint_at"], name="thread_last_idx"),
            models.Index(fields=["stored_bytes"], name="thread_stored_idx"),
            models.Index(fields=["checkpoints"], name="thread_count_idx"),
            models.Index(fields=["logical_bytes"], name="thread_logical_idx"),  # the "Latest state" sort
            models.Index(fields=["thread_id"], name="thread_id_idx"),
            models.Index(fields=["source", "checkpoints", "stored_bytes"], name="thread_totals_idx"),
        ]

    def __str__(self):
        return f"{self.source.name}/{self.thread_id}"


class Tag(models.Model):
    """One (key, value) of a thread's tags: browsing by tag is an index lookup."""

    # The source is the thread's, copied so that filters by source need no
    # join. No foreign key constraint here nor on the other mirror rows
    # below: the sync is their only writer and deletes a thread's rows
    # itself before the thread, and the constraints' checks (one query per
    # row at commit) were a quarter of an initial sync of a million
    # checkpoints. tests/truth.py checks that no row is left dangling.
    source = models.ForeignKey(
        Source, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False,
        help_text="Source of the thread.",
    )
    # Indexed first in tag_unique_key_per_thread.
    thread = models.ForeignKey(
        Thread, on_delete=models.CASCADE, related_name="tag_rows", db_index=False, db_constraint=False,
        help_text="Tagged thread.",
    )
    key = models.CharField(max_length=200, help_text="Metadata key.")
    value = models.CharField(max_length=500, help_text="Value as text: strings as is, booleans true/false, numbers as JSON.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["thread", "key"], name="tag_unique_key_per_thread")]
        indexes = [
            # key+value first for browsing; thread first for a thread's tags
            # and for the EXISTS of each further filter.
            models.Index(fields=["key", "value", "thread"], name="tag_key_value_thread_idx"),
            models.Index(fields=["thread", "key", "value"], name="tag_thread_key_value_idx"),
        ]

    def __str__(self):
        return f"{self.key}:{self.value}"


class Checkpoint(models.Model):
    # Indexed first in checkpoint_source_time_idx; the thread's source (see Tag).
    source = models.ForeignKey(
        Source, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False,
        help_text="Source of the row.",
    )
    # Indexed first in checkpoint_unique_key.
    thread = models.ForeignKey(
        Thread, on_delete=models.CASCADE, related_name="checkpoint_rows", db_index=False, db_constraint=False,
        help_text="Thread.",
    )
    checkpoint_ns = models.TextField(blank=True, default="", help_text="Namespace: '' for the root graph, node:task for subgraphs.")
    checkpoint_id = models.CharField(max_length=64, help_text="uuid6 of the checkpoint.")
    parent_checkpoint_id = models.CharField(max_length=64, blank=True, default="", help_text="Parent checkpoint id, if any.")
    created_at = models.DateTimeField(help_text="Time encoded in the uuid6 id (UTC).")
    step = models.IntegerField(null=True, blank=True, help_text="metadata.step")
    origin = models.CharField(max_length=32, blank=True, help_text="metadata.source: input, loop, update or fork.")
    metadata = models.JSONField(default=dict, blank=True, help_text="Checkpoint metadata (secrets redacted on display).")
    row_bytes = models.BigIntegerField(default=0, help_text="Checkpoint row: checkpoint plus metadata, serialized.")
    blob_bytes = models.BigIntegerField(default=0, help_text="Blob rows named by its channel_versions.")
    write_bytes = models.BigIntegerField(default=0, help_text="Its pending-write rows.")
    write_count = models.IntegerField(default=0, help_text="Number of its pending-write rows.")
    logical_bytes = models.BigIntegerField(default=0, help_text="row + blobs + writes.")
    new_bytes = models.BigIntegerField(default=0, help_text="row + writes + blob rows its parent does not name.")
    problem = models.TextField(
        # A database default too: rows written by COPY without this column (older code, tools) get "".
        blank=True, default="", db_default="",
        help_text="What the last sync could not read of it (S3: its payload missing or corrupt), naming the object; "
                  "empty when it was read whole.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["thread", "checkpoint_ns", "checkpoint_id"], name="checkpoint_unique_key"
            )
        ]
        indexes = [
            models.Index(fields=["source", "created_at"], name="checkpoint_source_time_idx"),
            # Covers the size distribution of a time range without visiting rows.
            models.Index(fields=["created_at", "logical_bytes", "source"], name="checkpoint_time_size_idx"),
            models.Index(fields=["logical_bytes"], name="checkpoint_size_idx"),
        ]

    def __str__(self):
        return f"{self.thread_id}/{self.checkpoint_ns}/{self.checkpoint_id}"


class BlobReference(models.Model):
    """An external object named by checkpoint state or writes."""

    STORE_CHOICES = [("s3", "S3"), ("minio", "MinIO"), ("file", "File"), ("foreign", "Foreign")]

    uri = models.TextField(unique=True, help_text="The URI exactly as found in state.")
    store = models.CharField(
        max_length=16, choices=STORE_CHOICES,
        help_text="Configured store it falls in; foreign URIs are never HEADed, signed or swept.",
    )
    size = models.BigIntegerField(null=True, blank=True, help_text="Object size at the last check.")
    content_type = models.CharField(max_length=200, blank=True, help_text="Content type at the last check.")
    last_modified = models.DateTimeField(null=True, blank=True, help_text="Server LastModified at the last check.")
    etag = models.CharField(max_length=200, blank=True, help_text="ETag at the last check.")
    exists = models.BooleanField(null=True, help_text="Present (true), missing (false) or unchecked (null).")
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When the object was last HEADed.")
    check_error = models.TextField(blank=True, help_text="Why the last check could not tell.")
    first_seen_at = models.DateTimeField(auto_now_add=True, help_text="When a sync first found it.")

    class Meta:
        indexes = [models.Index(fields=["store", "exists"], name="blobref_state_idx")]

    def __str__(self):
        return self.uri

    @property
    def state(self):
        if self.store == "foreign":
            return "foreign"
        if self.exists is None:
            return "unchecked"
        return "present" if self.exists else "missing"

    @property
    def filename(self):
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


class ReferenceUse(models.Model):
    """A checkpoint (its state or its writes) naming a BlobReference."""

    # Indexed first in reference_use_idx. No constraints: see Tag.
    reference = models.ForeignKey(
        BlobReference, on_delete=models.CASCADE, related_name="uses", db_index=False, db_constraint=False,
        help_text="The object.",
    )
    # Indexed first in reference_use_place_idx.
    thread = models.ForeignKey(
        Thread, on_delete=models.CASCADE, related_name="reference_uses", db_index=False, db_constraint=False,
        help_text="Thread.",
    )
    checkpoint = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.CASCADE, related_name="reference_uses",
        db_constraint=False,
        help_text="Checkpoint whose state or writes name it; empty for a write whose checkpoint row is gone.",
    )
    location = models.TextField(
        help_text="Where: value:<channel> (inline or whole checkpoint), blob:<channel>@<version>, write:<task>/<idx>/<channel>."
    )

    class Meta:
        indexes = [
            models.Index(fields=["reference", "thread"], name="reference_use_idx"),
            # By place: a sync replaces the uses of the writes it read again and looks up those of the
            # blobs new checkpoints name again, by (thread, location). With the thread alone, each
            # lookup read every use of the thread, a random page apiece.
            models.Index(fields=["thread", "location"], name="reference_use_place_idx"),
        ]


class DailyUsage(models.Model):
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="usage", help_text="Source.")
    day = models.DateField(help_text="UTC date.")
    checkpoints = models.BigIntegerField(default=0, help_text="Checkpoints at the end of the day.")
    stored_bytes = models.BigIntegerField(default=0, help_text="Stored serialized bytes at the end of the day.")
    checkpoint_bytes = models.BigIntegerField(default=0, help_text="Checkpoint-row bytes at the end of the day.")
    blob_bytes = models.BigIntegerField(default=0, help_text="Blob-row bytes at the end of the day.")
    write_bytes = models.BigIntegerField(default=0, help_text="Write-row bytes at the end of the day.")
    threads = models.BigIntegerField(default=0, help_text="Threads at the end of the day.")
    external_bytes = models.BigIntegerField(default=0, help_text="Referenced external object bytes.")
    checkpoints_added = models.BigIntegerField(default=0, help_text="Checkpoints created that day.")
    bytes_added = models.BigIntegerField(default=0, help_text="New bytes of the checkpoints created that day.")
    threads_added = models.BigIntegerField(default=0, help_text="Threads whose first checkpoint is that day.")
    external_bytes_added = models.BigIntegerField(default=0, help_text="External bytes first referenced that day.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "day"], name="usage_unique_day")]
        ordering = ["day"]


class Run(models.Model):
    """Every sync, prune, sweep and source removal: the audit log and the progress bar."""

    KIND_CHOICES = jobs.KIND_CHOICES
    STATE_CHOICES = [("queued", "Queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")]

    kind = models.CharField(max_length=16, choices=KIND_CHOICES, help_text="What ran.")
    source = models.ForeignKey(Source, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs", help_text="Source, or none for all.")
    lock_key = models.CharField(max_length=200, help_text="kind:source; one running run per key.")
    parameters = models.JSONField(default=dict, blank=True, help_text="Parameters as given.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Who asked; empty for the schedule and the command line.",
    )
    origin = models.CharField(max_length=32, blank=True, help_text="command, page, schedule or api.")
    dry_run = models.BooleanField(default=False, help_text="Preview only, nothing changed.")
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default="queued", help_text="Lifecycle state.")
    progress_done = models.BigIntegerField(default=0, help_text="Units done.")
    progress_total = models.BigIntegerField(default=0, help_text="Units in all (0: unknown).")
    result = models.JSONField(default=dict, blank=True, help_text="Counts and bytes.")
    error = models.TextField(blank=True, help_text="Error text, empty on success.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was asked for.")
    started_at = models.DateTimeField(null=True, blank=True, help_text="When it began running.")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="When it ended.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of a running run.")
    worker_host = models.CharField(max_length=255, blank=True, help_text="Host name of the process that runs it.")
    worker_pid = models.IntegerField(null=True, blank=True, help_text="Process id of the process that runs it.")
    worker_pid_ns = models.CharField(
        max_length=64, blank=True, help_text="Pid namespace of that process: its pid is only checked from the same one.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["lock_key"], condition=Q(state="running"), name="one_running_run_per_key")
        ]
        indexes = [models.Index(fields=["kind", "state"], name="run_kind_state_idx")]
        permissions = [("run_maintenance", "Can run prune and orphan sweeps")]

    def __str__(self):
        return f"{self.kind} #{self.pk} ({self.state})"

    @property
    def seconds(self):
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class PruneMark(models.Model):
    """A thread that a prune changes at its source, recorded before the change commits there.

    The sync reads them: an interrupted prune's deletions are then expected
    (they do not trip the guard against a wrong URL, and its threads are
    re-read), and a sync leaves the threads of a running prune to that
    prune's own refresh of the mirror. A sync that mirrored a thread after
    its prune had ended deletes the mark (docs/architecture.md, "Runs that
    die, and prunes beside syncs").
    """

    # No constraints (see Tag): a mark must never fail the prune that writes it.
    source = models.ForeignKey(
        Source, on_delete=models.CASCADE, related_name="+", db_constraint=False, help_text="Source pruned.",
    )
    thread_id = models.TextField(help_text="LangGraph thread_id, as the mirror stores it.")
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False,
        help_text="The prune; empty when run without one (or its record was deleted).",
    )
    created_at = models.DateTimeField(auto_now_add=True, help_text="When the prune marked the thread.")

    class Meta:
        indexes = [models.Index(fields=["source", "thread_id"], name="prunemark_thread_idx")]

    def __str__(self):
        return f"{self.source_id}/{self.thread_id} (run {self.run_id})"


class SourceTotals(models.Model):
    """Running sums of a source's mirrored threads, kept by the writers of the mirror.

    Every batch that rewrites threads (a sync's, a prune's refresh, a
    removal's) adds its difference here in its own transaction, so the usage
    bookkeeping after a sync reads one row instead of summing the whole mirror
    (458 ms at 5 M checkpoints). The day_* fields count the checkpoints and
    threads of one UTC day, the day of the last write; the first write of a
    new day counts them again from the mirror. checkpoints.totals keeps it.
    """

    source = models.OneToOneField(Source, on_delete=models.CASCADE, primary_key=True, related_name="totals",
                                  help_text="Source.")
    threads = models.BigIntegerField(default=0, help_text="Mirrored threads.")
    checkpoints = models.BigIntegerField(default=0, help_text="Sum of Thread.checkpoints.")
    blob_rows = models.BigIntegerField(default=0, help_text="Sum of Thread.blob_rows.")
    write_rows = models.BigIntegerField(default=0, help_text="Sum of Thread.write_rows.")
    stored_bytes = models.BigIntegerField(default=0, help_text="Sum of Thread.stored_bytes.")
    checkpoint_bytes = models.BigIntegerField(default=0, help_text="Sum of Thread.checkpoint_bytes.")
    blob_bytes = models.BigIntegerField(default=0, help_text="Sum of Thread.blob_bytes.")
    write_bytes = models.BigIntegerField(default=0, help_text="Sum of Thread.write_bytes.")
    day = models.DateField(null=True, blank=True, help_text="The UTC day the day_* fields count.")
    day_checkpoints = models.BigIntegerField(default=0, help_text="Checkpoints created on that day or later.")
    day_bytes = models.BigIntegerField(default=0, help_text="Their new bytes.")
    day_threads = models.BigIntegerField(default=0, help_text="Threads whose first checkpoint is on that day.")

    def __str__(self):
        return f"totals of {self.source_id}"
