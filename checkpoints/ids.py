"""LangGraph checkpoint ids: uuid6, time-ordered."""

import uuid
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


def uuid6_floor(moment: datetime) -> str:
    """The smallest uuid6 text at `moment`: ids below it were created earlier.

    >>> t = uuid6_time("1f0c8a6e-1d2c-6f3e-8001-0242ac120002")
    >>> uuid6_floor(t) <= "1f0c8a6e-1d2c-6f3e-8001-0242ac120002"
    True
    >>> uuid6_time(uuid6_floor(t)) == t
    True
    """
    # Integer division: a float quotient is off by a microsecond about half the time.
    ticks = (moment - _GREGORIAN) // timedelta(microseconds=1) * 10
    high, low = ticks >> 12, ticks & 0xFFF
    value = (high << 80) | (0x6 << 76) | (low << 64) | (0x8 << 60)
    return str(uuid.UUID(int=value))


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
