"""A source's running totals (SourceTotals): the mirror's sums, kept by difference.

The usage bookkeeping after each sync needs the sums of a source's threads
and the count of today's checkpoints; summing them from the mirror grew with
the source (0.5-0.6 s at 5 M checkpoints, most of an incremental sync).
Instead, every transaction that rewrites threads adds what it changed to one
row per source, as its last statement: the row is locked from there to the
commit, so concurrent writers (a sync and a prune's refresh) add up in turn,
and a writer that rolls back takes its difference with it.

The figures are exact as long as every writer of Thread and Checkpoint rows
goes through here (checkpoints.sync's batches, which prune's refresh uses
too, and a source's removal). When the row is missing, or counts another day,
it is counted again from the mirror, in the same transaction: rows that
other transactions have not committed yet are added by them afterwards.
recount() does that for all of it, where a sync reads the whole mirror
anyway (a full sync, a scan that compared every thread): a repair, should a
writer outside this module ever change the mirror.
"""

from datetime import UTC, datetime, time, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from checkpoints.models import Checkpoint, SourceTotals, Thread

THREAD_SUMS = ("checkpoints", "blob_rows", "write_rows", "stored_bytes", "checkpoint_bytes", "blob_bytes", "write_bytes")
DAY_FIELDS = ("day_checkpoints", "day_bytes", "day_threads")
FIELDS = ("threads", *THREAD_SUMS, *DAY_FIELDS)


def day_bounds(day):
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


class Delta:
    """What one transaction changes in a source's totals; day_* count `day` (today when not given)."""

    def __init__(self, day=None):
        self.day = day or timezone.now().date()
        self.start, self.end = day_bounds(self.day)
        self.values = dict.fromkeys(FIELDS, 0)

    def __bool__(self):
        return any(self.values.values())

    def thread(self, fields, sign):
        """A thread's row as it was (sign -1: a Thread) or as it is written (+1: a dict of its fields)."""
        get = fields.get if isinstance(fields, dict) else fields.__getattribute__
        values = self.values
        values["threads"] += sign
        for f in THREAD_SUMS:
            values[f] += sign * (get(f) or 0)
        first = get("first_checkpoint_at")
        if first is not None and self.start <= first < self.end:
            values["day_threads"] += sign

    def checkpoint(self, created_at, new_bytes, sign):
        if created_at >= self.start:
            self.values["day_checkpoints"] += sign
            self.values["day_bytes"] += sign * (new_bytes or 0)

    def checkpoints_of(self, thread_pks, sign):
        """The day's checkpoints of these threads as the mirror holds them (before their deletion)."""
        found = Checkpoint.objects.filter(thread_id__in=thread_pks, created_at__gte=self.start).aggregate(
            n=Count("pk"), b=Sum("new_bytes"))
        self.values["day_checkpoints"] += sign * found["n"]
        self.values["day_bytes"] += sign * (found["b"] or 0)


def apply(source_pk, delta):
    """Add a transaction's difference to the source's totals; call it last in that transaction."""
    if not delta:
        return
    sums = {f: F(f) + v for f, v in delta.values.items() if v and f not in DAY_FIELDS}
    days = {f: F(f) + delta.values[f] for f in DAY_FIELDS}
    if SourceTotals.objects.filter(source_id=source_pk, day=delta.day).update(**sums, **days):
        return
    with transaction.atomic():
        if _lock(source_pk, sums):
            # Another day: counted again, this transaction's rows included.
            SourceTotals.objects.filter(source_id=source_pk).update(**_count_day(source_pk, delta.day))
        elif not _create(source_pk, delta.day):
            apply(source_pk, delta)  # created meanwhile by another transaction: add to it


def current(source_pk, day=None) -> dict:
    """The source's totals, day_* counting `day` (today): one row read, counted from the mirror when needed."""
    day = day or timezone.now().date()
    row = SourceTotals.objects.filter(source_id=source_pk).values(*FIELDS, "day").first()
    if row is not None and row["day"] == day:
        return row
    with transaction.atomic():
        if _lock(source_pk, {}):
            SourceTotals.objects.filter(source_id=source_pk).update(**_count_day(source_pk, day))
        else:
            _create(source_pk, day)
    return SourceTotals.objects.filter(source_id=source_pk).values(*FIELDS, "day").first()


def recount(source_pk, day=None) -> dict:
    """Set the source's totals from the mirror; returns what was wrong: {field: (kept, counted)}.

    Under the row's lock, the row holds what every committed writer added, as
    the mirror does, and neither holds what is not committed yet: any
    difference is a drift, never a race.
    """
    day = day or timezone.now().date()
    with transaction.atomic():
        kept = SourceTotals.objects.select_for_update().filter(source_id=source_pk).values(*FIELDS, "day").first()
        if kept is None:
            _create(source_pk, day)
            return {}
        counted = fresh(source_pk, day)
        SourceTotals.objects.filter(source_id=source_pk).update(**counted)
    compared = FIELDS if kept["day"] == day else ("threads", *THREAD_SUMS)
    return {f: (kept[f], counted[f]) for f in compared if kept[f] != counted[f]}


def fresh(source_pk, day=None) -> dict:
    """The totals summed from the mirror now (what the row must equal); O(mirror)."""
    day = day or timezone.now().date()
    sums = Thread.objects.filter(source_id=source_pk).aggregate(threads=Count("pk"), **{f: Sum(f) for f in THREAD_SUMS})
    return {**{k: v or 0 for k, v in sums.items()}, **_count_day(source_pk, day)}


def _lock(source_pk, sums) -> bool:
    """Lock the source's row (adding `sums` if any); False when it has none."""
    if sums:
        return SourceTotals.objects.filter(source_id=source_pk).update(**sums) > 0
    return bool(SourceTotals.objects.select_for_update().filter(source_id=source_pk).values_list("pk"))


def _create(source_pk, day) -> bool:
    """Create the row from the mirror; False when another transaction created it first."""
    try:
        with transaction.atomic():
            SourceTotals.objects.create(source_id=source_pk, **fresh(source_pk, day))
    except IntegrityError:
        return False
    return True


def _count_day(source_pk, day) -> dict:
    start, end = day_bounds(day)
    found = Checkpoint.objects.filter(source_id=source_pk, created_at__gte=start).aggregate(
        n=Count("pk"), b=Sum("new_bytes"))
    threads = Thread.objects.filter(source_id=source_pk, first_checkpoint_at__gte=start, first_checkpoint_at__lt=end).count()
    return {"day": day, "day_checkpoints": found["n"], "day_bytes": found["b"] or 0, "day_threads": threads}
