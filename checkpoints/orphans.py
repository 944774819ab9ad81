"""Database orphans: rows of a LangGraph store that nothing reads any more (docs/architecture.md, "Source kinds").

Blob rows no checkpoint's channel_versions names, in threads with no
checkpoint or write newer than the grace (put writes blob rows before the
checkpoint row), and write rows whose checkpoint row is gone and whose
checkpoint_id is older than the grace. DeltaChannel threads are left alone:
their ancestors' writes are live data. Like prune, this deletes LangGraph rows,
so it lives beside it; the rows and how they are deleted are the kind's
(`SourceKind.orphans`). The sweep runs it per source and refreshes the touched
threads' mirror after.
"""

from checkpoints.ids import uuid6_floor
from checkpoints.sources import SourceError, registry


def db_orphans(source, cutoff, *, dry_run: bool) -> dict:
    """Count (dry run) or delete a source's orphan rows older than `cutoff`; {"blobs", "writes", "thread_ids"}.

    The count and the delete select the same rows, so a dry run counts
    exactly what a real run on the same data removes.
    """
    try:
        kind = registry.for_source(source)
    except ValueError as e:
        raise SourceError(str(e)) from None
    return kind.orphans(source.url, uuid6_floor(cutoff), dry_run=dry_run)
