"""Safe decoding of LangGraph channel values, for display and reference scanning.

LangGraph's own loader (`JsonPlusSerializer.loads_typed`) imports the classes
that the data names and calls them, and unpickles `pickle` rows when asked to:
anyone who can write to a checkpoint database could run code in the console.
This decoder never imports, never calls anything named by the data and never
unpickles. The result is always plain JSON: dicts with str keys, lists, str,
int, float, bool and None. What cannot be shown as it is becomes a marker dict:

    {"__type__": "module.Name", "ext": 0-5, "value": ...}   a msgpack extension value
    {"__type__": "numpy.ndarray", "ext": 6, "dtype", "shape", "nbytes"}
    {"__delta_snapshot__": ...}                  a DeltaChannel snapshot (ext 7)
    {"__ext__": code, "value": ...}              an extension code LangGraph does not write
    {"__bytes__": n, "preview": "hex"}           raw bytes (the first BYTES_PREVIEW; "sha256" too with digest=True)
    {"__encrypted__": type, "size": n}           no key, or (with "error") it failed
    {"__unsupported__": type, "size": n}         pickle or an unknown serializer type
    {"__error__": message, "size": n}            corrupt data
    {"__truncated__": True, "type", "size": n}   larger than `limit`: not decoded
    {"__more__": hidden, "total": n}             display cap on a list or dict
    {"__deep__": "list[3]"}                      display cap on nesting
    {"__float__": "nan"}                         NaN and infinities (not valid JSON)

Pages decode with the display caps below (`clip=True`, the default). The sync
scans for blob references with `clip=False, limit=None`: nothing is cut, and
what cannot be read whole is an `__error__`, so a reference is never hidden by
a display cap; `is_undecodable` then tells it that the value's references are
unknown.
"""

import hashlib
import json
import math
import re
from collections.abc import Iterator

import ormsgpack

from checkpoints.units import format_bytes
from checkpoints.uris import find_uris, find_uris_in_bytes

DEFAULT_LIMIT = 2_000_000  # serialized bytes decoded for display; larger values show their size
# Serialized bytes decoded to find blob references (the sync's limit, and the S3 saver's for the
# manifest's `refs`, which must agree); larger values' references are unknown.
REFERENCE_DECODE_LIMIT = 256 * 1024 * 1024
MAX_DEPTH = 50  # nesting shown; deeper containers become {"__deep__": ...}
MAX_SCAN_DEPTH = 400  # nesting walked with clip=False; deeper is an error (Python recursion)
MAX_EXT_DEPTH = 50  # extension values nested in extension values; deeper is an error
MAX_ITEMS = 1000  # list items and dict keys shown
MAX_STRING = 10_000  # characters shown of a string (and of a key)
BYTES_PREVIEW = 64  # bytes shown, in hex, of a bytes value

UNDECODABLE = ("__encrypted__", "__error__", "__unsupported__", "__truncated__")
_MARKER_KEYS = {"size", "type", "error"}
_OPT = ormsgpack.OPT_NON_STR_KEYS
_EXT_NUMPY, _EXT_DELTA = 6, 7
_CUT_RE = re.compile(r" …\[cut, (\d+) bytes in all\]$")
_UUID_HEX_RE = re.compile(r"^[0-9a-f]{32}$")


class _Undecodable(Exception):
    pass


def safe_loads(type_, data, *, limit=DEFAULT_LIMIT, aes_key=None, clip=True, digest=False):
    """Decode one serialized value (a `type`/blob pair of a LangGraph row) to plain JSON.

    Never raises on bad data: see the module docstring for the markers.

    >>> safe_loads("msgpack", b"\\x92\\x01\\xa2hi")
    [1, 'hi']
    >>> safe_loads("bytes", b"\\x00\\xff")
    {'__bytes__': 2, 'preview': '00ff'}
    >>> safe_loads("pickle", b"\\x80\\x04K\\x01.")
    {'__unsupported__': 'pickle', 'size': 5}
    >>> safe_loads("msgpack+aes", b"x" * 40)
    {'__encrypted__': 'msgpack+aes', 'size': 40}
    >>> safe_loads("msgpack", b"\\x92\\x01")
    {'__error__': 'corrupt msgpack: unexpected end of file', 'size': 2}
    >>> safe_loads("json", b"[1, 2, 3]", limit=4)
    {'__truncated__': True, 'type': 'json', 'size': 9}
    >>> safe_loads("null", b""), safe_loads("msgpack", None)
    (None, None)
    >>> safe_loads("bytes", b"ab", digest=True)["sha256"][:16]  # for the state API: bytes named by their hash
    'fb8e20fc2e4c3f24'
    """
    if data is None or type_ in ("null", "empty"):
        return None
    if isinstance(data, str):  # SQLite's dynamic typing lets a TEXT value into a BLOB column
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return {"__error__": f"expected bytes, got {type(data).__name__}", "size": None}
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if limit is not None and size > limit:
        return {"__truncated__": True, "type": type_, "size": size}
    data = bytes(data)
    if is_encrypted(type_):
        return _load_encrypted(type_, data, aes_key, clip, digest)
    return _load(type_, data, clip, digest)


def references_in(type_, data, *, limit=None, aes_key=None) -> tuple[set[str], bool]:
    """The blob URIs in one serialized value, and whether it was read whole.

    What `find_references(safe_loads(..., clip=False))` finds, with
    `is_undecodable` for the second item (False: the value's references are
    unknown), but without building the plain copy: the sync scans millions of
    values and only needs their strings.

    >>> import ormsgpack
    >>> references_in("msgpack", ormsgpack.packb({"doc": ["s3://b/u/a.pdf", 1], 5: "x"}, option=ormsgpack.OPT_NON_STR_KEYS))
    ({'s3://b/u/a.pdf'}, True)
    >>> references_in("msgpack", b"\\x92\\x01"), references_in("pickle", b"x"), references_in("bytes", b"s3://b/k ...")
    ((set(), False), (set(), False), ({'s3://b/k'}, True))
    >>> references_in("msgpack", ormsgpack.packb({"file": b"\\x00s3://b/in-bytes.bin\\x00"}))
    ({'s3://b/in-bytes.bin'}, True)
    >>> references_in("msgpack+aes", b"x" * 40), references_in("json", b'["file:///x/y"]', limit=4)
    ((set(), False), (set(), False))
    """
    value, whole = _load_for_scan(type_, data, limit, aes_key)
    if value is _RAW:
        return whole, True
    if not whole:
        return set(), False
    return _strings_references(value, 0)


def checkpoint_references(type_, data, *, limit=None, aes_key=None) -> tuple[dict, bool]:
    """{channel: URIs} of a whole serialized checkpoint (SQLite's), and whether it was read whole.

    As references_in, per channel of its `channel_values`.

    >>> import ormsgpack
    >>> checkpoint_references("msgpack", ormsgpack.packb({"channel_values": {"a": "s3://b/x", "p": b"file:///f ", "n": 1}}))
    ({'a': {'s3://b/x'}, 'p': {'file:///f'}}, True)
    >>> checkpoint_references("msgpack", b"\\xc1")
    ({}, False)
    """
    value, whole = _load_for_scan(type_, data, limit, aes_key)
    if value is _RAW or not whole:
        return {}, whole is not False
    values = value.get("channel_values") if isinstance(value, dict) else None
    found = {}
    for channel, item in (values.items() if isinstance(values, dict) else ()):
        uris, whole = _strings_references(item, 2)
        if not whole:
            return {}, False
        if uris:
            found[str(channel)] = uris
    return found, True


_RAW = object()  # _load_for_scan: a raw bytes value, already scanned


def _load_for_scan(type_, data, limit, aes_key):
    """(decoded value, True), (_RAW, URIs) for raw bytes, or (None, True/False) for nothing/unknown."""
    if data is None or type_ in ("null", "empty"):
        return None, True
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, False
    data = bytes(data)
    if limit is not None and len(data) > limit:
        return None, False
    if is_encrypted(type_):
        inner_type, cipher = type_.split("+", 1)
        if aes_key is None or cipher != "aes":
            return None, False
        data, error = _aes_eax_decrypt(aes_key, data)
        if error:
            return None, False
        type_ = inner_type
        if type_ in ("null", "empty"):
            return None, True
    if type_ in ("bytes", "bytearray"):
        return _RAW, set(find_uris_in_bytes(data))
    if type_ not in ("msgpack", "json"):
        return None, False
    try:
        return (_Unpacker().unpack(data) if type_ == "msgpack" else json.loads(data)), True
    except Exception:  # noqa: BLE001 - untrusted data: unreadable means unknown references
        return None, False


def _strings_references(value, depth):
    """(URIs in every string and bytes value inside `value`, False when too deep to read whole)."""
    found = set()
    stack = [(value, depth)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "://" in item:
                found.update(find_uris(item))
        elif isinstance(item, bytes):  # a bytes value inside the state
            found.update(find_uris_in_bytes(item))
        elif isinstance(item, (dict, list, tuple)):
            if depth >= MAX_SCAN_DEPTH:  # as safe_loads(clip=False): too deep to read whole
                return set(), False
            if isinstance(item, dict):
                for key, child in item.items():
                    key = key if isinstance(key, str) else str(key)
                    if "://" in key:
                        found.update(find_uris(key))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
    return found, True


def decode_json_text(text, *, limit=DEFAULT_LIMIT, clip=True):
    """Decode JSON text, such as a PostgreSQL jsonb value read as `::text`.

    A value psycopg already parsed from jsonb is made plain the same way.

    >>> decode_json_text('{"label": "turn-1", "counter": 1}')
    {'label': 'turn-1', 'counter': 1}
    >>> decode_json_text('{"label": ')
    {'__error__': 'corrupt json: Expecting value: line 1 column 11 (char 10)', 'size': 10}
    >>> decode_json_text({"counter": 1})
    {'counter': 1}
    """
    if isinstance(text, (dict, list, int, float)):
        return plain(text, clip=clip)
    return safe_loads("json", text, limit=limit, clip=clip)


def plain(value, *, clip=True, digest=False):
    """Make an already-decoded value plain JSON, applying the display caps when `clip`.

    >>> plain({1: b"ab", "xs": list(range(3)), "f": float("inf")})
    {'1': {'__bytes__': 2, 'preview': '6162'}, 'xs': [0, 1, 2], 'f': {'__float__': 'inf'}}
    >>> plain(list(range(MAX_ITEMS + 5)))[-1]
    {'__more__': 5, 'total': 1005}
    """
    return _plain(value, 0, clip, digest)


def is_encrypted(type_) -> bool:
    """Whether a serializer type names a cipher (EncryptedSerializer's `<type>+<cipher>`).

    >>> is_encrypted("msgpack+aes"), is_encrypted("msgpack"), is_encrypted(None)
    (True, False, False)
    """
    return isinstance(type_, str) and "+" in type_


def is_undecodable(decoded) -> bool:
    """Whether `safe_loads` could not read the value whole, so its references are unknown.

    >>> is_undecodable({"__error__": "corrupt msgpack", "size": 3})
    True
    >>> is_undecodable({"__encrypted__": "msgpack+aes", "size": 40, "error": "wrong key"})
    True
    >>> is_undecodable({"__error__": "a user's own dict", "other": 1}), is_undecodable([1])
    (False, False)
    """
    return (
        isinstance(decoded, dict)
        and any(key in decoded for key in UNDECODABLE)
        and len(set(decoded) - _MARKER_KEYS) == 1
    )


def iter_strings(value) -> Iterator[str]:
    """Every string in a decoded value, dict keys included.

    Walks with an explicit stack, so any nesting depth is safe.

    >>> sorted(iter_strings({"a": ["s3://b/k", {"b": 1}], "c": None}))
    ['a', 'b', 'c', 's3://b/k']
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str):
                    yield key
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def find_references(value) -> set[str]:
    """The s3://, minio:// and file:// URIs named anywhere in a decoded value.

    >>> sorted(find_references({"doc": {"file": "s3://b/u/a.pdf"}, "note": "see file:///x/y.png"}))
    ['file:///x/y.png', 's3://b/u/a.pdf']
    """
    found = set()
    for text in iter_strings(value):
        if "://" in text:
            found.update(find_uris(text))
    return found


def summarize(value) -> str:
    """A short one-line description of a decoded value, for tables.

    >>> summarize([1, 2, 3]), summarize("x" * 1200), summarize(None)
    ('list[3]', 'str 1.2 KB', 'null')
    >>> summarize({"__encrypted__": "msgpack+aes", "size": 40})
    'encrypted msgpack+aes'
    >>> summarize({"__bytes__": 5_000_000, "preview": ""})
    'bytes 5.0 MB'
    >>> summarize({"__type__": "uuid.UUID", "ext": 0, "value": "0b5e2a4c-8d1e-4f7a-9c3b-2d6e8f1a0b4c"})
    'UUID 0b5e2a4c-8d1e-4f7a-9c3b-2d6e8f1a0b4c'
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _short(repr(value))
    if isinstance(value, str):
        cut = _CUT_RE.search(value)
        size = int(cut[1]) if cut else len(value.encode("utf-8", "surrogatepass"))
        return f"str {format_bytes(size)}"
    if isinstance(value, list):
        more = value[-1] if value else None
        cut = isinstance(more, dict) and set(more) == {"__more__", "total"}
        return f"list[{more['total'] if cut else len(value)}]"
    if not isinstance(value, dict):
        return type(value).__name__
    return _summarize_dict(value)


def _summarize_dict(value) -> str:
    size = value.get("size")
    size_text = format_bytes(size) if isinstance(size, int) else "unknown size"
    if "__type__" in value and "ext" in value:
        name = str(value["__type__"]).rsplit(".", 1)[-1]
        if value["ext"] == _EXT_NUMPY:
            return f"{name} {value.get('dtype')} {value.get('shape')}"
        inner = value.get("value")
        if isinstance(inner, (str, int, float)) and not isinstance(inner, bool):
            return _short(f"{name} {inner}")
        return name
    if "__delta_snapshot__" in value:
        return "delta snapshot of " + summarize(value["__delta_snapshot__"])
    if "__bytes__" in value:
        return f"bytes {format_bytes(value['__bytes__'])}"
    if "__encrypted__" in value:
        failed = " (cannot decrypt)" if "error" in value else ""
        return f"encrypted {value['__encrypted__']}{failed}"
    if "__unsupported__" in value:
        return f"{value['__unsupported__']} {size_text}, not decoded"
    if "__error__" in value:
        return f"undecodable, {size_text}"
    if "__truncated__" in value:
        return f"{value.get('type')} {size_text}, too large to show"
    if "__deep__" in value:
        return str(value["__deep__"])
    if "__float__" in value:
        return str(value["__float__"])
    if "__ext__" in value:
        return f"extension type {value['__ext__']}"
    more = value.get("__more__")
    if isinstance(more, dict) and "total" in more:
        return f"dict[{more['total']}]"
    return f"dict[{len(value)}]"


def _short(text, width=60):
    return text if len(text) <= width else text[: width - 1] + "…"


def _load(type_, data: bytes, clip, digest=False):
    size = len(data)
    if type_ in ("null", "empty"):  # also reached after decryption: "null+aes"
        return None
    if type_ in ("bytes", "bytearray"):
        return _bytes_marker(data, digest)
    if type_ == "pickle":  # loading a pickle runs code the data names: shown as opaque
        return {"__unsupported__": "pickle", "size": size}
    if type_ not in ("msgpack", "json"):
        return {"__unsupported__": str(type_), "size": size}
    try:
        if type_ == "msgpack":
            value = _Unpacker().unpack(data)
        else:
            value = json.loads(data)  # no object_hook: lc:2 constructor envelopes stay dicts
        return _plain(value, 0, clip, digest)
    except _Undecodable as exc:
        return {"__error__": f"cannot read this {type_} value whole: {exc}", "size": size}
    except RecursionError:
        return {"__error__": f"corrupt {type_}: nested too deeply", "size": size}
    except Exception as exc:  # the data is untrusted; callers are promised no exception
        return {"__error__": f"corrupt {type_}: {exc}", "size": size}


def _load_encrypted(type_, data: bytes, aes_key, clip, digest=False):
    inner_type, cipher = type_.split("+", 1)
    marker = {"__encrypted__": type_, "size": len(data)}
    if aes_key is None:
        return marker
    if cipher != "aes":
        return {**marker, "error": f"unsupported cipher {cipher!r}"}
    plaintext, error = _aes_eax_decrypt(aes_key, data)
    if error:
        return {**marker, "error": error}
    return _load(inner_type, plaintext, clip, digest)


def _aes_eax_decrypt(key, data: bytes):
    """Undo EncryptedSerializer.from_pycryptodome_aes: AES-EAX, nonce(16) | tag(16) | ciphertext."""
    if isinstance(key, str):
        key = key.encode()
    if len(key) not in (16, 24, 32):
        return None, "the AES key must be 16, 24 or 32 bytes long"
    if len(data) < 32:
        return None, "too short to hold a nonce and a tag"
    try:
        from Crypto.Cipher import AES
    except ImportError:
        return None, "pycryptodome is not installed"
    try:
        cipher = AES.new(key, AES.MODE_EAX, nonce=data[:16])
        return cipher.decrypt_and_verify(data[32:], data[16:32]), None
    except ValueError:
        return None, "wrong key or corrupt data (MAC check failed)"


class _Unpacker:
    """ormsgpack with an ext hook that builds plain dicts instead of objects."""

    def __init__(self):
        self.depth = 0
        self.error = None

    def unpack(self, data: bytes):
        try:
            return ormsgpack.unpackb(data, ext_hook=self._ext_hook, option=_OPT)
        except ValueError as exc:
            # ormsgpack reports a failing hook as "ext_hook failed": keep the real reason.
            raise ValueError(self.error or str(exc)) from None

    def _ext_hook(self, code, payload):
        if self.depth >= MAX_EXT_DEPTH:
            self.error = f"extension values nested deeper than {MAX_EXT_DEPTH}"
            raise ValueError(self.error)
        self.depth += 1
        try:
            inner = ormsgpack.unpackb(payload, ext_hook=self._ext_hook, option=_OPT)
        except ValueError as exc:
            self.error = self.error or f"bad payload in extension type {code}: {exc}"
            raise
        finally:
            self.depth -= 1
        return _ext_value(code, inner)


def _ext_value(code, inner):
    """The plain form of one extension value; LangGraph packs (module, name, payload[, method])."""
    if code == _EXT_DELTA:
        return {"__delta_snapshot__": inner}
    if code == _EXT_NUMPY and isinstance(inner, list) and len(inner) == 4:
        dtype, shape, _order, buffer = inner
        nbytes = len(buffer) if isinstance(buffer, bytes) else None
        return {"__type__": "numpy.ndarray", "ext": code, "dtype": dtype, "shape": shape, "nbytes": nbytes}
    if 0 <= code <= 5 and isinstance(inner, list) and len(inner) >= 3:
        module, name, value = inner[0], inner[1], inner[2]
        if (module, name) == ("uuid", "UUID") and isinstance(value, str) and _UUID_HEX_RE.match(value):
            value = f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
        out = {"__type__": f"{module}.{name}", "ext": code, "value": value}
        if len(inner) > 3:
            out["method"] = inner[3]
        return out
    return {"__ext__": code, "value": inner}


def _plain(value, depth, clip, digest=False):
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _clip_string(value) if clip else value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_marker(value, digest)
    if not isinstance(value, (dict, list, tuple)):
        # Not produced by ormsgpack or json; kept out so the result stays plain.
        return {"__unsupported__": type(value).__name__}
    if depth >= (MAX_DEPTH if clip else MAX_SCAN_DEPTH):
        if not clip:
            raise _Undecodable(f"nested deeper than {MAX_SCAN_DEPTH} levels")
        kind = "dict" if isinstance(value, dict) else "list"
        return {"__deep__": f"{kind}[{len(value)}]"}
    shown = len(value) if not clip else min(len(value), MAX_ITEMS)
    if isinstance(value, dict):
        out = {}
        for i, (key, child) in enumerate(value.items()):
            if i == shown:
                break
            key = key if isinstance(key, str) else str(key)
            out[_clip_string(key) if clip else key] = _plain(child, depth + 1, clip, digest)
        if shown < len(value):
            out["__more__"] = {"__more__": len(value) - shown, "total": len(value)}
        return out
    out = [_plain(child, depth + 1, clip, digest) for child in value[:shown]]
    if shown < len(value):
        out.append({"__more__": len(value) - shown, "total": len(value)})
    return out


def _clip_string(text: str) -> str:
    if len(text) <= MAX_STRING:
        return text
    return text[:MAX_STRING] + f" …[cut, {len(text.encode('utf-8', 'surrogatepass'))} bytes in all]"


def _bytes_marker(data, digest=False) -> dict:
    marker = {"__bytes__": len(data), "preview": bytes(data[:BYTES_PREVIEW]).hex()}
    if digest:
        marker["sha256"] = hashlib.sha256(data).hexdigest()
    return marker


# --- Delta snapshots and legacy checkpoints, told from serialized bytes --------
#
# Prune reads these without decoding (a thread with a DeltaChannel is never
# pruned, a legacy checkpoint keeps its parent's writes).

# Metadata keys that mark a DeltaChannel thread (the second is LangGraph.js's).
DELTA_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")

# The header of an ormsgpack extension value of type 7 (_DeltaSnapshot):
# fixext 1/2/4/8/16, or ext 8/16/32 with a length before the type byte.
_EXT7_RE = re.compile(rb"[\xd4-\xd8]\x07|\xc7.\x07|\xc8..\x07|\xc9....\x07", re.DOTALL)


def is_delta_snapshot_head(head: bytes | None) -> bool:
    """Whether a msgpack value (its first bytes suffice) is a _DeltaSnapshot (ext 7).

    >>> is_delta_snapshot_head(ormsgpack.packb(ormsgpack.Ext(7, b"\\x91\\x90")))
    True
    >>> is_delta_snapshot_head(ormsgpack.packb(ormsgpack.Ext(7, b"x" * 300)))
    True
    >>> is_delta_snapshot_head(ormsgpack.packb(ormsgpack.Ext(5, b"x"))), is_delta_snapshot_head(b"\\x07")
    (False, False)
    """
    if not head:
        return False
    return bool(_EXT7_RE.match(bytes(head[:6])))


def contains_delta_snapshot(data: bytes | None) -> bool:
    """Whether a msgpack value holds a _DeltaSnapshot anywhere (SQLite keeps them inside the checkpoint).

    A byte search rules out nearly everything; a match is confirmed by
    decoding with a hook that only notes extension codes (it imports and
    builds nothing).

    >>> snap = ormsgpack.Ext(7, ormsgpack.packb([["a"]]))
    >>> contains_delta_snapshot(ormsgpack.packb({"channel_values": {"m": snap, "n": 1}}))
    True
    >>> contains_delta_snapshot(ormsgpack.packb({"channel_values": {"m": "\\xd4\\x07 text"}}))
    False
    """
    if not data or not _EXT7_RE.search(data):
        return False
    found = []

    def hook(code, payload):
        if code == 7:
            found.append(code)
        elif not found:
            ormsgpack.unpackb(payload, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
        return None

    try:
        ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
    except (ValueError, TypeError, RecursionError):
        # Unreadable: the byte pattern is all we know, so stay on the safe side.
        return True
    return bool(found)


def is_legacy_msgpack_checkpoint(data: bytes | None) -> bool:
    """Whether a serialized SQLite checkpoint predates format v4, read from its leading `"v"` key.

    LangGraph writes `v` first; anything else is taken as current.

    >>> is_legacy_msgpack_checkpoint(ormsgpack.packb({"v": 1, "id": "x"}))
    True
    >>> is_legacy_msgpack_checkpoint(ormsgpack.packb({"v": 4})), is_legacy_msgpack_checkpoint(b"")
    (False, False)
    """
    if not data:
        return False
    if 0x80 <= data[0] <= 0x8F:
        offset = 1
    elif data[0] == 0xDE:
        offset = 3
    else:
        return False
    if data[offset:offset + 2] != b"\xa1v" or len(data) <= offset + 2:
        return False
    v = data[offset + 2]
    return v < 4  # a positive fixint; other encodings are not small versions
