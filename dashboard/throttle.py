"""Login throttling with django-axes: the client's address and the lockout page."""

import math

from axes.helpers import get_cool_off
from django.conf import settings
from django.shortcuts import render


def client_address(request) -> str:
    """The address a login attempt came from.

    X-Forwarded-For is trusted only behind TRUSTED_PROXY, and then only its
    last entry (the one our proxy appended): earlier entries come from the
    client and would let it pick a fresh address for every guess.
    """
    if settings.TRUSTED_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.META.get("REMOTE_ADDR", "")


def lockout_minutes(request) -> int:
    return max(1, math.ceil(get_cool_off(request).total_seconds() / 60))


def locked_out(request, original_response=None, credentials=None):
    # Each refused try restarts the lockout (axes' default), so the full
    # period is exactly how long this client has to wait from now.
    return render(
        request,
        "registration/locked_out.html",
        {"minutes": lockout_minutes(request), "limit": settings.AXES_FAILURE_LIMIT},
        status=429,
    )
