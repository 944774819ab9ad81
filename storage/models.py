from django.conf import settings
from django.db import models

from checkpoints.models import BlobReference

# Whom the download links are for: the permission Download.Meta declares, as has_perm names it.
DOWNLOAD_PERM = "storage.download_blob"


class Download(models.Model):
    """Every download of an externalized file, with who and when."""

    reference = models.ForeignKey(BlobReference, null=True, on_delete=models.SET_NULL, related_name="downloads", help_text="What was downloaded.")
    uri = models.TextField(help_text="URI at the time of the download.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", help_text="Who downloaded.")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When the link was issued.")
    remote_addr = models.GenericIPAddressField(null=True, blank=True, help_text="Client address.")

    class Meta:
        ordering = ["-created_at"]
        permissions = [("download_blob", "Can download externalized files")]
