"""Reader of an S3 checkpoint store written by storage.s3saver.S3Saver (docs/s3-layout.md).

The bucket has no transactions and no row counts: a sync finds what changed
through the saver's change index, one listing that starts after the previous
sync's watermark (less an overlap, for entries that became visible late),
and re-reads each thread an entry names whole: its listing (sizes of every
object), its manifests (metadata, parent, versions), its payloads and writes
(searched for blob URIs, never unpickled; a payload is not read when its
manifest's `refs` already say which URIs its values hold, docs/s3-layout.md
§2). A first sync lists `threads/`
once instead. Deletions arrive as entries too (`delete`, `delete_thread`):
re-reading the thread finds its manifests gone.

Sizes are the stored objects' (what the bucket bills, after compression): a
checkpoint row = its manifest + its payload object, a write row = its
object; there are no blob rows (a payload holds every value of its
checkpoint, nothing is shared between checkpoints).

What cannot be read (a manifest whose payload is missing or corrupt, an
object under the prefix the saver did not write, an undecodable key) does
not stop the sync: the checkpoint is mirrored from its manifest with
`problem` saying what is wrong, other keys are listed in `problems`, and the
rest is mirrored.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from checkpoints import s3layout as layout
from checkpoints.sources import CheckpointRow, ScannedURIs, SourceError, ThreadRows, TypedValues, WriteRow, first_line

# Entries may become visible after entries with later stamps (writers stamp
# before they send, on their own clocks): each sync lists from this long
# before its watermark (docs/s3-layout.md §4, "Watermark and overlap").
OVERLAP_SECONDS = 300
# Objects of one thread are fetched this many at a time.
WORKERS = 10  # botocore keeps 10 connections per client: more threads would open and drop connections
# Problems kept for the sources page (the count is exact, the list is cut).
MAX_PROBLEMS = 100
# Payloads and writes larger than this are not fetched for references: their
# checkpoint's references are then unknown (counted as undecodable).
FETCH_LIMIT = 256 * 1024 * 1024


def parse_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of `s3://bucket/prefix/` or `minio://bucket/prefix/`; prefix "" or ending in "/".

    >>> parse_url("s3://b/agents/prod"), parse_url("minio://b"), parse_url("s3://b/")
    (('s3', 'b', 'agents/prod/'), ('minio', 'b', ''), ('s3', 'b', ''))
    >>> parse_url("s3:///x")
    Traceback (most recent call last):
    ...
    ValueError: s3:///x names no bucket: write s3://bucket/prefix/
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("s3", "minio"):
        raise ValueError(f"not an S3 URL: {url}")
    if not parts.netloc:
        raise ValueError(f"{url} names no bucket: write {scheme}://bucket/prefix/")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{url}: write {scheme}://bucket/prefix/ (endpoint and credentials come from the S3 settings)")
    prefix = unquote(parts.path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return scheme, parts.netloc, prefix


class S3Reader:
    kind = "s3"

    def __init__(self, url: str, settings, *, client=None, workers: int | None = None, overlap: float | None = None,
                 manifest_refs: bool = True):
        """`settings`: a checkpoints.s3client.S3Settings for the endpoint and credentials (bucket and
        prefix come from the URL). `manifest_refs`: take a checkpoint's references from its
        manifest's `refs` when they can be trusted (s3layout.manifest_refs) instead of reading its
        payload; False reads every payload (the sweep's last look before deleting)."""
        self.manifest_refs = manifest_refs
        self.url = url
        _, self.bucket, self.prefix = parse_url(url)
        self.settings = settings.replace(bucket=self.bucket, prefix=self.prefix)
        self.client = client
        self.workers = workers or WORKERS
        self.overlap = OVERLAP_SECONDS if overlap is None else overlap
        self.where = f"s3://{self.bucket}/{self.prefix}"
        self.started = None
        self.pool = None
        self._listing = None  # thread id -> [Group], from one listing of threads/ (a full sync)
        self._changes = {}  # since stamp -> [Change]
        self._lock = threading.Lock()
        self.problems = []  # [{"key", "error"}], at most MAX_PROBLEMS
        self.problem_count = 0

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self):
        from checkpoints.s3client import build_client

        if self.client is None:
            try:
                # Nothing here reads a LastModified: dates stay text (a listing's client time drops by half).
                self.client = build_client(self.settings, max_pool_connections=max(10, self.workers), raw_timestamps=True)
            except Exception as e:  # noqa: BLE001 - botocore's errors name no common base
                raise SourceError(f"cannot open {self.where}: {first_line(e)}") from None
        self.started = time.time()
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="s3-read")
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        return False

    # --- requests ------------------------------------------------------------------------
    def _call(self, what: str, name: str, **kwargs):
        """One request; a SourceError naming the object (and the server) when S3 fails."""
        try:
            return getattr(self.client, name)(Bucket=self.bucket, **kwargs)
        except Exception as e:  # noqa: BLE001 - ClientError, connection and timeout errors alike
            raise SourceError(f"{what}: {_describe(e, self.settings)}") from None

    def _list(self, prefix: str, start_after: str | None = None):
        kwargs = {"Prefix": prefix, "MaxKeys": 1000}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            response = self._call(f"listing s3://{self.bucket}/{prefix} failed", "list_objects_v2", **kwargs)
            yield from response.get("Contents", [])
            if not response.get("IsTruncated"):
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = response["NextContinuationToken"]

    def _get(self, key: str) -> tuple[bytes, dict] | None:
        """An object's body and user metadata; None when it is gone (404)."""
        found = self._get_version(key)
        return found[:2] if found is not None else None

    def _get_version(self, key: str) -> tuple[bytes, dict, dict] | None:
        """An object's body, user metadata and version as a listing names it ({"ETag", "Size"}); None when gone."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
            return body, response.get("Metadata") or {}, {"ETag": response.get("ETag", ""), "Size": len(body)}
        except Exception as e:  # noqa: BLE001
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            if _code(e) == "InvalidObjectState":
                raise _Unreadable(f"s3://{self.bucket}/{key} is archived (restore it to read it)") from None
            raise SourceError(f"reading s3://{self.bucket}/{key} failed: {_describe(e, self.settings)}") from None

    def _problem(self, key: str, error: str):
        with self._lock:
            self.problem_count += 1
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append({"key": key, "error": error})

    # --- the reader interface ------------------------------------------------------------
    def layout(self) -> str:
        """`s3-format-1`, or a SourceError: no bucket, no access, nothing of the saver's under the prefix."""
        response = self._call(f"cannot read {self.where}", "list_objects_v2", Prefix=self.prefix, MaxKeys=1)
        if not response.get("KeyCount") and not response.get("Contents"):
            raise SourceError(
                f"{self.where} holds no S3Saver objects (threads/, changes/): is the prefix right, and has an agent "
                "written a checkpoint there? (the console never creates anything)"
            )
        return f"s3-format-{layout.FORMAT}"

    def space(self) -> dict:
        """The prefix's objects and bytes when this sync listed them all (a full sync); the bucket's name always."""
        found = {"kind": "s3", "bucket": self.bucket, "prefix": self.prefix, **self._bucket_features()}
        if self._listing is not None:
            groups = [g for gs in self._listing.values() for g in gs]
            found["objects"] = sum(len(g.sizes) for g in groups)
            found["bytes"] = sum(sum(g.sizes.values()) for g in groups)
        return found

    def _bucket_features(self) -> dict:
        """Versioning, the saver's lifecycle rules (IDs `s3saver:<prefix>:`) and default encryption, as far as
        the console may read them; each is "unknown (...)" when the server refuses."""
        out = {}
        try:
            out["versioning"] = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status") or "off"
        except Exception as e:  # noqa: BLE001 - a panel figure, never a sync failure
            out["versioning"] = f"unknown ({_code(e) or first_line(e)})"
        try:
            rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
            mine = [r for r in rules if str(r.get("ID", "")).startswith(f"s3saver:{self.prefix}:")]
            out["lifecycle"] = [{"id": r.get("ID"), "status": r.get("Status"),
                                 "expiration_days": (r.get("Expiration") or {}).get("Days"),
                                 "transitions": [(t.get("Days"), t.get("StorageClass")) for t in r.get("Transitions", [])]}
                                for r in mine]
        except Exception as e:  # noqa: BLE001
            out["lifecycle"] = []
            if _code(e) != "NoSuchLifecycleConfiguration":
                out["lifecycle_error"] = f"unknown ({_code(e) or first_line(e)})"
        try:
            rules = self.client.get_bucket_encryption(Bucket=self.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
            out["encryption"] = ", ".join(
                str((r.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm")) for r in rules) or "none"
        except Exception as e:  # noqa: BLE001
            code = _code(e)
            out["encryption"] = "none" if code == "ServerSideEncryptionConfigurationNotFoundError" else f"unknown ({code or first_line(e)})"
        return out

    def watermark(self) -> dict:
        """This sync's start on the reader's clock, as a change-index stamp.

        Any entry this sync's listing missed became visible after the
        listing began, so it was stamped at most a mutation's duration (plus
        clock skew) before: within the next sync's overlap.
        """
        return {"stamp": layout.stamp(self.started)}

    def _change_entries(self, since: dict) -> list | None:
        """The change entries from the overlap before `since` on; None when the index cannot tell."""
        mark = (since or {}).get("stamp")
        if not isinstance(mark, str):
            return None
        if mark in self._changes:
            return self._changes[mark]
        try:
            start = layout.stamp(layout.stamp_time(mark) - self.overlap)
        except ValueError:
            return None
        base = self.prefix + layout.CHANGES
        entries = []
        for obj in self._list(base, start_after=base + start):
            change = layout.parse_change_key(self.prefix, obj["Key"])
            if change is None:
                self._problem(f"s3://{self.bucket}/{obj['Key']}", "not written by S3Saver (not a change-index key)")
                continue
            entries.append(change)
        self._changes[mark] = entries
        return entries

    def unchanged_since(self, since: dict, now: dict) -> bool:
        """True when the change index holds no entry since the overlap before `since`."""
        entries = self._change_entries(since)
        return entries is not None and not entries

    # The change index reports deletions (delete, delete_thread entries): a
    # sync need not count the store's rows to notice them.
    changes_include_deletions = True

    def changed_thread_ids(self, since: dict, now: dict):
        entries = self._change_entries(since)
        if entries is None:
            return None
        return {e.thread_id for e in entries}

    def _full_listing(self) -> dict:
        """{thread id: [Group]} of every checkpoint directory under threads/, from one listing (cached)."""
        if self._listing is None:
            base = self.prefix + layout.THREADS
            found = {}
            skipped = []
            for g in layout.groups(self._list(base), base, nested=True, skipped=skipped):
                found.setdefault(g.thread, []).append(g)
            self._report_foreign(skipped, [g for gs in found.values() for g in gs])
            self._listing = found
        return self._listing

    def _report_foreign(self, skipped, groups):
        base = f"s3://{self.bucket}/{self.prefix}{layout.THREADS}"
        for obj in skipped:
            self._problem(f"s3://{self.bucket}/{obj['Key']}", "not written by S3Saver (a key outside the layout)")
        for g in groups:
            for rel in g.other:
                self._problem(base + g.rel_dir + rel, "not written by S3Saver (unknown object in a checkpoint directory)")

    def totals(self) -> dict:
        """Complete checkpoints and their writes under threads/ (a full listing)."""
        listing = self._full_listing()
        complete = [g for gs in listing.values() for g in gs if g.complete]
        return {"checkpoints": len(complete), "blobs": 0, "writes": sum(len(g.writes) for g in complete)}

    def thread_ids(self) -> list:
        return [t for t, gs in self._full_listing().items() if any(g.complete for g in gs)]

    def thread_counts(self, table: str) -> dict:
        if table == "blobs":
            return {}
        counts = {}
        for thread, gs in self._full_listing().items():
            complete = [g for g in gs if g.complete]
            n = len(complete) if table == "checkpoints" else sum(len(g.writes) for g in complete)
            if n:
                counts[thread] = n
        return counts

    def read_threads(self, thread_ids, since=None, now=None) -> list:
        ids = list(thread_ids)
        groups_of = {}
        if self._listing is not None:
            groups_of = {t: self._listing.get(t, []) for t in ids}
        else:
            for t, gs in zip(ids, self.pool.map(self._thread_groups, ids)):
                groups_of[t] = gs
        jobs = [(t, g) for t in ids for g in groups_of[t] if g.complete]
        rows = {t: ThreadRows(t) for t in ids}
        for t, found in zip((t for t, _ in jobs), self.pool.map(lambda job: self._read_checkpoint(*job), jobs)):
            if found is None:
                continue
            checkpoint, writes, problem = found
            rows[t].checkpoints.append(checkpoint)
            rows[t].writes.extend(writes)
            if problem:
                rows[t].problems[(checkpoint.checkpoint_ns, checkpoint.checkpoint_id)] = problem
        return list(rows.values())

    def _thread_groups(self, thread_id) -> list:
        base = layout.thread_prefix(self.prefix, thread_id)
        skipped = []
        found = list(layout.groups(self._list(base), base, nested=False, skipped=skipped))
        for g in found:
            g.thread = thread_id
            g.rel_dir = base[len(self.prefix + layout.THREADS):] + g.rel_dir
        self._report_foreign(skipped, found)
        return found

    def _read_checkpoint(self, thread_id, g):
        """(CheckpointRow, [WriteRow], problem or None) of one complete directory; None when its manifest is gone meanwhile."""
        directory = self.prefix + layout.THREADS + g.rel_dir
        manifest_key = directory + layout.MANIFEST
        found = self._get(manifest_key)
        if found is None:
            return None  # deleted since the listing: the next change entry says so
        problems = []
        manifest = _manifest(f"s3://{self.bucket}/{manifest_key}", found[0], problems)
        checkpoint_id = g.checkpoint_id
        parent = manifest.get("parent_checkpoint_id") if manifest else None
        if manifest and (manifest.get("checkpoint_id") != checkpoint_id or manifest.get("checkpoint_ns") != g.ns):
            problems.append(f"s3://{self.bucket}/{manifest_key} names checkpoint "
                            f"{manifest.get('checkpoint_ns')!r}/{manifest.get('checkpoint_id')!r}, not the one its key holds")
        values = None
        payload_key = directory + layout.PAYLOAD
        inline = None
        if not g.payload and manifest:
            # No payload object listed: the payload is inside the manifest (format 2), or missing.
            try:
                inline = layout.inline_payload(f"s3://{self.bucket}/{manifest_key}", manifest)
            except layout.S3CheckpointError as e:
                problems.append(str(e))
                inline = False
        if inline:
            refs = layout.manifest_refs(manifest, None, None) if self.manifest_refs else None
            if refs is not None:
                types = manifest["values"]
                values = TypedValues({ch: (str(types[ch].get("type")), ScannedURIs(uris)) for ch, uris in refs.items()})
            else:
                values = _frame_values(f"s3://{self.bucket}/{manifest_key} (inline payload)", inline, problems)
        elif inline is False:
            pass
        elif not g.payload:
            problems.append(f"s3://{self.bucket}/{payload_key} is missing")
        elif g.sizes.get(layout.PAYLOAD, 0) > FETCH_LIMIT:
            problems.append(f"s3://{self.bucket}/{payload_key} is larger than {FETCH_LIMIT:,} bytes: not searched for references")
        else:
            refs = layout.manifest_refs(manifest, g.sizes.get(layout.PAYLOAD), g.payload_etag) \
                if manifest and self.manifest_refs else None
            if refs is not None:
                # The saver found these with the sync's own rules: the payload need not be read.
                types = manifest["values"]
                values = TypedValues({ch: (str(types[ch].get("type")), ScannedURIs(uris)) for ch, uris in refs.items()})
            else:
                values = self._payload_values(payload_key, problems)
        writes = []
        for rel in g.writes:
            row = self._write_row(thread_id, g, directory, rel, problems)
            if row is not None:
                writes.append(row)
        metadata = manifest.get("metadata") if manifest else None
        problem = "; ".join(problems) or None
        for p in problems:
            self._problem(p.split(" ", 1)[0], p)
        row = CheckpointRow(
            thread_id, g.ns, checkpoint_id, parent if isinstance(parent, str) else None,
            g.sizes.get(layout.MANIFEST, 0) + g.sizes.get(layout.PAYLOAD, 0),
            metadata if isinstance(metadata, dict) else None,
            None,
            manifest.get("ts") if manifest and isinstance(manifest.get("ts"), str) else None,
            inline_values=values,
        )
        return row, writes, problem

    def _payload_values(self, key, problems):
        """TypedValues of a payload (every channel's (type, bytes)); None, with a problem, when unreadable."""
        try:
            found = self._get(key)
        except _Unreadable as e:
            problems.append(str(e))
            return None
        if found is None:
            problems.append(f"s3://{self.bucket}/{key} is missing")
            return None
        return _frame_values(f"s3://{self.bucket}/{key}", found, problems)

    def _write_row(self, thread_id, g, directory, rel, problems):
        """A WriteRow of one write object (its size from the listing); None when it is gone."""
        key = directory + rel
        parts = rel[len(layout.WRITES):].split("/")
        try:
            task_id = layout.decode_segment(parts[0])
            idx = int(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError, UnicodeDecodeError):
            self._problem(f"s3://{self.bucket}/{key}", "not written by S3Saver (a write key outside the layout)")
            return None
        size = g.sizes.get(rel, 0)
        channel, type_, data = "", None, None
        if size > FETCH_LIMIT:
            problems.append(f"s3://{self.bucket}/{key} is larger than {FETCH_LIMIT:,} bytes: not searched for references")
        else:
            try:
                found = self._get(key)
            except _Unreadable as e:
                problems.append(str(e))
                found = False
            if found is None:
                return None
            if found:
                try:
                    frame = layout.unpack(f"s3://{self.bucket}/{key}", *found)
                    channel = str(frame["channel"])
                    type_, data = str(frame["value"][0]), bytes(frame["value"][1])
                except layout.S3CheckpointError as e:
                    problems.append(str(e))
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    problems.append(f"s3://{self.bucket}/{key} is corrupt: {first_line(e)}")
        return WriteRow(thread_id, g.ns, g.checkpoint_id, task_id, idx, channel, type_, size, data)


def _frame_values(name, found, problems):
    """TypedValues of a stored payload (body, object metadata) named `name`; None, with a problem, when corrupt."""
    try:
        frame = layout.unpack(name, *found)
        values = frame["values"]
        return TypedValues({str(ch): (str(v[0]), bytes(v[1])) for ch, v in values.items()})
    except layout.S3CheckpointError as e:
        problems.append(str(e))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        problems.append(f"{name} is corrupt: {first_line(e)}")
    return None


class _Unreadable(Exception):
    """An object that exists but cannot be read now (archived): a problem of its checkpoint, not of the sync."""


def _manifest(name, body, problems) -> dict | None:
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        problems.append(f"{name} is not JSON: {first_line(e)}")
        return None
    if not layout.is_manifest(manifest):
        problems.append(f"{name} is not an S3Saver manifest of format 1 or 2")
        return None
    return manifest


def _code(error) -> str:
    response = getattr(error, "response", None)
    return str((response or {}).get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _describe(error, settings) -> str:
    """A failed request, in one line: the S3 error code and message, or the connection failure and the server."""
    code = _code(error)
    if code:
        message = error.response.get("Error", {}).get("Message") or ""
        return f"{code} {message}".strip()
    return f"{first_line(error)} (server: {settings.where})"


# --- one checkpoint, for the checkpoint page and the state API -----------------------------


class StoredCheckpoint(NamedTuple):
    manifest: dict
    values: dict  # {channel: (type, bytes)} from the payload
    sizes: dict  # {channel: serialized size} (the manifest's)
    writes: list  # [(task_id, idx, channel, type, size, data or None when over the limit)]


def read_checkpoint(reader: S3Reader, key: tuple, *, limit: int, with_writes: bool = True,
                    memo=None) -> StoredCheckpoint | None:
    """One checkpoint's manifest, payload values and (optionally) writes; None when it is gone.

    A payload or write larger than `limit` bytes stored is not fetched: its
    values come as None (the page shows sizes only). Raises SourceError (the
    store cannot be read) or S3CheckpointError (the payload is missing or
    corrupt), both naming the object. `memo`: see read_writes; a manifest
    found to hold its payload inline is remembered there, so that the next
    read_writes of the checkpoint need not read it again.
    """
    thread, ns, cid = key
    directory = layout.checkpoint_prefix(reader.prefix, thread, ns, cid)
    objects = {o["Key"][len(directory):]: o for o in reader._list(directory)}
    listed = {rel: o["Size"] for rel, o in objects.items()}
    if layout.MANIFEST not in listed:
        return None
    found = _read_manifest(reader, directory)
    if found is None:
        return None
    manifest = found[0]
    sizes = {ch: (v or {}).get("bytes") for ch, v in (manifest.get("values") or {}).items()}
    manifest_name = f"s3://{reader.bucket}/{directory}{layout.MANIFEST}"
    # A payload object listed is the payload (format 1); without one, the manifest's inline payload (format 2).
    inline = None if layout.PAYLOAD in listed else layout.inline_payload(manifest_name, manifest)
    if layout.PAYLOAD not in listed and inline is None:
        raise layout.S3CheckpointError(f"s3://{reader.bucket}/{directory}{layout.PAYLOAD} is missing")
    if inline is not None and memo is not None and found[2]["ETag"]:
        # Under the version read (not the one listed before: it may have been written again since).
        memo.put_many({_object_parts(reader, directory, layout.MANIFEST, found[2], "inline"): True})
    values = {}
    if inline is not None or listed[layout.PAYLOAD] <= limit:
        name = f"{manifest_name} (inline payload)" if inline is not None else f"s3://{reader.bucket}/{directory}{layout.PAYLOAD}"
        body = inline if inline is not None else reader._get(directory + layout.PAYLOAD)
        if body is None:
            raise layout.S3CheckpointError(f"{name} is missing")
        frame = layout.unpack(name, *body)
        try:
            values = {str(ch): (str(v[0]), bytes(v[1])) for ch, v in frame["values"].items()}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise layout.S3CheckpointError(f"{name} is corrupt: {e}") from None
    else:
        values = {ch: (str((v or {}).get("type", "")), None) for ch, v in (manifest.get("values") or {}).items()}
    writes = _writes(reader, directory, objects, limit, memo) if with_writes else []
    return StoredCheckpoint(manifest, values, sizes, writes)


def read_writes(reader: S3Reader, key: tuple, *, limit: int, memo=None) -> list | None:
    """One checkpoint's writes, as in read_checkpoint; None when it is gone.

    The checkpoint page's fresh read for a checkpoint whose values it keeps:
    one listing (the manifest says the checkpoint is still there, the
    payload that its values still are) and the write objects, without
    reading the manifest and the payload. Without a payload object listed,
    the manifest is read to tell a payload inside it (format 2, the common
    case: it cannot go missing apart) from a missing one.

    `memo` (optional; `get_many([parts])` -> {parts: value}, `put_many({parts: value})`,
    e.g. the console's cache) keeps what was read of an object under its
    key, ETag and size as the listing gives them: a write object's frame,
    and that a manifest holds its payload inline. An object whose ETag or
    size changed (a special-channel write overwritten, a manifest written
    again) is another entry, read again. The listing itself is never kept:
    a write added, or a checkpoint deleted, shows at the next read. With a
    memo holding them all, a read is that one listing.
    """
    thread, ns, cid = key
    directory = layout.checkpoint_prefix(reader.prefix, thread, ns, cid)
    objects = {o["Key"][len(directory):]: o for o in reader._list(directory)}
    if layout.MANIFEST not in objects:
        return None
    if layout.PAYLOAD in objects:
        return _writes(reader, directory, objects, limit, memo)
    manifest = objects[layout.MANIFEST]
    inline = _object_parts(reader, directory, layout.MANIFEST, manifest, "inline") if manifest.get("ETag") else None
    known = _memo_get(memo, [p for p in (inline, *_write_parts(reader, directory, objects, limit)) if p])
    if inline and known.get(inline) is True:
        return _writes(reader, directory, objects, limit, memo, known)
    # The manifest is read beside the write objects, not before them: no round trip more.
    check = reader.pool.submit(_has_inline_payload, reader, directory, memo) if reader.pool else None
    try:
        writes = _writes(reader, directory, objects, limit, memo, known)
    finally:
        present = check.result() if check else _has_inline_payload(reader, directory, memo)
    return writes if present else None


def _object_parts(reader, directory, rel, listed, what) -> tuple:
    """The memo key of what was read of one listed object: it names the object's version (ETag, size)."""
    return ("s3-object", reader.settings.endpoint_url, reader.bucket, directory + rel,
            str(listed.get("ETag", "")), int(listed.get("Size", -1)), what)


def _write_parts(reader, directory, objects, limit):
    return [_object_parts(reader, directory, rel, o, "write") for rel, o in objects.items()
            if rel.startswith(layout.WRITES) and o["Size"] <= limit and o.get("ETag")]


def _memo_get(memo, parts) -> dict:
    if memo is None or not parts:
        return {}
    return memo.get_many(parts)


def _read_manifest(reader, directory):
    """(the parsed manifest, and the rest of what _get_version returned) of a checkpoint's directory;
    None when there is no manifest; S3CheckpointError naming it when it cannot be parsed."""
    found = reader._get_version(directory + layout.MANIFEST)
    if found is None:
        return None
    problems = []
    manifest = _manifest(f"s3://{reader.bucket}/{directory}{layout.MANIFEST}", found[0], problems)
    if manifest is None:
        raise layout.S3CheckpointError(problems[0])
    return (manifest, *found[1:])


def _has_inline_payload(reader, directory, memo=None) -> bool:
    """True when the directory's manifest carries its payload inline (kept in `memo` under the version
    read); False when the manifest is gone; S3CheckpointError, as read_checkpoint says it, when it
    names a payload object that is missing."""
    found = _read_manifest(reader, directory)
    if found is None:
        return False
    manifest = found[0]
    if layout.inline_payload(f"s3://{reader.bucket}/{directory}{layout.MANIFEST}", manifest) is None:
        raise layout.S3CheckpointError(f"s3://{reader.bucket}/{directory}{layout.PAYLOAD} is missing")
    if memo is not None and found[2]["ETag"]:
        memo.put_many({_object_parts(reader, directory, layout.MANIFEST, found[2], "inline"): True})
    return True


def _writes(reader, directory, objects, limit, memo=None, known=None):
    """The writes listed in `objects` ({relative key: listing entry}): frames from `known` (the memo's
    answer) or `memo` when they hold the object's version, else read (and given to `memo`)."""
    if known is None:
        known = _memo_get(memo, _write_parts(reader, directory, objects, limit))
    writes, read = [], {}
    for rel, listed in sorted(objects.items()):
        if not rel.startswith(layout.WRITES):
            continue
        parts = rel[len(layout.WRITES):].split("/")
        if len(parts) != 2:
            continue
        task = layout.decode_segment(parts[0])
        size = listed["Size"]
        channel, type_, data = "", "", None
        if size <= limit:
            memo_key = _object_parts(reader, directory, rel, listed, "write") if memo is not None and listed.get("ETag") else None
            frame = known.get(memo_key) if memo_key else None
            if frame is None:
                found = reader._get_version(directory + rel)
                if found is None:
                    continue
                unpacked = layout.unpack(f"s3://{reader.bucket}/{directory}{rel}", *found[:2])
                frame = (str(unpacked["channel"]), str(unpacked["value"][0]), bytes(unpacked["value"][1]))
                if memo is not None and found[2]["ETag"]:
                    # Under the version read: a write overwritten since the listing is kept as what it now is.
                    read[_object_parts(reader, directory, rel, found[2], "write")] = frame
            channel, type_, data = frame
        writes.append((task, int(parts[1]), channel, type_, size, data))
    if read and memo is not None:
        memo.put_many(read)
    writes.sort(key=lambda w: (w[0], w[1]))
    return writes
