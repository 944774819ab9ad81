"""The cache of hot checkpoints: decoded values, and previews of objects.

A checkpoint never changes once written, so its decoded values (channels,
the parent's values for the diff, DeltaChannel reconstructions) are kept in
Django's cache (CACHE_URL; the local-memory cache by default) for
SNAPSHOT_CACHE_TTL. Its pending writes are not: writes arrive after their
checkpoint, so every view reads them fresh, in the same request that checks
the checkpoint is still at the source.

Keys are the sha256 of their parts (ids may hold newlines or NULs, and
memcached-style key rules must hold). A value's key names the source (name
and URL), thread, namespace and checkpoint id, the decode options, and the
mirror row's primary key: a sync or prune that removes a checkpoint removes
its mirror row, and a row written again gets a new key, so a removed
checkpoint's values are never served, in any process, whether the cache is
per process or shared. A view that finds the checkpoint gone from the source
deletes its key at once.

Object previews are keyed by URI and ETag (storage.previews): an object
replaced or deleted gets a new ETag, or none, and so is read again. So are
what a source read of its own immutable objects (OBJECTS: the S3 store's
write objects and manifests, under key, ETag and size), so that the fresh
read of an S3 checkpoint's writes is one listing.

Hits and misses are counted for /metrics (dashboard.cachemetrics); a cache
server that is down or slow costs a miss, never an error
(dashboard.cachebackend).
"""

import hashlib
import json
import logging
import pickle

from django.conf import settings
from django.core.cache import cache

from dashboard.cachemetrics import LOOKUPS
from dashboard.source_values import ReadError, read_values, read_writes

log = logging.getLogger(__name__)

KEY_VERSION = "1"  # bumped when what is stored changes shape
# Entries larger than this (pickled) are not cached: a few huge checkpoints
# must not push every other one out, nor fill the server's memory.
MAX_ENTRY_BYTES = 16_000_000


def key_for(kind, *parts) -> str:
    """A cache key from any parts, safe for every backend.

    >>> len(key_for("values", "src", "thread\\nwith\\x00odd", "", "1ef"))
    81
    >>> key_for("values", "a", "b") != key_for("values", "a\\x00b") != key_for("values", "ab")
    True
    """
    digest = hashlib.sha256(json.dumps([str(p) for p in parts], ensure_ascii=True).encode()).hexdigest()
    return f"console:{kind}:{KEY_VERSION}:{digest}"


def values_key(source, checkpoint, *, limit, aes_key=None, digest=False) -> str:
    key_hash = hashlib.sha256(aes_key.encode()).hexdigest() if aes_key else ""
    return key_for(
        "values", source.name, source.url, checkpoint.thread.thread_id, checkpoint.checkpoint_ns,
        checkpoint.checkpoint_id, checkpoint.pk, limit, key_hash, bool(digest),
    )


def cached_values_key(source, checkpoint, **options) -> str:
    """The key `read_values_cached` keeps the checkpoint's values under (every kind's: a checkpoint,
    once written, never changes in any store)."""
    return values_key(source, checkpoint, **options)


def ttl_seconds() -> int:
    return max(1, int(settings.SNAPSHOT_CACHE_TTL.total_seconds()))


def get(kind, key):
    """The cached object, or None; counted as a hit or a miss."""
    value = _loads(cache.get(key))
    count(kind, value is not None)
    return value


def fetch(keys) -> dict:
    """{key: cached object} of those of `keys` the cache holds, in one request to it (a shared cache
    is a round trip per request); not counted: the caller says what was a hit (`count`)."""
    found = cache.get_many(list(keys)) if keys else {}
    out = {}
    for key, raw in found.items():
        value = _loads(raw)
        if value is not None:
            out[key] = value
    return out


def count(kind, hit):
    LOOKUPS.labels(kind, "hit" if hit else "miss").inc()


def _loads(raw):
    if raw is None:
        return None
    try:
        return pickle.loads(raw)
    except Exception:  # written by another version of the console: a miss
        return None


def _dumps(value):
    raw = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return raw if len(raw) <= MAX_ENTRY_BYTES else None


def put(key, value):
    raw = _dumps(value)
    if raw is not None:
        cache.set(key, raw, ttl_seconds())


def forget(key):
    cache.delete(key)


_UNFETCHED = object()


def read_values_cached(source, checkpoint, *, limit, aes_key=None, digest=False, fetched=_UNFETCHED):
    """dashboard.source_values.read_values, through the cache; pending writes always read fresh.

    `fetched`: what `fetch` found under the values key (the page fetches it with its fragments, in
    one request), instead of asking the cache again.
    """
    key = values_key(source, checkpoint, limit=limit, aes_key=aes_key, digest=digest)
    values = get("values", key) if fetched is _UNFETCHED else fetched
    if fetched is not _UNFETCHED:
        count("values", values is not None)
    if values is not None:
        try:
            values.writes = read_writes(source, checkpoint, limit=limit, aes_key=aes_key, digest=digest, memo=OBJECTS)
        except ReadError as e:
            if "no longer in the source" in str(e):
                forget(key)
            raise
        return values
    values = read_values(source, checkpoint, limit=limit, aes_key=aes_key, digest=digest, memo=OBJECTS)
    writes, values.writes = values.writes, []
    put(key, values)
    values.writes = writes
    return values


class _PreviewCache:
    """storage.previews' cache: previews of objects under their URI and ETag (key parts from there)."""

    def get(self, parts):
        return get("previews", key_for(*parts))

    def put(self, parts, preview):
        put(key_for(*parts), preview)


PREVIEWS = _PreviewCache()


class _ObjectMemo:
    """The sources' cache of stored objects that never change under their name and version (the S3
    store's write objects and manifests, keyed by key, ETag and size: SourceKind.read_writes's `memo`).

    Kept beside the values (same TTL, same server); a cache that is down makes every object read again.
    """

    def get_many(self, parts_list):
        keys = {key_for("objects", *parts): parts for parts in parts_list}
        found = fetch(keys)
        for key in keys:
            count("objects", key in found)
        return {keys[key]: value for key, value in found.items()}

    def put_many(self, mapping):
        data = {}
        for parts, value in mapping.items():
            raw = _dumps(value)
            if raw is not None:
                data[key_for("objects", *parts)] = raw
        if data:
            cache.set_many(data, ttl_seconds())


OBJECTS = _ObjectMemo()
