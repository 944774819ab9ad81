"""The PostgreSQL source's space report (its reader's `space()`), ready for the pages: dead rows and
vacuums of the three LangGraph tables, and what the operator should fix."""

from datetime import datetime

TEMPLATE = "space/postgres.html"  # the maintenance page's panel
BRIEF_TEMPLATE = "space/postgres_brief.html"  # the sources page's cell


def report(found: dict) -> dict:
    """`found` (as the sync stored it) with each table's `warn`, the tables' `bytes` and `warnings`.

    >>> pg = {"kind": "postgres", "autovacuum": True, "tables": [
    ...     {"table": "checkpoints", "live_rows": 10, "dead_rows": 30, "autovacuum": True, "bytes": 8192},
    ...     {"table": "checkpoint_blobs", "live_rows": 10, "dead_rows": 10, "autovacuum": False, "bytes": 8192}]}
    >>> space = report(pg)
    >>> [t["warn"] for t in space["tables"]], space["bytes"]
    ([True, False], 16384)
    >>> space["warnings"]  # doctest: +NORMALIZE_WHITESPACE
    ['checkpoints: 30 dead rows outweigh 10 live ones; they take space until VACUUM (plain, or autovacuum) runs',
     'autovacuum is off for checkpoint_blobs (reloption autovacuum_enabled): dead rows stay until a VACUUM']
    """
    tables = [dict(t) for t in found.get("tables", [])]
    warnings = []
    if not found.get("autovacuum"):
        warnings.append("autovacuum is off on the server (autovacuum or track_counts): dead rows stay until a VACUUM")
    for t in tables:
        t["warn"] = t["dead_rows"] > t["live_rows"]
        if t["warn"]:
            warnings.append(f"{t['table']}: {t['dead_rows']:,} dead rows outweigh {t['live_rows']:,} live ones; "
                            "they take space until VACUUM (plain, or autovacuum) runs")
        if found.get("autovacuum") and not t.get("autovacuum"):
            warnings.append(f"autovacuum is off for {t['table']} (reloption autovacuum_enabled): "
                            "dead rows stay until a VACUUM")
        for key in ("last_vacuum", "last_autovacuum"):
            t[key] = datetime.fromisoformat(t[key]) if t.get(key) else None
    return {**found, "tables": tables, "bytes": sum(t.get("bytes") or 0 for t in tables), "warnings": warnings}
