"""Template filters for sizes, times and JSON-ish values.

Sizes use powers of 1000, as the limits are configured (CHECKPOINT_SIZE_LIMIT
of 10MB shows as "10.0 MB", not "9.5 MB"), with the exact byte count in the
title; times show how long ago, with the ISO time in the title.
"""

from datetime import UTC

from django import template
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from checkpoints.units import format_bytes, format_limit

register = template.Library()


@register.filter
def size(value):
    """`<span title="12,345 bytes">12.3 KB</span>`; an em dash for None.

    Built without format_html: digits and units need no escaping, and lists
    call this for every row.

    >>> size(12345), size(None)
    ('<span class="size" title="12,345 bytes">12.3 KB</span>', '<span class="muted">—</span>')
    """
    if value is None or value == "":
        return mark_safe('<span class="muted">—</span>')
    n = int(value)
    return mark_safe(f'<span class="size" title="{n:,} bytes">{format_bytes(n)}</span>')


@register.filter
def limit(value):
    """A configured limit as written, without a needless decimal: "10 MB"."""
    n = int(value)
    return format_html('<span class="size" title="{} bytes">{}</span>', f"{n:,}", format_limit(n))


@register.filter
def when(value):
    """`<time datetime=ISO title=ISO>3 minutes ago</time>`; "never" for None."""
    if not value:
        return mark_safe('<span class="muted">never</span>')
    iso = escape(value.isoformat())
    return mark_safe(f'<time datetime="{iso}" title="{iso}">{escape(naturaltime(value))}</time>')


@register.filter
def size_delta(value):
    """A signed change of size: "+1.2 KB", "−2.0 KB" or "no change", the exact count in the title.

    >>> size_delta(1234), size_delta(-2000), size_delta(0)
    ('<span class="size" title="+1,234 bytes">+1.2 KB</span>', '<span class="size" title="−2,000 bytes">−2.0 KB</span>', 'no change')
    """
    n = int(value)
    if n == 0:
        return "no change"
    sign = "+" if n > 0 else "−"
    return mark_safe(f'<span class="size" title="{sign}{abs(n):,} bytes">{sign}{format_bytes(abs(n))}</span>')


@register.filter
def stamp(value):
    """The absolute time (UTC, to the second) with how long ago beside it, for timelines.

    >>> from datetime import datetime, UTC
    >>> stamp(datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC))[:95]
    '<time datetime="2026-01-02T03:04:05.600000+00:00" title="2026-01-02T03:04:05.600000+00:00">2026'
    >>> stamp(None)
    '<span class="muted">never</span>'
    """
    if not value:
        return mark_safe('<span class="muted">never</span>')
    iso = escape(value.isoformat())
    utc = value.astimezone(UTC)
    return mark_safe(
        f'<time datetime="{iso}" title="{iso}">{utc:%Y-%m-%d %H:%M:%S}</time>'
        f' <span class="ago">{escape(naturaltime(value))}</span>'
    )


@register.filter
def duration(seconds):
    """A short age: 45 s, 12 min, 3 h, 2 d.

    >>> duration(45), duration(720), duration(3 * 3600), duration(2 * 86400), duration(None)
    ('45 s', '12 min', '3 h', '2 d', '—')
    """
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


@register.simple_tag
def thread_url(source, thread_id):
    """The link to a thread page: `{% url 'thread' %}` leaves "../" in ids for browsers to rewrite."""
    from dashboard.links import thread_path

    return thread_path(source, thread_id)


@register.filter
def rule_actions(rule):
    """What a bucket lifecycle rule does, in words ("expire current versions after 30 days; ...").

    >>> rule_actions({"ID": "x", "Expiration": {"Days": 30}})
    'expire current versions after 30 days'
    """
    from storage.bucket import describe_rule

    return "; ".join(describe_rule(rule or {})["actions"])
