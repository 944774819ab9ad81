"""Blob URIs found in checkpoint state: `s3://`, `minio://` and `file://`.

Pure parsing shared by the sync (which classifies references) and the storage
app (which HEADs, signs and sweeps them). A URI is only ever acted on when it
falls inside a configured store; every other one is "foreign".
"""

import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

SCHEMES = ("s3", "minio", "file")
# Stops at whitespace, quotes and brackets so a URI inside prose is cut cleanly.
URI_RE = re.compile(r"\b(?:s3|minio|file)://[^\s\"'<>\\`()\[\]{}]+")
MAX_URI_LENGTH = 2048


@dataclass(frozen=True)
class BlobURI:
    scheme: str
    bucket: str  # empty for file://
    key: str  # object key, or the absolute path for file://

    @property
    def filename(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]


def parse_uri(uri: str) -> BlobURI:
    """Split a blob URI, refusing anything ambiguous.

    >>> parse_uri("s3://bucket/uploads/u1/report.pdf")
    BlobURI(scheme='s3', bucket='bucket', key='uploads/u1/report.pdf')
    >>> parse_uri("file:///var/blobs/a.txt")
    BlobURI(scheme='file', bucket='', key='/var/blobs/a.txt')
    >>> parse_uri("s3://bucket/")
    Traceback (most recent call last):
    ...
    ValueError: 's3://bucket/' names no object key
    >>> parse_uri("file://host/etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: 'file://host/etc/passwd' names a host; file URIs must be file:///absolute/path
    >>> parse_uri("http://x/y")
    Traceback (most recent call last):
    ...
    ValueError: 'http://x/y' is not an s3://, minio:// or file:// URI
    """
    if not isinstance(uri, str) or len(uri) > MAX_URI_LENGTH:
        raise ValueError("not a URI or longer than 2048 characters")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not uri.lower().startswith(scheme + "://"):
        raise ValueError(f"{uri!r} is not an s3://, minio:// or file:// URI")
    if any(ord(c) < 32 for c in uri):
        raise ValueError(f"{uri!r} contains control characters")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{uri!r} names a host; file URIs must be file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"{uri!r} is not an absolute path")
        return BlobURI("file", "", path)
    bucket = parts.netloc
    key = uri[len(scheme) + 3 + len(bucket) + 1 :]
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    if not key:
        raise ValueError(f"{uri!r} names no object key")
    return BlobURI(scheme, bucket, key)


def find_uris(text: str):
    """URIs of the three schemes inside a string.

    >>> list(find_uris("saved to s3://b/k/a.pdf, and file:///tmp/x.png."))
    ['s3://b/k/a.pdf', 'file:///tmp/x.png']
    """
    for match in URI_RE.finditer(text):
        uri = match.group(0).rstrip(".,;:!?")
        if len(uri) <= MAX_URI_LENGTH:
            yield uri


def file_path_inside(path: str, root) -> str | None:
    """The normalised path if it lies strictly inside `root`, else None.

    Symlinks are not followed here; the file store resolves them at open time.

    >>> file_path_inside("/var/blobs/a/b.txt", "/var/blobs")
    '/var/blobs/a/b.txt'
    >>> file_path_inside("/var/blobs/../etc/passwd", "/var/blobs") is None
    True
    >>> file_path_inside("/var/blobs", "/var/blobs") is None
    True
    >>> file_path_inside("/var/blobsX/a", "/var/blobs") is None
    True
    """
    root = posixpath.normpath(str(root))
    normal = posixpath.normpath(path)
    if "\x00" in path or ".." in PurePosixPath(path).parts:
        return None
    if normal == root or not normal.startswith(root.rstrip("/") + "/"):
        return None
    return normal


def classify(uri: str, *, bucket: str, prefix: str, blob_root) -> str:
    """Which configured store a URI falls in: s3, minio, file, or foreign.

    >>> kw = dict(bucket="b", prefix="uploads/", blob_root="/var/blobs")
    >>> classify("s3://b/uploads/x.pdf", **kw), classify("minio://b/uploads/y", **kw)
    ('s3', 'minio')
    >>> classify("s3://other/uploads/x.pdf", **kw), classify("s3://b/elsewhere", **kw)
    ('foreign', 'foreign')
    >>> classify("file:///var/blobs/f.txt", **kw), classify("file:///etc/passwd", **kw)
    ('file', 'foreign')
    """
    try:
        parsed = parse_uri(uri)
    except ValueError:
        return "foreign"
    if parsed.scheme == "file":
        return "file" if blob_root and file_path_inside(parsed.key, blob_root) else "foreign"
    if bucket and parsed.bucket == bucket and parsed.key.startswith(prefix or ""):
        return parsed.scheme
    return "foreign"
