"""A LangGraph checkpoint saver on S3 (AWS, MinIO, SeaweedFS, LocalStack).

Django-free, like storage.offload and storage.size_limit::

    from storage.s3saver import S3Saver, AsyncS3Saver
    saver = S3Saver.from_env()          # S3_BUCKET_NAME, S3_PREFIX, S3_ENDPOINT_URL, ...
    graph = builder.compile(checkpointer=saver)          # or AsyncS3Saver for ainvoke

The object layout (docs/s3-layout.md) is designed for the agent and for the
console alike: per checkpoint a payload (every serialized value, framed with
msgpack) and a JSON manifest (parent, metadata, channel versions, sizes,
serializer types) that carries a small payload inline (one round trip per
put) or is written after a large payload's own object, keys whose inverted checkpoint id
make S3's ascending listing return the newest checkpoint first, and a change
index whose keys sort by write time. Options (compression, multipart,
encryption, retries, the circuit breaker, metrics) are listed in README.md.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timezone
from typing import Any

import ormsgpack
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)

from checkpoints.s3client import S3Settings, build_client
# The layout is shared with the console's reader (docs/s3-layout.md).
from checkpoints.s3layout import (  # noqa: F401 - re-exported: the saver's public names
    DELTA_METADATA_KEYS,
    FORMAT,
    INLINE_FORMAT,
    MANIFEST,
    PAYLOAD,
    WRITES,
    S3CheckpointError,
    decode_segment,
    encode_segment,
    invert_id,
    is_saver_rule,
    lifecycle_configuration,
    lifecycle_rule_id,
    lifecycle_rules,
    parse_manifest,
)
from checkpoints.s3layout import Group as _Group
from checkpoints.s3layout import groups as _groups
from checkpoints.s3layout import inline_payload as _inline_payload
from checkpoints.s3layout import stamp as _stamp
from checkpoints.s3layout import unpack as _unpack_frame
from checkpoints.s3layout import value_refs as _value_refs

MB = 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 5 * MB
DEFAULT_COMPRESS_THRESHOLD = 1024
# Payloads up to this many bytes (stored, after compression) travel inside the manifest: a put is
# then one round trip (manifest and change entry in parallel) instead of two dependent ones.
DEFAULT_INLINE_LIMIT = 32 * 1024
MAX_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request


class CircuitOpenError(S3CheckpointError):
    """The breaker is open: S3 failed too often; no request was sent."""


# --- circuit breaker -------------------------------------------------------------------


class CircuitBreaker:
    """closed → (failure_threshold consecutive failures) → open → (reset_timeout) → half_open.

    Open: calls fail at once with CircuitOpenError, nothing is sent. Half-open:
    one trial call goes through; its success closes the breaker, its failure
    opens it again for another `reset_timeout`. Only faults of the service
    count (connection errors, timeouts, 5xx, throttling), never a 404 or a 403.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 30.0, clock=time.monotonic, on_change=None):
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock
        self.on_change = on_change
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == self.OPEN and self.clock() - self._opened_at >= self.reset_timeout:
                return self.HALF_OPEN
            return self._state

    def before(self):
        with self._lock:
            if self._state == self.OPEN:
                if self.clock() - self._opened_at < self.reset_timeout:
                    raise CircuitOpenError(
                        f"S3 circuit breaker is open after {self._failures} consecutive failures; "
                        f"next trial in {self.reset_timeout - (self.clock() - self._opened_at):.0f}s"
                    )
                self._set(self.HALF_OPEN)
            if self._state == self.HALF_OPEN:
                if self._trial:
                    raise CircuitOpenError("S3 circuit breaker is half-open and its trial request is under way")
                self._trial = True

    def success(self):
        with self._lock:
            self._failures = 0
            self._trial = False
            if self._state != self.CLOSED:
                self._set(self.CLOSED)

    def failure(self):
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._state == self.HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self.clock()
                self._set(self.OPEN)

    def neutral(self):
        """A call that ended without judging the service (404, 403): frees a half-open trial."""
        with self._lock:
            if self._trial:
                self._trial = False
                self._set(self.CLOSED)
                self._failures = 0

    def _set(self, state):
        if state != self._state:
            self._state = state
            if self.on_change:
                self.on_change(state)


def _is_service_fault(error: Exception) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout")
    return isinstance(error, (BotoCoreError, OSError))


def _is_precondition_failed(error: Exception) -> bool:
    """A conditional PUT found the key taken (412), or lost a race for it (409)."""
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412")


def _is_not_found(error: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound", "NoSuchVersion")


# --- metrics ----------------------------------------------------------------------------


class _Metrics:
    """The saver's prometheus_client metrics; a broken metric never fails the saver."""

    _by_registry: dict = {}
    _lock = threading.Lock()

    @classmethod
    def for_registry(cls, registry):
        with cls._lock:
            key = id(registry)
            if key not in cls._by_registry:
                cls._by_registry[key] = (registry, cls(registry))
            return cls._by_registry[key][1]

    def __init__(self, registry):
        try:
            from prometheus_client import Counter, Gauge, Histogram

            kw = {"registry": registry}
            self.operations = Counter(
                "s3saver_operations_total", "Saver operations by name and outcome", ["operation", "outcome"], **kw
            )
            self.latency = Histogram(
                "s3saver_operation_seconds", "Saver operation latency", ["operation"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), **kw,
            )
            self.requests = Counter("s3saver_requests_total", "S3 requests sent by the saver", ["request"], **kw)
            self.bytes = Counter("s3saver_bytes_total", "Object bytes moved (stored form)", ["direction"], **kw)
            self.retries = Counter("s3saver_retries_total", "S3 requests retried by botocore", **kw)
            self.breaker = Gauge(
                "s3saver_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", **kw
            )
        except Exception:  # metrics must never stop a saver from starting
            self.operations = self.latency = self.requests = self.bytes = self.retries = self.breaker = None

    def safely(self, fn):
        try:
            fn()
        except Exception:
            pass


# --- the saver ---------------------------------------------------------------------------


class S3Saver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in an S3 bucket under `prefix` (layout: docs/s3-layout.md).

    Options (README.md, "S3 checkpoint saver"):
      compression        "gzip" (default) or None; values under compress_threshold bytes stay plain
      multipart_threshold objects above it (default 5 MB) go up in parts (multipart upload)
      inline_limit       payloads up to it (default 32 KB stored) go inside the manifest; 0: never
      sse, sse_kms_key_id "AES256" or "aws:kms" (+ key id) server-side encryption
      max_attempts       requests per call incl. retries (botocore standard mode, backoff + jitter)
      breaker_failures, breaker_reset  the circuit breaker (CircuitBreaker)
      registry           prometheus_client registry for the metrics (default: the global one);
                         metrics=False turns them off
      max_workers        parallel requests within one call (writes, list reads, deletes)
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client=None,
        settings: S3Settings | None = None,
        serde=None,
        compression: str | None = "gzip",
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        max_attempts: int | None = None,
        breaker_failures: int = 5,
        breaker_reset: float = 30.0,
        clock=time.monotonic,
        registry=None,
        metrics: bool = True,
        max_workers: int = 8,
    ):
        super().__init__(serde=serde)
        if not bucket:
            raise ValueError("S3Saver needs a bucket (S3_BUCKET_NAME)")
        if compression not in (None, "gzip"):
            raise ValueError(f"compression={compression!r}: use 'gzip' or None")
        if sse not in (None, "AES256", "aws:kms"):
            raise ValueError(f"sse={sse!r}: use 'AES256', 'aws:kms' or None")
        if sse_kms_key_id and sse != "aws:kms":
            raise ValueError("sse_kms_key_id needs sse='aws:kms'")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.settings = (settings or S3Settings(bucket=bucket, prefix=self.prefix)).replace(max_attempts=max_attempts)
        # Up to max_workers requests of a call run at once, plus the list() loads
        # around them: a pool of 2 * max_workers connections keeps every one open.
        # Every call this client sends is the saver's own, well formed: botocore's parameter
        # check against the API model would only cost time on each request.
        self.client = client if client is not None else build_client(
            self.settings, max_pool_connections=max(10, 2 * max_workers), parameter_validation=False
        )
        self.compression = compression
        self.compress_threshold = compress_threshold
        self.multipart_threshold = multipart_threshold
        if not isinstance(inline_limit, int) or inline_limit < 0:
            raise ValueError(f"inline_limit={inline_limit!r}: bytes, 0 (never inline) or more")
        # Never above the multipart threshold: a payload that large keeps its own object, uploaded first.
        self.inline_limit = min(inline_limit, multipart_threshold)
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3saver")
        # list() loads whole checkpoints in parallel and each load fetches its
        # payload and writes in parallel: the outer level gets its own pool, or
        # loads waiting on a full pool for their fetches would deadlock.
        self._load_pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3saver-load")
        self._delta_marked: set[str] = set()
        self._metrics = None
        if metrics:
            try:
                from prometheus_client import REGISTRY

                self._metrics = _Metrics.for_registry(registry if registry is not None else REGISTRY)
            except Exception:
                self._metrics = None
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset, clock=clock, on_change=self._breaker_changed)
        self._breaker_changed(CircuitBreaker.CLOSED)

    @classmethod
    def from_env(cls, environ=os.environ, **options) -> S3Saver:
        """S3_BUCKET_NAME, S3_PREFIX, AWS_REGION, S3_ENDPOINT_URL, S3_FORCE_PATH_STYLE (and the
        timeouts, S3_MAX_ATTEMPTS and credentials) through checkpoints.s3client."""
        settings = S3Settings.from_env(environ)
        if not settings.bucket:
            raise ValueError("S3_BUCKET_NAME is not set: the S3 checkpoint saver needs a bucket")
        if options.get("max_attempts"):
            settings = settings.replace(max_attempts=options.pop("max_attempts"))
        return cls(settings.bucket, settings.prefix, settings=settings, **options)

    def __repr__(self):
        return f"{type(self).__name__}(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self):
        self._load_pool.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- keys ---------------------------------------------------------------------------
    def _thread_prefix(self, thread_id) -> str:
        return f"{self.prefix}threads/{encode_segment(str(thread_id))}/"

    def _ns_prefix(self, thread_id, ns: str) -> str:
        return self._thread_prefix(thread_id) + encode_segment(ns) + "/"

    def _cp_prefix(self, thread_id, ns: str, checkpoint_id: str) -> str:
        return self._ns_prefix(thread_id, ns) + invert_id(checkpoint_id) + "/"

    def payload_key(self, thread_id, ns: str, checkpoint_id: str) -> str:
        return self._cp_prefix(thread_id, ns, checkpoint_id) + PAYLOAD

    def manifest_key(self, thread_id, ns: str, checkpoint_id: str) -> str:
        return self._cp_prefix(thread_id, ns, checkpoint_id) + MANIFEST

    def _change_key(self, op: str, thread_id, ns: str | None = None, checkpoint_id: str | None = None) -> str:
        parts = [f"{self.prefix}changes/{_stamp()}-{uuid.uuid4().hex[:8]}", op, encode_segment(str(thread_id))]
        if ns is not None:
            parts.append(encode_segment(ns))
        if checkpoint_id is not None:
            parts.append(checkpoint_id)
        return "/".join(parts)

    def _delta_key(self, thread_id) -> str:
        return f"{self.prefix}delta-threads/{encode_segment(str(thread_id))}"

    # --- requests (breaker, metrics) ------------------------------------------------------
    def _breaker_changed(self, state):
        m = self._metrics
        if m and m.breaker is not None:
            m.safely(lambda: m.breaker.set({"closed": 0, "half_open": 1, "open": 2}[state]))

    def _request(self, name: str, **kwargs):
        self.breaker.before()
        m = self._metrics
        if m and m.requests is not None:
            m.safely(lambda: m.requests.labels(name).inc())
        try:
            response = getattr(self.client, name)(**kwargs)
        except Exception as e:
            # A request that failed after retries carries its retry count too: count those.
            failed = getattr(e, "response", None)
            self._count_retries(failed.get("ResponseMetadata", {}).get("RetryAttempts", 0) if isinstance(failed, dict) else 0)
            if _is_service_fault(e):
                self.breaker.failure()
            else:
                self.breaker.neutral()
            raise
        self.breaker.success()
        self._count_retries((response or {}).get("ResponseMetadata", {}).get("RetryAttempts", 0) if isinstance(response, dict) else 0)
        return response

    def _count_retries(self, retries):
        m = self._metrics
        if retries and m and m.retries is not None:
            m.safely(lambda: m.retries.inc(retries))

    def _count_bytes(self, direction: str, n: int):
        m = self._metrics
        if m and m.bytes is not None:
            m.safely(lambda: m.bytes.labels(direction).inc(n))

    def _measured(self, operation: str, fn, *args, **kwargs):
        started = time.perf_counter()
        outcome = "error"
        try:
            result = fn(*args, **kwargs)
            outcome = "ok"
            return result
        finally:
            m = self._metrics
            if m and m.operations is not None:
                elapsed = time.perf_counter() - started
                m.safely(lambda: m.operations.labels(operation, outcome).inc())
                m.safely(lambda: m.latency.labels(operation).observe(elapsed))

    def _extra(self) -> dict:
        extra = {}
        if self.sse:
            extra["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id:
                extra["SSEKMSKeyId"] = self.sse_kms_key_id
        return extra

    def _put_object(self, key: str, body: bytes, *, metadata: dict | None = None, content_type="application/octet-stream",
                    if_absent: bool = False):
        extra = {**self._extra(), "ContentType": content_type}
        if metadata:
            extra["Metadata"] = metadata
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if len(body) > self.multipart_threshold:
            response = self._upload_multipart(key, body, extra)
        else:
            response = self._request("put_object", Bucket=self.bucket, Key=key, Body=body, **extra)
        self._count_bytes("out", len(body))
        return response

    def _upload_multipart(self, key, body, extra):
        """CreateMultipartUpload, the parts (up to 4 at a time), CompleteMultipartUpload; each
        through _request (breaker, retries, metrics). A failure aborts the upload, so no parts
        stay billed. Conditional (IfNoneMatch) uploads HEAD first and ask the completion to be
        conditional too; the transfer manager supports neither, hence no upload_fileobj."""
        if_none_match = extra.pop("IfNoneMatch", None)
        if if_none_match and self._head(key) is not None:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": f"{key} exists"}}, "PutObject")
        part_size = max(self.multipart_threshold, 5 * MB)
        upload = self._request("create_multipart_upload", Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        offsets = list(range(0, len(body), part_size))

        def send(numbered):
            number, offset = numbered
            response = self._request(
                "upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                Body=body[offset:offset + part_size],
            )
            return {"PartNumber": number, "ETag": response["ETag"]}

        try:
            # A pool of its own: this may run inside a worker of self._pool.
            with ThreadPoolExecutor(max_workers=min(4, len(offsets)), thread_name_prefix="s3saver-part") as parts_pool:
                parts = list(parts_pool.map(send, enumerate(offsets, start=1)))
            complete = {"IfNoneMatch": if_none_match} if if_none_match else {}
            return self._request(
                "complete_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, **complete,
            )
        except BaseException:
            try:
                self._request("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # the lifecycle rule for incomplete uploads (lifecycle_rules) is the backstop
            raise

    def _get_object(self, key: str, version_id: str | None = None) -> tuple[bytes, dict]:
        kwargs = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            response = self._request("get_object", **kwargs)
        except Exception as e:
            if _is_not_found(e):
                raise S3CheckpointError(f"s3://{self.bucket}/{key} is missing") from e
            raise
        body = response["Body"].read()
        self._count_bytes("in", len(body))
        return body, response.get("Metadata") or {}

    def _list(self, prefix: str, start_after: str | None = None, page_size: int = 1000) -> Iterator[dict]:
        """Objects under `prefix`, in key order, page by page (lazily)."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            response = self._request("list_objects_v2", **kwargs)
            yield from response.get("Contents", [])
            if not response.get("IsTruncated"):
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = response["NextContinuationToken"]

    def _parallel(self, fn, items) -> list:
        """fn over items at once, results in order: the first item in the calling thread (one
        hand-off to the pool and back fewer: a put's two requests cost one hop, not two), the
        others in the pool. When one fails, the others are waited for, then the first error
        in order is raised: nothing of the call is still running when it returns."""
        items = list(items)
        if len(items) <= 1:
            return [fn(i) for i in items]
        futures = [self._pool.submit(fn, i) for i in items[1:]]
        try:
            first = fn(items[0])
        finally:
            wait(futures)
        return [first] + [f.result() for f in futures]

    # --- encoding -------------------------------------------------------------------------
    def _pack(self, frame: dict) -> tuple[bytes, str, int]:
        raw = ormsgpack.packb(frame)
        if self.compression == "gzip" and len(raw) >= self.compress_threshold:
            return gzip.compress(raw, compresslevel=5), "gzip", len(raw)
        return raw, "identity", len(raw)

    @staticmethod
    def _unpack(key: str, body: bytes, meta: dict) -> dict:
        return _unpack_frame(key, body, meta)

    def _loads(self, typed) -> Any:
        type_, data = typed
        return self.serde.loads_typed((type_, data))

    def _manifest(self, key: str, version_id: str | None = None) -> dict:
        return self._parse_manifest(key, self._get_object(key, version_id)[0])

    def _parse_manifest(self, key: str, body: bytes) -> dict:
        return parse_manifest(f"s3://{self.bucket}/{key}", body)

    # --- put --------------------------------------------------------------------------------
    def put(self, config, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions):
        return self._measured("put", self._put, config, checkpoint, metadata, new_versions)

    def _put(self, config, checkpoint, metadata, new_versions):
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "") or ""
        parent_id = configurable.get("checkpoint_id")
        c = checkpoint.copy()
        values = c.pop("channel_values", {}) or {}
        checkpoint_id = c["id"]
        md = get_checkpoint_metadata(config, metadata)
        typed_values = {k: self.serde.dumps_typed(v) for k, v in values.items()}
        typed_cp = self.serde.dumps_typed(c)
        typed_md = self.serde.dumps_typed(md)
        frame = {
            "format": FORMAT,
            "checkpoint": list(typed_cp),
            "metadata": list(typed_md),
            "parent_checkpoint_id": parent_id,
            "values": {k: list(v) for k, v in typed_values.items()},
        }
        body, encoding, raw_size = self._pack(frame)
        payload_key = self.payload_key(thread_id, ns, checkpoint_id)
        delta = any(k in md for k in DELTA_METADATA_KEYS) or any(type(v).__name__ == "_DeltaSnapshot" for v in values.values())
        manifest = {
            "format": FORMAT,
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
            "parent_checkpoint_id": parent_id,
            "ts": c.get("ts"),
            "written_at": datetime.now(timezone.utc).isoformat(),
            "metadata": _json_safe(md),
            "channel_versions": _json_safe(c.get("channel_versions", {})),
            "payload": {
                "key": PAYLOAD,
                "bytes": len(body),
                "raw_bytes": raw_size,
                "encoding": encoding,
                "checkpoint": {"type": typed_cp[0], "bytes": len(typed_cp[1])},
                "metadata": {"type": typed_md[0], "bytes": len(typed_md[1])},
            },
            "values": {k: {"type": t, "bytes": len(b)} for k, (t, b) in typed_values.items()},
            "delta": delta,
        }
        # The blob URIs in the values, found by the console's own rules, so that a reader need
        # not fetch the payload to find them (docs/s3-layout.md §2, "refs"). Never for encrypted
        # values (the URIs would be written in clear) nor values not readable whole: no field.
        refs = _value_refs(typed_values)
        if refs is not None:
            manifest["refs"] = refs
        change = lambda: self._put_object(self._change_key("put", thread_id, ns, checkpoint_id), b"")  # noqa: E731
        marker = None
        if delta and thread_id not in self._delta_marked:
            marker = lambda: self._put_object(self._delta_key(thread_id), b"")  # noqa: E731
        manifest_key = self.manifest_key(thread_id, ns, checkpoint_id)
        if len(body) <= self.inline_limit:
            # A small payload travels inside the manifest (format 2): the checkpoint is one object,
            # so it cannot exist without its payload, and the change entry goes beside it.
            manifest["format"] = INLINE_FORMAT
            del manifest["payload"]["key"]
            manifest["payload"]["inline"] = base64.b64encode(body).decode("ascii")
            jobs = [
                lambda: self._put_object(manifest_key, json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode(),
                                         content_type="application/json"),
                change,
            ]
            if marker:
                jobs.append(marker)
            self._parallel(lambda f: f(), jobs)
            if delta:
                self._delta_marked.add(thread_id)
            return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}
        # The change entry goes first, beside the payload: a reader seeing an
        # entry whose manifest is not there yet rechecks it later (docs/s3-layout.md),
        # and no manifest is ever visible without its entry. The manifest goes
        # last, so a failed payload upload leaves no manifest naming nothing.
        first = [
            lambda: self._put_object(payload_key, body, metadata={"format": str(FORMAT), "encoding": encoding}),
            change,
        ]
        if marker:
            first.append(marker)
        payload_response = self._parallel(lambda f: f(), first)[0] or {}
        if delta:
            self._delta_marked.add(thread_id)
        if payload_response.get("ETag"):
            # Lets a reader check that the payload listed beside the manifest is this one
            # before it trusts `refs` instead of reading it.
            manifest["payload"]["etag"] = payload_response["ETag"]
        if payload_response.get("VersionId") and payload_response["VersionId"] != "null":
            # With versioning on, the manifest names the exact payload it was written with,
            # so loading an old manifest version loads its own payload (get_tuple_version).
            manifest["payload"]["version_id"] = payload_response["VersionId"]
        self._put_object(
            manifest_key,
            json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode(),
            content_type="application/json",
        )
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}

    def put_writes(self, config, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        return self._measured("put_writes", self._put_writes, config, writes, task_id, task_path)

    def _put_writes(self, config, writes, task_id, task_path):
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "") or ""
        checkpoint_id = configurable["checkpoint_id"]
        base = self._cp_prefix(thread_id, ns, checkpoint_id) + WRITES + encode_segment(str(task_id)) + "/"
        # PostgresSaver's rule: a call made only of special writes (idx < 0: error,
        # interrupt, resume, scheduled) upserts; any other call inserts and keeps a
        # (task_id, idx) write that is already there. Keeping is a conditional PUT
        # (If-None-Match: *), so two racing writers cannot both win.
        overwrite = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        objects = {}
        for idx, (channel, value) in enumerate(writes):
            widx = WRITES_IDX_MAP.get(channel, idx)
            type_, data = self.serde.dumps_typed(value)
            frame = {
                "format": FORMAT, "task_id": str(task_id), "task_path": task_path, "idx": widx,
                "channel": channel, "value": [type_, data],
            }
            objects[base + str(widx)] = self._pack(frame)
        if not objects:
            return

        def put(key, packed):
            try:
                self._put_object(key, packed[0], metadata={"format": str(FORMAT), "encoding": packed[1]},
                                 if_absent=not overwrite)
            except Exception as e:
                if not _is_precondition_failed(e):
                    raise
                # The write is already there: kept, as PostgresSaver's ON CONFLICT DO NOTHING.

        jobs = [lambda k=k, p=p: put(k, p) for k, p in objects.items()]
        jobs.append(lambda: self._put_object(self._change_key("writes", thread_id, ns, checkpoint_id), b""))
        self._parallel(lambda f: f(), jobs)

    # --- read -------------------------------------------------------------------------------
    def get_tuple(self, config) -> CheckpointTuple | None:
        return self._measured("get_tuple", self._get_tuple, config)

    def _get_tuple(self, config):
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "") or ""
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            prefix = self._cp_prefix(thread_id, ns, checkpoint_id)
            group = _Group(prefix[:-1].rsplit("/", 1)[1])
            for obj in self._list(prefix):
                group.add(obj["Key"][len(prefix):], obj)
            if not group.complete:
                return None
            return self._load(thread_id, ns, prefix, group)
        ns_prefix = self._ns_prefix(thread_id, ns)
        for group in _groups(self._list(ns_prefix, page_size=100), ns_prefix):
            if group.complete:
                return self._load(thread_id, ns, ns_prefix + group.inv + "/", group)
        return None

    def _load(self, thread_id, ns, prefix, group: _Group, manifest: dict | None = None) -> CheckpointTuple:
        """A checkpoint from its directory's listing: the payload object when one is listed (format 1),
        else the payload inline in the manifest (format 2); the writes alongside, in parallel.
        `manifest`: already read (list with a filter), not read again."""
        writes = [prefix + rel for rel in group.writes]
        if group.payload:
            results = self._parallel(lambda k: (k, *self._get_object(k)), [prefix + PAYLOAD] + writes)
            return self._decode(thread_id, ns, results[0], results[1:])
        mkey = prefix + MANIFEST
        if manifest is None:
            results = self._parallel(lambda k: (k, *self._get_object(k)), [mkey] + writes)
            manifest, results = self._parse_manifest(mkey, results[0][1]), results[1:]
        else:
            results = self._parallel(lambda k: (k, *self._get_object(k)), writes)
        return self._decode(thread_id, ns, self._payload_of(mkey, manifest, prefix + PAYLOAD), results)

    def _payload_of(self, mkey: str, manifest: dict, pkey: str):
        """(name, body, object metadata) of the payload inline in a manifest read without a payload
        object beside it; a format 1 manifest there names a missing payload object."""
        where = f"s3://{self.bucket}/{mkey}"
        found = _inline_payload(where, manifest)
        if found is None:
            raise S3CheckpointError(f"s3://{self.bucket}/{pkey} is missing")
        return (f"{mkey} (inline payload)", *found)

    def _decode(self, thread_id, ns, payload, writes) -> CheckpointTuple:
        """A CheckpointTuple from fetched (key, body, object metadata) of a payload and its writes."""
        pkey, pbody, pmeta = payload
        frame = self._unpack(pkey, pbody, pmeta)
        try:
            checkpoint = self._loads(frame["checkpoint"])
            metadata = self._loads(frame["metadata"])
            checkpoint["channel_values"] = {k: self._loads(v) for k, v in frame["values"].items()}
            parent_id = frame.get("parent_checkpoint_id")
        except S3CheckpointError:
            raise
        except Exception as e:
            raise S3CheckpointError(f"s3://{self.bucket}/{pkey} could not be decoded: {e}") from e
        pending = []
        for wkey, wbody, wmeta in writes:
            w = self._unpack(wkey, wbody, wmeta)
            pending.append((writes_sort_key(w.get("task_path", ""), w["task_id"], w["idx"]), (w["task_id"], w["channel"], self._loads(w["value"]))))
        pending.sort(key=lambda item: item[0])
        checkpoint_id = checkpoint["id"]
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}},
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent_id}}
                if parent_id else None
            ),
            pending_writes=[w for _, w in pending],
        )

    def list(self, config, *, filter: dict[str, Any] | None = None, before=None, limit: int | None = None):
        started = time.perf_counter()
        ok = False
        try:
            yield from self._list_tuples(config, filter=filter, before=before, limit=limit)
            ok = True
        finally:
            m = self._metrics
            if m and m.operations is not None:
                elapsed = time.perf_counter() - started
                m.safely(lambda: m.operations.labels("list", "ok" if ok else "error").inc())
                m.safely(lambda: m.latency.labels("list").observe(elapsed))

    def _list_tuples(self, config, *, filter, before, limit):
        if limit is not None and limit <= 0:
            return
        configurable = (config or {}).get("configurable", {})
        thread_id = configurable.get("thread_id")
        ns = configurable.get("checkpoint_ns")
        only_id = configurable.get("checkpoint_id")
        before_id = get_checkpoint_id(before) if before else None
        if thread_id is not None and ns is not None:
            prefix = self._ns_prefix(thread_id, ns)
            start_after = prefix + invert_id(before_id) + "/~" if before_id else None
            if only_id:
                start_after = None
            page = min(1000, max(100, (limit or 100) * 8))
            candidates = (
                (str(thread_id), ns, prefix + g.inv + "/", g)
                for g in _groups(self._list(prefix, start_after=start_after, page_size=page), prefix)
            )
        else:
            prefix = self._thread_prefix(thread_id) if thread_id is not None else f"{self.prefix}threads/"
            found = []
            for g in _groups(self._list(prefix), prefix, nested=thread_id is None):
                found.append((g.thread if thread_id is None else str(thread_id), g.ns, g.full_prefix(prefix), g))
            # Newest first across namespaces (and threads), like PostgresSaver's ORDER BY checkpoint_id DESC.
            found.sort(key=lambda c: invert_id(c[3].inv))
            found.reverse()
            candidates = iter(found)

        def wanted(c):
            g = c[3]
            if not g.complete:
                return False
            cid = invert_id(g.inv)
            if only_id and cid != only_id:
                return False
            if before_id and cid >= before_id:
                return False
            return True

        remaining = limit
        batch_size = min(limit, 16) if limit else 16
        batch = []

        wanted_metadata = _json_safe(filter) if filter else None

        def fetch(c):
            # With a filter, the manifest decides (its metadata is the checkpoint's, as JSON);
            # only a match costs the payload and writes.
            manifest = None
            if wanted_metadata:
                manifest = self._manifest(c[2] + MANIFEST)
                if not _metadata_matches(manifest.get("metadata"), wanted_metadata):
                    return None
            return self._load(c[0], c[1], c[2], c[3], manifest)

        def flush(batch):
            return [tup for tup in self._load_pool.map(fetch, batch) if tup is not None]

        for c in candidates:
            if not wanted(c):
                continue
            batch.append(c)
            if len(batch) >= batch_size:
                for tup in flush(batch):
                    yield tup
                    if remaining is not None:
                        remaining -= 1
                        if remaining <= 0:
                            return
                batch = []
                if remaining is not None and not filter:
                    batch_size = min(remaining, 16)
        for tup in flush(batch) if batch else []:
            yield tup
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    return

    # --- batch save and delete -----------------------------------------------------------
    def put_many(self, items) -> list[dict]:
        """Batch save: `items` are (config, checkpoint, metadata, new_versions) as for put();
        they are written in parallel (each with its own change entry, payload before
        manifest). Returns the configs put() would return, in order. The first failure is
        raised after the others finished; checkpoints already written stay (each is whole)."""
        items = list(items)
        return self._measured("put_many", self._put_many, items)

    def _put_many(self, items):
        # Each put fans out on self._pool; the batch runs on the other pool (see __init__).
        futures = [self._load_pool.submit(self._put, *item) for item in items]
        wait(futures)
        return [f.result() for f in futures]

    def delete_checkpoints(self, configs) -> int:
        """Batch delete of single checkpoints (with their writes), each config naming
        thread_id, checkpoint_ns and checkpoint_id: one listing per checkpoint, one `delete`
        change entry each, then DeleteObjects (manifests first). Returns the objects deleted."""
        return self._measured("delete_checkpoints", self._delete_checkpoints, list(configs))

    def _delete_checkpoints(self, configs):
        targets = []
        for config in configs:
            c = config["configurable"]
            if not c.get("checkpoint_id"):
                raise ValueError("delete_checkpoints needs a checkpoint_id in every config")
            targets.append((str(c["thread_id"]), c.get("checkpoint_ns", "") or "", c["checkpoint_id"]))
        found = self._parallel(lambda t: (t, [o["Key"] for o in self._list(self._cp_prefix(*t))]), targets)
        found = [(t, ks) for t, ks in found if ks]
        self._parallel(lambda t: self._put_object(self._change_key("delete", *t), b""), [t for t, _ in found])
        return self.delete_keys([k for _, ks in found for k in ks])

    # --- versioning ------------------------------------------------------------------------
    def versioning(self) -> str | None:
        """The bucket's versioning status: "Enabled", "Suspended", or None (never enabled)."""
        return self._request("get_bucket_versioning", Bucket=self.bucket).get("Status")

    def enable_versioning(self) -> None:
        """Turn versioning on for the bucket (it applies to the whole bucket, not only the prefix)."""
        self._request("put_bucket_versioning", Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})

    def checkpoint_versions(self, config) -> list[dict]:
        """The stored versions of one checkpoint (its manifest), newest first:
        {"version_id", "last_modified", "latest", "deleted", "bytes"}; a delete marker
        is a version with deleted=True. Empty when the checkpoint never existed."""
        thread_id, ns, checkpoint_id = self._address(config)
        key = self.manifest_key(thread_id, ns, checkpoint_id)
        out = []
        for kind, entry in self._versions(key):
            if entry["Key"] != key:
                continue
            out.append({
                "version_id": entry["VersionId"], "last_modified": entry["LastModified"],
                "latest": entry.get("IsLatest", False), "deleted": kind == "DeleteMarkers",
                "bytes": entry.get("Size", 0),
            })
        # S3 lists a key's versions newest first, but LastModified has whole seconds:
        # the latest goes first, then by time, ties kept in the server's order (stable sort).
        out.sort(key=lambda v: (not v["latest"], -v["last_modified"].timestamp()))
        return out

    def get_tuple_version(self, config, version_id: str) -> CheckpointTuple:
        """Load one stored version of a checkpoint (see checkpoint_versions), also after the
        checkpoint was deleted or overwritten. The manifest version names its payload version
        (else: the newest payload version not after it); each write is its key's newest
        version older than the next rewrite of the manifest (writes come after their
        checkpoint, so a deleted checkpoint gets the writes it had when it was deleted)."""
        from botocore.exceptions import ClientError

        thread_id, ns, checkpoint_id = self._address(config)
        prefix = self._cp_prefix(thread_id, ns, checkpoint_id)
        mkey = prefix + MANIFEST
        entries = list(self._versions(prefix))
        mine = [e for kind, e in entries if e["Key"] == mkey and e["VersionId"] == version_id]
        if not mine:
            raise S3CheckpointError(f"s3://{self.bucket}/{mkey} has no version {version_id!r}")
        if any(kind == "DeleteMarkers" for kind, e in entries if e is mine[0]):
            raise S3CheckpointError(f"s3://{self.bucket}/{mkey} version {version_id!r} is a delete marker")
        written = mine[0]["LastModified"]
        rewrites = [e["LastModified"] for kind, e in entries
                    if kind == "Versions" and e["Key"] == mkey and e["LastModified"] > written]
        until = min(rewrites) if rewrites else None
        try:
            manifest = self._parse_manifest(mkey, self._get_object(mkey, version_id)[0])
        except ClientError as e:
            raise S3CheckpointError(f"s3://{self.bucket}/{mkey} version {version_id!r} could not be read: {e}") from e
        pkey = prefix + PAYLOAD
        inline = _inline_payload(f"s3://{self.bucket}/{mkey} version {version_id}", manifest)
        payload_version = manifest.get("payload", {}).get("version_id")
        if inline is None and not payload_version:
            older = [e for kind, e in entries if kind == "Versions" and e["Key"] == pkey and e["LastModified"] <= written]
            if not older:
                raise S3CheckpointError(f"s3://{self.bucket}/{pkey} has no version as old as manifest version {version_id}")
            payload_version = max(older, key=lambda e: e["LastModified"])["VersionId"]
        writes = {}
        for kind, e in entries:
            if kind != "Versions" or not e["Key"].startswith(prefix + WRITES):
                continue
            if until is not None and e["LastModified"] >= until:
                continue
            if e["Key"] not in writes or e["LastModified"] > writes[e["Key"]]["LastModified"]:
                writes[e["Key"]] = e
        fetch = [(k, e["VersionId"]) for k, e in sorted(writes.items())]
        if inline is not None:
            # The manifest version holds its own payload.
            results = self._parallel(lambda kv: (kv[0], *self._get_object(kv[0], kv[1])), fetch)
            return self._decode(thread_id, ns, (f"{mkey} version {version_id} (inline payload)", *inline), results)
        results = self._parallel(lambda kv: (kv[0], *self._get_object(kv[0], kv[1])), [(pkey, payload_version)] + fetch)
        return self._decode(thread_id, ns, results[0], results[1:])

    def _versions(self, prefix: str):
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            response = self._request("list_object_versions", **kwargs)
            for kind in ("Versions", "DeleteMarkers"):
                for entry in response.get(kind, []):
                    yield kind, entry
            if not response.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = response["NextKeyMarker"]
            if response.get("NextVersionIdMarker"):
                kwargs["VersionIdMarker"] = response["NextVersionIdMarker"]

    def _address(self, config) -> tuple[str, str, str]:
        c = config["configurable"]
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            raise ValueError("this call needs a checkpoint_id in the config")
        return str(c["thread_id"]), c.get("checkpoint_ns", "") or "", checkpoint_id

    # --- lifecycle -------------------------------------------------------------------------
    def _rule_id(self, name: str) -> str:
        return lifecycle_rule_id(self.prefix, name)

    def lifecycle_rules(self, **policy) -> list[dict]:
        """The saver's lifecycle rules for its prefix: checkpoints.s3layout.lifecycle_rules(prefix, **policy),
        whose docstring names the options (expire_days, archive_days, archive_storage_class,
        intelligent_tiering_days, changes_expire_days, abort_multipart_days)."""
        return lifecycle_rules(self.prefix, **policy)

    def lifecycle(self) -> list[dict]:
        """The bucket's lifecycle rules that are this saver's (by rule ID); [] when none."""
        return [r for r in self._bucket_rules() if is_saver_rule(r, self.prefix)]

    def lifecycle_configuration(self, **policy) -> dict:
        """The whole bucket lifecycle configuration apply_lifecycle(**policy) would put:
        the bucket's rules of other prefixes as they are, this saver's replaced by
        lifecycle_rules(**policy). A preview; nothing is changed."""
        return lifecycle_configuration(self._bucket_rules(), self.prefix, **policy)

    def apply_lifecycle(self, **policy) -> dict:
        """Put lifecycle_configuration(**policy) on the bucket; returns what was put. With no
        rules left at all, the bucket's lifecycle configuration is deleted."""
        configuration = self.lifecycle_configuration(**policy)
        if configuration["Rules"]:
            self._request("put_bucket_lifecycle_configuration", Bucket=self.bucket, LifecycleConfiguration=configuration)
        else:
            self._request("delete_bucket_lifecycle", Bucket=self.bucket)
        return configuration

    def _bucket_rules(self) -> list[dict]:
        from botocore.exceptions import ClientError

        try:
            return self._request("get_bucket_lifecycle_configuration", Bucket=self.bucket).get("Rules", [])
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) == "NoSuchLifecycleConfiguration":
                return []
            raise

    # --- signed URLs -----------------------------------------------------------------------
    def presigned_url(self, config, part: str = "payload", expires: int = 300) -> str:
        """A presigned GET URL of one checkpoint's `payload` or `manifest` (stored form: the
        payload may be gzip, see docs/s3-layout.md §2), valid `expires` seconds (1..604800).
        A payload up to `inline_limit` has no object of its own: it is in the manifest.
        Without a checkpoint_id in the config, the latest checkpoint of the thread and
        namespace (one listing). Signing itself sends no request."""
        if part not in (PAYLOAD, "manifest"):
            raise ValueError(f"part={part!r}: use 'payload' or 'manifest'")
        if not isinstance(expires, int) or not 1 <= expires <= 604800:
            raise ValueError(f"expires={expires!r}: seconds from 1 to 604800 (7 days)")
        c = config["configurable"]
        thread_id, ns = str(c["thread_id"]), c.get("checkpoint_ns", "") or ""
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            ns_prefix = self._ns_prefix(thread_id, ns)
            latest = next((g for g in _groups(self._list(ns_prefix, page_size=100), ns_prefix) if g.complete), None)
            if latest is None:
                raise S3CheckpointError(f"no checkpoint under s3://{self.bucket}/{ns_prefix}")
            checkpoint_id = invert_id(latest.inv)
        key = self.payload_key(thread_id, ns, checkpoint_id) if part == PAYLOAD else self.manifest_key(thread_id, ns, checkpoint_id)
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires)

    # --- delete, copy, prune --------------------------------------------------------------
    def delete_thread(self, thread_id: str) -> None:
        return self._measured("delete_thread", self._delete_thread, thread_id)

    def _delete_thread(self, thread_id):
        keys = [o["Key"] for o in self._list(self._thread_prefix(thread_id))]
        self._put_object(self._change_key("delete_thread", str(thread_id)), b"")
        self.delete_keys(keys)
        self._request("delete_object", Bucket=self.bucket, Key=self._delta_key(thread_id))
        self._delta_marked.discard(str(thread_id))

    def delete_keys(self, keys: Sequence[str]) -> int:
        """Batch delete (DeleteObjects, at most 1000 keys a request); manifests go first,
        so a reader never finds a manifest whose payload is already gone. Returns the count."""
        keys = list(keys)
        manifests = [k for k in keys if k.endswith("/" + MANIFEST)]
        rest = [k for k in keys if not k.endswith("/" + MANIFEST)]
        for group in (manifests, rest):
            chunks = [group[i:i + MAX_DELETE_BATCH] for i in range(0, len(group), MAX_DELETE_BATCH)]
            for response in self._parallel(
                lambda chunk: self._request(
                    "delete_objects", Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                ),
                chunks,
            ):
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise S3CheckpointError(
                        f"could not delete {len(response['Errors'])} objects, e.g. {first.get('Key')}: "
                        f"{first.get('Code')} {first.get('Message')}"
                    )
        return len(keys)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        return self._measured("copy_thread", self._copy_thread, source_thread_id, target_thread_id)

    def _copy_thread(self, source_thread_id, target_thread_id):
        """Every checkpoint of every namespace with its writes (the whole parent
        chain, as DeltaChannel needs); manifests last, each rewritten for the target."""
        src = self._thread_prefix(source_thread_id)
        dst = self._thread_prefix(target_thread_id)
        objects = [o["Key"] for o in self._list(src)]
        if not objects:
            return
        data = [k for k in objects if not k.endswith("/" + MANIFEST)]
        manifests = [k for k in objects if k.endswith("/" + MANIFEST)]
        extra = self._extra()

        def copy(key):
            self._request(
                "copy_object", Bucket=self.bucket, Key=dst + key[len(src):],
                CopySource={"Bucket": self.bucket, "Key": key}, **extra,
            )

        self._parallel(copy, data)
        if self._head(self._delta_key(source_thread_id)):
            self._put_object(self._delta_key(target_thread_id), b"")

        def rewrite(key):
            body, _ = self._get_object(key)
            manifest = json.loads(body)
            manifest["thread_id"] = str(target_thread_id)
            manifest["written_at"] = datetime.now(timezone.utc).isoformat()
            self._put_object(self._change_key("put", str(target_thread_id), manifest["checkpoint_ns"], manifest["checkpoint_id"]), b"")
            self._put_object(dst + key[len(src):], json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode(),
                             content_type="application/json")

        self._parallel(rewrite, manifests)

    def _head(self, key) -> dict | None:
        try:
            return self._request("head_object", Bucket=self.bucket, Key=key)
        except Exception as e:
            from botocore.exceptions import ClientError

            if isinstance(e, ClientError) and str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        return self._measured("prune", self._prune, thread_ids, strategy)

    def _prune(self, thread_ids, strategy):
        """`delete`: the threads go. `keep_latest`: each namespace keeps its latest
        checkpoint with its writes; older ones go (manifests first). Checkpoints
        newer than the kept one but not yet complete (a put under way) stay.
        Like PostgresSaver, keep_latest refuses threads that use a DeltaChannel,
        since their latest value is rebuilt from older checkpoints: if any
        requested thread does, nothing is pruned."""
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        thread_ids = [str(t) for t in thread_ids]
        if strategy == "delete":
            for thread_id in thread_ids:
                self._delete_thread(thread_id)
            return
        delta = [t for t in thread_ids if self._head(self._delta_key(t))]
        if delta:
            raise NotImplementedError(f"keep_latest can't prune threads that use a DeltaChannel: {', '.join(sorted(delta))}")
        for thread_id in thread_ids:
            prefix = self._thread_prefix(thread_id)
            doomed = []
            deleted = []
            kept_ns = set()
            for g in _groups(self._list(prefix), prefix, nested=False):
                if g.ns in kept_ns:
                    doomed.extend(g.full_prefix(prefix) + rel for rel in g.all_keys())
                    if g.complete:
                        deleted.append((g.ns, invert_id(g.inv)))
                elif g.complete:
                    kept_ns.add(g.ns)
            if not doomed:
                continue
            for ns, checkpoint_id in deleted:
                self._put_object(self._change_key("delete", thread_id, ns, checkpoint_id), b"")
            self.delete_keys(doomed)


class AsyncS3Saver(S3Saver):
    """S3Saver with LangGraph's async API: every call runs the sync one in a worker
    thread (asyncio.to_thread), so the event loop never waits on S3."""

    async def aget_tuple(self, config):
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config, *, filter=None, before=None, limit=None):
        iterator = self.list(config, filter=filter, before=before, limit=limit)
        done = object()
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            yield item

    async def aput(self, config, checkpoint, metadata, new_versions):
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config, writes, task_id, task_path=""):
        return await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id):
        return await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id, target_thread_id):
        return await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids, *, strategy="keep_latest"):
        return await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def aput_many(self, items):
        return await asyncio.to_thread(self.put_many, items)

    async def adelete_checkpoints(self, configs):
        return await asyncio.to_thread(self.delete_checkpoints, configs)


# --- listing helpers ------------------------------------------------------------------------


def _metadata_matches(metadata, wanted: dict) -> bool:
    """PostgresSaver's `metadata @> filter` (jsonb containment) on the manifest's JSON metadata.

    >>> _metadata_matches({"source": "loop", "step": 1, "parents": {"": "x"}}, {"step": 1})
    True
    >>> _metadata_matches({"step": 1}, {"step": True}), _metadata_matches({"step": 1}, {"step": 1.0})
    (False, True)
    >>> _metadata_matches({"tags": ["a", "b"], "p": {"x": 1, "y": 2}}, {"tags": ["b"], "p": {"x": 1}})
    True
    """
    return isinstance(metadata, dict) and _contains(metadata, wanted)


def _contains(have, want) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and all(any(_contains(h, w) for h in have) for w in want)
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have
    return want == have


def _json_safe(value):
    """Metadata for the JSON manifest: what json cannot write becomes its repr."""
    return json.loads(json.dumps(value, default=repr, ensure_ascii=False))
