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


# The bytes form of URI_RE, for values scanned raw (a `bytes` value, or one too
# large to decode): printable ASCII but the same stops, or a well-formed UTF-8
# sequence. Control bytes and stray UTF-8 continuation bytes end a match, so a
# URI stored as a msgpack string stops where the next header byte begins.
URI_BYTES_RE = re.compile(
    rb"\b(?:s3|minio|file)://(?:[\x21\x23-\x26\x2a-\x3b\x3d\x3f-\x5a\x5e\x5f\x61-\x7a\x7c\x7e]"
    rb"|[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3})+"
)
# A reference is short: at most MAX_URI_LENGTH characters, 4 bytes each at worst.
MAX_URI_BYTES = 4 * MAX_URI_LENGTH


def find_uris_in_bytes(data, pos=0):
    """URIs of the three schemes inside raw bytes, from `pos` (bytes before it still decide the word boundary).

    >>> list(find_uris_in_bytes(b"\\x00\\xffsee s3://b/k/a.pdf.\\nand minio://b/\\xc3\\xbc.png\\x01"))
    ['s3://b/k/a.pdf', 'minio://b/ü.png']
    >>> list(find_uris_in_bytes(b"\\xaas3://b/key\\xa1n")), list(find_uris_in_bytes(b"xs3://b/k")), list(find_uris_in_bytes(b"no uri"))
    (['s3://b/key'], [], [])
    >>> list(find_uris_in_bytes(b"s3://b/a s3://b/b", pos=1))
    ['s3://b/b']
    """
    for start, end in _byte_matches(data, pos, len(data)):
        # The str rules (whitespace beyond ASCII, trailing punctuation, length) apply as for text.
        yield from find_uris(data[start:end].decode("utf-8"))


_SCHEMES_BYTES = (b"s3", b"minio", b"file")


def _byte_matches(data, pos, before):
    """(start, end) of each URI_BYTES_RE match in `data` starting at `pos` or later but before `before`.

    Looks for "://" with bytes.find (a fast substring search) and tries the
    pattern only where a scheme precedes it: running the pattern over every
    byte ran at 20-40 MB/s, too slow for values of hundreds of megabytes.
    """
    i = data.find(b"://", pos)
    while i != -1:
        next_from = i + 3
        for scheme in _SCHEMES_BYTES:
            start = i - len(scheme)
            if start >= pos and data.startswith(scheme, start):
                if start >= before:
                    return
                match = URI_BYTES_RE.match(data, start)  # \b sees the byte before `start`
                if match:
                    yield start, match.end()
                    next_from = match.end()
                break
        i = data.find(b"://", next_from)


def scan_windows(read, size, window=4 * 1024 * 1024):
    """The URIs in a value of `size` bytes read as `read(offset, length)` (0-based), one window at a time.

    Windows overlap by MAX_URI_BYTES, so a URI crossing a window's end is
    whole in the next one; each match is taken from the window where it
    starts before the overlap, and one that runs into the end of a window
    that is not the last is longer than any reference (it is dropped).
    One byte before each window is read too, for the word boundary.

    >>> data = b"x" * 9000 + b" s3://b/crossing/the/boundary.bin " + b"y" * 9000 + b" s3://b/end"
    >>> sorted(scan_windows(lambda o, n: data[o:o + n], len(data), window=MAX_URI_BYTES + 100))
    ['s3://b/crossing/the/boundary.bin', 's3://b/end']
    >>> sorted(scan_windows(lambda o, n: data[o:o + n], len(data), window=len(data)))
    ['s3://b/crossing/the/boundary.bin', 's3://b/end']
    """
    if window <= MAX_URI_BYTES:
        raise ValueError("a window must be larger than the longest reference")
    found = set()
    step = window - MAX_URI_BYTES
    start = 0
    while start < size:
        last = start + window >= size
        head = 1 if start else 0
        data = read(start - head, window + head)
        if not data:
            break
        limit = len(data) if last else head + step  # matches starting here or later: the next window's
        for match_start, match_end in _byte_matches(data, head, limit):
            if not last and match_end == len(data):
                continue  # runs into the window's end: longer than MAX_URI_BYTES
            found.update(find_uris(data[match_start:match_end].decode("utf-8")))
        start += step
    return found


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
