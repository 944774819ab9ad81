"""LangGraph checkpoint ids: uuid6, time-ordered."""

import functools
import re
from datetime import UTC, datetime, timedelta

_GREGORIAN = datetime(1582, 10, 15, tzinfo=UTC)


def uuid6_time(checkpoint_id: str) -> datetime | None:
    """The creation time encoded in a uuid6 checkpoint id, or None for other ids.

    >>> uuid6_time("1f0c8a6e-1d2c-6f3e-8001-0242ac120002").isoformat()
    '2025-11-23T19:59:12.730092+00:00'
    >>> uuid6_time("not-a-uuid") is None, uuid6_time("6ba7b810-9dad-11d1-80b4-00c04fd430c8") is None
    (True, True)
    """
    # Parsed by hand: the sync calls this for every checkpoint, and
    # uuid.UUID() costs several times more.
    if (
        not isinstance(checkpoint_id, str) or len(checkpoint_id) != 36 or checkpoint_id[14] != "6"
        or checkpoint_id[8] != "-" or checkpoint_id[13] != "-" or checkpoint_id[18] != "-" or checkpoint_id[23] != "-"
    ):
        return None
    try:
        # The 60-bit timestamp: time_high, time_mid and the 12 bits after the version.
        ticks = int(checkpoint_id[0:8] + checkpoint_id[9:13] + checkpoint_id[15:18], 16)
        int(checkpoint_id[19:23] + checkpoint_id[24:], 16)  # the rest must be hex too
    except ValueError:
        return None
    return _GREGORIAN + timedelta(microseconds=ticks // 10)


@functools.lru_cache(maxsize=64)
def uuid6_floor(moment: datetime) -> str:
    """The smallest uuid6 id created at `moment`: ids below it were created earlier.

    Exact to the microsecond, which is uuid6_time's resolution: the ticks are
    counted with integer division (a float of the ticks since 1582 has too few
    bits). Cached: prune compares every checkpoint with the floors of a few
    cut-offs, and the sweep's SQL takes one per run.

    >>> cid = "1f1e6e2a-b5b9-61ec-8000-7c6582e2e662"
    >>> uuid6_time(uuid6_floor(uuid6_time(cid))) == uuid6_time(cid), uuid6_floor(uuid6_time(cid)) <= cid
    (True, True)
    >>> uuid6_floor(uuid6_time(cid) + timedelta(microseconds=1)) > cid
    True
    >>> t = uuid6_time("1f0c8a6e-1d2c-6f3e-8001-0242ac120002")
    >>> uuid6_floor(t), is_uuid6(uuid6_floor(t))
    ('1f0c8a6e-1d2c-6f38-8000-000000000000', True)
    """
    ticks = (moment - _GREGORIAN) // timedelta(microseconds=1) * 10
    value = ((ticks >> 12) << 80) | (0x6 << 76) | ((ticks & 0xFFF) << 64) | (0x8 << 60)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Which ids have a time: lowercase RFC 9562 uuid6 text (version 6, variant
# 10xx). Prune (in Python) and the sweep (in SQL: the PostgreSQL regex or the
# SQLite GLOB) use these same forms, so they agree on which ids are old; a
# test holds the regex and the GLOB to the same answers.
UUID6_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-6[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_HEX = "[0-9a-f]"
UUID6_GLOB = f"{_HEX * 8}-{_HEX * 4}-6{_HEX * 3}-[89ab]{_HEX * 3}-{_HEX * 12}"
_UUID6_MATCH = re.compile(UUID6_PATTERN.removesuffix("$") + r"\Z").match


def is_uuid6(checkpoint_id) -> bool:
    """Whether an id is lowercase RFC uuid6 text (UUID6_PATTERN).

    >>> is_uuid6("1f0c8a6e-1d2c-6f3e-8001-0242ac120002"), is_uuid6("1f0c8a6e-1d2c-6f3e-c001-0242ac120002")
    (True, False)
    >>> is_uuid6("1F0C8A6E-1D2C-6F3E-8001-0242AC120002"), is_uuid6("1f0c8a6e-1d2c-6f3e-8001-0242ac120002\\n")
    (False, False)
    """
    return isinstance(checkpoint_id, str) and _UUID6_MATCH(checkpoint_id) is not None


def version_text(value):
    """A channel version as PostgreSQL's jsonb_each_text renders it (the blob table's `version`).

    >>> version_text("00000000000000000000000000000002.0.1"), version_text(3), version_text(True), version_text(None)
    ('00000000000000000000000000000002.0.1', '3', 'true', None)
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return None
    return str(value)


# Thread ids come from end users and SQLite stores any text, NUL included,
# which PostgreSQL's text (the console's database) cannot hold. The mirror
# keeps such an id under a key that shows NUL as the visible "␀" (U+2400)
# and escapes that sign, and its own escape "␛" (U+241B), with "␛": the
# mapping round-trips, and every other id (nearly all) is its own key.
NUL_SIGN = "\u2400"
ESCAPE = "\u241b"
_TO_KEY = str.maketrans({"\x00": NUL_SIGN, NUL_SIGN: ESCAPE + NUL_SIGN, ESCAPE: ESCAPE + ESCAPE})


def thread_key(thread_id: str) -> str:
    """The mirror's form of a source thread id: NUL shown as "␀", losslessly.

    >>> thread_key("a\\x00b"), thread_key("plain/id")
    ('a␀b', 'plain/id')
    >>> thread_key("a␀b"), thread_key("␛\\x00")
    ('a␛␀b', '␛␛␀')
    """
    if "\x00" not in thread_id and NUL_SIGN not in thread_id and ESCAPE not in thread_id:
        return thread_id
    return thread_id.translate(_TO_KEY)


def source_thread_id(key: str) -> str:
    """The source's thread id for a mirror key: the inverse of thread_key.

    >>> all(source_thread_id(thread_key(t)) == t for t in ("a\\x00b", "a␀b", "␛", "␛␀\\x00␛x", "", "x␛"))
    True
    >>> source_thread_id("a␀b")
    'a\\x00b'
    """
    if NUL_SIGN not in key and ESCAPE not in key:
        return key
    out, i = [], 0
    while i < len(key):
        char = key[i]
        if char == ESCAPE and i + 1 < len(key):
            out.append(key[i + 1])
            i += 2
            continue
        out.append("\x00" if char == NUL_SIGN else char)  # a lone trailing escape (never written) stays
        i += 1
    return "".join(out)
