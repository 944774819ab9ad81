"""The only code that reads or writes a LangGraph store's own data: one package per kind.

Each kind (postgres/, sqlite/) implements `kind.SourceKind`; `registry`
picks one by `Source.kind`, or by the scheme of a URL not yet saved. This
module holds what every kind shares: the rows a sync reads, the errors.

A reader opens the source read-only, detects its layout (never guesses,
never creates tables) and reads whole threads in batches within one
consistent snapshot. Sizes come from SQL on the source (docs/architecture.md
§3); values are only fetched where they may hold a blob URI, so a sync never
drags every blob of a large database through Python.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

from checkpoints.dburl import redact


# Values larger than this are never fetched whole: the reader gets their size,
# then scans them for references in windows of SCAN_WINDOW bytes read from the
# database (checkpoints.uris.scan_windows), so a sync's memory stays flat
# whatever the values' sizes. Encrypted values are the exception (ciphertext
# is decrypted whole, up to the sync's REFERENCE_DECODE_LIMIT).
WHOLE_VALUE_LIMIT = 1_000_000
SCAN_WINDOW = 4 * 1024 * 1024


class ScannedURIs(frozenset):
    """A row's `data` when the reader scanned the value in windows: the URIs found in it."""


class SourceError(Exception):
    """A source that cannot be read: down, not LangGraph, or an unsupported layout."""


def first_line(error) -> str:
    """The first line of an exception's message (drivers add hints and context lines), or its type.

    >>> first_line(ValueError("bad value\\nDETAIL: more")), first_line(KeyError())
    ('bad value', 'KeyError')
    """
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# Named tuples whose fields follow the readers' SELECT lists: PostgreSQL's
# driver builds them straight from each result row (see
# postgres.reader._rows_as), with no Python call per row.
class CheckpointRow(NamedTuple):
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    row_bytes: int
    metadata: object  # decoded JSON (dict normally), None when unreadable; JSON text on PostgreSQL
    channel_versions: object  # dict on PostgreSQL; None on SQLite (no blob table)
    ts: str | None
    # Values that may hold blob URIs: PostgreSQL inline channel_values (a dict)
    # or SQLite's whole serialized checkpoint (type, bytes); None otherwise.
    inline_values: object = None
    value_type: str | None = None
    value_data: bytes | None = None  # or ScannedURIs, for a value too large to fetch whole
    fresh: bool = True
    # PostgreSQL: `metadata` is its JSON text, and SQL read these two from it
    # (the step when a JSON number, the source when a string).
    meta_step: str | None = None
    meta_source: str | None = None
    metadata_is_text: bool = False  # True on PostgreSQL, whose reader passes the JSON text on


class TypedValues(dict):
    """A checkpoint's channel values as the saver serialized them: {channel: (type, bytes)}.

    The S3 store keeps each checkpoint's values in its own payload; the sync
    searches each for references like a blob row.
    """


class BlobRow(NamedTuple):
    thread_id: str
    checkpoint_ns: str
    channel: str
    version: str
    type: str | None
    size: int
    data: bytes | None = None  # fetched only when it may hold a URI or is encrypted; ScannedURIs when large
    fresh: bool = True


class WriteRow(NamedTuple):
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    idx: int
    channel: str
    type: str | None
    size: int
    data: bytes | None = None  # as BlobRow.data
    fresh: bool = True


@dataclass
class ThreadRows:
    thread_id: str
    checkpoints: list = field(default_factory=list)
    blobs: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    # What could not be read of a checkpoint, by (checkpoint_ns, checkpoint_id) (S3: a payload
    # missing or corrupt): it is mirrored from what could be read and marked with this.
    problems: dict = field(default_factory=dict)


@dataclass
class AppendedRows:
    """What mirroring a thread that only gained rows needs (change capture; see sync._apply_appended).

    `checkpoints`: the inserted checkpoints the snapshot sees; `parent_versions`: the channel
    versions of their parents, by (ns, checkpoint_id); `blobs`: the blob rows they name; `writes`:
    every write of them and of the checkpoints that gained writes. Values are fetched as for rows
    written since the last sync (when they may hold a URI): none of these rows was mirrored whole.
    """

    thread_id: str
    checkpoints: list = field(default_factory=list)
    parent_versions: dict = field(default_factory=dict)
    blobs: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)


@dataclass
class DeltaRows:
    """The stored rows behind DeltaChannel values (checkpoints.delta), read by a per-kind reader.

    `chains[ch]` lists the checkpoint ids of the walk from the start
    checkpoint along its parents, newest first, ending at the one that stores
    a value for `ch` (its seed) or at the first checkpoint of the thread.
    `seeds[ch]` = (checkpoint_id, type, size, data); `writes` rows are
    (checkpoint_id, task_id, task_path, idx, channel, type, size, data); data
    is None when larger than the value limit. `problems[ch]` says why a
    channel's history could not be read whole.
    """

    chains: dict = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)
    writes: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)


def open_reader(source, *, connect_timeout: int = 10):
    """A read-only reader (use it as a context manager) of a Source, by its kind, or of a URL, by its scheme."""
    from checkpoints.sources import registry

    try:
        if isinstance(source, str):
            return registry.for_url(source).reader(source, connect_timeout=connect_timeout)
        kind = registry.for_source(source)
        kind.check_url(source.url)
        return kind.reader(source.url, connect_timeout=connect_timeout)
    except ValueError as e:
        raise SourceError(str(e)) from None


__all__ = ["WHOLE_VALUE_LIMIT", "SCAN_WINDOW", "ScannedURIs", "TypedValues", "SourceError", "first_line", "CheckpointRow", "BlobRow",
           "WriteRow", "ThreadRows", "AppendedRows", "DeltaRows", "open_reader", "redact"]
