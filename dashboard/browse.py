"""Browsing threads by tag: filters, sorting and facets, all in SQL.

Every tag filter is an EXISTS on the Tag rows (index on (key, value), and the
unique (thread, key) index for the per-thread probe), never a scan of the
JSON tags: the planner either walks threads in the requested order probing
tags, or starts from the rarest (key, value) and sorts the few matches.
"""

import hashlib
import json
import math

from django.core.cache import cache
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Exists, F, OuterRef

from django.utils.functional import cached_property

from checkpoints.models import Source, Tag, Thread
from checkpoints.tags import split_tag
from dashboard.planner import estimated_rows, table_rows

# The orders a page or the API may ask for, by name: (label, column, natural
# direction). Only these names reach order_by (never a column named by the
# request). Each column has a B-tree index, scanned forwards or backwards, so
# "newest first, 50 rows" stops after 50 index entries instead of sorting
# every match; the id only breaks ties.
SORTS = {
    "thread": ("Thread", "thread_id", "asc"),
    "checkpoints": ("Checkpoints", "checkpoints", "desc"),
    "logical": ("Latest state", "logical_bytes", "desc"),
    "stored": ("Stored", "stored_bytes", "desc"),
    "activity": ("Last activity", "last_checkpoint_at", "desc"),
}
DEFAULT_SORT = "activity"
DIRECTIONS = ("asc", "desc")
MAX_FILTERS = 10


class BadFilter(ValueError):
    pass


def parse_tag_filters(texts) -> list[tuple[str, str]]:
    """`key:value` texts as (key, value) pairs, split at the first `:` or `=`, deduplicated.

    >>> parse_tag_filters(["tenant:acme", "url:http://x:1", "tenant=acme", ""])
    [('tenant', 'acme'), ('url', 'http://x:1')]
    >>> parse_tag_filters(["acme"])
    Traceback (most recent call last):
    ...
    dashboard.browse.BadFilter: tag filter 'acme' is not key:value
    """
    pairs = []
    for text in texts:
        if not text.strip():
            continue
        try:
            pair = split_tag(text)
        except ValueError:
            raise BadFilter(f"tag filter {text!r} is not key:value") from None
        if pair not in pairs:
            pairs.append(pair)
    if len(pairs) > MAX_FILTERS:
        raise BadFilter(f"at most {MAX_FILTERS} tag filters at once")
    return pairs


def tag_text(key: str, value: str) -> str:
    """The `key:value` form used in URLs.

    >>> tag_text("url", "http://x:1")
    'url:http://x:1'
    """
    return f"{key}:{value}"


def with_tags(threads, pairs):
    """Threads carrying every (key, value) of `pairs` (AND)."""
    for key, value in pairs:
        threads = threads.filter(
            Exists(Tag.objects.filter(thread=OuterRef("pk"), key=key, value=value))
        )
    return threads


def ordering(sort=DEFAULT_SORT, direction=None) -> list[str]:
    """The order_by() arguments of a sort name and direction from the whitelists; unknown names fall back.

    >>> ordering("stored"), ordering("stored", "asc"), ordering("thread")
    (['-stored_bytes', '-id'], ['stored_bytes', 'id'], ['thread_id', 'id'])
    >>> ordering("id; DROP TABLE x", "sideways")
    ['-last_checkpoint_at', '-id']
    """
    _, column, natural = SORTS.get(sort) or SORTS[DEFAULT_SORT]
    sign = "-" if (direction if direction in DIRECTIONS else natural) == "desc" else ""
    return [sign + column, sign + "id"]


def find_threads(pairs=(), prefix="", source=None, sort=DEFAULT_SORT, direction=None):
    """Threads matching every filter, in the sort's order (tags come from Tag rows; sources from attach_sources)."""
    threads = Thread.objects.all()
    if source is not None:
        threads = threads.filter(source=source)
    if prefix:
        threads = threads.filter(thread_id__startswith=prefix)
    threads = with_tags(threads, pairs)
    return threads.order_by(*ordering(sort, direction))


def attach_sources(threads):
    """Set each thread's source from one query of the few sources (a join would cost more than the query)."""
    sources = {s.pk: s for s in Source.objects.all()}
    for t in threads:
        t.source = sources[t.source_id]
    return threads


FACET_SAMPLE = 500
COUNT_CAP = 2_000


class CappedPaginator(Paginator):
    """Counts matches up to COUNT_CAP + 1: beyond that the page says "2,000+" (and the planner's estimate).

    An exact count of a broad filter walks every match (tens of thousands of
    index entries: 18 ms on a 1 M mirror, against 2.4 ms for 2,001) for a
    number nobody pages through; the API, whose `count` is a contract,
    counts exactly.
    """

    cap = COUNT_CAP

    @cached_property
    def count(self):
        return self.object_list.order_by()[: self.cap + 1].count()

    @property
    def capped(self):
        return self.count > self.cap


SUMMARY_SECONDS = 60


def filter_summary(found, pairs, prefix, source, sources, count):
    """(matches to show, facets, facets estimated) of a filter whose capped count is `count`.

    Paging through a filter or sorting it asks the same again, and the
    answer changes only with the mirror: it is cached per filter, capped
    count and sync of the sources (their last_sync_at), for SUMMARY_SECONDS
    at most (a prune refreshes the mirror between syncs). The facets and the
    planner's estimate were half of the tag browser's database time. The
    capped count itself is counted on every request: pagination relies on it.
    """
    stamp = [(s.pk, s.last_sync_at.isoformat() if s.last_sync_at else None) for s in sources]
    raw = json.dumps([sorted(pairs), prefix, source.pk if source else None, count, stamp])
    key = "threads-summary:" + hashlib.sha256(raw.encode()).hexdigest()
    summary = cache.get(key)
    if summary is None:
        matches = count if count <= COUNT_CAP else max(estimated_count(found), COUNT_CAP + 1)
        counted, estimated = facets(pairs, prefix, source, matches)
        summary = (matches, counted, estimated)
        cache.set(key, summary, SUMMARY_SECONDS)
    return summary


def estimated_count(threads):
    """The planner's estimate of the rows of a query (PostgreSQL), for sizing a sample."""
    if connection.vendor != "postgresql":
        return threads.count()
    return int(estimated_rows(threads))


def facets(pairs, prefix, source, total, keys=12, values=8):
    """The most used tag keys among the threads matching the filters, each with its most frequent values.

    Returns ([(key, [(value, count), ...]), ...], estimated). Keys come in
    order of how many of the threads carry them. Counting every tag of a
    hundred thousand threads would cost more than the whole page may, so
    above FACET_SAMPLE matching threads the counts are estimated from about
    FACET_SAMPLE of them and scaled up, and the page says so (see
    _facet_subset for which sample). One query ranks the values inside each
    key with window functions; only the top rows come back.
    """
    inner, params, scale = _facet_subset(pairs, prefix, source, total)
    quote = connection.ops.quote_name
    sql = f"""
        SELECT {quote("key")}, value, n, key_threads FROM (
            SELECT {quote("key")}, value, n,
                   SUM(n) OVER (PARTITION BY {quote("key")}) AS key_threads,
                   ROW_NUMBER() OVER (PARTITION BY {quote("key")} ORDER BY n DESC, value) AS value_rank
            FROM (
                SELECT {quote("key")}, value, COUNT(*) AS n FROM {quote(Tag._meta.db_table)}
                WHERE thread_id IN ({inner}) GROUP BY {quote("key")}, value
            ) AS counted
        ) AS ranked
        WHERE value_rank <= %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, (*params, values))
        rows = cursor.fetchall()
    by_key, totals = {}, {}
    for key, value, n, key_threads in rows:
        by_key.setdefault(key, []).append((value, round(n * scale)))
        totals[key] = key_threads
    top = sorted(by_key, key=lambda k: (-totals[k], k))[:keys]
    return [(key, sorted(by_key[key], key=lambda vn: (-vn[1], vn[0]))) for key in top], scale != 1


# A block sample reads this many threads at most (matching or not).
FACET_SAMPLE_READ = 5000


def _facet_subset(pairs, prefix, source, total):
    """SQL selecting the threads whose tags are counted, its params, and the factor that scales counts up.

    - up to FACET_SAMPLE matches: all of them, exact;
    - on PostgreSQL, when FACET_SAMPLE / total of the thread table is at most
      FACET_SAMPLE_READ threads: the matches inside a block sample of the
      thread table (TABLESAMPLE SYSTEM, fixed seed so the counts do not
      flicker). It reads a few dozen pages instead of walking every match;
    - otherwise one matching thread in `step` by id (unrelated to tags):
      walking the matches through the tag index, cheap while they are few.
    """
    subset = find_threads(pairs, prefix, source).order_by().values("pk")
    if total <= FACET_SAMPLE:
        inner, params = subset.query.sql_with_params()
        return inner, params, 1
    if connection.vendor == "postgresql":
        fraction, rows = FACET_SAMPLE / total, table_rows(Thread)
        if rows is not None and fraction * rows <= FACET_SAMPLE_READ:
            return (*_block_sample(pairs, prefix, source, 100 * fraction), 1 / fraction)
    step = math.ceil(total / FACET_SAMPLE)
    inner, params = subset.annotate(bucket=F("pk") % step).filter(bucket=0).values("pk").query.sql_with_params()
    return inner, params, step


def _block_sample(pairs, prefix, source, percent):
    """SQL for the threads matching the filters inside a block sample of `percent` of the thread table.

    The tag filters are one probe of the (thread, key, value) index per
    sampled thread: a thread matches when it has a row for every pair (a
    thread has one value per key, so two values of one key never both
    match). Written as EXISTS, the planner would walk every match instead.
    """
    quote = connection.ops.quote_name
    table = quote(Thread._meta.db_table)
    query = find_threads((), prefix, source).order_by().values("pk").query
    where, params = query.get_compiler(connection=connection).compile(query.where) if query.where else ("", [])
    sql = f"SELECT {table}.{quote('id')} FROM {table} TABLESAMPLE SYSTEM (%s) REPEATABLE (7)"
    sql += f" WHERE {where}" if where else ""
    params = [percent, *params]
    if not pairs:
        return sql, params
    either = " OR ".join(f"({quote('key')} = %s AND value = %s)" for _ in pairs)
    sql = (f"SELECT thread_id FROM {quote(Tag._meta.db_table)} WHERE thread_id IN ({sql}) AND ({either})"
           " GROUP BY thread_id HAVING COUNT(*) = %s")
    return sql, [*params, *(x for pair in pairs for x in pair), len(pairs)]
