"""Daily usage per source: what the growth charts and the forecast read.

The first sync of a source backfills history from checkpoint creation times
(a UTC day each); later syncs capture today's row from the source's running
totals (checkpoints.totals), which each batch of the sync keeps up to date.
Backfilled totals are running sums of what each day added, so days before the
first sync show the bytes of the checkpoints that still exist, not the bytes
that were since pruned.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from checkpoints import totals as running_totals
from checkpoints.models import BlobReference, Checkpoint, DailyUsage, ReferenceUse, Thread


def thread_totals(source) -> dict:
    """The sums over a source's mirrored threads and today's additions, from its running totals (one row)."""
    row = running_totals.current(source.pk)
    return {
        "day": row["day"], "threads": row["threads"], "checkpoints": row["checkpoints"],
        "blob_rows": row["blob_rows"], "write_rows": row["write_rows"], "stored": row["stored_bytes"],
        "ckpt": row["checkpoint_bytes"], "blobs": row["blob_bytes"], "writes": row["write_bytes"],
        "new_threads": row["day_threads"], "added": row["day_checkpoints"], "bytes_added": row["day_bytes"],
    }


def capture(source, totals=None):
    """Today's row of the source's usage; `totals`: thread_totals() if the caller has them."""
    if not DailyUsage.objects.filter(source=source).exists():
        backfill(source)
    today = timezone.now().date()
    if totals is None or totals["day"] != today:
        totals = thread_totals(source)
    external = external_bytes(source)
    yesterday = DailyUsage.objects.filter(source=source, day__lt=today).order_by("-day").first()
    DailyUsage.objects.update_or_create(
        source=source, day=today,
        defaults={
            "threads": totals["threads"] or 0,
            "checkpoints": totals["checkpoints"] or 0,
            "stored_bytes": totals["stored"] or 0,
            "checkpoint_bytes": totals["ckpt"] or 0,
            "blob_bytes": totals["blobs"] or 0,
            "write_bytes": totals["writes"] or 0,
            "external_bytes": external,
            "checkpoints_added": totals["added"],
            "bytes_added": totals["bytes_added"],
            "threads_added": totals["new_threads"] or 0,
            "external_bytes_added": max(0, external - (yesterday.external_bytes if yesterday else 0)),
        },
    )
    DailyUsage.objects.filter(source=source, day__lt=today - timedelta(days=settings.USAGE_KEEP_DAYS)).delete()


def backfill(source):
    """Rebuild past days from the mirror: one aggregate query, grouped by day."""
    rows = (
        Checkpoint.objects.filter(source=source)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("pk"), new=Sum("new_bytes"), ckpt=Sum("row_bytes"), writes=Sum("write_bytes"))
        .order_by("day")
    )
    new_threads = dict(
        Thread.objects.filter(source=source)
        .annotate(day=TruncDate("first_checkpoint_at"))
        .values("day")
        .annotate(n=Count("pk"))
        .values_list("day", "n")
    )
    keep_from = timezone.now().date() - timedelta(days=settings.USAGE_KEEP_DAYS)
    running = {"checkpoints": 0, "stored": 0, "ckpt": 0, "writes": 0, "threads": 0}
    objs = []
    for row in rows:
        day = row["day"]
        running["checkpoints"] += row["n"]
        running["stored"] += row["new"] or 0
        running["ckpt"] += row["ckpt"] or 0
        running["writes"] += row["writes"] or 0
        running["threads"] += new_threads.get(day, 0)
        if day < keep_from:
            continue
        objs.append(DailyUsage(
            source=source, day=day, checkpoints=running["checkpoints"], stored_bytes=running["stored"],
            checkpoint_bytes=running["ckpt"], write_bytes=running["writes"],
            blob_bytes=running["stored"] - running["ckpt"] - running["writes"], threads=running["threads"],
            checkpoints_added=row["n"], bytes_added=row["new"] or 0, threads_added=new_threads.get(day, 0),
        ))
    DailyUsage.objects.bulk_create(objs, batch_size=1000, ignore_conflicts=True)


def external_bytes(source) -> int:
    """Bytes of the present external objects the source's checkpoints reference."""
    used = ReferenceUse.objects.filter(thread__source=source).values("reference")
    total = BlobReference.objects.filter(pk__in=used, exists=True).aggregate(s=Sum("size"))["s"]
    return total or 0

