"""The checkpoint page's lineage: its parent, children and subgraph checkpoints, in one statement.

A cached view of a checkpoint spent over half of its interpreter time in the
ORM, most of it building querysets rather than running them; the three
lineage querysets (the subgraph one with its JSON cast the dearest) were a
third of it. One UNION ALL of the three capped lists, written once per
process and database and read without the ORM (dashboard.rowreader), runs
with the checkpoint's values: the same rows, through the same indexes, in
the same order. Only the JSON expression differs by database.
"""

from functools import lru_cache

from django.db import connections, router

from checkpoints.models import Checkpoint
from dashboard.rowreader import Shape, rows

CHILDREN_SHOWN = 50
SUBGRAPHS_SHOWN = 50

# Subgraph checkpoints name the root checkpoint that ran them in metadata.parents[""], a string.
_ROOT_OF = {
    "postgresql": "(metadata -> 'parents' ->> '')",
    "sqlite": "json_extract(metadata, '$.parents.\"\"')",
}
PARENT, CHILD, SUBGRAPH = 0, 1, 2


@lru_cache(maxsize=None)
def _sql(alias, *, parent, subgraphs):
    connection = connections[alias]
    table = connection.ops.quote_name(Checkpoint._meta.db_table)
    shape = Shape(alias, [(Checkpoint, "c")])
    columns = ", ".join(shape.columns)
    parts = []
    if parent:
        parts.append(f"SELECT * FROM (SELECT {columns}, {PARENT} AS lineage FROM {table} c"
                     " WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s) AS parent")
    parts.append(f"SELECT * FROM (SELECT {columns}, {CHILD} AS lineage FROM {table} c"
                 " WHERE thread_id = %s AND checkpoint_ns = %s AND parent_checkpoint_id = %s"
                 f" ORDER BY checkpoint_id LIMIT {CHILDREN_SHOWN}) AS children")
    if subgraphs:
        parts.append(f"SELECT * FROM (SELECT {columns}, {SUBGRAPH} AS lineage FROM {table} c"
                     f" WHERE thread_id = %s AND checkpoint_ns <> '' AND {_ROOT_OF[connection.vendor]} = %s"
                     f" ORDER BY checkpoint_ns, checkpoint_id LIMIT {SUBGRAPHS_SHOWN}) AS subgraphs")
    # In the database's collation, as the ORM's order_by would: the parent, the children, the subgraphs.
    return " UNION ALL ".join(parts) + " ORDER BY lineage, checkpoint_ns, checkpoint_id", shape


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
    found = rows(*_sql(router.db_for_read(Checkpoint), parent=bool(parent_id), subgraphs=root), params)
    parent = next((c for c, kind in found if kind == PARENT), None)
    return parent, [c for c, kind in found if kind == CHILD], [c for c, kind in found if kind == SUBGRAPH]
