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
    try:
        u = uuid.UUID(checkpoint_id)
    except (ValueError, TypeError, AttributeError):
        return None
    if u.version != 6:
        return None
    ticks = ((u.int >> 80) << 12) | ((u.int >> 64) & 0xFFF)
    return _GREGORIAN + timedelta(microseconds=ticks // 10)


def uuid6_floor(moment: datetime) -> str:
    """The smallest uuid6 text at `moment`: ids below it were created earlier.

    >>> t = uuid6_time("1f0c8a6e-1d2c-6f3e-8001-0242ac120002")
    >>> uuid6_floor(t) <= "1f0c8a6e-1d2c-6f3e-8001-0242ac120002"
    True
    >>> uuid6_time(uuid6_floor(t)) == t
    True
    """
    ticks = int((moment - _GREGORIAN) / timedelta(microseconds=1)) * 10
    high, low = ticks >> 12, ticks & 0xFFF
    value = (high << 80) | (0x6 << 76) | (low << 64) | (0x8 << 60)
    return str(uuid.UUID(int=value))
