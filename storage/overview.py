"""What the storage page shows of each store: the last sweep's listing and the last reference check.

A sweep lists every object under S3_PREFIX (or BLOB_ROOT) and records, per
store, the objects and bytes it saw, how many the mirror references and the
largest ones; the reference check HEADs every object the mirror references.
The page reads both as recorded, never lists a bucket itself: a listing of
millions of objects belongs to a job, not to a page view.
"""

from django.db.models import Count, Exists, Max, OuterRef, Q, Sum

from checkpoints.jobs import REFCHECK, SWEEP
from checkpoints.models import BlobReference, ReferenceUse, Run
from storage.sweep import store_labels

FAMILY_STORES = {"s3": ("s3", "minio"), "file": ("file",)}
LARGEST = 10


def last_sweep_of(label):
    """(run, the store's entry in its result) of the latest finished sweep that listed `label`, or (None, None).

    Dry runs count: they list the same objects. A store whose listing failed
    or stopped early is skipped for an older complete one.
    """
    for run in Run.objects.filter(kind=SWEEP, finished_at__isnull=False).order_by("-finished_at")[:20]:
        for stats in (run.result or {}).get("stores", []):
            if stats.get("store") == label and stats.get("complete"):
                return run, stats
    return None, None


def referenced_in(family):
    """The mirror's references into a store family that some checkpoint or write still names."""
    used = ReferenceUse.objects.filter(reference=OuterRef("pk"))
    return BlobReference.objects.filter(store__in=FAMILY_STORES[family]).filter(Exists(used))


def reference_check(family):
    """Counts and bytes of the referenced objects as the last reference check found them."""
    refs = referenced_in(family)
    totals = refs.aggregate(
        objects=Count("pk"),
        present=Count("pk", filter=Q(exists=True)),
        missing=Count("pk", filter=Q(exists=False)),
        unchecked=Count("pk", filter=Q(exists__isnull=True)),
        bytes=Sum("size", filter=Q(exists=True)),
        checked_at=Max("checked_at"),
    )
    totals["bytes"] = totals["bytes"] or 0
    totals["largest"] = list(refs.filter(exists=True, size__isnull=False).order_by("-size", "pk")[:LARGEST])
    run = Run.objects.filter(kind=REFCHECK, finished_at__isnull=False).order_by("-finished_at").first()
    totals["run"] = run
    return totals


def store_facts():
    """One dict per configured store, for the storage page."""
    stores = []
    for family, label in store_labels():
        run, listed = last_sweep_of(label)
        facts = {"family": family, "label": label, "sweep": run, "listed": listed, "checked": reference_check(family)}
        if listed:
            listed.setdefault("bytes", None)  # sweeps before this page recorded no bytes
            unreferenced = listed["objects"] - listed["referenced"]
            facts["unreferenced"] = unreferenced
            if listed.get("bytes") is not None and "referenced_bytes" in listed:
                facts["unreferenced_bytes"] = listed["bytes"] - listed["referenced_bytes"]
            uris = [o["uri"] for o in listed.get("largest", [])]
            known = set(referenced_in(family).filter(uri__in=uris).values_list("uri", flat=True))
            facts["largest"] = [(o["uri"], o["size"], o["uri"] in known) for o in listed.get("largest", [])]
        stores.append(facts)
    return stores
