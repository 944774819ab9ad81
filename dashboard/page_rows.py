"""The checkpoint page's own mirror rows, each set in one statement written once per process.

The checkpoint with its thread and source, and its references with their
objects, were two ORM querysets with select_related: on a cached view of
the page, building and compiling them cost four times what the database
took to answer. Here each is a JOIN written once per process and database
(dashboard.rowreader), into the same model instances, read fresh on every
view: nothing is cached, so a sync, prune or reference check shows at once.
"""

from functools import lru_cache

from django.db import connections, router

from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Source, Thread
from dashboard.rowreader import Shape, rows


@lru_cache(maxsize=None)
def _checkpoint_sql(alias):
    qn = connections[alias].ops.quote_name
    shape = Shape(alias, [(Checkpoint, "c"), (Thread, "t"), (Source, "s")])
    sql = (f"SELECT {', '.join(shape.columns)} FROM {qn(Checkpoint._meta.db_table)} c"
           f" JOIN {qn(Thread._meta.db_table)} t ON t.{qn('id')} = c.{qn('thread_id')}"
           f" JOIN {qn(Source._meta.db_table)} s ON s.{qn('id')} = t.{qn('source_id')}"
           f" WHERE c.{qn('id')} = %s")
    return sql, shape


@lru_cache(maxsize=None)
def _references_sql(alias):
    qn = connections[alias].ops.quote_name
    shape = Shape(alias, [(ReferenceUse, "u"), (BlobReference, "r")])
    sql = (f"SELECT {', '.join(shape.columns)} FROM {qn(ReferenceUse._meta.db_table)} u"
           f" JOIN {qn(BlobReference._meta.db_table)} r ON r.{qn('id')} = u.{qn('reference_id')}"
           f" WHERE u.{qn('checkpoint_id')} = %s ORDER BY u.{qn('location')}")
    return sql, shape


def checkpoint(pk):
    """The mirrored checkpoint `pk` with its thread and the thread's source attached; None when gone.

    What `Checkpoint.objects.select_related("thread", "thread__source").get(pk=pk)` returns.
    """
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        return None
    found = rows(*_checkpoint_sql(router.db_for_read(Checkpoint)), [pk])
    if not found:
        return None
    ((cp, thread, source),) = found
    thread.source = source
    cp.thread = thread
    return cp


def references(cp):
    """The checkpoint's uses of external objects, by location, each with its BlobReference attached.

    What `cp.reference_uses.select_related("reference").order_by("location")` returns.
    """
    uses = []
    for use, reference in rows(*_references_sql(router.db_for_read(ReferenceUse)), [cp.pk]):
        use.reference = reference
        uses.append(use)
    return uses
