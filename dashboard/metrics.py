"""/metrics: the mirror's figures in Prometheus' text format (version 0.0.4), through prometheus_client.

Gauges only, read from the mirror at scrape time with the same aggregate
queries as the overview; a scrape never touches the sources. Each scrape
builds its gauges into a `Scrape` (a prometheus_client collector) and renders
it, with the cache's process counters (dashboard.cachemetrics), in a registry
of its own: nothing of one scrape outlives it.

Adding a metric is one place: a gauge read from the mirror is one
`out.gauge(name, help, samples)` line in `metrics()` below; a counter a code
path increments is declared in dashboard.cachemetrics' REGISTRY (or a module
like it whose registry `Scrape.collect` yields from).
"""

from django.conf import settings
from django.db.models import Count
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from checkpoints.models import BlobReference, Run
from dashboard import usage
from dashboard.access import api_auth
from dashboard.cluster import ALIVE_WINDOW, cluster_health
from dashboard.space import sources_space

PREFIX = "checkpoint_console_"


class Scrape:
    """One scrape's gauges, as a prometheus_client collector.

    >>> out = Scrape()
    >>> out.gauge("threads", "Threads mirrored.", [({"source": 'a"b'}, 3), ({"source": "c"}, None)])
    >>> out.gauge("cluster_up", "1 if up.", [({}, True)])
    >>> print(out.text(counters=False), end="")
    # HELP checkpoint_console_threads Threads mirrored.
    # TYPE checkpoint_console_threads gauge
    checkpoint_console_threads{source="a\\"b"} 3
    # HELP checkpoint_console_cluster_up 1 if up.
    # TYPE checkpoint_console_cluster_up gauge
    checkpoint_console_cluster_up 1
    """

    def __init__(self):
        self.families = []

    def gauge(self, name, help_text, samples):
        """samples: [(labels dict, value)]; None values are left out (booleans are 1 and 0)."""
        samples = [(labels, value) for labels, value in samples if value is not None]
        names = list(samples[0][0]) if samples else []
        family = GaugeMetricFamily(PREFIX + name, help_text, labels=names)
        for labels, value in samples:
            # Kept as given: an integer is written as an integer (_gauge_text).
            family.add_metric([str(labels[k]) for k in names], value)
        self.families.append(family)

    def collect(self):
        yield from self.families

    def text(self, counters=True) -> str:
        """The exposition text: this scrape's gauges, then (by default) the cache's counters."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        text = _gauge_text(registry)
        if counters:
            from dashboard.cachemetrics import REGISTRY

            text += generate_latest(REGISTRY).decode()
        return text


def _gauge_text(registry) -> str:
    """The gauges of `registry` in the 0.0.4 text format, as generate_latest writes them, but for the value.

    generate_latest writes every value as a Go float (3 as "3.0", 10**9 as
    "1e+09", and 2**60 rounded); these gauges are counts and byte sizes, and an
    integer stays an integer, a float its repr, as /metrics has always written
    them (and as alerts and tests that match the text expect). Labels and
    HELP are escaped as prometheus_client escapes them.

    >>> _value_text(3), _value_text(10**9), _value_text(1.5), _value_text(3.0), _value_text(True), _value_text(2**60)
    ('3', '1000000000', '1.5', '3.0', '1', '1152921504606846976')
    """
    lines = []
    for family in registry.collect():
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {_value_text(sample.value)}" if labels
                         else f"{sample.name} {_value_text(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(value) if isinstance(value, float) else floatToGoString(value)


@require_GET
@api_auth
def metrics(request):
    rows, _ = usage.sources_summary(settings.CHECKPOINT_SIZE_LIMIT)
    now = timezone.now()
    out = Scrape()

    def per_source(key):
        return [({"source": r["name"]}, r[key]) for r in rows]

    out.gauge("threads", "Threads mirrored.", per_source("threads"))
    out.gauge("checkpoints", "Checkpoint rows mirrored, all namespaces.", per_source("checkpoints"))
    out.gauge("stored_bytes", "Serialized bytes of all checkpoint, blob and write rows.", per_source("stored_bytes"))
    out.gauge("external_bytes", "Bytes of the distinct external objects referenced and present.", per_source("external_bytes"))
    out.gauge(
        "checkpoints_over_limit",
        f"Checkpoints whose logical size is above CHECKPOINT_SIZE_LIMIT ({settings.CHECKPOINT_SIZE_LIMIT} bytes).",
        per_source("oversized"),
    )
    out.gauge("dangling_references", "Referenced objects found missing at the last check.", per_source("dangling"))
    out.gauge(
        "last_sync_timestamp_seconds", "End of the last sync (Unix time).",
        [({"source": r["name"]}, r["last_sync_at"].timestamp() if r["last_sync_at"] else None) for r in rows],
    )
    out.gauge(
        "last_sync_age_seconds", "Seconds since the last sync ended.",
        [({"source": r["name"]}, (now - r["last_sync_at"]).total_seconds() if r["last_sync_at"] else None) for r in rows],
    )
    out.gauge("last_sync_success", "1 if the last sync succeeded, 0 if it failed.", per_source("last_sync_ok"))
    out.gauge(
        "references_unknown", "1 if some values could not be decoded, so references may be missing.",
        [({"source": r["name"]}, r["source"].references_unknown) for r in rows],
    )
    slots = [(r["name"], (r["source"].sync_state or {}).get("slot_status")) for r in rows
             if r["source"].capture == "logical"]
    out.gauge(
        "capture_slot_retained_bytes", "WAL held back by the source's replication slot (change capture), at the last sync.",
        [({"source": name}, status.get("retained_bytes")) for name, status in slots if status],
    )
    out.gauge(
        "capture_slot_lost", "1 if the source's replication slot was lost or invalidated at the last sync.",
        [({"source": name}, status.get("wal_status") == "lost") for name, status in slots if status],
    )
    out.gauge("capture_wal_warn_bytes", "CAPTURE_WAL_WARN.", [({}, settings.CAPTURE_WAL_WARN)])
    _space_gauges(out, [r["source"] for r in rows])
    states = {"present": 0, "missing": 0, "unchecked": 0, "foreign": 0}
    for row in BlobReference.objects.values("store", "exists").annotate(n=Count("id")).order_by():
        state = "foreign" if row["store"] == "foreign" else "unchecked" if row["exists"] is None else "present" if row["exists"] else "missing"
        states[state] += row["n"]
    out.gauge("blob_references", "External objects named by checkpoints, by state.", [({"state": s}, n) for s, n in states.items()])
    runs = Run.objects.filter(state__in=["queued", "running"]).values("kind", "state").annotate(n=Count("id")).order_by()
    counts = {(kind, state): 0 for kind, _ in Run.KIND_CHOICES for state in ("queued", "running")}
    for row in runs:
        counts[(row["kind"], row["state"])] = row["n"]
    out.gauge("runs", "Sync, prune and sweep runs queued or running.", [({"kind": k, "state": s}, n) for (k, s), n in counts.items()])
    cluster = cluster_health(now)
    out.gauge(
        "cluster_up", f"1 if a task cluster sent a heartbeat in the last {int(ALIVE_WINDOW.total_seconds())} seconds.",
        [({}, cluster["alive"])],
    )
    out.gauge("cluster_workers", "Workers of the clusters that are alive.", [({}, cluster["workers"])])
    out.gauge(
        "cluster_last_heartbeat_timestamp_seconds", "Last heartbeat of any task cluster (Unix time).",
        [({}, cluster["last_beat"].timestamp() if cluster["last_beat"] else None)],
    )
    out.gauge("queued_tasks", "Tasks waiting at the broker for a worker (left out when the broker cannot be asked).",
              [({}, cluster["queued_tasks"])])
    out.gauge(
        "oldest_queued_seconds", "Age of the oldest task or run waiting for a worker; 0 when none waits.",
        [({}, cluster["oldest_queued_age"] or 0.0)],
    )
    out.gauge("checkpoint_size_limit_bytes", "CHECKPOINT_SIZE_LIMIT.", [({}, settings.CHECKPOINT_SIZE_LIMIT)])
    out.gauge("storage_quota_bytes", "STORAGE_QUOTA, when set.", [({}, settings.STORAGE_QUOTA)])
    # The 0.0.4 text format is what generate_latest writes; its content type as prometheus_client names it.
    return HttpResponse(out.text(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _space_gauges(out, sources):
    """Dead rows, vacuums and free pages of each source, as its last sync read them (dashboard/space.py)."""
    spaces = [sp for sp in sources_space(sources) if not sp.get("error")]
    # By the report's shape, not the kind's name: a kind reporting tables gets the table gauges,
    # one reporting pages the page gauges.
    pg = [(sp["source"].name, t) for sp in spaces for t in sp.get("tables", ())]
    lite = [sp for sp in spaces if "page_count" in sp]

    def per_table(key, convert=lambda v: v):
        return [({"source": name, "table": t["table"]}, None if t[key] is None else convert(t[key])) for name, t in pg]

    out.gauge("source_space_checked_timestamp_seconds", "When the last sync read the source's space figures (Unix time).",
              [({"source": sp["source"].name}, sp["checked_at"].timestamp() if sp["checked_at"] else None) for sp in spaces])
    out.gauge("source_table_live_rows", "Live rows of a PostgreSQL source's LangGraph table (pg_stat_user_tables).",
              per_table("live_rows"))
    out.gauge("source_table_dead_rows", "Dead rows of a PostgreSQL source's LangGraph table: space reused only after VACUUM.",
              per_table("dead_rows"))
    out.gauge("source_table_bytes", "pg_total_relation_size of a PostgreSQL source's LangGraph table.", per_table("bytes"))
    out.gauge("source_table_last_vacuum_timestamp_seconds", "Last manual VACUUM of the table (Unix time).",
              per_table("last_vacuum", lambda v: v.timestamp()))
    out.gauge("source_table_last_autovacuum_timestamp_seconds", "Last autovacuum of the table (Unix time).",
              per_table("last_autovacuum", lambda v: v.timestamp()))
    out.gauge("source_table_autovacuum_enabled", "1 if autovacuum runs on the table (server settings and reloptions).",
              per_table("autovacuum"))
    out.gauge("source_pages", "Pages of a SQLite source's file (PRAGMA page_count).",
              [({"source": sp["source"].name}, sp["page_count"]) for sp in lite])
    out.gauge("source_free_pages", "Free pages of a SQLite source's file (PRAGMA freelist_count): returned by VACUUM.",
              [({"source": sp["source"].name}, sp["free_pages"]) for sp in lite])
    out.gauge("source_page_size_bytes", "Page size of a SQLite source's file.",
              [({"source": sp["source"].name}, sp["page_size"]) for sp in lite])
