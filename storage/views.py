import mimetypes
import os

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.http import FileResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from checkpoints.models import BlobReference
from checkpoints.uris import parse_uri
from storage import bucket as bucket_facts
from storage.disposition import attachment_header
from storage.models import DOWNLOAD_PERM, Download
from storage.stores import FileStore, ForeignURI, PathRefused, StoreError, locate, store_for
READ_PERM = "checkpoints.view_blobreference"
STREAM_SALT = "storage.blob-stream"


def _private(response):
    # The redirect carries a bearer URL: no cache may keep it and the
    # storage server must not learn which console page linked to it.
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


def _refuse(request, message, status, title="Download refused", **extra):
    if _wants_json(request):
        return _private(JsonResponse({"error": message, **extra}, status=status))
    return _private(render(request, "storage/refused.html", {"message": message, "title": title}, status=status))


def _wants_json(request):
    """A script (Accept: application/json) gets the refusal as JSON, like the API's other errors."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


@require_GET
@login_required
def download(request, pk: int):
    """302 to a presigned URL (S3) or to a signed, expiring local stream (file://)."""
    if not request.user.has_perm(DOWNLOAD_PERM):
        return _refuse(request, "Downloading files needs the operator role.", 403)
    ref = get_object_or_404(BlobReference, pk=pk)
    if ref.exists is False:
        # A link to a missing object would only fail at the storage server,
        # after a download had been recorded: say so here instead.
        when = ref.checked_at.strftime("%Y-%m-%d %H:%M UTC") if ref.checked_at else "the last check"
        return _refuse(
            request,
            f"File missing: {ref.uri} was not in its store when last checked ({when}). "
            "No download link is issued for it; the reference is listed as dangling.",
            404, title="File missing", uri=ref.uri, state="missing",
            checked_at=ref.checked_at.isoformat() if ref.checked_at else None,
        )
    # Signed only when both the mirror and the current settings place it in a
    # configured store: a URI the mirror calls foreign is never signed.
    try:
        if ref.store == "foreign":
            raise ForeignURI(ref.uri)
        store, key = locate(ref.uri)
        filename = parse_uri(ref.uri).filename
        if isinstance(store, FileStore):
            store.resolve(key)  # refuse links that leave BLOB_ROOT before issuing anything
            token = signing.TimestampSigner(salt=STREAM_SALT).sign_object({"r": ref.pk})
            url = reverse("blob-stream", args=[token])
        else:
            url = store.presign_get(key, filename, settings.PRESIGN_EXPIRES)
    except ForeignURI:
        return _refuse(
            request,
            "This file is outside the configured stores (S3_BUCKET_NAME with S3_PREFIX, or BLOB_ROOT): "
            "the console does not sign links to it.",
            403,
        )
    except PathRefused as e:
        return _refuse(request, f"Refused: {e}", 403)
    except StoreError as e:  # no credentials, for instance: a message, never a traceback
        return _refuse(request, str(e), 503)
    Download.objects.create(
        reference=ref, uri=ref.uri, user=request.user, remote_addr=request.META.get("REMOTE_ADDR") or None
    )
    return _private(HttpResponseRedirect(url))


@require_GET
def stream(request, token: str):
    """A file:// object behind a link signed by `download`; the signature is the authorisation."""
    try:
        pk = signing.TimestampSigner(salt=STREAM_SALT).unsign_object(token, max_age=settings.PRESIGN_EXPIRES)["r"]
    except signing.SignatureExpired:
        return _refuse(request, "This download link has expired. Download the file again from the console.", 403)
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return _refuse(request, "This download link is not valid.", 403)
    ref = get_object_or_404(BlobReference, pk=pk)
    try:
        if ref.store != "file":
            raise ForeignURI(ref.uri)
        store, key = locate(ref.uri)
        if not isinstance(store, FileStore):
            raise ForeignURI(ref.uri)
        f = store.open(key)
    except ForeignURI:
        return _refuse(request, "This file is outside the blob root.", 403)
    except PathRefused as e:
        return _refuse(request, f"Refused: {e}", 403)
    except StoreError as e:
        return _refuse(request, str(e), 404)
    filename = parse_uri(ref.uri).filename
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    response = FileResponse(f, content_type=content_type)
    response["Content-Length"] = str(os.fstat(f.fileno()).st_size)
    response["Content-Disposition"] = attachment_header(filename)
    return _private(response)


@login_required
def bucket(request):
    """The blob stores: what the last sweep and reference check found under each, and the bucket's settings."""
    from storage.overview import store_facts

    if not request.user.has_perm(READ_PERM):
        return _refuse(request, "This page needs the viewer or operator role.", 403, title="Not allowed")
    ctx = {
        "bucket": settings.S3_BUCKET_NAME,
        "prefix": settings.S3_PREFIX,
        # Named only when a bucket is set: with none, there is no endpoint to speak of.
        "endpoint": (settings.S3_ENDPOINT_URL or f"AWS S3 ({settings.AWS_REGION})") if settings.S3_BUCKET_NAME else "",
        "blob_root": settings.BLOB_ROOT,
        "blob_root_exists": os.path.isdir(settings.BLOB_ROOT),
        "error": "",
        "config": None,
        "stores": {facts["family"]: facts for facts in store_facts()},
    }
    if not settings.S3_BUCKET_NAME:
        ctx["error"] = "No S3 bucket is configured: set S3_BUCKET_NAME (and S3_ENDPOINT_URL for MinIO or SeaweedFS)."
    else:
        try:
            config = store_for("s3").bucket_config()
        except StoreError as e:
            ctx["error"] = str(e)
        else:
            ctx["config"] = config
            ctx["rules"] = [bucket_facts.describe_rule(r) for r in config["rules"]]
            ctx["encryption"] = bucket_facts.describe_encryption(config["encryption"])
            ctx["warnings"] = bucket_facts.warnings_for(config, settings.S3_PREFIX)
    return render(request, "storage/bucket.html", ctx)
