"""Short descriptions of runs for the history table and the run page.

Pure functions over a run's kind, parameters and result dicts, so the
history renders without loading anything else per row.
"""

from django.contrib.humanize.templatetags.humanize import intcomma
from django.utils.html import format_html

from checkpoints.jobs import job
from dashboard.templatetags.console import size


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
    params = job(kind).params
    if params:
        parts = [word for param in params for word in param.words(parameters)]
    else:
        parts = [f"{k} {v}" for k, v in parameters.items() if not isinstance(v, (dict, list))]
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
    >>> counts("lifecycle", {"added": ["s3saver:p/:expire"], "changed": [], "removed": [], "other_rules": 2})
    [(1, 'added'), (0, 'changed'), (0, 'removed'), (2, 'other rules')]
    """
    result = result or {}
    if not result:
        return []
    described = job(kind)
    if not described.counts:
        return [(v, k.replace("_", " ")) for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool)][:4]
    # A count kept as the list of what it counts (a lifecycle change's rule IDs) shows its length.
    found = [(_value(result, key), label) for key, label in described.counts
             if isinstance(result.get(key), int | list)]
    extra = described.listed
    if extra and result.get(extra):
        found.append((len(result[extra]), extra))
    return found


def freed_bytes(kind: str, result: dict):
    """The serialized bytes a prune removes, the object bytes a sweep finds orphaned; None otherwise.

    >>> freed_bytes("prune", {"bytes": 120}), freed_bytes("sweep", {"orphan_bytes": 5}), freed_bytes("sync", {"x": 1})
    (120, 5, None)
    """
    key = job(kind).freed
    if not key or not result:
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
    for key, label in job(kind).compared:
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


def _shown(value, unit):
    """A figure's value as the page shows it (the template filters size and intcomma)."""
    if unit == "bytes":
        return size(value)
    if unit == "text":
        return value
    return intcomma(value)


def figures(kind: str, result: dict, *, dry_run: bool) -> list:
    """The tiles of a finished run's page, from its Job's figures: {label, value, hint, alert}.

    A missing count shows empty, as a template shows a missing value.

    >>> tiles = figures("sweep", {"orphans": 1200, "grace": "1h", "orphan_bytes": 5, "dangling": ["u"]}, dry_run=True)
    >>> [(f["label"], str(f["value"]), str(f["hint"]), f["alert"]) for f in tiles[1:3] + tiles[5:]]
    [('Orphans', '1,200', 'older than 1h', False), ('Orphan bytes', '<span class="size" title="5 bytes">5 B</span>', '', False), ('Dangling references', '1', 'referenced, missing', True)]
    >>> [(f["label"], f["hint"]) for f in figures("prune", {"bytes": 2}, dry_run=True)][4], figures("sync", {"added": 1}, dry_run=False)
    (('Bytes to free', 'serialized'), [])
    """
    result = result or {}
    tiles = []
    for figure in job(kind).figures:
        value = result.get(figure.key, "")
        if figure.unit == "items":
            value = len(value or ())
        hint = figure.hint
        if figure.hint_key:
            shown = result.get(figure.hint_key, "")
            if (figure.hint_when == "set" and not shown) or (figure.hint_when == "real" and dry_run):
                hint = ""
            else:
                hint = format_html(hint.replace("{}", "{0}"), _shown(shown, figure.hint_unit))
        tiles.append({
            "label": figure.dry_label if dry_run and figure.dry_label else figure.label,
            "value": _shown(value, figure.unit),
            "hint": hint,
            "alert": figure.alert and bool(value),
        })
    return tiles
