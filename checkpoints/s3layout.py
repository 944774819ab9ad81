"""The S3 checkpoint store's object layout (docs/s3-layout.md), for the saver and its readers.

Django-free and free of botocore: the agent-side saver (storage.s3saver)
writes by these rules and the console's reader (checkpoints.sources.s3)
reads by them, so the two sides cannot drift. Key segments, inverted ids,
change-index keys, the grouping of a listing into checkpoint directories,
and the decoding of a stored frame live here; requests do not.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import NamedTuple
from urllib.parse import unquote

import ormsgpack

from checkpoints import decode

FORMAT = 1
# A manifest that carries its checkpoint's payload inline (`payload.inline`, docs/s3-layout.md §2)
# has format 2: a reader of format 1 only refuses it by name instead of calling its payload missing.
# Payload and write frames stay format 1.
INLINE_FORMAT = 2
MANIFEST_FORMATS = (FORMAT, INLINE_FORMAT)
MANIFEST = "manifest.json"
PAYLOAD = "payload"
WRITES = "writes/"
THREADS = "threads/"
CHANGES = "changes/"
DELTA_THREADS = "delta-threads/"
# Metadata keys LangGraph's DeltaChannel writes (PostgresSaver checks the same two).
DELTA_METADATA_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")
# Change-index operations (docs/s3-layout.md §4).
CHANGE_OPS = ("put", "writes", "delete", "delete_thread")

_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-:")
_HEX_ID = re.compile(r"^[0-9a-f-]+$")
_INVERT = str.maketrans("0123456789abcdef", "fedcba9876543210")
_STAMP = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")


class S3CheckpointError(Exception):
    """A stored object is missing, corrupt or not ours; the message names it."""


# --- keys -------------------------------------------------------------------------------


def encode_segment(value: str) -> str:
    """One key segment for a thread id, namespace or task id.

    Letters, digits, '-' and ':' stay; every other UTF-8 byte is %XX
    (so '/', '.', '_', '%', newlines and spaces never reach the key raw).
    The empty string, which percent-encoding would leave empty, is "_".

    >>> encode_segment(""), encode_segment("a/b c"), encode_segment("sub:1"), encode_segment("_")
    ('_', 'a%2Fb%20c', 'sub:1', '%5F')
    """
    if value == "":
        return "_"
    return "".join(chr(b) if b in _KEEP else f"%{b:02X}" for b in value.encode("utf-8"))


def decode_segment(segment: str) -> str:
    """
    >>> decode_segment("_"), decode_segment("a%2Fb%0A")
    ('', 'a/b\\n')
    """
    return "" if segment == "_" else unquote(segment, errors="strict")


def invert_id(checkpoint_id: str) -> str:
    """The key form of a checkpoint id: each hex digit d becomes 15-d.

    uuid6 ids sort by time, so inverted ids sort newest first and S3's
    ascending listing returns a thread's latest checkpoint first. The
    inversion is its own inverse.

    >>> invert_id("1ef0-00"), invert_id(invert_id("1ef0-00"))
    ('e10f-ff', '1ef0-00')
    """
    if not _HEX_ID.match(checkpoint_id):
        raise ValueError(f"checkpoint id {checkpoint_id!r} is not a lowercase hex uuid (LangGraph writes uuid6 ids)")
    return checkpoint_id.translate(_INVERT)


def is_inverted_id(segment: str) -> bool:
    return bool(_HEX_ID.match(segment))


def stamp(now: float | None = None) -> str:
    """Write time for change-index keys: sorts as text, UTC, microseconds.

    >>> stamp(0)
    '19700101T000000.000000Z'
    """
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def stamp_time(text: str) -> float:
    """The POSIX time of a stamp.

    >>> stamp_time(stamp(1234.5))
    1234.5
    """
    return datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def thread_prefix(prefix: str, thread_id) -> str:
    return f"{prefix}{THREADS}{encode_segment(str(thread_id))}/"


def ns_prefix(prefix: str, thread_id, ns: str) -> str:
    return thread_prefix(prefix, thread_id) + encode_segment(ns) + "/"


def checkpoint_prefix(prefix: str, thread_id, ns: str, checkpoint_id: str) -> str:
    return ns_prefix(prefix, thread_id, ns) + invert_id(checkpoint_id) + "/"


def delta_key(prefix: str, thread_id) -> str:
    return f"{prefix}{DELTA_THREADS}{encode_segment(str(thread_id))}"


def change_key(prefix: str, op: str, thread_id, ns: str | None = None, checkpoint_id: str | None = None,
               *, when: str, rand: str) -> str:
    """`<prefix>changes/<stamp>-<rand>/<op>/<T>[/<N>[/<id>]]`.

    >>> change_key("p/", "put", "t 1", "", "1ef0", when=stamp(0), rand="00ff00ff")
    'p/changes/19700101T000000.000000Z-00ff00ff/put/t%201/_/1ef0'
    """
    parts = [f"{prefix}{CHANGES}{when}-{rand}", op, encode_segment(str(thread_id))]
    if ns is not None:
        parts.append(encode_segment(ns))
    if checkpoint_id is not None:
        parts.append(checkpoint_id)
    return "/".join(parts)


class Change(NamedTuple):
    """One change-index entry, decoded."""

    stamp: str
    op: str
    thread_id: str
    checkpoint_ns: str | None
    checkpoint_id: str | None


def parse_change_key(prefix: str, key: str) -> Change | None:
    """The entry a change-index key stands for, or None when the key is not one of ours.

    >>> parse_change_key("p/", "p/changes/19700101T000000.000000Z-00ff00ff/put/t%201/_/1ef0")
    Change(stamp='19700101T000000.000000Z', op='put', thread_id='t 1', checkpoint_ns='', checkpoint_id='1ef0')
    >>> parse_change_key("p/", "p/changes/19700101T000000.000000Z-00ff00ff/delete_thread/t")
    Change(stamp='19700101T000000.000000Z', op='delete_thread', thread_id='t', checkpoint_ns=None, checkpoint_id=None)
    >>> parse_change_key("p/", "p/changes/yesterday/put/t/_/1"), parse_change_key("p/", "p/changes/x")
    (None, None)
    """
    base = prefix + CHANGES
    if not key.startswith(base):
        return None
    parts = key[len(base):].split("/")
    if len(parts) < 3:
        return None
    when, _, rand = parts[0].partition("-")
    op = parts[1]
    if not _STAMP.match(when) or len(rand) != 8 or op not in CHANGE_OPS:
        return None
    want = 1 if op == "delete_thread" else 3
    if len(parts) - 2 != want:
        return None
    try:
        thread = decode_segment(parts[2])
        ns = decode_segment(parts[3]) if want == 3 else None
    except UnicodeDecodeError:
        return None
    checkpoint_id = parts[4] if want == 3 else None
    if checkpoint_id is not None and not _HEX_ID.match(checkpoint_id):
        return None
    return Change(when, op, thread, ns, checkpoint_id)


# --- stored frames -----------------------------------------------------------------------


def unpack(key: str, body: bytes, meta: dict) -> dict:
    """A payload or write frame: gunzip when it says (or looks) so, then msgpack; format checked.

    >>> unpack("k", ormsgpack.packb({"format": 1, "x": 2}), {})
    {'format': 1, 'x': 2}
    >>> unpack("bucket/k", b"\\xc1", {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    checkpoints.s3layout.S3CheckpointError: bucket/k is corrupt or not written by S3Saver: ...
    """
    try:
        if meta.get("encoding") == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        frame = ormsgpack.unpackb(body)
    except Exception as e:
        raise S3CheckpointError(f"{key} is corrupt or not written by S3Saver: {e}") from None
    if not isinstance(frame, dict) or frame.get("format") != FORMAT:
        raise S3CheckpointError(f"{key} is not an S3Saver object of format {FORMAT}")
    return frame


def parse_manifest(where: str, body: bytes) -> dict:
    """A manifest.json body (docs/s3-layout.md §2): JSON object of our format, else an error naming it.

    >>> parse_manifest("k", b'{"format": 1, "checkpoint_id": "x"}')["checkpoint_id"]
    'x'
    >>> parse_manifest("s3://b/k", b'{"format": 3}')
    Traceback (most recent call last):
    ...
    checkpoints.s3layout.S3CheckpointError: s3://b/k is not an S3Saver manifest of format 1 or 2
    """
    try:
        manifest = json.loads(body)
    except ValueError as e:
        raise S3CheckpointError(f"{where} is not JSON: {e}") from None
    if not is_manifest(manifest):
        raise S3CheckpointError(f"{where} is not an S3Saver manifest of format 1 or 2")
    return manifest


def is_manifest(manifest) -> bool:
    """A decoded manifest.json of a format this code reads (1: payload object beside it, 2: payload inline).

    >>> is_manifest({"format": 1}), is_manifest({"format": 2}), is_manifest({"format": True}), is_manifest([])
    (True, True, False, False)
    """
    return isinstance(manifest, dict) and type(manifest.get("format")) is int and manifest["format"] in MANIFEST_FORMATS


def inline_payload(where: str, manifest: dict) -> tuple[bytes, dict] | None:
    """The stored payload a manifest carries inline (`payload.inline`: base64 of the payload object's
    body, docs/s3-layout.md §2) as (body, object metadata) for unpack(); None when the payload is
    an object of its own (format 1).

    >>> import base64
    >>> body = ormsgpack.packb({"format": 1, "values": {}})
    >>> m = {"format": 2, "payload": {"inline": base64.b64encode(body).decode(), "encoding": "identity", "bytes": len(body)}}
    >>> unpack("k", *inline_payload("k", m))
    {'format': 1, 'values': {}}
    >>> inline_payload("k", {"format": 1, "payload": {"key": "payload"}}) is None
    True
    >>> inline_payload("s3://b/k", {"format": 2, "payload": {"inline": "%%", "bytes": 1}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    checkpoints.s3layout.S3CheckpointError: s3://b/k: its inline payload is corrupt: ...
    """
    payload = manifest.get("payload")
    if not isinstance(payload, dict) or "inline" not in payload:
        if manifest.get("format") == INLINE_FORMAT:
            raise S3CheckpointError(f"{where}: format {INLINE_FORMAT} without an inline payload")
        return None
    try:
        body = base64.b64decode(payload["inline"], validate=True)
        if len(body) != payload.get("bytes"):
            raise ValueError(f"{len(body)} bytes, the manifest says {payload.get('bytes')}")
    except (TypeError, ValueError) as e:
        raise S3CheckpointError(f"{where}: its inline payload is corrupt: {e}") from None
    return body, {"encoding": str(payload.get("encoding") or "identity")}


# --- references recorded in the manifest (docs/s3-layout.md §2, "refs") ---------------------

def value_refs(typed_values: dict) -> dict | None:
    """The `refs` field of a manifest: {channel: sorted blob URIs} of the channels whose serialized
    value names any, by the console's own finder (checkpoints.decode.references_in, as the sync
    applies it to a payload's values); None (write no field) when a value is encrypted (its URIs
    must not be written in clear) or cannot be read whole (its references are unknown: the
    reader then reads the payload and says so, as without the field).

    >>> import ormsgpack
    >>> value_refs({"a": ("msgpack", ormsgpack.packb(["s3://b/x.pdf", "s3://b/a"])), "n": ("msgpack", b"\x01")})
    {'a': ['s3://b/a', 's3://b/x.pdf']}
    >>> value_refs({"n": ("msgpack", b"\x01")}), value_refs({"s": ("msgpack+aes", b"...")}), value_refs({"p": ("pickle", b"")})
    ({}, None, None)
    """
    refs = {}
    for channel, (type_, data) in typed_values.items():
        if decode.is_encrypted(type_):
            return None
        uris, whole = decode.references_in(type_, data, limit=decode.REFERENCE_DECODE_LIMIT)
        if not whole:
            return None
        if uris:
            refs[str(channel)] = sorted(uris)
    return refs


def same_etag(a, b) -> bool:
    """ETags compared as S3 gives them (quoted in listings and PUT responses alike); None never matches.

    >>> same_etag('"ab-2"', 'ab-2'), same_etag(None, None), same_etag('"a"', '"b"')
    (True, False, False)
    """
    return isinstance(a, str) and isinstance(b, str) and bool(a.strip('"')) and a.strip('"') == b.strip('"')


def manifest_refs(manifest: dict, payload_size, payload_etag) -> dict | None:
    """The manifest's `refs` when a reader may use them instead of reading the payload, else None.

    Trusted only when the manifest is ours (format checked by the caller), the field has the
    saver's shape, no value is encrypted, every channel named is one of the manifest's values, and
    the payload listed beside it is the one the manifest was written with: its size and ETag equal
    `payload.bytes` and `payload.etag`. A payload replaced, damaged or missing is read (and
    reported) as without the field. A payload inline in the manifest (format 2) was written with the
    refs in one object: trusted as long as no payload object is listed beside it (`payload_size`
    None), since a listed object is the payload readers read (docs/s3-layout.md §2).

    >>> m = {"refs": {"a": ["s3://b/x"]}, "values": {"a": {"type": "msgpack"}}, "payload": {"bytes": 9, "etag": '"e"'}}
    >>> manifest_refs(m, 9, '"e"'), manifest_refs(m, 10, '"e"'), manifest_refs(m, 9, '"f"')
    ({'a': {'s3://b/x'}}, None, None)
    >>> inline = {**m, "payload": {"inline": "", "bytes": 0}}
    >>> manifest_refs(inline, None, None), manifest_refs(inline, 9, '"e"')
    ({'a': {'s3://b/x'}}, None)
    >>> manifest_refs({**m, "values": {"a": {"type": "msgpack+aes"}}}, 9, '"e"'), manifest_refs({**m, "refs": ["s3://b/x"]}, 9, '"e"')
    (None, None)
    """
    refs = manifest.get("refs")
    payload = manifest.get("payload")
    values = manifest.get("values")
    if not isinstance(refs, dict) or not isinstance(payload, dict) or not isinstance(values, dict):
        return None
    if "inline" in payload:
        # The payload is in the same object as the refs: written together, replaced together.
        if payload_size is not None:  # ... unless a payload object lies beside it: readers read that one
            return None
    elif payload.get("bytes") != payload_size or not same_etag(payload.get("etag"), payload_etag):
        return None
    if any(not isinstance(v, dict) or decode.is_encrypted(v.get("type")) for v in values.values()):
        return None
    found = {}
    for channel, uris in refs.items():
        if channel not in values or not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            return None
        found[channel] = set(uris)
    return found


# --- listings ------------------------------------------------------------------------------


class Group:
    """The objects of one checkpoint directory (`<inverted id>/`) seen in a listing."""

    __slots__ = ("inv", "thread", "ns", "rel_dir", "manifest", "payload", "payload_etag", "writes", "other", "sizes")

    def __init__(self, inv, thread=None, ns="", rel_dir=""):
        self.inv = inv
        self.rel_dir = rel_dir
        self.thread = thread
        self.ns = ns
        self.manifest = self.payload = False
        self.payload_etag = None  # the listing's ETag of the payload (manifest_refs checks it)
        self.writes = []
        self.other = []
        self.sizes = {}

    def add(self, rel: str, obj: dict):
        self.sizes[rel] = obj.get("Size", 0)
        if rel == MANIFEST:
            self.manifest = True
        elif rel == PAYLOAD:
            self.payload = True
            self.payload_etag = obj.get("ETag")
        elif rel.startswith(WRITES):
            self.writes.append(rel)
        else:
            self.other.append(rel)

    @property
    def complete(self) -> bool:
        # The manifest is written last: without it the checkpoint does not exist yet.
        return self.manifest

    @property
    def checkpoint_id(self) -> str:
        return invert_id(self.inv)

    def all_keys(self):
        return list(self.sizes)

    def full_prefix(self, listed_prefix: str) -> str:
        """The checkpoint directory's key prefix, given the prefix the listing was under."""
        return listed_prefix + self.rel_dir


def groups(objects, prefix: str, nested: bool | None = None, skipped: list | None = None) -> Iterator[Group]:
    """Group a key-ordered listing into checkpoint directories, lazily.

    nested=None: the listing is under a namespace (`<inv>/...`); False: under a
    thread (`<ns>/<inv>/...`); True: under threads/ (`<thread>/<ns>/<inv>/...`).
    Keys that do not fit the layout are skipped (appended to `skipped` when
    given: the console reports them).
    """
    depth = {None: 0, False: 1, True: 2}[nested]
    current = None
    current_id = None
    for obj in objects:
        rel = obj["Key"][len(prefix):]
        parts = rel.split("/", depth + 1)
        if len(parts) < depth + 2 or not all(parts[: depth + 1]):
            if skipped is not None:
                skipped.append(obj)
            continue
        gid = tuple(parts[:depth + 1])
        if gid != current_id:
            if current is not None:
                yield current
            current, current_id = None, gid
            inv = parts[depth]
            if _HEX_ID.match(inv):
                try:
                    thread = decode_segment(parts[0]) if depth == 2 else None
                    ns = decode_segment(parts[depth - 1]) if depth >= 1 else ""
                except UnicodeDecodeError:
                    pass
                else:
                    current = Group(inv, thread, ns, "/".join(gid) + "/")
        if current is None:
            if skipped is not None:
                skipped.append(obj)
            continue
        current.add(parts[depth + 1], obj)
    if current is not None:
        yield current


# --- Lifecycle rules (docs/s3-layout.md §7) -------------------------------------------------
# The saver applies them and the console previews and applies them for a source: one
# definition, so a rule the console puts is the one the saver would, and both find it again
# by its ID.

ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "STANDARD_IA", "ONEZONE_IA")
LIFECYCLE_OPTIONS = ("expire_days", "archive_days", "intelligent_tiering_days", "changes_expire_days",
                     "abort_multipart_days")


def lifecycle_rule_id(prefix: str, name: str) -> str:
    """The ID of one of the saver's rules; every rule of the saver at `prefix` starts with
    lifecycle_rule_id(prefix, "").

    >>> lifecycle_rule_id("agents/", "expire")
    's3saver:agents/:expire'
    """
    return f"s3saver:{prefix}:{name}"


def is_saver_rule(rule: dict, prefix: str) -> bool:
    """Whether a bucket lifecycle rule is the saver's at `prefix` (by its ID).

    >>> is_saver_rule({"ID": "s3saver:a/:expire"}, "a/"), is_saver_rule({"ID": "s3saver:a/b/:expire"}, "a/")
    (True, False)
    """
    return str(rule.get("ID", "")).startswith(lifecycle_rule_id(prefix, ""))


def lifecycle_rules(
    prefix: str,
    *,
    expire_days: int | None = None,
    archive_days: int | None = None,
    archive_storage_class: str = "GLACIER",
    intelligent_tiering_days: int | None = None,
    changes_expire_days: int | None = None,
    abort_multipart_days: int | None = 7,
) -> list[dict]:
    """The saver's lifecycle rules for its prefix (S3 LifecycleConfiguration rules):

    expire_days: checkpoints (every object under `<prefix>threads/`) are deleted that many
    days after they were written; archive_days: moved to `archive_storage_class`
    (GLACIER, DEEP_ARCHIVE, GLACIER_IR, STANDARD_IA, ONEZONE_IA); intelligent_tiering_days:
    moved to INTELLIGENT_TIERING; changes_expire_days: the change index entries are
    deleted (keep it above every reader's sync interval); abort_multipart_days: unfinished
    multipart uploads are aborted. None leaves a rule out. Rule IDs are
    `s3saver:<prefix>:<name>`, so they are found and replaced again.

    >>> [r["ID"] for r in lifecycle_rules("p/", expire_days=30)]
    ['s3saver:p/:expire', 's3saver:p/:multipart']
    >>> lifecycle_rules("p/", expire_days=30, archive_days=30)
    Traceback (most recent call last):
    ...
    ValueError: archive_days=30 must be fewer than expire_days=30
    """
    for name, days in (("expire_days", expire_days), ("archive_days", archive_days),
                       ("intelligent_tiering_days", intelligent_tiering_days),
                       ("changes_expire_days", changes_expire_days), ("abort_multipart_days", abort_multipart_days)):
        if days is not None and (not isinstance(days, int) or isinstance(days, bool) or days < 0):
            raise ValueError(f"{name}={days!r}: a whole number of days, 0 or more")
    if expire_days is not None and expire_days < 1:
        raise ValueError("expire_days must be at least 1")
    if archive_storage_class not in ARCHIVE_CLASSES:
        raise ValueError(f"archive_storage_class={archive_storage_class!r} is not an S3 archive class")
    if expire_days is not None:
        for name, days in (("archive_days", archive_days), ("intelligent_tiering_days", intelligent_tiering_days)):
            if days is not None and days >= expire_days:
                raise ValueError(f"{name}={days} must be fewer than expire_days={expire_days}")
    threads = {"Prefix": f"{prefix}{THREADS}"}
    rules = []
    if expire_days is not None:
        rules.append({"ID": lifecycle_rule_id(prefix, "expire"), "Filter": threads, "Status": "Enabled",
                      "Expiration": {"Days": expire_days}})
    if archive_days is not None:
        rules.append({"ID": lifecycle_rule_id(prefix, "archive"), "Filter": threads, "Status": "Enabled",
                      "Transitions": [{"Days": archive_days, "StorageClass": archive_storage_class}]})
    if intelligent_tiering_days is not None:
        rules.append({"ID": lifecycle_rule_id(prefix, "tiering"), "Filter": threads, "Status": "Enabled",
                      "Transitions": [{"Days": intelligent_tiering_days, "StorageClass": "INTELLIGENT_TIERING"}]})
    if changes_expire_days is not None:
        rules.append({"ID": lifecycle_rule_id(prefix, "changes"), "Filter": {"Prefix": f"{prefix}{CHANGES}"},
                      "Status": "Enabled", "Expiration": {"Days": max(1, changes_expire_days)}})
    if abort_multipart_days is not None:
        rules.append({"ID": lifecycle_rule_id(prefix, "multipart"), "Filter": {"Prefix": prefix}, "Status": "Enabled",
                      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": max(1, abort_multipart_days)}})
    return rules


def lifecycle_configuration(bucket_rules: list, prefix: str, **policy) -> dict:
    """The whole bucket configuration that puts the saver's rules at `prefix`: the bucket's rules
    of other prefixes as they are, the saver's replaced by lifecycle_rules(prefix, **policy).

    >>> other = {"ID": "tidy", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": {"Days": 1}}
    >>> [r["ID"] for r in lifecycle_configuration([other, {"ID": "s3saver:p/:expire"}], "p/")["Rules"]]
    ['tidy', 's3saver:p/:multipart']
    """
    kept = [r for r in bucket_rules if not is_saver_rule(r, prefix)]
    return {"Rules": kept + lifecycle_rules(prefix, **policy)}
