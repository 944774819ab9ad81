"""Inline previews of offloaded values and external files, read with a cap.

Two kinds of target appear in a checkpoint's decoded values:

- our offloaded envelopes (storage.offload): `{"__offloaded__": 1, "uri", "sha256", "size",
  "type", "content_type", "encoding"}`. The object is streamed through its
  decompressor (gzip, zstd) and a sha256 of the whole content; only the
  first `limit` bytes are kept. Content is shown only when the sha256 and
  the size match the envelope: a missing or corrupt object says so and
  never shows its bytes. Objects larger than VERIFY_MAX are not read at all
  (the download is offered instead).
- external references: an `s3://`, `minio://` or `file://` URI inside a
  configured store (checkpoints.uris.classify). At most `limit` bytes are
  read, then the read stops; there is nothing to verify them against.

Content is decoded without running anything the data names: text (UTF-8),
JSON (parsed with the standard library), the console's msgpack decoder for
`serde:msgpack` values (checkpoints.decode.safe_loads, which never imports
nor unpickles), and an encrypted value stays "encrypted" without
LANGGRAPH_AES_KEY. Everything else is "binary": its type and size only.

Memory stays under `limit` plus one read chunk whatever the object's size;
a compressed object is decompressed in chunks as well, so a small object
that inflates to gigabytes costs time up to VERIFY_MAX, never memory.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
from dataclasses import dataclass

from checkpoints.decode import find_references, plain, safe_loads
from checkpoints.units import format_bytes
from storage.stores import ForeignURI, StoreError, StoreNotConfigured, StoreUnavailable, locate

CHUNK = 1 << 16
# Offloaded objects larger than this (decoded) are not streamed to check them: a page view
# must not read gigabytes. They are offered for download.
VERIFY_MAX = 64_000_000
# "Show more" reads this many times the display limit.
MORE_FACTOR = 16
# Targets previewed on one page; the others are listed without their content.
MAX_TARGETS = 20

_TEXT_TYPES = ("application/json", "application/x-ndjson", "application/xml", "application/yaml",
               "application/x-yaml", "application/javascript")


@dataclass
class Target:
    """Something to preview: an offloaded envelope or an external URI, and where it was found."""

    uri: str
    where: str
    envelope: dict | None = None

    @property
    def kind(self):
        return "offloaded" if self.envelope is not None else "external"


@dataclass
class Preview:
    """What the page shows for one target.

    status: text, json, decoded (msgpack, shown as JSON), binary, encrypted,
    undecodable, too large, missing, corrupt, foreign, unavailable.
    """

    uri: str
    kind: str
    status: str
    size: int | None = None
    content_type: str = ""
    shown: str = ""
    complete: bool = True  # `shown` is the whole content (else its first `limit` bytes)
    limit: int = 0
    etag: str = ""
    verified: bool = False  # the sha256 of the whole content matched the envelope
    note: str = ""

    @property
    def has_content(self):
        return self.status in ("text", "json", "decoded")


def is_envelope(value) -> bool:
    """An offloaded value's reference (storage.offload.is_reference, Django-free and import-light).

    >>> is_envelope({"__offloaded__": 1, "uri": "s3://b/sha256/x", "sha256": "0" * 64, "type": "bytes"})
    True
    >>> is_envelope({"__offloaded__": 1, "uri": "s3://b/k"}), is_envelope("s3://b/k")
    (False, False)
    """
    from storage.offload import is_reference

    return is_reference(value)


def find_targets(values, limit=MAX_TARGETS * 4) -> list[Target]:
    """Envelopes and URIs in `values` (`[(where, decoded value)]`), first place found, envelopes first.

    >>> env = {"__offloaded__": 1, "uri": "s3://b/sha256/ab", "sha256": "a" * 64, "type": "str", "size": 9}
    >>> [(t.kind, t.uri, t.where) for t in find_targets([("doc", {"text": env}), ("files", ["s3://b/x.json", "s3://b/sha256/ab"])])]
    [('offloaded', 's3://b/sha256/ab', 'doc'), ('external', 's3://b/x.json', 'files')]
    """
    found: dict[str, Target] = {}
    for where, value in values:
        stack = [value]
        while stack and len(found) < limit:
            item = stack.pop()
            if isinstance(item, dict):
                if is_envelope(item):
                    old = found.get(item["uri"])
                    if old is None or old.envelope is None:
                        found[item["uri"]] = Target(item["uri"], where if old is None else old.where, dict(item))
                    continue
                stack.extend(reversed(list(item.values())))
            elif isinstance(item, list):
                stack.extend(reversed(item))
        for uri in sorted(find_references(value)):
            if uri not in found and len(found) < limit:
                found[uri] = Target(uri, where)
    return sorted(found.values(), key=lambda t: t.envelope is None)


# --- reading ---------------------------------------------------------------------


class _Capped:
    """First `limit` bytes of a stream, plus its total length and sha256; no more held."""

    def __init__(self, limit):
        self.limit = limit
        self.kept = bytearray()
        self.total = 0
        self.sha = hashlib.sha256()

    def feed(self, chunk):
        self.total += len(chunk)
        self.sha.update(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]


def _decoded_stream(body, encoding):
    """A file-like reader of the decompressed content of `body`."""
    if encoding in (None, "", "identity"):
        return body
    if encoding == "gzip":
        return gzip.GzipFile(fileobj=body, mode="rb")
    if encoding == "zstd":
        try:
            import zstandard
        except ImportError:
            raise _Undecodable("zstd needs the zstandard package") from None
        return zstandard.ZstdDecompressor().stream_reader(body, read_size=CHUNK)
    raise _Undecodable(f"unknown encoding {encoding!r}")


class _Undecodable(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Body:
    """The store's body, whose read failures are the store's (never taken for corrupt data)."""

    def __init__(self, body):
        self.body = body

    def read(self, n=-1):
        try:
            return self.body.read(n)
        except Exception as e:
            raise StoreUnavailable(f"the read stopped: {type(e).__name__}: {e}") from e

    def readable(self):
        return True

    def close(self):
        self.body.close()


def _read_verified(store, key, envelope, limit) -> _Capped:
    capped = _Capped(limit)
    body = _Body(store.open(key))
    try:
        reader = _decoded_stream(body, envelope.get("encoding", "identity"))
        try:
            while chunk := reader.read(CHUNK):
                capped.feed(chunk)
                if capped.total > VERIFY_MAX:
                    raise _Corrupt(f"it inflates past {format_bytes(VERIFY_MAX)}, more than its envelope says")
        except StoreError:
            raise
        except (OSError, EOFError, ValueError, *_zstd_errors()) as e:  # gzip, zstd: corrupt or truncated
            raise _Corrupt(f"it does not decompress as {envelope.get('encoding')}: {e}") from None
    finally:
        body.close()
    return capped


def _zstd_errors():
    try:
        import zstandard
    except ImportError:  # pragma: no cover
        return ()
    return (zstandard.ZstdError,)


def _read_head(store, key, limit) -> tuple[bytes, bool]:
    """The first `limit` bytes of an object, and whether that was all of it."""
    body = _Body(store.open(key))
    try:
        kept = bytearray()
        while len(kept) <= limit:
            chunk = body.read(min(CHUNK, limit + 1 - len(kept)))
            if not chunk:
                return bytes(kept), True
            kept += chunk
        return bytes(kept[:limit]), False
    finally:
        body.close()


def _key_parts(target, etag, limit, aes_key):
    return ("preview", target.uri, etag, limit, json.dumps(target.envelope, sort_keys=True, default=str),
            hashlib.sha256(aes_key.encode()).hexdigest() if aes_key else "")


def preview(target: Target, *, limit: int, aes_key=None, cache=None, known_etag="") -> Preview:
    """Read and decode one target for display; never raises for what a store or the data does.

    `cache`, when given, has `get(key_parts)` and `put(key_parts, preview)`:
    a preview is kept under the object's URI and ETag (and the reading options).
    `known_etag` is the ETag the console's reference check last saw for a
    present object: a preview kept under it is served without asking the
    store. Without one the store is HEADed and the preview looked up under
    the ETag it gives; an object found missing by the check has none, so it
    is asked again and shown missing.
    """
    if cache is not None and known_etag:
        hit = cache.get(_key_parts(target, known_etag, limit, aes_key))
        if hit is not None:
            return hit
    base = Preview(target.uri, target.kind, "unavailable", limit=limit)
    envelope = target.envelope
    if envelope is not None:
        base.size = envelope.get("size") if isinstance(envelope.get("size"), int) else None
        base.content_type = str(envelope.get("content_type") or "")
    try:
        store, key = locate(target.uri)
    except ForeignURI:
        base.status, base.note = "foreign", "outside the configured stores: never read"
        return base
    except (StoreNotConfigured, ValueError) as e:
        base.note = str(e)
        return base
    try:
        info = store.head(key)
    except StoreError as e:
        base.note = str(e)
        return base
    if not info.exists:
        base.status, base.note = "missing", "the object is not in the store"
        return base
    base.etag = info.etag
    if envelope is None:
        base.size, base.content_type = info.size, info.content_type
    parts = _key_parts(target, info.etag, limit, aes_key)
    if cache is not None and info.etag != known_etag:
        hit = cache.get(parts)
        if hit is not None:
            return hit
    try:
        result = _offloaded(base, store, key, envelope, limit, aes_key) if envelope else _external(base, store, key, limit)
    except StoreError as e:
        base.status, base.note = "unavailable", str(e)
        return base  # the store failed mid-read: not kept
    if cache is not None:
        cache.put(parts, result)
    return result


def _offloaded(p: Preview, store, key, envelope, limit, aes_key) -> Preview:
    size = p.size
    if size is not None and size > VERIFY_MAX:
        p.status, p.note = "too large", f"over {format_bytes(VERIFY_MAX)}: not read for a preview"
        return p
    try:
        capped = _read_verified(store, key, envelope, limit)
    except _Undecodable as e:
        p.status, p.note = "undecodable", str(e)
        return p
    except _Corrupt as e:
        p.status, p.note = "corrupt", f"the object is corrupt: {e}; its content is not shown"
        return p
    digest = capped.sha.hexdigest()
    if digest != envelope["sha256"] or (size is not None and capped.total != size):
        p.status = "corrupt"
        p.note = (f"the object's sha256 {digest[:16]}… ({format_bytes(capped.total)}) does not match the reference's "
                  f"{envelope['sha256'][:16]}…: its content is not shown")
        return p
    p.verified, p.size = True, capped.total
    complete = capped.total <= limit
    data = bytes(capped.kept)
    kind = envelope.get("type", "")
    if kind.startswith("serde:"):
        return _serde(p, kind[len("serde:"):], data, complete, aes_key)
    if kind == "str":
        return _text(p, data, complete, content_type="text/plain")
    return _content(p, data, complete)


def _external(p: Preview, store, key, limit) -> Preview:
    data, complete = _read_head(store, key, limit)
    if complete:
        p.size = len(data)
    return _content(p, data, complete, name=key)


def _serde(p, type_, data, complete, aes_key):
    if not complete:
        p.status, p.complete = "too large", False
        p.note = f"a {type_} value larger than the preview limit: decoded only whole; show more or download it"
        return p
    decoded = safe_loads(type_, data, limit=None, aes_key=aes_key, clip=True)
    if isinstance(decoded, dict) and "__encrypted__" in decoded:
        p.status, p.note = "encrypted", "encrypted" + (f" ({decoded['error']})" if decoded.get("error") else ": set LANGGRAPH_AES_KEY to read it")
        return p
    if isinstance(decoded, dict) and ("__unsupported__" in decoded or "__error__" in decoded):
        p.status, p.note = "undecodable", decoded.get("__error__") or f"{type_}: not decoded (never unpickled)"
        return p
    p.status, p.shown = "decoded", json.dumps(plain(decoded), indent=2, ensure_ascii=False)
    return p


def _content(p, data, complete, name=""):
    """Text or JSON when the bytes say so; binary otherwise."""
    ctype = (p.content_type or "").split(";")[0].strip().lower()
    textual = ctype.startswith("text/") or ctype in _TEXT_TYPES or ctype.endswith(("+json", "+xml"))
    if not textual and ctype not in ("", "application/octet-stream", "binary/octet-stream"):
        p.status = "binary"  # a PDF, an image: its type and size, never its bytes as text
        return p
    if not textual and b"\x00" in data[:4096]:
        p.status = "binary"
        return p
    return _text(p, data, complete, content_type=ctype, name=name)


def _text(p, data, complete, *, content_type="", name=""):
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(data, final=complete)
    except UnicodeDecodeError:
        p.status = "binary"
        return p
    p.complete = complete
    looks_json = content_type.endswith("json") or name.endswith(".json") or text.lstrip()[:1] in ("{", "[")
    if complete and looks_json:
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            p.status, p.shown = "json", json.dumps(parsed, indent=2, ensure_ascii=False)
            return p
    p.status, p.shown = "text", text
    return p
