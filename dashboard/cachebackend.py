"""Django's RedisCache, degrading to no cache when the server is down or slow.

RedisCache raises on a refused connection or a timeout, which would turn a
cache outage into a 500 on every page that uses the cache. Here an operation
that fails answers as a miss would (`get` gives the default, `set` stores
nothing), the outage is logged once (one line when the server stops
answering, none while it stays away), counted in /metrics, and the server is
not asked again for RETRY_AFTER seconds, so that pages do not each wait for
the socket timeouts (dashboard.settings.cache_config) while it is away.
"""

import logging
import threading
import time

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache

from checkpoints.dburl import redact

log = logging.getLogger(__name__)

RETRY_AFTER = 15.0  # seconds the cache is skipped after a failure

# Django builds one cache object per thread: the outage state is per process.
_lock = threading.Lock()
_down_until: dict[str, float] = {}
_logged: set[str] = set()


def _metric():
    from dashboard.cachemetrics import CACHE_ERRORS

    return CACHE_ERRORS


def _errors():
    import redis

    return (redis.exceptions.RedisError, OSError)


class ResilientRedisCache(RedisCache):
    def _call(self, op, default, *args, **kwargs):
        where = self._servers[0] if self._servers else ""
        now = time.monotonic()
        if _down_until.get(where, 0.0) > now:
            _metric().labels("skipped").inc()
            return default
        try:
            result = getattr(super(), op)(*args, **kwargs)
        except _errors() as e:
            with _lock:
                _down_until[where] = time.monotonic() + RETRY_AFTER
                first = where not in _logged
                _logged.add(where)
            _metric().labels("failed").inc()
            if first:
                log.warning("cache at %s is unavailable (%s: %s): pages are served uncached, retrying every %d s",
                            _shown(where), type(e).__name__, e, RETRY_AFTER)
            return default
        if where in _logged:
            with _lock:
                _logged.discard(where)
                _down_until.pop(where, None)
            log.warning("cache at %s answers again", _shown(where))
        return result

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("add", False, key, value, timeout, version)

    def get(self, key, default=None, version=None):
        return self._call("get", default, key, default, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("set", None, key, value, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("touch", False, key, timeout, version)

    def delete(self, key, version=None):
        return self._call("delete", False, key, version)

    def get_many(self, keys, version=None):
        return self._call("get_many", {}, keys, version)

    def has_key(self, key, version=None):
        return self._call("has_key", False, key, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("set_many", list(data), data, timeout, version)

    def delete_many(self, keys, version=None):
        return self._call("delete_many", None, keys, version)

    def clear(self):
        return self._call("clear", False)


def _shown(url):
    try:
        return redact(url)
    except ValueError:
        return "the configured server"


def reset():
    """Forget outages (tests that start a cache server again)."""
    with _lock:
        _down_until.clear()
        _logged.clear()
