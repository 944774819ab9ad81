"""Short descriptions of runs for the history table and the run page.

Pure functions over a run's kind, parameters and result dicts, so the
history renders without loading anything else per row.
"""

PRUNE_COUNTS = (("threads", "threads"), ("checkpoints", "checkpoints"), ("writes", "writes"), ("blobs", "blob rows"))
SWEEP_COUNTS = (("objects_scanned", "scanned"), ("orphans", "orphans"), ("deleted", "deleted"), ("db_orphans", "db rows"))
SYNC_COUNTS = (("added", "added"), ("updated", "updated"), ("removed", "removed"))
REMOVE_COUNTS = (("threads", "threads"), ("checkpoints", "checkpoints"), ("writes", "writes"), ("blobs", "blob rows"))
# What the preview and the real run are compared on (the rows that go).
COMPARED = {
    "prune": (("threads", "Threads"), ("checkpoints", "Checkpoints"), ("writes", "Writes"), ("blobs", "Blob rows"),
              ("bytes", "Serialized bytes"), ("skipped", "Skipped threads")),
    "sweep": (("orphans", "Orphan objects"), ("orphan_bytes", "Orphan bytes"), ("db_orphans", "Database orphan rows"),
              ("dangling", "Dangling references")),
}


def describe_parameters(kind: str, parameters: dict) -> str:
    """The parameters as an operator would say them.

    >>> describe_parameters("prune", {"older_than": "30d", "keep_last": 2, "tags": ["tenant=acme"], "threads": True})
    'older than 30d · keep last 2 · tenant=acme · whole threads'
    >>> describe_parameters("prune", {"older_than": "30d", "keep_last": 1, "vacuum": True})
    'older than 30d · keep last 1 · VACUUM after'
    >>> describe_parameters("prune", {"older_than": "1h", "keep_last": 1, "tags": [], "threads": False, "policy": "nightly"})
    'older than 1h · keep last 1 · policy nightly'
    >>> describe_parameters("sweep", {"grace": "24h", "force": False}), describe_parameters("sync", {"full": True})
    ('grace 24h', 'full')
    >>> describe_parameters("refcheck", {})
    ''
    """
    parameters = parameters or {}
    parts = []
    if kind == "prune":
        parts.append(f"older than {parameters.get('older_than', '?')}")
        parts.append(f"keep last {parameters.get('keep_last', 1)}")
        parts.extend(parameters.get("tags") or ())
        if parameters.get("threads"):
            parts.append("whole threads")
        if parameters.get("vacuum"):
            parts.append("VACUUM after")
    elif kind == "sweep":
        parts.append(f"grace {parameters.get('grace', '?')}")
        if parameters.get("force"):
            parts.append("force")
    elif kind == "sync":
        if parameters.get("full"):
            parts.append("full")
    elif kind == "remove":
        parts.append(f"source {parameters.get('source', '?')}")
    else:
        parts.extend(f"{k} {v}" for k, v in parameters.items() if not isinstance(v, (dict, list)))
    if parameters.get("policy"):
        parts.append(f"policy {parameters['policy']}")
    return " · ".join(str(p) for p in parts)


def counts(kind: str, result: dict) -> list:
    """(number, label) pairs of what a run did, for the history table.

    >>> counts("prune", {"threads": 2, "checkpoints": 9, "writes": 4, "blobs": 3, "skipped": [{}, {}]})
    [(2, 'threads'), (9, 'checkpoints'), (4, 'writes'), (3, 'blob rows'), (2, 'skipped')]
    >>> counts("sweep", {"objects_scanned": 10, "orphans": 2, "deleted": 2, "db_orphans": 0, "dangling": ["s3://b/k"]})
    [(10, 'scanned'), (2, 'orphans'), (2, 'deleted'), (0, 'db rows'), (1, 'dangling')]
    >>> counts("prune", {})
    []
    """
    result = result or {}
    if not result:
        return []
    table = {"prune": PRUNE_COUNTS, "sweep": SWEEP_COUNTS, "sync": SYNC_COUNTS, "remove": REMOVE_COUNTS}.get(kind)
    if table is None:
        return [(v, k.replace("_", " ")) for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool)][:4]
    found = [(result[key], label) for key, label in table if isinstance(result.get(key), int)]
    extra = {"prune": "skipped", "sweep": "dangling"}.get(kind)
    if extra and result.get(extra):
        found.append((len(result[extra]), extra))
    return found


def freed_bytes(kind: str, result: dict):
    """The serialized bytes a prune removes, the object bytes a sweep finds orphaned; None otherwise.

    >>> freed_bytes("prune", {"bytes": 120}), freed_bytes("sweep", {"orphan_bytes": 5}), freed_bytes("sync", {"x": 1})
    (120, 5, None)
    """
    key = {"prune": "bytes", "sweep": "orphan_bytes"}.get(kind)
    if key is None or not result:
        return None
    return result.get(key)


def _value(result, key):
    value = result.get(key)
    return len(value) if isinstance(value, list) else value


def compare(kind: str, preview: dict, actual: dict) -> list:
    """Rows (label, preview value, run value, differs) for a real run and the dry run it confirmed.

    >>> rows = compare("prune", {"threads": 2, "checkpoints": 5, "skipped": []}, {"threads": 1, "checkpoints": 5, "skipped": [{}]})
    >>> [(label, a, b, d) for label, a, b, d in rows if label in ("Threads", "Checkpoints", "Skipped threads")]
    [('Threads', 2, 1, True), ('Checkpoints', 5, 5, False), ('Skipped threads', 0, 1, True)]
    """
    rows = []
    for key, label in COMPARED.get(kind, ()):
        a, b = _value(preview or {}, key), _value(actual or {}, key)
        rows.append((label, a, b, a != b))
    return rows


def skipped_by_reason(skipped: list) -> list:
    """(reason, count) pairs, most frequent first.

    >>> skipped_by_reason([{"reason": "active"}, {"reason": "pending_writes"}, {"reason": "active"}])
    [('active', 2), ('pending_writes', 1)]
    """
    tally = {}
    for entry in skipped or ():
        tally[entry.get("reason", "?")] = tally.get(entry.get("reason", "?"), 0) + 1
    return sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))


def vacuum_rows(vacuum) -> list:
    """(what, before, after) of a prune's VACUUM: dead rows per table (PostgreSQL) or free pages (SQLite).

    >>> vacuum_rows({"before": {"dead_rows": {"checkpoints": 9}, "bytes": 1}, "after": {"dead_rows": {"checkpoints": 0}, "bytes": 1}})
    [('checkpoints', 9, 0)]
    >>> vacuum_rows({"before": {"free_pages": 40, "bytes": 1}, "after": {"free_pages": 0, "bytes": 1}}), vacuum_rows(None)
    ([('free pages', 40, 0)], [])
    """
    if not vacuum or vacuum.get("error"):
        return []
    before, after = vacuum["before"], vacuum["after"]
    if "dead_rows" in before:
        return [(table, n, after["dead_rows"].get(table)) for table, n in before["dead_rows"].items()]
    return [("free pages", before["free_pages"], after["free_pages"])]


def removal_rows(result: dict) -> list:
    """(label, previewed, removed) for a source removal's run page.

    >>> removal_rows({"threads": 2, "preview": {"threads": 2}})[0]
    ('Threads', 2, 2)
    """
    from checkpoints.removal import COUNTS

    result = result or {}
    preview = result.get("preview") or {}
    return [(label, preview.get(key), result.get(key)) for key, label in COUNTS]
