import hashlib

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A bearer token for scripts; only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens", help_text="Acts as this user.")
    digest = models.CharField(max_length=64, unique=True, help_text="sha256 of the token.")
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was created.")
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="Last request made with it.")

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()
