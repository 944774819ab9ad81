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
