"""Ground truth for the mirror, computed by SQL on the source.

Written from the byte-accounting contract of docs/architecture.md §3, independently of
checkpoints/sync.py, so that the tests compare two implementations.
"""

import json
import sqlite3

import psycopg

PG_CHECKPOINTS = """
WITH c AS (
  SELECT c.*, CASE WHEN jsonb_typeof(c.checkpoint->'channel_versions') = 'object'
                   THEN c.checkpoint->'channel_versions' ELSE '{}'::jsonb END AS cv
  FROM checkpoints c
)
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, coalesce(c.parent_checkpoint_id, ''),
  octet_length(c.checkpoint::text) + octet_length(c.metadata::text) AS row_bytes,
  coalesce((SELECT sum(coalesce(octet_length(b.blob), 0)) FROM jsonb_each_text(c.cv) v
            JOIN checkpoint_blobs b ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
             AND b.channel = v.key AND b.version = v.value), 0) AS blob_bytes,
  coalesce((SELECT sum(octet_length(w.blob)) FROM checkpoint_writes w WHERE w.thread_id = c.thread_id
             AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id), 0) AS write_bytes,
  (SELECT count(*) FROM checkpoint_writes w WHERE w.thread_id = c.thread_id
             AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id) AS write_count,
  coalesce((SELECT sum(coalesce(octet_length(b.blob), 0)) FROM jsonb_each_text(c.cv) v
            JOIN checkpoint_blobs b ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
             AND b.channel = v.key AND b.version = v.value
            WHERE p.checkpoint IS NULL OR (p.checkpoint->'channel_versions'->>v.key) IS DISTINCT FROM v.value), 0)
    AS new_blob_bytes,
  c.metadata
FROM c LEFT JOIN checkpoints p ON p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns
  AND p.checkpoint_id = c.parent_checkpoint_id
"""

PG_STORED = """
SELECT thread_id, sum(bytes) FROM (
  SELECT thread_id, octet_length(checkpoint::text) + octet_length(metadata::text) AS bytes FROM checkpoints
  UNION ALL SELECT thread_id, coalesce(octet_length(blob), 0) FROM checkpoint_blobs
  UNION ALL SELECT thread_id, octet_length(blob) FROM checkpoint_writes
) r WHERE thread_id IN (SELECT thread_id FROM checkpoints) GROUP BY thread_id
"""

SQLITE_CHECKPOINTS = """
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, coalesce(c.parent_checkpoint_id, ''),
  coalesce(length(CAST(c.checkpoint AS BLOB)), 0) + coalesce(length(CAST(c.metadata AS BLOB)), 0),
  0,
  coalesce((SELECT sum(coalesce(length(CAST(w.value AS BLOB)), 0)) FROM writes w WHERE w.thread_id = c.thread_id
            AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id), 0),
  (SELECT count(*) FROM writes w WHERE w.thread_id = c.thread_id
            AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id),
  0,
  CAST(c.metadata AS TEXT)
FROM checkpoints c
"""

SQLITE_STORED = """
SELECT thread_id, sum(bytes) FROM (
  SELECT thread_id, coalesce(length(CAST(checkpoint AS BLOB)), 0) + coalesce(length(CAST(metadata AS BLOB)), 0) AS bytes
  FROM checkpoints
  UNION ALL SELECT thread_id, coalesce(length(CAST(value AS BLOB)), 0) FROM writes
) WHERE thread_id IN (SELECT thread_id FROM checkpoints) GROUP BY thread_id
"""


def s3_rows(url: str):
    """The rows source_truth() computes, from a listing of an S3Saver prefix and its manifests.

    Written from docs/s3-layout.md, not with checkpoints.s3layout: keys split
    by hand, sizes as listed. A checkpoint exists iff its manifest does; its
    row = manifest + payload objects, its writes = the objects under writes/,
    no blob rows; stored bytes = every object of its thread's checkpoints.
    """
    from urllib.parse import unquote, urlsplit

    import boto3
    from botocore.config import Config
    from django.conf import settings

    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    client = boto3.client(
        "s3", endpoint_url=settings.S3_ENDPOINT_URL, region_name=settings.AWS_REGION,
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID, aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    dirs = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "threads/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix + "threads/"):].split("/")
            if len(rel) < 4:
                continue
            dirs.setdefault(tuple(rel[:3]), {})["/".join(rel[3:])] = obj["Size"]

    def segment(text):
        return "" if text == "_" else unquote(text)

    rows, stored = [], {}
    for (t, n, inv), objects in dirs.items():
        if "manifest.json" not in objects:
            continue
        thread, ns = segment(t), segment(n)
        cid = inv.translate(str.maketrans("0123456789abcdef", "fedcba9876543210"))
        manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}threads/{t}/{n}/{inv}/manifest.json")["Body"].read())
        assert (manifest["thread_id"], manifest["checkpoint_ns"], manifest["checkpoint_id"]) == (thread, ns, cid)
        row = objects["manifest.json"] + objects.get("payload", 0)
        writes = [size for rel, size in objects.items() if rel.startswith("writes/")]
        rows.append((thread, ns, cid, manifest.get("parent_checkpoint_id") or "", row, 0, sum(writes), len(writes), 0,
                     manifest["metadata"]))
        stored[thread] = stored.get(thread, 0) + row + sum(writes)
    return rows, stored


def source_truth(url: str) -> dict:
    """{"checkpoints": {(thread, ns, id): {...}}, "threads": {thread: {...}}}."""
    if url.startswith(("s3:", "minio:")):
        rows, stored = s3_rows(url)
    elif url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(SQLITE_CHECKPOINTS).fetchall()
            stored = dict(conn.execute(SQLITE_STORED).fetchall())
        finally:
            conn.close()
        rows = [r[:9] + (json.loads(r[9]) if r[9] else {},) for r in rows]
    else:
        with psycopg.connect(url) as conn:
            rows = conn.execute(PG_CHECKPOINTS).fetchall()
            stored = dict(conn.execute(PG_STORED).fetchall())
    checkpoints = {}
    for thread, ns, cid, parent, row, blob, write, write_count, new_blob, metadata in rows:
        checkpoints[(thread, ns, cid)] = {
            "parent_checkpoint_id": parent,
            "row_bytes": row,
            "blob_bytes": blob,
            "write_bytes": write,
            "write_count": write_count,
            "logical_bytes": row + blob + write,
            "new_bytes": row + write + new_blob,
            "metadata": metadata,
        }
    threads = {}
    for (thread, ns, cid), c in checkpoints.items():
        t = threads.setdefault(thread, {"checkpoints": 0, "latest": None})
        t["checkpoints"] += 1
        if ns == "" and (t["latest"] is None or cid > t["latest"]):
            t["latest"] = cid
    for thread, t in threads.items():
        latest = checkpoints.get((thread, "", t["latest"])) if t["latest"] else None
        t["logical_bytes"] = latest["logical_bytes"] if latest else 0
        t["stored_bytes"] = int(stored[thread])
        t["latest_metadata"] = latest["metadata"] if latest else {}
    return {"checkpoints": checkpoints, "threads": threads}


def expected_tags(metadata: dict) -> dict:
    """Tags per the contract, written out plainly for the comparison."""
    own = {"source", "step", "parents", "writes", "thread_id", "checkpoint_ns", "checkpoint_id", "run_id",
           "counters_since_delta_snapshot"}
    secret_words = ("key", "token", "secret", "password", "auth")
    tags = {}
    for key, value in metadata.items():
        if key in own or any(w in key.lower() for w in secret_words) or value is None or "\x00" in key:
            continue
        if isinstance(value, str) and "\x00" in value:
            continue
        if isinstance(value, bool):
            tags[key] = "true" if value else "false"
        elif isinstance(value, str):
            tags[key] = value
        elif isinstance(value, (int, float)):
            tags[key] = json.dumps(value)
    return tags


def assert_mirror_consistent():
    """No mirror row points at a row that is gone, and each copied source is its thread's.

    The mirror's tables have no foreign key constraints (checkpoints/models.py,
    Tag): this is what the constraints would have enforced.
    """
    from django.db.models import F

    from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Tag, Thread

    threads = Thread.objects.values("pk")
    assert not Checkpoint.objects.exclude(thread_id__in=threads).exists(), "checkpoints of a deleted thread"
    assert not Tag.objects.exclude(thread_id__in=threads).exists(), "tags of a deleted thread"
    assert not ReferenceUse.objects.exclude(thread_id__in=threads).exists(), "references of a deleted thread"
    assert not ReferenceUse.objects.exclude(checkpoint_id=None).exclude(
        checkpoint_id__in=Checkpoint.objects.values("pk")
    ).exists(), "references of a deleted checkpoint"
    assert not ReferenceUse.objects.exclude(reference_id__in=BlobReference.objects.values("pk")).exists()
    # Only a pending write may outlive its checkpoint row; state is always linked to its checkpoint.
    assert not ReferenceUse.objects.filter(checkpoint_id=None).exclude(location__startswith="write:").exists()
    assert not Checkpoint.objects.exclude(source_id=F("thread__source_id")).exists()
    assert not Tag.objects.exclude(source_id=F("thread__source_id")).exists()
    assert not ReferenceUse.objects.exclude(checkpoint_id=None).exclude(thread_id=F("checkpoint__thread_id")).exists()


def assert_mirror_matches(source, url):
    """Every thread, checkpoint key, size and tag of the mirror equals the source."""
    from checkpoints.ids import source_thread_id
    from checkpoints.models import Checkpoint, Thread

    assert_mirror_consistent()
    truth = source_truth(url)
    # The mirror holds the source's id under thread_key() (NUL escaped): compared in the source's form.
    mirror_threads = {source_thread_id(t.thread_id): t for t in Thread.objects.filter(source=source)}
    assert set(mirror_threads) == set(truth["threads"])
    for thread_id, t in truth["threads"].items():
        m = mirror_threads[thread_id]
        assert (m.checkpoints, m.logical_bytes, m.stored_bytes, m.latest_checkpoint_id or None) == (
            t["checkpoints"], t["logical_bytes"], t["stored_bytes"], t["latest"]
        ), thread_id
        assert m.tags == expected_tags(t["latest_metadata"]), thread_id
        assert dict(m.tag_rows.values_list("key", "value")) == m.tags
    mirror = {
        (source_thread_id(c.thread.thread_id), c.checkpoint_ns, c.checkpoint_id): c
        for c in Checkpoint.objects.filter(source=source).select_related("thread")
    }
    assert set(mirror) == set(truth["checkpoints"])
    for key, expected in truth["checkpoints"].items():
        m = mirror[key]
        got = {f: getattr(m, f) for f in expected if f != "metadata"}
        assert got == {f: v for f, v in expected.items() if f != "metadata"}, key
        assert m.metadata == expected["metadata"], key
    return truth
