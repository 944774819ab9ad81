"""Space at the sources: dead rows and vacuums (PostgreSQL), free pages (SQLite), the bucket (S3).

The figures are read by each sync through the source's read-only connection
(`reader.space()`, stored as `sync_state["space"]`): the maintenance page and
/metrics show the last sync's, and never open a source themselves. Each kind
prepares its own report for the pages (`space_report`, checkpoints/sources/<kind>/space.py).
"""

from datetime import datetime

from checkpoints.sources import registry


def source_space(source) -> dict | None:
    """The last sync's space figures of a source, with warnings and the partials that show them (the
    source's kind prepares them: `space_report`); None before its first sync read them.

    >>> from types import SimpleNamespace as S
    >>> lite = {"kind": "sqlite", "page_size": 4096, "page_count": 10, "free_pages": 6, "checked_at": "2026-12-01T00:00:00+00:00"}
    >>> space = source_space(S(name="b", kind="sqlite", sync_state={"space": lite}))
    >>> space["warnings"], space["template"], space["checked_at"].year
    (['6 of 10 pages are free: the file shrinks only after VACUUM'], 'space/sqlite.html', 2026)
    >>> source_space(S(name="c", kind="sqlite", sync_state={})) is None
    True
    """
    found = (source.sync_state or {}).get("space")
    if not found:
        return None
    space = {**found, "warnings": []}
    if not found.get("error"):
        try:
            kind = registry.get(found.get("kind") or source.kind)
        except ValueError as e:  # figures a console that knew another kind stored
            space["error"] = str(e)
        else:
            space = kind.space_report(found)
    space["source"] = source
    space["checked_at"] = datetime.fromisoformat(found["checked_at"]) if found.get("checked_at") else None
    return space


def sources_space(sources) -> list:
    """source_space() of each source that has figures."""
    return [s for s in (source_space(source) for source in sources) if s is not None]
