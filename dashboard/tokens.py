"""Bearer tokens for scripts: only a sha256 digest is stored.

A token is shown once, when it is created. Requests present it as
`Authorization: Bearer <token>`; the digest finds the ApiToken row.
"""

import secrets
from datetime import timedelta

from django.utils import timezone

from dashboard.models import ApiToken

TOKEN_PREFIX = "cc_"
# Writing last_used_at on every request would turn each API read into a
# write; once a minute is enough to tell live tokens from dead ones.
TOUCH_EVERY = timedelta(minutes=1)


def create_token(user) -> tuple[str, ApiToken]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.objects.create(user=user, digest=ApiToken.digest_of(token), prefix=token[:12])
    return token, row


def bearer_token(header: str) -> str | None:
    """The token of an Authorization header, or None.

    >>> bearer_token("Bearer cc_abc"), bearer_token("bearer  cc_abc "), bearer_token("Basic eDp5")
    ('cc_abc', 'cc_abc', None)
    >>> bearer_token(""), bearer_token("Bearer ")
    (None, None)
    """
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def user_for_token(token: str):
    """The active user a token acts as, or None."""
    row = (
        ApiToken.objects.select_related("user")
        .filter(digest=ApiToken.digest_of(token), user__is_active=True)
        .first()
    )
    if row is None:
        return None
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user
