"""Prune on an S3 checkpoint store: the `Maintenance` of the `s3` kind (checkpoints/sources/kind.py).

The same selection as the databases', the saver's delete rules.
checkpoints.prune decides what goes from each thread's ThreadSnapshot
(`choose`); this backend reads the snapshot from the thread's
listing and manifests and deletes as S3Saver does (docs/s3-layout.md §4-5):
a `delete` change entry per checkpoint (`delete_thread` for a whole thread)
first, then the manifests, then payloads and writes, at most 1000 keys a
request. The bucket has no transactions: the snapshot is re-read and
compared right before the delete, and a thread that changed in between is a
conflict, retried from a fresh read. Kept checkpoints keep their parent id
(the saver's own prune does the same; LangGraph treats a parent that is gone
as the start of the history), so `parents_nulled` counts the links that now
point at nothing.
"""

from __future__ import annotations

import secrets

from checkpoints import s3layout as layout
from checkpoints.decode import DELTA_KEYS
from checkpoints.prune_rows import Conflict, Row, ThreadSnapshot, WriteGroup
from checkpoints.sources import SourceError
from checkpoints.sources.s3.reader import S3Reader, _manifest


class S3Maintenance:
    workers = 1

    def __init__(self, url, settings):
        self.url = url
        self.settings = settings

    def connect(self):
        return S3Reader(self.url, self.settings, workers=8).__enter__()

    @staticmethod
    def release(conn):
        conn.__exit__(None, None, None)

    @staticmethod
    def retryable(exc) -> bool:
        return isinstance(exc, Conflict)

    @staticmethod
    def broken(conn) -> bool:
        return False

    @staticmethod
    def disk_bytes(conn) -> int:
        """Stored bytes under threads/ (a listing): what the bucket bills for the checkpoints."""
        base = conn.prefix + layout.THREADS
        return sum(o.get("Size", 0) for o in conn._list(base))

    @staticmethod
    def flush_stats(conn):
        pass

    @staticmethod
    def space(conn) -> dict:
        return {}

    @staticmethod
    def vacuum(conn):
        pass  # S3 frees deleted objects itself (noncurrent versions expire by the bucket's lifecycle)

    @staticmethod
    def candidates(conn, floor, only=None):
        conn._listing = None  # a fresh listing for each run
        found = {t for t, gs in conn._full_listing().items() if any(g.complete and g.checkpoint_id < floor for g in gs)}
        if only is not None:
            found &= set(only)
        return sorted(found)

    def prune_thread(self, conn, thread_id, choose, dry_run, *, metadata=False):
        # `metadata` is read anyway: it is in the manifests the snapshot needs.
        snapshot, keys = self._read(conn, thread_id)
        selection = choose(snapshot)
        if selection is None or selection.skip is not None or dry_run:
            return selection
        again, _ = self._read(conn, thread_id)
        if _fingerprint(again) != _fingerprint(snapshot):
            raise Conflict(f"{thread_id!r} changed while it was being pruned")
        self._delete(conn, thread_id, selection, keys)
        return selection

    @staticmethod
    def _read(conn, thread_id):
        groups = conn._thread_groups(thread_id)
        checkpoints, writes, keys = [], {}, {}
        delta = False
        latest_root, latest_metadata = None, None
        directories = {}
        for g in groups:
            directory = conn.prefix + layout.THREADS + g.rel_dir
            if not g.complete:
                continue  # a put in flight or a failed one: not a checkpoint, never pruned here
            directories[(g.ns, g.checkpoint_id)] = (directory, g)
        manifests = dict(zip(directories, conn.pool.map(lambda d: conn._get(d[0] + layout.MANIFEST), directories.values())))
        for (ns, cid), (directory, g) in directories.items():
            found = manifests[(ns, cid)]
            if found is None:
                continue  # deleted since the listing
            manifest = _manifest(directory + layout.MANIFEST, found[0], []) or {}
            metadata = manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else None
            root = None
            if metadata is not None:
                delta = delta or any(k in metadata for k in DELTA_KEYS)
                parents = metadata.get("parents")
                if isinstance(parents, dict) and isinstance(parents.get(""), str):
                    root = parents[""]
            delta = delta or bool(manifest.get("delta"))
            parent = manifest.get("parent_checkpoint_id")
            size = g.sizes.get(layout.MANIFEST, 0) + g.sizes.get(layout.PAYLOAD, 0)
            checkpoints.append(Row(ns, cid, parent if isinstance(parent, str) else None, root, size, None, False))
            if g.writes:
                writes[(ns, cid)] = WriteGroup(len(g.writes), sum(g.sizes[w] for w in g.writes), False)
            keys[(ns, cid)] = [directory + rel for rel in g.all_keys()]
            if ns == "" and (latest_root is None or cid > latest_root):
                latest_root, latest_metadata = cid, metadata
        if not delta:
            try:
                conn.client.head_object(Bucket=conn.bucket, Key=layout.delta_key(conn.prefix, thread_id))
                delta = True
            except Exception as e:  # noqa: BLE001
                from checkpoints.sources.s3.reader import _code

                if _code(e) not in ("404", "NoSuchKey", "NotFound"):
                    raise SourceError(f"reading s3://{conn.bucket}/{layout.delta_key(conn.prefix, thread_id)} failed: {e}") from None
        return ThreadSnapshot(thread_id, checkpoints, writes, {}, delta, latest_metadata), keys

    @staticmethod
    def _delete(conn, thread_id, selection, keys):
        when = layout.stamp()
        if selection.whole:
            entries = [layout.change_key(conn.prefix, "delete_thread", thread_id, when=when, rand=secrets.token_hex(4))]
        else:
            entries = [layout.change_key(conn.prefix, "delete", thread_id, ns, cid, when=when, rand=secrets.token_hex(4))
                       for ns, cid in selection.checkpoints]
        # The change entries go first: a reader seeing a manifest gone always finds an entry saying so.
        for key in entries:
            conn._call(f"writing s3://{conn.bucket}/{key} failed", "put_object", Key=key, Body=b"")
        doomed = [k for ck in selection.checkpoints for k in keys.get(ck, [])]
        manifests = [k for k in doomed if k.endswith("/" + layout.MANIFEST)]
        rest = [k for k in doomed if not k.endswith("/" + layout.MANIFEST)]
        for group in (manifests, rest):  # manifests first: no manifest outlives its payload
            for i in range(0, len(group), 1000):
                chunk = group[i : i + 1000]
                response = conn._call(f"deleting in s3://{conn.bucket}/{conn.prefix} failed", "delete_objects",
                                      Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise SourceError(f"could not delete {len(response['Errors'])} objects, e.g. "
                                      f"s3://{conn.bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        if selection.whole:
            conn._call("deleting the delta marker failed", "delete_object", Key=layout.delta_key(conn.prefix, thread_id))


def _fingerprint(snapshot):
    return (sorted((c.ns, c.id, c.bytes) for c in snapshot.checkpoints),
            sorted((k, w.count, w.bytes) for k, w in snapshot.writes.items()))
