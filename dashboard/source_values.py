"""Read one checkpoint's values from its source, read-only, for the checkpoint page.

The mirror keeps sizes and metadata, not values: the page reads the one
checkpoint (and its parent, for the diff) from the store itself, through its
kind (`checkpoints.sources.registry`; each kind's `read_values`). Values are
decoded with the safe decoder (no import, no unpickling), and a value larger
than the limit is never fetched whole: the store returns its size only.
"""

from dataclasses import dataclass, fields

from checkpoints.ids import source_thread_id
from checkpoints.sources import registry
from checkpoints.sources.values import DELTA_READ_FACTOR, DeltaSource, ReadError, Value  # noqa: F401 - the page's names
from checkpoints.sources.values import CheckpointValues as StoredValues
from dashboard.value_diff import diff_values


@dataclass
class CheckpointValues(StoredValues):
    def diff(self):
        """What changed since the parent (dashboard.value_diff), or None when the parent could not be read."""
        if self.parent_channels is None:
            return None
        return diff_values(
            {v.name: v.value for v in self.parent_channels},
            {v.name: v.value for v in self.channels},
            self.parent_sizes,
            self.channel_sizes,
        )


def read_values(source, checkpoint, *, limit, aes_key=None, digest=False, memo=None) -> CheckpointValues:
    """Values, writes and channel versions of a mirrored checkpoint; ReadError if the source cannot tell.

    `digest` adds the sha256 of every bytes value (the state API names bytes by it); `memo`: the
    kind's cache of immutable stored objects (SourceKind.read_writes).
    """
    # The source's own id: the mirror escapes NUL (checkpoints.ids.thread_key).
    key = (source_thread_id(checkpoint.thread.thread_id), checkpoint.checkpoint_ns, checkpoint.checkpoint_id)
    parent = checkpoint.parent_checkpoint_id or None
    found = _kind(source).read_values(source.url, key, parent, limit=limit, aes_key=aes_key, digest=digest, memo=memo)
    return CheckpointValues(**{f.name: getattr(found, f.name) for f in fields(StoredValues)})


def read_writes(source, checkpoint, *, limit, aes_key=None, digest=False, memo=None) -> list:
    """The pending writes of a mirrored checkpoint, read now (they arrive after it); ReadError if it is gone.

    What dashboard.snapshot_cache adds to the values it kept: a checkpoint
    never changes, its writes may.
    """
    key = (source_thread_id(checkpoint.thread.thread_id), checkpoint.checkpoint_ns, checkpoint.checkpoint_id)
    return _kind(source).read_writes(source.url, key, limit=limit, aes_key=aes_key, digest=digest, memo=memo)


def _kind(source):
    try:
        return registry.for_source(source)
    except ValueError as e:
        raise ReadError(str(e)) from None
