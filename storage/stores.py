"""Blob stores by URI scheme: S3 (s3://, minio://) and local files (file://).

`locate(uri)` is the one way in: it refuses URIs outside the configured
stores (docs/architecture.md §3, "foreign": never HEADed, signed or swept) and returns
the store and the exact object key. Keys are used as found, never normalised:
`a//b` and `a/./b` are distinct S3 objects.

Every failure of a store that cannot answer becomes a `StoreUnavailable`
whose message can be shown to users as is; botocore already retried it
(standard mode, S3_MAX_ATTEMPTS attempts, connect and read timeouts).
"""

from __future__ import annotations

import mimetypes
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from django.conf import settings

from checkpoints.uris import classify, file_path_inside, parse_uri
from storage.disposition import attachment_header
from checkpoints.s3client import S3Settings, build_client

# S3 allows at most 1000 keys in one DeleteObjects request.
DELETE_BATCH = 1000


class StoreError(Exception):
    """A store refused or failed a request; the message is fit for a page."""


class StoreUnavailable(StoreError):
    """The store could not be reached or did not answer, after retries."""


class StoreNotConfigured(StoreError):
    """The store is not configured (no bucket, no credentials)."""


class ForeignURI(StoreError):
    """The URI is outside every configured store: never HEADed, signed or swept."""


class PathRefused(StoreError):
    """A file path outside BLOB_ROOT, or one that tries to leave it."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    exists: bool
    size: int | None = None
    content_type: str = ""
    last_modified: datetime | None = None
    etag: str = ""


@dataclass(frozen=True)
class DeleteError:
    key: str
    code: str
    message: str


def locate(uri: str):
    """(store, key) for a URI inside a configured store; ForeignURI otherwise."""
    kind = classify(uri, bucket=settings.S3_BUCKET_NAME, prefix=settings.S3_PREFIX, blob_root=settings.BLOB_ROOT)
    if kind == "foreign":
        raise ForeignURI(f"{uri} is outside the configured stores")
    return store_for(kind), parse_uri(uri).key


def store_for(uri_or_scheme: str):
    """The store for a scheme (`s3`, `minio`, `file`) or for a URI's scheme.

    Stores are cached per configuration: building a boto3 client costs tens of
    milliseconds, presigning with a built one well under one.
    """
    scheme = uri_or_scheme.split("://", 1)[0].lower()
    if scheme == "file":
        return FileStore(settings.BLOB_ROOT)
    if scheme not in ("s3", "minio"):
        raise ValueError(f"no store for {uri_or_scheme!r}: use s3://, minio:// or file://")
    config = s3_settings()
    with _cache_lock:
        store = _s3_cache.get(config)
        if store is None:
            if len(_s3_cache) > 16:  # settings changed many times (tests): drop old clients
                _s3_cache.clear()
            store = _s3_cache[config] = S3Store(config)
    return store


_s3_cache = {}
_cache_lock = threading.Lock()


# --- S3 ----------------------------------------------------------------------------


def s3_settings() -> S3Settings:
    """The S3 settings the console runs with (Django settings, read from the
    environment by checkpoints.s3client at start; tests override them)."""
    return S3Settings(
        bucket=settings.S3_BUCKET_NAME,
        prefix=settings.S3_PREFIX,
        endpoint_url=settings.S3_ENDPOINT_URL,
        region=settings.AWS_REGION,
        path_style=settings.S3_FORCE_PATH_STYLE,
        access_key=settings.AWS_ACCESS_KEY_ID,
        secret_key=settings.AWS_SECRET_ACCESS_KEY,
        session_token=getattr(settings, "AWS_SESSION_TOKEN", ""),
        connect_timeout=settings.S3_CONNECT_TIMEOUT,
        read_timeout=settings.S3_READ_TIMEOUT,
        max_attempts=settings.S3_MAX_ATTEMPTS,
    )


class S3Store:
    scheme = "s3"

    def __init__(self, config: S3Settings):
        if not config.bucket:
            raise StoreNotConfigured("No S3 bucket is configured (set S3_BUCKET_NAME).")
        self.config = config
        self.bucket = config.bucket
        # One client serves every thread and request (botocore clients are
        # thread-safe); built like the agent library's, in checkpoints.s3client.
        self.client = build_client(config)

    def __repr__(self):
        return f"<S3Store {self.bucket} at {self.config.where}>"

    def _error(self, exc, action, key=None):
        """Translate a botocore exception into a StoreError with a readable message."""
        from botocore import exceptions as bex

        what = f"s3://{self.bucket}/{key}" if key is not None else f"bucket {self.bucket}"
        if isinstance(exc, bex.NoCredentialsError):
            return StoreNotConfigured("No S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).")
        if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError)):
            return StoreUnavailable(
                f"S3 at {self.config.where} is unavailable ({action} {what}, "
                f"{self.config.max_attempts} attempts): {exc}"
            )
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = err.get("Code") or ""
            detail = " ".join(p for p in (code if code != str(status) else "", err.get("Message") or "") if p)
            text = f"S3 at {self.config.where} refused {action} {what}: HTTP {status} {detail}".rstrip()
            return StoreUnavailable(text) if status >= 500 else StoreError(text)
        if isinstance(exc, bex.BotoCoreError):
            return StoreError(f"S3 {action} {what} failed: {exc}")
        return exc

    def head(self, key: str) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return ObjectInfo(key=key, exists=False)
            raise self._error(e, "HEAD", key) from e
        except BotoCoreError as e:
            raise self._error(e, "HEAD", key) from e
        return ObjectInfo(
            key=key,
            exists=True,
            size=r.get("ContentLength"),
            content_type=r.get("ContentType") or "",
            last_modified=r.get("LastModified"),
            etag=(r.get("ETag") or "").strip('"'),
        )

    def open(self, key: str):
        """A file-like body of the object (read it in chunks; close it)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (BotoCoreError, ClientError) as e:
            raise self._error(e, "GET", key) from e

    def stream(self, key: str, chunk_size: int = 1 << 16):
        body = self.open(key)
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def list(self, prefix: str = "", page_size: int = 1000):
        """Every object under `prefix`, one page in memory at a time.

        Yields ObjectInfo in the server's order; callers must not assume
        byte order (some S3-compatible servers list in their own order).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(
                        key=obj["Key"],
                        exists=True,
                        size=obj.get("Size"),
                        last_modified=obj.get("LastModified"),
                        etag=(obj.get("ETag") or "").strip('"'),
                    )
        except (BotoCoreError, ClientError) as e:
            raise self._error(e, "LIST", prefix) from e

    def delete_many(self, keys) -> list[DeleteError]:
        """Delete keys, at most 1000 a request; the errors, one per key not deleted.

        When the store stops answering mid-way, the keys of that batch and of
        every later one are reported as not deleted: nothing is assumed gone.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        keys = list(keys)
        errors = []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                r = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except (BotoCoreError, ClientError) as e:
                err = self._error(e, "DELETE", batch[0] if len(batch) == 1 else None)
                code = "StoreUnavailable" if isinstance(err, StoreUnavailable) else "BatchFailed"
                errors.extend(DeleteError(k, code, str(err)) for k in keys[start:])
                break
            errors.extend(
                DeleteError(e.get("Key", ""), e.get("Code", ""), e.get("Message", "")) for e in r.get("Errors", ())
            )
        return errors

    def presign_get(self, key: str, filename: str, expires: int) -> str:
        """A SigV4 GET URL, valid `expires` seconds, that downloads as `filename`.

        Signing is local: no request is made. S3 echoes the sanitised
        Content-Disposition back because it is part of the signed query.
        """
        from botocore.exceptions import BotoCoreError

        try:
            return self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key, "ResponseContentDisposition": attachment_header(filename)},
                ExpiresIn=max(1, min(int(expires), 604800)),
            )
        except BotoCoreError as e:  # no credentials anywhere in the chain, a bad endpoint
            raise self._error(e, "sign a link to", key) from e

    def bucket_config(self) -> dict:
        """Versioning, lifecycle rules and default encryption, as S3 reports them."""
        from botocore.exceptions import BotoCoreError, ClientError

        def call(action, fn, missing_codes=()):
            try:
                return fn(Bucket=self.bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in missing_codes:
                    return None
                raise self._error(e, action) from e
            except BotoCoreError as e:
                raise self._error(e, action) from e

        versioning = call("GetBucketVersioning", self.client.get_bucket_versioning)
        lifecycle = call(
            "GetBucketLifecycleConfiguration",
            self.client.get_bucket_lifecycle_configuration,
            ("NoSuchLifecycleConfiguration",),
        )
        encryption = call(
            "GetBucketEncryption",
            self.client.get_bucket_encryption,
            ("ServerSideEncryptionConfigurationNotFoundError",),
        )
        return {
            "versioning": versioning.get("Status") or "",
            "mfa_delete": versioning.get("MFADelete") or "",
            "rules": (lifecycle or {}).get("Rules", []),
            "encryption": ((encryption or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules", []),
        }


# --- Local files ----------------------------------------------------------------------


class FileStore:
    """Files under BLOB_ROOT; keys are absolute paths, as in file:///path URIs."""

    scheme = "file"

    def __init__(self, root):
        self.root = Path(root)

    def __repr__(self):
        return f"<FileStore {self.root}>"

    def resolve(self, key: str) -> Path:
        """The real path of `key`, refusing anything that leaves BLOB_ROOT.

        Lexical checks first (`..`, NUL, outside the root), then symlinks are
        resolved and the result must still lie strictly inside the real root.
        """
        if not isinstance(key, str) or "\x00" in key:
            raise PathRefused("The path contains a NUL character.")
        inside = file_path_inside(key, self.root)
        if inside is None:
            raise PathRefused(f"{key} is not inside the blob root {self.root}.")
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(inside)
        if not real.startswith(real_root.rstrip("/") + "/"):
            raise PathRefused(f"{key} leads outside the blob root {self.root} through a link.")
        return Path(real)

    def head(self, key: str) -> ObjectInfo:
        path = self.resolve(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return ObjectInfo(key=key, exists=False)
        except OSError as e:
            raise StoreError(f"Cannot read {key}: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):
            return ObjectInfo(key=key, exists=False)
        return ObjectInfo(
            key=key,
            exists=True,
            size=st.st_size,
            content_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        )

    def open(self, key: str):
        path = self.resolve(key)
        # The path is fully resolved: O_NOFOLLOW refuses a last component that
        # was swapped for a symlink between resolve() and open().
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as e:
            raise StoreError(f"{key} does not exist.") from e
        except OSError as e:
            raise StoreError(f"Cannot open {key}: {e.strerror}") from e
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise StoreError(f"{key} is not a regular file.")
        return f

    def stream(self, key: str, chunk_size: int = 1 << 16):
        with self.open(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def list(self, prefix: str = ""):
        """Regular files under the root whose path starts with `prefix`.

        A directory walk with an explicit stack: memory grows with depth, not
        with the number of files. Symlinks are neither followed nor listed.
        """
        root = os.path.realpath(self.root)
        stack = [root]
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            with entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path.startswith(prefix) or prefix.startswith(entry.path + "/"):
                            stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and entry.path.startswith(prefix):
                        st = entry.stat(follow_symlinks=False)
                        yield ObjectInfo(
                            key=entry.path,
                            exists=True,
                            size=st.st_size,
                            last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
                            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
                        )

    def delete_many(self, keys) -> list[DeleteError]:
        errors = []
        for key in keys:
            try:
                self.resolve(key).unlink()
            except FileNotFoundError:
                pass  # as in S3: deleting a missing object succeeds
            except PathRefused as e:
                errors.append(DeleteError(key, "PathRefused", str(e)))
            except OSError as e:
                errors.append(DeleteError(key, "OSError", e.strerror or str(e)))
        return errors
