"""One S3 checkpoint's values for display (SourceKind.read_values) and its pending writes (read_writes).

The S3 client is built once per process and settings: building one costs
tens of milliseconds, more than the requests of a page view.
"""

import os
import threading

from checkpoints.decode import safe_loads
from checkpoints.s3layout import S3CheckpointError
from checkpoints.sources import SourceError, first_line
from checkpoints.sources.s3 import reader as s3reader
from checkpoints.sources.s3.reader import S3Reader, read_checkpoint
from checkpoints.sources.values import CheckpointValues, ReadError, Value, as_object, decode_write

# Each checkpoint keeps all its values in its own payload object: it is read
# whole up to this many times the per-value display limit.
S3_WHOLE_FACTOR = 8
GONE = "this checkpoint is no longer in the source (pruned or deleted since the last sync)"


_clients = {}  # (process id, S3Settings) -> botocore client (thread-safe)
_clients_lock = threading.Lock()


def _client(settings):
    from checkpoints.s3client import build_client

    key = (os.getpid(), settings)
    with _clients_lock:
        client = _clients.get(key)
    if client is None:
        try:
            client = build_client(settings)
        except Exception as e:  # noqa: BLE001 - botocore's errors name no common base
            raise ReadError(f"cannot open s3://{settings.bucket}/{settings.prefix}: {first_line(e)}") from None
        with _clients_lock:
            if len(_clients) > 16:  # settings changed many times (tests): drop old clients
                _clients.clear()
            client = _clients.setdefault(key, client)
    return client


def _reading(url, read):
    """`read(reader)` on the store at `url`; ReadError naming the object when S3 fails."""
    from checkpoints.sources.s3 import settings_for

    settings = settings_for(url)
    try:
        with S3Reader(url, settings, client=_client(settings), workers=1) as reader:
            return read(reader)
    except (SourceError, S3CheckpointError) as e:
        raise ReadError(first_line(e)) from None


def _s3_checkpoint(url, key, limit, *, with_writes, memo=None):
    """The stored checkpoint (checkpoints.sources.s3.reader.read_checkpoint); ReadError naming the object."""
    return _reading(url, lambda reader: read_checkpoint(reader, key, limit=limit, with_writes=with_writes, memo=memo))


def read_values(url, key, parent, *, limit, aes_key=None, digest=False, memo=None) -> CheckpointValues:
    """A checkpoint of an S3 store: its payload's values, its writes, and its parent's values for the diff.

    Each checkpoint keeps all its values in its own payload object, so a
    payload above S3_WHOLE_FACTOR times the display limit is not fetched
    (sizes only). DeltaChannel values are shown as stored, not replayed.
    `memo`: what read_writes may reuse (checkpoints.sources.s3.reader.read_writes).
    """
    thread, ns, cid = key
    whole = limit * S3_WHOLE_FACTOR
    found = _s3_checkpoint(url, key, whole, with_writes=True, memo=memo)
    if found is None:
        raise ReadError("this checkpoint is no longer in the source (pruned or deleted since the last sync)")
    out = CheckpointValues()
    out.channels, out.versions, out.channel_sizes = _s3_channels(found, limit, aes_key, digest)
    if parent:
        try:
            before = _s3_checkpoint(url, (thread, ns, parent), whole, with_writes=False)
        except ReadError:
            before = None
        if before is not None:
            out.parent_channels, out.parent_versions, out.parent_sizes = _s3_channels(before, limit, aes_key, digest)
    out.writes = [decode_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in found.writes]
    if found.manifest.get("delta"):
        out.note = "DeltaChannel values are shown as this checkpoint stores them (not replayed from older checkpoints)."
    return out


def _s3_channels(found, limit, aes_key, digest):
    versions = as_object(found.manifest.get("channel_versions"))
    channels = []
    for channel, (type_, data) in sorted(found.values.items()):
        size = found.sizes.get(channel)
        if data is None or (size or 0) > limit:
            value = {"__truncated__": True, "type": type_, "size": size}
        else:
            value = safe_loads(type_, data, limit=limit, aes_key=aes_key, clip=False, digest=digest)
        channels.append(Value(channel, type_ or "", size, value, str(versions.get(channel, ""))))
    return channels, versions, {ch: s for ch, s in found.sizes.items() if s is not None}


def read_writes(url, key, *, limit, aes_key=None, digest=False, memo=None) -> list:
    """SourceKind.read_writes: the checkpoint's pending writes, read now: a listing, and the write objects
    (and the manifest, for an inline payload) that `memo` does not hold under the version listed."""
    writes = _reading(url, lambda reader: s3reader.read_writes(reader, key, limit=limit, memo=memo))
    if writes is None:
        raise ReadError(GONE)
    return [decode_write(task, idx, channel, t, s, d, limit, aes_key, digest) for task, idx, channel, t, s, d in writes]
