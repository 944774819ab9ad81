"""The overview's figures, each one aggregate query on the mirror.

Nothing here loads mirror rows into Python: totals come from GROUP BY on
threads, the size distribution from a CASE over the checkpoints' sizes, the
history from daily usage (one row per source and day). Fast at a million
checkpoints because each query returns at most a few hundred rows.
"""

from datetime import UTC, datetime, time, timedelta

from django.db import connection
from django.db.models import Case, Count, IntegerField, OuterRef, Subquery, Sum, Value, When
from django.db.models.expressions import RawSQL
from django.utils import timezone

from checkpoints.models import Checkpoint, DailyUsage, ReferenceUse, Source, Thread
from dashboard.planner import estimated_rows, table_rows

RANGES = {"7": 7, "30": 30, "90": 90, "all": None}
DEFAULT_RANGE = "30"
TREND_DAYS = 30

# Log bins on a 1-2-5 series in powers of 1000, the unit limits are set in,
# so CHECKPOINT_SIZE_LIMIT (10 MB by default) falls on a bin edge.
BIN_EDGES = [m * 10**e for e in range(2, 11) for m in (1, 2, 5)][:-2]


def since_for(range_key, today=None):
    """First day shown for a range key, or None for all.

    >>> from datetime import date
    >>> since_for("7", date(2026, 1, 31)), since_for("all") is None
    (datetime.date(2026, 1, 25), True)
    """
    days = RANGES.get(range_key)
    if days is None:
        return None
    today = today or timezone.now().date()
    return today - timedelta(days=days - 1)


def bin_label(i: int) -> str:
    """Label of size bin i (bin 0 is below the first edge).

    >>> bin_label(0), bin_label(1), bin_label(len(BIN_EDGES))
    ('< 100 B', '100–200 B', '≥ 10 GB')
    """
    from checkpoints.units import format_limit

    if i == 0:
        return f"< {format_limit(BIN_EDGES[0])}"
    if i == len(BIN_EDGES):
        return f"≥ {format_limit(BIN_EDGES[-1])}"
    low, high = format_limit(BIN_EDGES[i - 1]), format_limit(BIN_EDGES[i])
    if low.split()[1] == high.split()[1]:
        low = low.split()[0]
    return f"{low}–{high}"


def source_totals():
    """Per source: threads, checkpoints and stored bytes of its threads."""
    rows = Thread.objects.values("source_id").annotate(
        n_threads=Count("id"),
        n_checkpoints=Sum("checkpoints"),
        stored=Sum("stored_bytes"),
    ).order_by()
    return {r["source_id"]: r for r in rows}


def oversized_counts(limit):
    """Per source: checkpoints whose logical size is above the limit (index range scan)."""
    rows = Checkpoint.objects.filter(logical_bytes__gt=limit).values("source_id").annotate(n=Count("id")).order_by()
    return {r["source_id"]: r["n"] for r in rows}


def dangling_counts():
    """Per source: references to objects found missing at the last check."""
    rows = (
        ReferenceUse.objects.filter(reference__exists=False)
        .exclude(reference__store="foreign")
        .values("thread__source_id")
        .annotate(n=Count("reference_id", distinct=True))
        .order_by()
    )
    return {r["thread__source_id"]: r["n"] for r in rows}


def sources_summary(limit):
    """Every source with its totals, and a total row; plain dicts for pages, API and metrics."""
    totals, oversized, dangling = source_totals(), oversized_counts(limit), dangling_counts()
    now = timezone.now()
    rows = []
    # External bytes as the last sync captured them (checkpoints.usage.external_bytes,
    # distinct objects): recounting the references of a million checkpoints on
    # every page view would cost more than the whole page may.
    latest = DailyUsage.objects.filter(source=OuterRef("pk")).order_by("-day")
    sources = Source.objects.annotate(external=Subquery(latest.values("external_bytes")[:1]))
    for source in sources:
        t = totals.get(source.pk, {})
        rows.append(
            {
                "source": source,
                "name": source.name,
                "threads": t.get("n_threads") or 0,
                "checkpoints": t.get("n_checkpoints") or 0,
                "stored_bytes": t.get("stored") or 0,
                "external_bytes": source.external or 0,
                "oversized": oversized.get(source.pk, 0),
                "dangling": dangling.get(source.pk, 0),
                "last_sync_at": source.last_sync_at,
                "last_sync_ok": source.last_sync_ok,
                "last_sync_age": (now - source.last_sync_at).total_seconds() if source.last_sync_at else None,
                "last_error": source.last_error,
            }
        )
    keys = ["threads", "checkpoints", "stored_bytes", "external_bytes", "oversized", "dangling"]
    total = {k: sum(r[k] for r in rows) for k in keys}
    return rows, total


def daily_series(source=None, since=None):
    """Daily usage summed over sources, oldest first."""
    usage = DailyUsage.objects.all()
    if source is not None:
        usage = usage.filter(source=source)
    if since is not None:
        usage = usage.filter(day__gte=since)
    return list(
        usage.values("day")
        .annotate(
            checkpoint_bytes=Sum("checkpoint_bytes"),
            blob_bytes=Sum("blob_bytes"),
            write_bytes=Sum("write_bytes"),
            external_bytes=Sum("external_bytes"),
            stored_bytes=Sum("stored_bytes"),
            checkpoints_added=Sum("checkpoints_added"),
            bytes_added=Sum("bytes_added"),
            threads_added=Sum("threads_added"),
        )
        .order_by("day")
    )


def size_bin_expression():
    """The bin number of a checkpoint's logical size: 0 below the first edge, i in [edge i-1, edge i)."""
    if connection.vendor == "postgresql":
        # A binary search over the edges, cheaper than 25 CASE branches per row.
        return RawSQL("width_bucket(logical_bytes, %s::bigint[])", (BIN_EDGES,), output_field=IntegerField())
    whens = [When(logical_bytes__lt=edge, then=Value(i)) for i, edge in enumerate(BIN_EDGES)]
    return Case(*whens, default=Value(len(BIN_EDGES)), output_field=IntegerField())


def _scoped_checkpoints(source, since):
    checkpoints = Checkpoint.objects.all()
    if source is not None:
        checkpoints = checkpoints.filter(source=source)
    if since is not None:
        # A plain range on created_at keeps the time indexes usable.
        checkpoints = checkpoints.filter(created_at__gte=datetime.combine(since, time.min, tzinfo=UTC))
    return checkpoints


def size_distribution(source=None, since=None, limit=None):
    """Checkpoints per log size bin, and the sample it was estimated from.

    Returns ([(label, low_edge, count)] for every bin in order, percent) where
    percent is None when every checkpoint was counted. On PostgreSQL, when
    more than EXACT_ROWS checkpoints are in scope, the bins below `limit` are
    estimated from a block sample of about SAMPLE_ROWS checkpoints in scope
    (TABLESAMPLE SYSTEM, fixed seed so the chart does not flicker) and scaled
    up; the bins at or above the limit, the rare ones that matter, are always
    counted exactly through the size index.
    """
    checkpoints = _scoped_checkpoints(source, since)
    edges = [0] + BIN_EDGES
    percent = _sample_percent(checkpoints)
    if percent is None:
        counts = _bin_counts(checkpoints)
    else:
        exact_from = next((i for i, edge in enumerate(edges) if limit is not None and edge >= limit), len(edges))
        sampled = _sampled_bin_counts(source, since, percent)
        counts = {b: round(n * 100 / percent) for b, n in sampled.items() if b < exact_from}
        if exact_from < len(edges):
            counts.update(_bin_counts(checkpoints.filter(logical_bytes__gte=edges[exact_from])))
    bins = [(bin_label(i), edges[i], counts.get(i, 0)) for i in range(len(BIN_EDGES) + 1)]
    return bins, percent


def _bin_counts(checkpoints):
    return dict(
        checkpoints.annotate(bin=size_bin_expression()).values("bin").annotate(n=Count("id")).order_by().values_list("bin", "n")
    )


EXACT_ROWS = 50_000
SAMPLE_ROWS = 20_000


def _sample_percent(checkpoints):
    """The block-sample percentage that yields about SAMPLE_ROWS checkpoints in scope, or None to count all.

    Counting exactly reads every checkpoint in scope (an index range on
    created_at); a block sample reads `percent` of the whole table, since the
    sample is drawn before the range applies. The planner's estimates pick the
    cheaper: a plan and pg_class, not a scan.
    """
    if connection.vendor != "postgresql":
        return None
    in_scope = max(estimated_rows(checkpoints), 1.0)
    total_rows = max(table_rows(Checkpoint) or 0.0, 1.0)
    if in_scope <= EXACT_ROWS:
        return None
    percent = min(100.0, 100.0 * SAMPLE_ROWS / in_scope)
    if total_rows * percent / 100 >= in_scope:
        return None  # sampling would read more rows than counting them all
    return max(0.01, percent)


def _sampled_bin_counts(source, since, percent):
    """Bin counts over a block sample of the checkpoint table (PostgreSQL only)."""
    where, params = [], [BIN_EDGES, percent]
    if source is not None:
        where.append("source_id = %s")
        params.append(source.pk)
    if since is not None:
        where.append("created_at >= %s")
        params.append(datetime.combine(since, time.min, tzinfo=UTC))
    table = connection.ops.quote_name(Checkpoint._meta.db_table)
    sql = (
        "SELECT width_bucket(logical_bytes, %s::bigint[]) AS bin, count(*) "
        f"FROM {table} TABLESAMPLE SYSTEM (%s) REPEATABLE (7)"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY 1"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


def top_threads(source=None, n=10):
    threads = Thread.objects.select_related("source").only(
        "thread_id", "stored_bytes", "logical_bytes", "checkpoints", "last_checkpoint_at", "source__name"
    )
    if source is not None:
        threads = threads.filter(source=source)
    return list(threads.order_by("-stored_bytes", "-id")[:n])


def trend_points(source=None, today=None):
    """(day, stored bytes) over the last TREND_DAYS days of daily usage."""
    today = today or timezone.now().date()
    usage = DailyUsage.objects.filter(day__gt=today - timedelta(days=TREND_DAYS))
    if source is not None:
        usage = usage.filter(source=source)
    return list(usage.values("day").annotate(total=Sum("stored_bytes")).order_by("day").values_list("day", "total"))
