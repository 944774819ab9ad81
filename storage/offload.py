"""Keep large values out of the checkpoint database: store them in a blob store.

Django-free: agent processes install it on their LangGraph saver::

    checkpointer = offload(PostgresSaver(conn))        # S3_BUCKET_NAME, or BLOB_ROOT
    graph = builder.compile(checkpointer=checkpointer)

A value above the threshold (OFFLOAD_THRESHOLD, default 1 MB) is uploaded
once under a content-addressed key, `<S3_PREFIX>sha256/<hex>` (`.gz`/`.zst`
when compressed), and the checkpoint keeps a small plain dict instead::

    {"__offloaded__": 1, "uri": "s3://bucket/prefix/sha256/<hex>", "sha256": "<hex>",
     "size": 5000000, "type": "bytes", "content_type": "application/pdf", "encoding": "identity"}

The dict is serialized by the saver's own serializer, so the URI is a plain
string in the stored row (the console finds it by scanning for `://`) and
nothing has to be imported to read it back. Loading verifies the sha256 and
returns the original value, or an `OffloadedRef` (a dict with `.read()`) when
lazy references are asked for.

What is offloaded: bytes, bytearray and str longer than the threshold, found
at any depth inside plain dicts, lists and tuples; then any other value whose
serialized form is still above the threshold (a list of many messages, a
large message) is stored as the serializer's bytes (type `serde:<type>`).

The upload finishes before the saver writes the row, and a failed upload
raises OffloadError, so no checkpoint names a missing object.
"""

import asyncio
import contextlib
import contextvars
import copy
import gzip
import hashlib
import io
import os
import threading
import time
import uuid
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path

from checkpoints import units
from checkpoints.uris import file_path_inside, parse_uri
from checkpoints.s3client import S3Settings, build_client
from storage.size_limit import DelegatingSaver, env_value

MARKER = "__offloaded__"
_MARKER_BYTES = MARKER.encode()
DEFAULT_THRESHOLD = 1_000_000
DEFAULT_GRACE = timedelta(hours=24)
MIB = 1024 * 1024
# Nesting followed inside plain containers; deeper values are serialized whole.
MAX_DEPTH = 12
_LEAF_TYPES = (bytes, bytearray, str)
_SUFFIX = {"identity": "", "gzip": ".gz", "zstd": ".zst"}
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"\x28\xb5\x2f\xfd", "application/zstd"),
)

# Set by lazy_refs(): loads return OffloadedRef instead of fetching.
_LAZY = contextvars.ContextVar("offload_lazy", default=None)
# Set by OffloadingSaver while the wrapped saver writes: the values were
# prepared, so the serializer stores what it is given (metadata included).
_SAVING = contextvars.ContextVar("offload_saving", default=False)
# Set by the async saver methods: loads collect references here and the
# caller fetches them in a worker thread, off the event loop.
_DEFERRED = contextvars.ContextVar("offload_deferred", default=None)

try:  # langgraph-checkpoint >= 3: DeltaChannel snapshots keep their own type
    from langgraph.checkpoint.serde.types import _DeltaSnapshot
except ImportError:  # pragma: no cover
    _DeltaSnapshot = ()


class OffloadError(RuntimeError):
    """A value could not be stored in, or read back from, the blob store."""


def content_type_of(data: bytes) -> str:
    """A content type from the first bytes, for downloads.

    >>> content_type_of(b"%PDF-1.7 ..."), content_type_of(b"\\x00\\x01")
    ('application/pdf', 'application/octet-stream')
    """
    head = bytes(data[:16])
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def object_key(prefix: str, sha256: str, encoding: str = "identity") -> str:
    """The content-addressed key of a stored value.

    >>> object_key("uploads/", "ab" * 32)
    'uploads/sha256/abababababababababababababababababababababababababababababababab'
    >>> object_key("", "ab" * 32, "gzip")[-3:]
    '.gz'
    """
    return f"{prefix}sha256/{sha256}{_SUFFIX[encoding]}"


def is_reference(value) -> bool:
    """True for the dict that stands for an offloaded value.

    >>> is_reference({"__offloaded__": 1, "uri": "s3://b/sha256/x", "sha256": "0" * 64, "type": "bytes"})
    True
    >>> is_reference({"__offloaded__": 1}), is_reference("s3://b/k")
    (False, False)
    """
    return (
        isinstance(value, dict)
        and value.get(MARKER) == 1
        and isinstance(value.get("uri"), str)
        and isinstance(value.get("sha256"), str)
        and len(value["sha256"]) == 64
        and isinstance(value.get("type"), str)
    )


def _compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        # mtime=0: the same content always gives the same stored bytes.
        return gzip.compress(data, compresslevel=6, mtime=0)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def _decompress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)
    if encoding in (None, "identity"):
        return data
    raise OffloadError(f"unknown encoding {encoding!r}")


def _duration(value, name):
    if value is None:
        return env_value(name, DEFAULT_GRACE, units.parse_duration)
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    return units.parse_duration(value)


def _reason(exc) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 500 else text[:500] + "..."


# --- blob stores ----------------------------------------------------------------


class FileStore:
    """Objects as files under BLOB_ROOT, written atomically (temp file + rename)."""

    scheme = "file"

    def __init__(self, root=None, prefix=""):
        root = root if root is not None else os.environ.get("BLOB_ROOT", "").strip()
        if not root:
            raise ValueError("BLOB_ROOT is not set: the file store needs a root directory")
        self.root = Path(root).resolve()
        self.prefix = prefix

    def __repr__(self):
        return f"FileStore({str(self.root)!r})"

    def _path(self, key) -> Path:
        path = self.root / key
        if file_path_inside(str(path), self.root) is None:
            raise OffloadError(f"{key!r} is not inside {self.root}")
        return path

    def uri(self, key) -> str:
        return self._path(key).as_uri()

    def owns(self, parsed) -> bool:
        return parsed.scheme == "file"

    def stat(self, key):
        """Last-modified time (epoch seconds), or None when absent."""
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def put(self, key, data, *, content_type, encoding, metadata):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory, so the rename is atomic: a reader (or a sweep) sees
        # the whole file or none. open("xb") keeps the process umask.
        temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def refresh(self, key, **_):
        os.utime(self._path(key))

    def read(self, parsed) -> bytes:
        path = file_path_inside(parsed.key, self.root)
        if path is None:
            raise OffloadError(f"{parsed.key} is outside BLOB_ROOT {self.root}")
        with open(path, "rb") as f:
            return f.read()


class S3Store:
    """An S3 or MinIO bucket through boto3 (SigV4, standard retries).

    Every argument left as None comes from the environment the console
    reads: S3_BUCKET_NAME, S3_PREFIX, S3_ENDPOINT_URL, S3_FORCE_PATH_STYLE,
    AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (else the usual AWS
    chain), S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT, S3_MAX_ATTEMPTS.
    `scheme="minio"` writes minio:// URIs. `sse` is "AES256" or "aws:kms"
    (with `kms_key_id`). Objects of `multipart_threshold` bytes or more are
    uploaded in parts of `multipart_chunksize`.
    """

    def __init__(
        self,
        bucket=None,
        prefix=None,
        *,
        endpoint_url=None,
        region=None,
        path_style=None,
        access_key=None,
        secret_key=None,
        scheme="s3",
        sse=None,
        kms_key_id=None,
        multipart_threshold=8 * MIB,
        multipart_chunksize=8 * MIB,
        connect_timeout=None,
        read_timeout=None,
        max_attempts=None,
        client=None,
    ):
        # Explicit arguments win; the rest comes from the environment, read
        # by the same code as the console's (bad values name the variable).
        self.settings = S3Settings.from_env().replace(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=region,
            path_style=path_style,
            access_key=access_key,
            secret_key=secret_key,
            # Keys passed here never pair with a session token from the environment.
            session_token="" if access_key is not None else None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        if scheme not in ("s3", "minio"):
            raise ValueError(f"scheme must be 's3' or 'minio', not {scheme!r}")
        self.scheme = scheme
        if sse not in (None, "AES256", "aws:kms"):
            raise ValueError(f"sse must be None, 'AES256' or 'aws:kms', not {sse!r}")
        if kms_key_id and sse != "aws:kms":
            raise ValueError("kms_key_id needs sse='aws:kms'")
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.multipart_threshold = units.parse_size(multipart_threshold)
        self.multipart_chunksize = units.parse_size(multipart_chunksize)
        self._client = client
        self._client_lock = threading.Lock()

    bucket = property(lambda self: self.settings.bucket)
    prefix = property(lambda self: self.settings.prefix)
    endpoint_url = property(lambda self: self.settings.endpoint_url)
    region = property(lambda self: self.settings.region)
    path_style = property(lambda self: self.settings.path_style)
    max_attempts = property(lambda self: self.settings.max_attempts)

    def __repr__(self):
        return f"S3Store({self.scheme}://{self.bucket}/{self.prefix})"

    @property
    def client(self):
        # Built once, on first use: a store configured but never written to
        # costs no client (tens of milliseconds).
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = build_client(self.settings)
        return self._client

    def _need_bucket(self):
        if not self.bucket:
            raise OffloadError("S3_BUCKET_NAME is not set: the s3 store needs a bucket")

    def uri(self, key) -> str:
        self._need_bucket()
        return f"{self.scheme}://{self.bucket}/{key}"

    def owns(self, parsed) -> bool:
        return parsed.scheme in ("s3", "minio")

    def stat(self, key):
        """Last-modified time (epoch seconds), or None when absent."""
        from botocore.exceptions import ClientError

        self._need_bucket()
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 403 is what S3 answers for a missing key without s3:ListBucket:
            # upload then; an identical object would only be rewritten.
            if code in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied") or status in (403, 404):
                return None
            raise
        return head["LastModified"].timestamp()

    def _extra(self, content_type, encoding, metadata):
        extra = {"ContentType": content_type, "Metadata": metadata}
        if encoding != "identity":
            extra["ContentEncoding"] = encoding
        if self.sse:
            extra["ServerSideEncryption"] = self.sse
            if self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        return extra

    def put(self, key, data, *, content_type, encoding, metadata):
        self._need_bucket()
        extra = self._extra(content_type, encoding, metadata)
        if len(data) < self.multipart_threshold:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
            return
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=4,
        )
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, ExtraArgs=extra, Config=config)

    def refresh(self, key, *, content_type, encoding, metadata):
        """Copy the object onto itself so its LastModified is now."""
        self._need_bucket()
        self.client.copy_object(
            Bucket=self.bucket,
            Key=key,
            CopySource={"Bucket": self.bucket, "Key": key},
            MetadataDirective="REPLACE",
            **self._extra(content_type, encoding, metadata),
        )

    def read(self, parsed) -> bytes:
        response = self.client.get_object(Bucket=parsed.bucket, Key=parsed.key)
        return response["Body"].read()


def store_from_env(**options):
    """The blob store the environment names: S3_BUCKET_NAME, else BLOB_ROOT."""
    if os.environ.get("S3_BUCKET_NAME", "").strip():
        return S3Store(**options)
    if os.environ.get("BLOB_ROOT", "").strip():
        return FileStore()
    raise OffloadError(
        "no blob store configured for offloading: set S3_BUCKET_NAME (S3 or MinIO) "
        "or BLOB_ROOT (file store), or pass store="
    )


# --- references ---------------------------------------------------------------------


class OffloadedRef(dict):
    """An offloaded value not fetched yet: the reference dict, plus `.read()`.

    It is a dict, so putting it back into state stores the same reference
    again (nothing is fetched or uploaded).
    """

    __slots__ = ("_serde",)

    def __init__(self, reference, serde=None):
        super().__init__(reference)
        self._serde = serde

    uri = property(lambda self: self["uri"])
    sha256 = property(lambda self: self["sha256"])
    size = property(lambda self: self.get("size"))
    type = property(lambda self: self["type"])
    content_type = property(lambda self: self.get("content_type"))
    encoding = property(lambda self: self.get("encoding", "identity"))

    def read(self):
        """Fetch, check the sha256 and return the original value."""
        serde = self._serde or default_serializer()
        return serde.read(self)

    def __repr__(self):
        return f"OffloadedRef({self.uri!r}, {units.format_bytes(self.size or 0)}, {self.type})"

    def __copy__(self):
        return type(self)(self, self._serde)

    def __deepcopy__(self, memo):
        return type(self)(copy.deepcopy(dict(self), memo), self._serde)

    def __reduce__(self):
        return (OffloadedRef, (dict(self),))


class _Deferred(OffloadedRef):
    """A reference an async saver method fetches after the load, in a thread."""

    __slots__ = ()


def _replace(obj, fn, depth=0):
    """Rebuild plain dicts/lists/tuples with fn applied to their items.

    fn returns its argument unchanged when it has nothing to do; untouched
    containers are returned as they are (no copy).
    """
    new = fn(obj)
    if new is not obj or depth >= MAX_DEPTH:
        return new
    kind = type(obj)
    if kind is dict:
        if is_reference(obj):
            return obj  # a reference is a leaf: its uri is never offloaded itself
        out = None
        for key, value in obj.items():
            item = _replace(value, fn, depth + 1)
            if item is not value:
                if out is None:
                    out = dict(obj)
                out[key] = item
        return obj if out is None else out
    if kind is list or kind is tuple or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        items = [_replace(value, fn, depth + 1) for value in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if kind is list:
            return items
        return kind(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


@contextlib.contextmanager
def lazy_refs(enabled=True):
    """Within the block, loading returns OffloadedRef objects instead of values.

    >>> with lazy_refs():
    ...     pass
    """
    token = _LAZY.set(enabled)
    try:
        yield
    finally:
        _LAZY.reset(token)


# --- the serializer -------------------------------------------------------------------


class OffloadSerializer:
    """A LangGraph SerializerProtocol that offloads large values.

    inner: the serializer that writes rows (default JsonPlusSerializer; an
        EncryptedSerializer composes: references are then encrypted in the
        row, and objects are stored as given, so use `sse` for the bucket).
    store: S3Store, FileStore, or None for store_from_env().
    threshold: bytes or "1MB"; default OFFLOAD_THRESHOLD, else 1 MB.
    compression: None, "gzip" or "zstd" (needs the zstandard package).
    lazy: load OffloadedRef objects instead of fetching (see lazy_refs()).
    sweep_grace: SWEEP_GRACE (default 24h); an existing object older than
        half of it is copied onto itself before reuse, so an orphan sweep
        never removes an object a new checkpoint names.
    cache_bytes: recently read values kept in memory (bytes and str only).
    """

    def __init__(
        self,
        inner=None,
        store=None,
        threshold=None,
        *,
        compression=None,
        lazy=False,
        sweep_grace=None,
        cache_bytes=64 * MIB,
    ):
        if inner is None:
            from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

            inner = JsonPlusSerializer()
        else:
            from langgraph.checkpoint.serde.base import maybe_add_typed_methods

            inner = maybe_add_typed_methods(inner)
        self.inner = inner
        self.store = store if store is not None else store_from_env()
        if threshold is None:
            threshold = env_value("OFFLOAD_THRESHOLD", DEFAULT_THRESHOLD, units.parse_size)
        self.threshold = units.parse_size(threshold)
        if compression in (None, "", "identity", "none"):
            compression = "identity"
        if compression not in _SUFFIX:
            raise ValueError(f"compression must be None, 'gzip' or 'zstd', not {compression!r}")
        if compression == "zstd":
            try:
                import zstandard  # noqa: F401
            except ImportError:
                raise ValueError("compression='zstd' needs the zstandard package (pip install zstandard)") from None
        self.compression = compression
        self.lazy = lazy
        self.sweep_grace = _duration(sweep_grace, "SWEEP_GRACE")
        self.cache_bytes = units.parse_size(cache_bytes)
        self._lock = threading.Lock()
        # id(value) -> (value, sha256, nbytes): immutable values only, and the
        # value is held so its id cannot be reused while the entry lives.
        self._digests = OrderedDict()
        self._digest_bytes = 0
        # object key -> last-modified (epoch s) known from an upload or HEAD.
        self._present = OrderedDict()
        # uri -> value read back (bytes/str), within cache_bytes.
        self._reads = OrderedDict()
        self._read_bytes = 0
        self._readers = {}
        self._uploading = {}

    def __repr__(self):
        return f"OffloadSerializer({self.inner!r}, {self.store!r}, threshold={self.threshold})"

    def with_msgpack_allowlist(self, extra_allowlist):
        """Strict msgpack mode: the same serializer over an allowlisted inner one."""
        from langgraph.checkpoint.base import _with_msgpack_allowlist

        inner = _with_msgpack_allowlist(self.inner, extra_allowlist)
        if inner is self.inner:
            return self
        clone = copy.copy(self)  # shares the store and the caches
        clone.inner = inner
        return clone

    # --- SerializerProtocol -----------------------------------------------------
    def dumps_typed(self, obj):
        return self._dump(obj, upload=True)

    def measure_typed(self, obj):
        """What dumps_typed would return, without touching the store.

        References are deterministic, so the bytes are the same; the size
        limit uses this to refuse a checkpoint without uploading anything.
        """
        return self._dump(obj, upload=False)

    def loads_typed(self, data):
        type_, payload = data
        value = self.inner.loads_typed(data)
        if type_ in ("null", "empty", "bytes", "bytearray") or payload is None:
            return value
        # A reference is a msgpack map with this key spelled out: skip the
        # walk for the common case (encrypted rows cannot be checked).
        if "+" not in type_ and _MARKER_BYTES not in payload:
            return value
        return self.restore(value)

    # --- offloading ---------------------------------------------------------------------
    def _dump(self, obj, upload):
        if _is_checkpoint(obj):
            return self._dump_checkpoint(obj, upload)
        if upload and _SAVING.get():
            # offload() replaced the large values before calling the saver:
            # what the saver serializes now (its metadata too, which
            # InMemorySaver passes through here) is stored as it is.
            return self.inner.dumps_typed(obj)
        obj = self.offload_value(obj, upload=upload, whole=False)
        typed = self.inner.dumps_typed(obj)
        if typed[1] is None or len(typed[1]) <= self.threshold or is_reference(obj):
            return typed
        return self.inner.dumps_typed(self._offload_large(obj, typed, upload, 0))

    def _dump_checkpoint(self, obj, upload):
        # SqliteSaver serializes the whole checkpoint at once, InMemorySaver
        # all of it but its values: offload inside channel_values only, never
        # the checkpoint's own fields (id, ts and channel_versions must stay
        # readable in the row, whatever the threshold).
        values = obj.get("channel_values") or {}
        leaves = self.offload_value(values, upload=upload, whole=False)
        if leaves is not values:
            obj = {**obj, "channel_values": leaves}
        typed = self.inner.dumps_typed(obj)
        if typed[1] is None or len(typed[1]) <= self.threshold:
            return typed
        changed = {}
        for channel, value in leaves.items():
            new = self._offload_large(value, None, upload, 0)
            if new is not value:
                changed[channel] = new
        if not changed:
            return typed
        return self.inner.dumps_typed({**obj, "channel_values": {**leaves, **changed}})

    def offload_value(self, obj, *, upload=True, whole=True):
        """`obj` with large values replaced by references (obj itself if none).

        With whole=False only bytes/bytearray/str leaves are looked at (no
        serialization: lengths only); with whole=True a value still above
        the threshold once serialized is stored whole.
        """
        if isinstance(obj, _LEAF_TYPES):
            return self._leaf(obj, upload)
        new = _replace(obj, lambda item: self._leaf(item, upload) if isinstance(item, _LEAF_TYPES) else item)
        if not whole or obj is None or isinstance(obj, (bool, int, float, _DeltaSnapshot)) or is_reference(new):
            return new
        return self._offload_large(new, None, upload, 0)

    def _leaf(self, value, upload):
        if isinstance(value, str):
            if len(value) <= self.threshold // 4:
                return value  # even 4 bytes per character stays under
            if len(value) <= self.threshold and len(value.encode("utf-8", "surrogatepass")) <= self.threshold:
                return value
        elif len(value) <= self.threshold:
            return value
        return self._reference_for_leaf(value, upload)

    def _offload_large(self, obj, typed, upload, depth):
        """Store `obj` if its serialized form is above the threshold.

        Plain containers first have their large items offloaded (so a value
        shared by many steps is still stored once); a container still too
        large after that, or any other large object, is stored as the inner
        serializer's bytes.
        """
        if obj is None or isinstance(obj, (bool, int, float)) or is_reference(obj):
            return obj
        if isinstance(obj, _LEAF_TYPES):
            return self._leaf(obj, upload)
        if typed is None:
            typed = self.inner.dumps_typed(obj)
        if typed[1] is None or len(typed[1]) <= self.threshold:
            return obj
        if type(obj) in (dict, list, tuple) and depth < MAX_DEPTH:
            items = obj.items() if type(obj) is dict else enumerate(obj)
            changed = {}
            for key, item in items:
                new = self._offload_large(item, None, upload, depth + 1)
                if new is not item:
                    changed[key] = new
            if changed:
                if type(obj) is dict:
                    obj = {**obj, **changed}
                else:
                    rebuilt = [changed.get(i, item) for i, item in enumerate(obj)]
                    obj = rebuilt if type(obj) is list else tuple(rebuilt)
                typed = self.inner.dumps_typed(obj)
                if len(typed[1]) <= self.threshold:
                    return obj
        type_, payload = typed
        content_type = "application/x-msgpack" if type_ == "msgpack" else "application/octet-stream"
        return self._reference(payload, f"serde:{type_}", content_type, upload, sha256=None)

    def _digest(self, value):
        """sha256 and byte length of a leaf, cached by identity for immutable values."""
        if type(value) in (bytes, str):
            with self._lock:
                hit = self._digests.get(id(value))
                if hit is not None and hit[0] is value:
                    self._digests.move_to_end(id(value))
                    return hit[1], hit[2]
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        sha = hashlib.sha256(data).hexdigest()
        if type(value) in (bytes, str):
            self._remember_digest(value, sha, len(data))
        return sha, len(data)

    def _remember_digest(self, value, sha, nbytes):
        with self._lock:
            old = self._digests.pop(id(value), None)
            if old is not None:
                self._digest_bytes -= old[2]
            self._digests[id(value)] = (value, sha, nbytes)
            self._digest_bytes += nbytes
            while self._digests and (len(self._digests) > 256 or self._digest_bytes > 4 * self.cache_bytes):
                _, (_, _, n) = self._digests.popitem(last=False)
                self._digest_bytes -= n

    def _reference_for_leaf(self, value, upload):
        sha, nbytes = self._digest(value)
        if isinstance(value, str):
            kind, content_type = "str", "text/plain; charset=utf-8"
        else:
            kind, content_type = type(value).__name__, content_type_of(value)
        return self._reference(value, kind, content_type, upload, sha256=sha, nbytes=nbytes)

    def _reference(self, value, kind, content_type, upload, *, sha256, nbytes=None):
        if sha256 is None:
            sha256 = hashlib.sha256(value).hexdigest()
            nbytes = len(value)
        key = object_key(getattr(self.store, "prefix", ""), sha256, self.compression)
        uri = self.store.uri(key)
        reference = {
            MARKER: 1,
            "uri": uri,
            "sha256": sha256,
            "size": nbytes,
            "type": kind,
            "content_type": content_type,
            "encoding": self.compression,
        }
        if upload:
            self._ensure_stored(key, uri, value, reference)
        return reference

    def _ensure_stored(self, key, uri, value, reference):
        now = time.time()
        half_grace = self.sweep_grace.total_seconds() / 2
        with self._lock:
            seen = self._present.get(key)
        # Known present and young enough that no sweep can take it before a
        # checkpoint naming it is committed: skip the round trip.
        if seen is not None and now - seen < half_grace:
            return
        # One upload per key at a time in this process: put and put_writes
        # of one step run in parallel threads and often carry the same value.
        with self._lock:
            key_lock = self._uploading.setdefault(key, threading.Lock())
        with key_lock:
            try:
                self._store_once(key, uri, value, reference, now, half_grace)
            finally:
                with self._lock:
                    self._uploading.pop(key, None)

    def _store_once(self, key, uri, value, reference, now, half_grace):
        with self._lock:
            seen = self._present.get(key)
        if seen is not None and now - seen < half_grace:
            return  # stored by the thread we waited for
        options = {
            "content_type": reference["content_type"],
            "encoding": self.compression,
            "metadata": {
                "sha256": reference["sha256"],
                "original-size": str(reference["size"]),
                "offload-type": reference["type"],
            },
        }
        try:
            modified = self.store.stat(key)
            if modified is None:
                data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
                self.store.put(key, _compress(data, self.compression), **options)
                modified = time.time()
            elif now - modified >= half_grace:
                self.store.refresh(key, **options)
                modified = time.time()
        except OffloadError:
            raise
        except Exception as e:
            raise OffloadError(
                f"could not upload {units.format_bytes(reference['size'])} value to {uri}: {_reason(e)}"
            ) from e
        with self._lock:
            self._present[key] = modified
            self._present.move_to_end(key)
            while len(self._present) > 65536:
                self._present.popitem(last=False)

    # --- loading --------------------------------------------------------------------------
    def restore(self, value):
        """`value` with references replaced by what they stand for."""
        lazy = _LAZY.get()
        if lazy is None:
            lazy = self.lazy
        deferred = None if lazy else _DEFERRED.get()

        def swap(item):
            if not is_reference(item) or isinstance(item, OffloadedRef):
                return item
            if lazy:
                return OffloadedRef(item, self)
            if deferred is not None:
                ref = _Deferred(item, self)
                deferred.append(ref)
                return ref
            return self.read(item)

        return _replace(value, swap)

    def read(self, reference):
        """Fetch an offloaded value, check its sha256, and decode it."""
        uri = reference["uri"]
        with self._lock:
            cached = self._reads.get(uri)
            if cached is not None:
                self._reads.move_to_end(uri)
        if cached is not None:
            return bytearray(cached) if reference["type"] == "bytearray" else cached
        try:
            parsed = parse_uri(uri)
            raw = self._reader(parsed).read(parsed)
        except Exception as e:
            raise OffloadError(f"could not read offloaded value {uri}: {_reason(e)}") from e
        data = _decompress(raw, reference.get("encoding", "identity"))
        sha = hashlib.sha256(data).hexdigest()
        if sha != reference["sha256"]:
            raise OffloadError(
                f"offloaded value {uri} is corrupt: sha256 {sha} does not match the reference {reference['sha256']}"
            )
        kind = reference["type"]
        if kind == "bytes":
            value = data
        elif kind == "bytearray":
            return bytearray(data)
        elif kind == "str":
            value = data.decode("utf-8", "surrogatepass")
        elif kind.startswith("serde:"):
            # The inner serializer's own bytes, verified above: loaded exactly
            # as the row would have been, then its own references restored.
            return self.restore(self.inner.loads_typed((kind[len("serde:") :], data)))
        else:
            raise OffloadError(f"offloaded value {uri} has unknown type {kind!r}")
        self._remember_digest(value, sha, len(data))
        if len(data) <= self.cache_bytes:
            with self._lock:
                self._reads[uri] = value
                self._read_bytes += len(data)
                while self._read_bytes > self.cache_bytes:
                    _, old = self._reads.popitem(last=False)
                    self._read_bytes -= len(old)
        return value

    def _reader(self, parsed):
        if self.store.owns(parsed):
            return self.store
        # A reference written with another store configured (say, the file
        # store before the bucket existed) is still read, with env settings.
        with self._lock:
            reader = self._readers.get(parsed.scheme)
            if reader is None:
                reader = FileStore() if parsed.scheme == "file" else S3Store(scheme=parsed.scheme)
                self._readers[parsed.scheme] = reader
        return reader


def _is_checkpoint(obj) -> bool:
    # InMemorySaver serializes a checkpoint without its channel_values.
    return type(obj) is dict and "id" in obj and "ts" in obj and "channel_versions" in obj and "versions_seen" in obj


_default = None
_default_lock = threading.Lock()


def default_serializer():
    """An OffloadSerializer from the environment, for references read without one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = OffloadSerializer()
        return _default


def _find_offload_serde(serde, depth=0):
    if isinstance(serde, OffloadSerializer):
        return serde
    if depth < 4:
        for attr in ("serde", "inner"):
            inner = getattr(serde, attr, None)
            if inner is not None and inner is not serde:
                found = _find_offload_serde(inner, depth + 1)
                if found is not None:
                    return found
    return None


def _resolve_deferred(obj):
    return _replace(obj, lambda item: item.read() if isinstance(item, _Deferred) else item)


# --- the saver wrapper -----------------------------------------------------------------


class OffloadingSaver(DelegatingSaver):
    """The saver returned by offload(): large values leave before the saver runs.

    Two things a serializer alone cannot do:
    - PostgresSaver keeps str channel values inline in the checkpoint's JSONB
      and never passes them to the serializer; here they become references
      (which the saver stores in checkpoint_blobs).
    - The async savers serialize on the event loop (AsyncSqliteSaver) or
      while holding their connection lock (AsyncPostgresSaver); here uploads
      and downloads run in a worker thread before and after those calls.
    """

    def __init__(self, saver, serde):
        super().__init__(saver)
        self.offloader = serde

    def _prepare_checkpoint(self, checkpoint, new_versions):
        values = checkpoint["channel_values"]
        versions = checkpoint.get("channel_versions") or {}
        changed = {}
        added = {}
        for channel, value in values.items():
            # New values are checked whole; unchanged ones only for large
            # leaves (cheap: the sha256 is cached by identity, presence too).
            new = self.offloader.offload_value(value, whole=channel in new_versions)
            if new is not value:
                changed[channel] = new
                if channel not in new_versions and channel in versions and isinstance(value, str):
                    # A str that was inline becomes a blob row: PostgresSaver
                    # writes blob rows only for new_versions (ON CONFLICT DO
                    # NOTHING, so naming an existing version again is harmless).
                    added[channel] = versions[channel]
        if not changed:
            return checkpoint, new_versions
        checkpoint = {**checkpoint, "channel_values": {**values, **changed}}
        return checkpoint, ({**new_versions, **added} if added else new_versions)

    def _prepare_writes(self, writes):
        return [(channel, self.offloader.offload_value(value)) for channel, value in writes]

    def _put(self, config, checkpoint, metadata, new_versions):
        checkpoint, new_versions = self._prepare_checkpoint(checkpoint, new_versions)
        token = _SAVING.set(True)
        try:
            return super()._put(config, checkpoint, metadata, new_versions)
        finally:
            _SAVING.reset(token)

    def _put_writes(self, config, writes, task_id, task_path):
        writes = self._prepare_writes(writes)
        token = _SAVING.set(True)
        try:
            return super()._put_writes(config, writes, task_id, task_path)
        finally:
            _SAVING.reset(token)

    async def _aput(self, config, checkpoint, metadata, new_versions):
        checkpoint, new_versions = await asyncio.to_thread(self._prepare_checkpoint, checkpoint, new_versions)
        # Set in this task only; asyncio.to_thread in the saver copies it.
        token = _SAVING.set(True)
        try:
            return await super()._aput(config, checkpoint, metadata, new_versions)
        finally:
            _SAVING.reset(token)

    async def _aput_writes(self, config, writes, task_id, task_path):
        writes = await asyncio.to_thread(self._prepare_writes, writes)
        token = _SAVING.set(True)
        try:
            return await super()._aput_writes(config, writes, task_id, task_path)
        finally:
            _SAVING.reset(token)

    async def _deferring(self, awaitable):
        token = _DEFERRED.set([])
        try:
            result = await awaitable
            pending = _DEFERRED.get()
        finally:
            _DEFERRED.reset(token)
        if pending:
            result = await asyncio.to_thread(_resolve_deferred, result)
        return result

    async def aget_tuple(self, config):
        return await self._deferring(self.saver.aget_tuple(config))

    async def alist(self, config, *, filter=None, before=None, limit=None):
        items = self.saver.alist(config, filter=filter, before=before, limit=limit)
        try:
            while True:
                try:
                    item = await self._deferring(items.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await items.aclose()

    async def aget_delta_channel_history(self, *, config, channels):
        return await self._deferring(self.saver.aget_delta_channel_history(config=config, channels=channels))


def offload(saver, *, store=None, threshold=None, compression=None, lazy=False, sweep_grace=None, **store_options):
    """Install an OffloadSerializer on `saver` and return it wrapped.

    Use the returned object as the checkpointer. The saver's own serializer
    (JsonPlusSerializer, EncryptedSerializer, ...) becomes the inner one.
    `store_options` (bucket, prefix, endpoint_url, sse, kms_key_id, scheme,
    multipart_threshold, ...) build an S3Store when `store` is not given and
    any is passed; otherwise the store comes from the environment.
    """
    serde = _find_offload_serde(saver.serde)
    if serde is None:
        if store is None and store_options:
            store = S3Store(**store_options)
        serde = OffloadSerializer(
            inner=saver.serde,
            store=store,
            threshold=threshold,
            compression=compression,
            lazy=lazy,
            sweep_grace=sweep_grace,
        )
        saver.serde = serde
    return OffloadingSaver(saver, serde)
