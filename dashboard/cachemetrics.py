"""Counters of the cache (dashboard.snapshot_cache, dashboard.cachebackend), for /metrics.

prometheus_client counters in a registry of their own, which the /metrics
view appends to its output (dashboard.metrics): per process, like every
counter of a web process.
"""

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

# result: hit or miss; cache: values (decoded checkpoint values), previews (object contents) or
# html (the checkpoint page's rendered values and content, dashboard.fragments) or objects (what a
# source read of its immutable objects: the S3 store's write objects and manifests, by key and ETag).
LOOKUPS = Counter(
    "checkpoint_console_snapshot_cache_lookups_total",
    "Lookups in the cache of decoded checkpoint values and object previews, by result.",
    ["cache", "result"],
    registry=REGISTRY,
)
# outcome: failed (the server refused, or did not answer within the timeouts) or
# skipped (not asked: it failed less than RETRY_AFTER seconds ago).
CACHE_ERRORS = Counter(
    "checkpoint_console_cache_errors_total",
    "Cache operations not done because the cache server was down or slow; pages were served uncached.",
    ["outcome"],
    registry=REGISTRY,
)
