"""The checkpoint page's own mirror rows, each set in one statement written once per process.

The checkpoint with its thread and source, and its references with their
objects, were two ORM querysets with select_related: on a cached view of
the page, building and compiling them cost four times what the database
took to answer. Here each is a JOIN written once per process and database
from the models' own columns, read through the same converters the ORM
applies (dates from SQLite text, JSON), into the same model instances, read
fresh on every view: nothing is cached, so a sync, prune or reference check
shows at once.
"""

from functools import lru_cache

from django.db import connections, router

from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Source, Thread


class _Shape:
    """The columns of some models read side by side, and how each value comes out of the database."""

    def __init__(self, alias, tables):
        connection = connections[alias]
        qn = connection.ops.quote_name
        self.models, self.columns, self.converters = [], [], []
        for model, table_alias in tables:
            fields = model._meta.concrete_fields
            self.models.append((model, len(fields)))
            for field in fields:
                self.columns.append(f"{table_alias}.{qn(field.column)}")
                col = field.get_col(table_alias)
                convs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
                self.converters.append((convs, col) if convs else None)
        self.alias = alias

    def instances(self, row):
        connection = connections[self.alias]
        values = list(row)
        for i, conv in enumerate(self.converters):
            if conv is not None:
                convs, col = conv
                for c in convs:
                    values[i] = c(values[i], col, connection)
        out, start = [], 0
        for model, n in self.models:
            out.append(model.from_db(self.alias, None, values[start:start + n]))
            start += n
        return out


@lru_cache(maxsize=None)
def _checkpoint_sql(alias):
    qn = connections[alias].ops.quote_name
    shape = _Shape(alias, [(Checkpoint, "c"), (Thread, "t"), (Source, "s")])
    sql = (f"SELECT {', '.join(shape.columns)} FROM {qn(Checkpoint._meta.db_table)} c"
           f" JOIN {qn(Thread._meta.db_table)} t ON t.{qn('id')} = c.{qn('thread_id')}"
           f" JOIN {qn(Source._meta.db_table)} s ON s.{qn('id')} = t.{qn('source_id')}"
           f" WHERE c.{qn('id')} = %s")
    return sql, shape


@lru_cache(maxsize=None)
def _references_sql(alias):
    qn = connections[alias].ops.quote_name
    shape = _Shape(alias, [(ReferenceUse, "u"), (BlobReference, "r")])
    sql = (f"SELECT {', '.join(shape.columns)} FROM {qn(ReferenceUse._meta.db_table)} u"
           f" JOIN {qn(BlobReference._meta.db_table)} r ON r.{qn('id')} = u.{qn('reference_id')}"
           f" WHERE u.{qn('checkpoint_id')} = %s ORDER BY u.{qn('location')}")
    return sql, shape


def _rows(sql_and_shape, params):
    sql, shape = sql_and_shape
    with connections[shape.alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [shape.instances(row) for row in cursor.fetchall()]


def checkpoint(pk):
    """The mirrored checkpoint `pk` with its thread and the thread's source attached; None when gone.

    What `Checkpoint.objects.select_related("thread", "thread__source").get(pk=pk)` returns.
    """
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        return None
    rows = _rows(_checkpoint_sql(router.db_for_read(Checkpoint)), [pk])
    if not rows:
        return None
    ((cp, thread, source),) = rows
    thread.source = source
    cp.thread = thread
    return cp


def references(cp):
    """The checkpoint's uses of external objects, by location, each with its BlobReference attached.

    What `cp.reference_uses.select_related("reference").order_by("location")` returns.
    """
    uses = []
    for use, reference in _rows(_references_sql(router.db_for_read(ReferenceUse)), [cp.pk]):
        use.reference = reference
        uses.append(use)
    return uses
