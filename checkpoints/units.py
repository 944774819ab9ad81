"""Parsing and formatting of durations, sizes and booleans.

Pure functions shared by the settings module, the management commands and
the pages; nothing here imports Django.
"""

import re
from datetime import timedelta

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_duration(text: str) -> timedelta:
    """Parse `90s`, `15m`, `24h`, `30d` or `2w`.

    >>> parse_duration("90s")
    datetime.timedelta(seconds=90)
    >>> parse_duration("30d")
    datetime.timedelta(days=30)
    >>> parse_duration("15 M")
    datetime.timedelta(seconds=900)
    >>> parse_duration("10")
    Traceback (most recent call last):
    ...
    ValueError: '10' is not a duration: use a number and a unit, such as 90s, 15m, 24h or 30d
    """
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit, such as 90s, 15m, 24h or 30d"
        )
    return timedelta(seconds=int(match[1]) * _DURATION_UNITS[match[2].lower()])


def parse_size(text) -> int:
    """Parse a byte count: plain bytes or KB/MB/GB/TB (powers of 1000).

    >>> parse_size("10MB")
    10000000
    >>> parse_size("1.5 kb")
    1500
    >>> parse_size(512)
    512
    >>> parse_size("ten")
    Traceback (most recent call last):
    ...
    ValueError: 'ten' is not a size: use bytes or a number with KB, MB, GB or TB
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{text!r} is not a size: it is negative")
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size: use bytes or a number with KB, MB, GB or TB")
    unit = (match[2] or "B").upper()
    return int(float(match[1]) * _SIZE_UNITS[unit])


def parse_bool(text: str) -> bool:
    """Parse 1/0, true/false, yes/no, on/off in any case.

    >>> parse_bool("Yes"), parse_bool("0")
    (True, False)
    >>> parse_bool("maybe")
    Traceback (most recent call last):
    ...
    ValueError: 'maybe' is not a boolean: use 1/0, true/false or yes/no
    """
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean: use 1/0, true/false or yes/no")


_BYTE_UNITS = (("B", 1), ("KB", 1000), ("MB", 1000**2), ("GB", 1000**3), ("TB", 1000**4))


def duration_text(td: timedelta) -> str:
    """The duration in the largest unit that divides it: what parse_duration reads back.

    Whole days, hours or minutes; seconds otherwise (a fraction of a second is
    dropped, as no setting or form carries one).

    >>> duration_text(timedelta(hours=24)), duration_text(timedelta(minutes=90)), duration_text(timedelta(seconds=61))
    ('1d', '90m', '61s')
    >>> duration_text(timedelta(days=30)), duration_text(timedelta(0)), duration_text(timedelta(weeks=2))
    ('30d', '0s', '14d')
    >>> all(parse_duration(duration_text(timedelta(seconds=n))) == timedelta(seconds=n) for n in (1, 59, 60, 3599, 3600, 86400, 90061))
    True
    """
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def byte_unit(n) -> tuple[str, int]:
    """The unit format_bytes shows `n` in, and its size: charts scale their axes by it.

    >>> byte_unit(999), byte_unit(40_600_000), byte_unit(0), byte_unit(5 * 1000**5)
    (('B', 1), ('MB', 1000000), ('B', 1), ('TB', 1000000000000))
    """
    for name, size in reversed(_BYTE_UNITS):
        if n >= size:
            return name, size
    return _BYTE_UNITS[0]


def format_bytes(n: int) -> str:
    """Short human size in powers of 1000, as the limits are written.

    >>> format_bytes(15_000_000)
    '15.0 MB'
    >>> format_bytes(999)
    '999 B'
    >>> format_bytes(10_000_000)
    '10.0 MB'
    """
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def format_limit(n: int) -> str:
    """A configured limit without a needless decimal.

    >>> format_limit(10_000_000)
    '10 MB'
    >>> format_limit(1_500_000)
    '1.5 MB'
    """
    text = format_bytes(n)
    return text.replace(".0 ", " ")
