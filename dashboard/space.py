"""Space at the sources: dead rows and vacuums (PostgreSQL), free pages (SQLite).

The figures are read by each sync through the source's read-only connection
(`reader.space()`, stored as `sync_state["space"]`): the maintenance page and
/metrics show the last sync's, and never open a source themselves.
"""

from datetime import datetime


def source_space(source) -> dict | None:
    """The last sync's space figures of a source, with warnings; None before its first sync read them.

    >>> from types import SimpleNamespace as S
    >>> pg = {"kind": "postgres", "autovacuum": True, "checked_at": "2026-12-01T00:00:00+00:00", "tables": [
    ...     {"table": "checkpoints", "live_rows": 10, "dead_rows": 30, "autovacuum": True, "bytes": 8192},
    ...     {"table": "checkpoint_blobs", "live_rows": 10, "dead_rows": 10, "autovacuum": False, "bytes": 8192}]}
    >>> space = source_space(S(name="a", sync_state={"space": pg}))
    >>> [t["warn"] for t in space["tables"]], space["bytes"]
    ([True, False], 16384)
    >>> space["warnings"]  # doctest: +NORMALIZE_WHITESPACE
    ['checkpoints: 30 dead rows outweigh 10 live ones; they take space until VACUUM (plain, or autovacuum) runs',
     'autovacuum is off for checkpoint_blobs (reloption autovacuum_enabled): dead rows stay until a VACUUM']
    >>> lite = {"kind": "sqlite", "page_size": 4096, "page_count": 10, "free_pages": 6, "checked_at": "2026-12-01T00:00:00+00:00"}
    >>> source_space(S(name="b", sync_state={"space": lite}))["warnings"]
    ['6 of 10 pages are free: the file shrinks only after VACUUM']
    >>> source_space(S(name="c", sync_state={})) is None
    True
    """
    found = (source.sync_state or {}).get("space")
    if not found:
        return None
    space = {**found, "source": source, "warnings": []}
    space["checked_at"] = datetime.fromisoformat(found["checked_at"]) if found.get("checked_at") else None
    if found.get("error"):
        return space
    warnings = space["warnings"]
    if found.get("kind") == "postgres":
        space["tables"] = [dict(t) for t in found.get("tables", [])]
        space["bytes"] = sum(t.get("bytes") or 0 for t in space["tables"])
        if not found.get("autovacuum"):
            warnings.append("autovacuum is off on the server (autovacuum or track_counts): dead rows stay until a VACUUM")
        for t in space["tables"]:
            t["warn"] = t["dead_rows"] > t["live_rows"]
            if t["warn"]:
                warnings.append(f"{t['table']}: {t['dead_rows']:,} dead rows outweigh {t['live_rows']:,} live ones; "
                                "they take space until VACUUM (plain, or autovacuum) runs")
            if found.get("autovacuum") and not t.get("autovacuum"):
                warnings.append(f"autovacuum is off for {t['table']} (reloption autovacuum_enabled): "
                                "dead rows stay until a VACUUM")
            for key in ("last_vacuum", "last_autovacuum"):
                t[key] = datetime.fromisoformat(t[key]) if t.get(key) else None
    elif found.get("kind") == "sqlite":
        space["warn"] = found["free_pages"] * 2 > found["page_count"]
        if space["warn"]:
            warnings.append(f"{found['free_pages']:,} of {found['page_count']:,} pages are free: "
                            "the file shrinks only after VACUUM")
    return space


def sources_space(sources) -> list:
    """source_space() of each source that has figures."""
    return [s for s in (source_space(source) for source in sources) if s is not None]
