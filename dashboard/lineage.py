"""The checkpoint page's lineage: its parent, children and subgraph checkpoints, in one statement.

A cached view of a checkpoint spent over half of its interpreter time in the
ORM, most of it building querysets rather than running them; the three
lineage querysets (the subgraph one with its JSON cast the dearest) were a
third of it. One UNION ALL of the three capped lists, written once per
process and database, runs with the checkpoint's values: the same rows,
through the same indexes, in the same order. Only the JSON expression
differs by database.
"""

from functools import lru_cache

from django.db import connection

from checkpoints.models import Checkpoint

CHILDREN_SHOWN = 50
SUBGRAPHS_SHOWN = 50

# Subgraph checkpoints name the root checkpoint that ran them in metadata.parents[""], a string.
_ROOT_OF = {
    "postgresql": "(metadata -> 'parents' ->> '')",
    "sqlite": "json_extract(metadata, '$.parents.\"\"')",
}
PARENT, CHILD, SUBGRAPH = 0, 1, 2


@lru_cache(maxsize=None)
def _sql(vendor, *, parent, subgraphs):
    table = connection.ops.quote_name(Checkpoint._meta.db_table)
    parts = []
    if parent:
        parts.append(f"SELECT * FROM (SELECT *, {PARENT} AS lineage FROM {table}"
                     " WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s) AS parent")
    parts.append(f"SELECT * FROM (SELECT *, {CHILD} AS lineage FROM {table}"
                 " WHERE thread_id = %s AND checkpoint_ns = %s AND parent_checkpoint_id = %s"
                 f" ORDER BY checkpoint_id LIMIT {CHILDREN_SHOWN}) AS children")
    if subgraphs:
        parts.append(f"SELECT * FROM (SELECT *, {SUBGRAPH} AS lineage FROM {table}"
                     f" WHERE thread_id = %s AND checkpoint_ns <> '' AND {_ROOT_OF[vendor]} = %s"
                     f" ORDER BY checkpoint_ns, checkpoint_id LIMIT {SUBGRAPHS_SHOWN}) AS subgraphs")
    # In the database's collation, as the ORM's order_by would: the parent, the children, the subgraphs.
    return " UNION ALL ".join(parts) + " ORDER BY lineage, checkpoint_ns, checkpoint_id"


def lineage(cp):
    """(parent or None, children, subgraph checkpoints) of a mirrored checkpoint, as Checkpoint rows.

    The parent in the same namespace; the first CHILDREN_SHOWN children by
    id; for a root checkpoint, the first SUBGRAPHS_SHOWN subgraph
    checkpoints it ran, by namespace and id.
    """
    parent_id, root = cp.parent_checkpoint_id, cp.checkpoint_ns == ""
    params = [cp.thread_id, cp.checkpoint_ns, parent_id] if parent_id else []
    params += [cp.thread_id, cp.checkpoint_ns, cp.checkpoint_id]
    if root:
        params += [cp.thread_id, cp.checkpoint_id]
    rows = list(Checkpoint.objects.raw(_sql(connection.vendor, parent=bool(parent_id), subgraphs=root), params))
    parent = next((r for r in rows if r.lineage == PARENT), None)
    return parent, [r for r in rows if r.lineage == CHILD], [r for r in rows if r.lineage == SUBGRAPH]
