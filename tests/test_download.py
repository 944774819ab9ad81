"""`/blobs/<pk>/download` against moto's S3 server over HTTP, and the file:// stream.

The helpers at the top (users, clients, mirrored references) are imported by
the other storage test modules.
"""

import os
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Source, Thread
from checkpoints.uris import classify
from storage.disposition import attachment_header
from storage.models import Download

pytestmark = pytest.mark.django_db


# --- helpers shared by the storage tests ------------------------------------------------


def make_user(group=None, name=None):
    user = User.objects.create_user(name or f"u-{uuid.uuid4().hex[:8]}", password="pw-123456789")
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def client_for(user):
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def operator_client():
    return client_for(make_user("operator"))


@pytest.fixture
def viewer_client():
    return client_for(make_user("viewer"))


def mirrored_thread(source=None, thread_id=None):
    source = source or Source.objects.create(name=f"src-{uuid.uuid4().hex[:8]}", url="sqlite:////tmp/none.db", kind="sqlite")
    return Thread.objects.create(source=source, thread_id=thread_id or f"t-{uuid.uuid4().hex[:8]}")


def reference(uri, thread=None, store=None):
    """A BlobReference named by one checkpoint of `thread`, classified with the current settings."""
    from django.conf import settings

    thread = thread or mirrored_thread()
    ref, _ = BlobReference.objects.get_or_create(
        uri=uri,
        defaults={"store": store or classify(uri, bucket=settings.S3_BUCKET_NAME, prefix=settings.S3_PREFIX, blob_root=settings.BLOB_ROOT)},
    )
    ckpt = Checkpoint.objects.create(
        source=thread.source, thread=thread, checkpoint_id=str(uuid.uuid4()), created_at=timezone.now()
    )
    ReferenceUse.objects.create(reference=ref, thread=thread, checkpoint=ckpt, location="value:attachment")
    return ref


def fetch(url):
    """GET a URL the way a browser or curl would; (status, headers, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def blob_root(tmp_path, settings):
    root = (tmp_path / "blobs").resolve()
    root.mkdir()
    settings.BLOB_ROOT = root
    return root


# --- S3 --------------------------------------------------------------------------------


def test_operator_is_redirected_to_a_presigned_url_that_downloads_the_object(moto_s3, s3_bucket, operator_client, settings):
    body = os.urandom(3000)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/u1/report.pdf", Body=body, ContentType="application/pdf")
    ref = reference(f"s3://{s3_bucket}/uploads/u1/report.pdf")
    settings.PRESIGN_EXPIRES = 120

    r = operator_client.get(f"/blobs/{ref.pk}/download", REMOTE_ADDR="10.1.2.3")

    assert r.status_code == 302
    assert r["Cache-Control"] == "no-store"
    assert r["Referrer-Policy"] == "no-referrer"
    url = r["Location"]
    assert url.startswith(moto_s3.endpoint_url + f"/{s3_bucket}/uploads/u1/report.pdf?")
    q = parse_qs(urlsplit(url).query)
    assert q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert q["X-Amz-Expires"] == ["120"]
    assert "/us-east-1/s3/aws4_request" in q["X-Amz-Credential"][0]
    assert q["response-content-disposition"] == ['attachment; filename="report.pdf"']

    # moto ignores response-content-disposition; the SeaweedFS tier checks the header arrives.
    status, headers, got = fetch(url)
    assert status == 200
    assert got == body

    d = Download.objects.get()
    assert (d.reference_id, d.uri, d.user.username, d.remote_addr) == (
        ref.pk, ref.uri, r.wsgi_request.user.username, "10.1.2.3"
    )


def test_minio_scheme_uses_the_same_configured_bucket(moto_s3, s3_bucket, operator_client):
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/m.bin", Body=b"minio bytes")
    ref = reference(f"minio://{s3_bucket}/uploads/m.bin")
    assert ref.store == "minio"
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 302
    assert fetch(r["Location"])[2] == b"minio bytes"


@pytest.mark.parametrize(
    "key, ascii_name, utf8_name",
    [
        ('uploads/say "hi".txt', "say _hi_.txt", 'say "hi".txt'),
        ("uploads/r\u00e9sum\u00e9 \u6587\u4ef6.txt", "r_sum_ __.txt", "r\u00e9sum\u00e9 \u6587\u4ef6.txt"),
    ],
)
def test_filename_is_sanitised_in_the_signed_disposition(moto_s3, s3_bucket, operator_client, key, ascii_name, utf8_name):
    moto_s3.client().put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    ref = reference(f"s3://{s3_bucket}/{key}", store="s3")
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 302
    status, _, body = fetch(r["Location"])
    assert (status, body) == (200, b"x")  # the exact key, quotes and CR/LF included, was signed
    (cd,) = parse_qs(urlsplit(r["Location"]).query)["response-content-disposition"]
    assert "\r" not in cd and "\n" not in cd
    assert cd.startswith(f'attachment; filename="{ascii_name}"')
    star = cd.split("filename*=UTF-8''", 1)[1] if "filename*=" in cd else ascii_name
    assert unquote(star) == utf8_name


def test_cr_lf_in_a_key_is_never_signed(s3_bucket, operator_client):
    # Even if the mirror says s3, a URI with control characters is refused
    # before a header could be built from it (the header helper strips them too).
    ref = reference(f"s3://{s3_bucket}/uploads/evil\r\nSet-Cookie: a=b.txt", store="s3")
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 403
    assert "Set-Cookie" not in r
    assert attachment_header("evil\r\nSet-Cookie: a=b.txt") == 'attachment; filename="evil__Set-Cookie: a=b.txt"'


def test_viewer_gets_403_and_nothing_is_signed(s3_bucket, viewer_client):
    ref = reference(f"s3://{s3_bucket}/uploads/a.txt")
    r = viewer_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 403
    assert "Location" not in r
    assert b"operator" in r.content
    assert not Download.objects.exists()


def test_anonymous_gets_the_login_page(s3_bucket, client):
    ref = reference(f"s3://{s3_bucket}/uploads/a.txt")
    r = client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 302
    assert r["Location"] == f"/accounts/login/?next=/blobs/{ref.pk}/download"
    assert client.get(r["Location"]).status_code == 200
    assert not Download.objects.exists()


def test_unknown_pk_is_404(s3_bucket, operator_client):
    ref = reference(f"s3://{s3_bucket}/uploads/a.txt")
    assert operator_client.get(f"/blobs/{ref.pk + 1000}/download").status_code == 404


@pytest.mark.parametrize(
    "uri",
    [
        "s3://another-bucket/uploads/a.txt",  # not the configured bucket
        "BUCKET/elsewhere/a.txt",  # the bucket, outside S3_PREFIX
        "https://example.com/a.txt",
        "file:///etc/passwd",
    ],
)
def test_foreign_references_are_never_signed(s3_bucket, blob_root, operator_client, uri):
    uri = uri.replace("BUCKET", f"s3://{s3_bucket}")
    ref = reference(uri)
    assert ref.store == "foreign"
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 403
    assert b"outside the configured stores" in r.content
    assert "Location" not in r
    assert not Download.objects.exists()


def test_a_reference_the_mirror_calls_foreign_stays_unsigned_even_if_settings_now_match(s3_bucket, operator_client):
    ref = reference(f"s3://{s3_bucket}/uploads/a.txt", store="foreign")
    assert operator_client.get(f"/blobs/{ref.pk}/download").status_code == 403


def test_presign_needs_no_server(settings, operator_client):
    """Presigning is local: a download link is issued even when S3 is down."""
    settings.S3_BUCKET_NAME, settings.S3_PREFIX = "down-bucket", ""
    settings.S3_ENDPOINT_URL, settings.S3_FORCE_PATH_STYLE = "http://127.0.0.1:9", True
    settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY = "k", "s"
    ref = reference("s3://down-bucket/a.txt")
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 302
    assert r["Location"].startswith("http://127.0.0.1:9/down-bucket/a.txt?")


def test_no_credentials_is_a_clear_503(s3_bucket, operator_client, settings, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe here
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    settings.AWS_ACCESS_KEY_ID = settings.AWS_SECRET_ACCESS_KEY = ""
    ref = reference(f"s3://{s3_bucket}/uploads/a.txt")
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 503
    assert b"No S3 credentials found" in r.content
    assert not Download.objects.exists()


# --- file:// -------------------------------------------------------------------------------


def test_file_reference_redirects_to_a_signed_stream(blob_root, operator_client, client):
    (blob_root / "u1").mkdir()
    data = os.urandom(70_000)
    (blob_root / "u1" / "scan \u00fc.png").write_bytes(data)
    ref = reference(f"file://{blob_root}/u1/scan%20%C3%BC.png")
    assert ref.store == "file"

    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 302
    assert r["Cache-Control"] == "no-store" and r["Referrer-Policy"] == "no-referrer"
    link = r["Location"]
    assert link.startswith("/blobs/stream/")
    assert Download.objects.filter(reference=ref).count() == 1

    # The signed link is the authorisation (curl follows it without the session).
    s = client.get(link)
    assert s.status_code == 200
    assert b"".join(s.streaming_content) == data
    assert s["Content-Type"] == "image/png"
    assert s["Content-Length"] == str(len(data))
    assert s["Content-Disposition"] == "attachment; filename=\"scan _.png\"; filename*=UTF-8''scan%20%C3%BC.png"
    assert s["Cache-Control"] == "no-store" and s["Referrer-Policy"] == "no-referrer"


def test_tampered_stream_links_are_refused(blob_root, operator_client, client):
    (blob_root / "a.txt").write_bytes(b"secret")
    (blob_root / "b.txt").write_bytes(b"other")
    ref = reference(f"file://{blob_root}/a.txt")
    other = reference(f"file://{blob_root}/b.txt")
    link = operator_client.get(f"/blobs/{ref.pk}/download")["Location"]
    token = link.removeprefix("/blobs/stream/")

    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client.get("/blobs/stream/" + flipped).status_code == 403
    # Swap in another reference's pk with the old signature.
    import base64
    import json

    payload, rest = token.split(":", 1)
    forged = base64.urlsafe_b64encode(json.dumps({"r": other.pk}, separators=(",", ":")).encode()).decode().rstrip("=")
    r = client.get(f"/blobs/stream/{forged}:{rest}")
    assert r.status_code == 403
    assert b"not valid" in r.content
    assert client.get(link).status_code == 200


def test_expired_stream_link_is_refused(blob_root, operator_client, client, settings, monkeypatch):
    from django.core import signing

    (blob_root / "a.txt").write_bytes(b"x")
    ref = reference(f"file://{blob_root}/a.txt")
    settings.PRESIGN_EXPIRES = 300
    link = operator_client.get(f"/blobs/{ref.pk}/download")["Location"]
    assert client.get(link).status_code == 200  # good for five minutes

    # A link signed ten minutes ago (the signer's clock moved back, not a wait).
    with monkeypatch.context() as m:
        m.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(int(time.time()) - 600))
        link = operator_client.get(f"/blobs/{ref.pk}/download")["Location"]
    r = client.get(link)
    assert r.status_code == 403
    assert b"expired" in r.content


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "BLOB/../outside.txt", "BLOB/sub/../../outside.txt", "BLOB/%2e%2e/outside.txt", "BLOB/sub/%2E%2E/%2e%2e/outside.txt"]
)
def test_paths_outside_blob_root_are_refused(blob_root, operator_client, path):
    (blob_root.parent / "outside.txt").write_text("not yours")
    (blob_root / "sub").mkdir()
    ref = reference("file://" + path.replace("BLOB", str(blob_root)))
    assert ref.store == "foreign"
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 403
    assert not Download.objects.exists()


def test_symlink_out_of_blob_root_is_refused(blob_root, operator_client, client):
    (blob_root.parent / "outside.txt").write_text("not yours")
    (blob_root / "link.txt").symlink_to(blob_root.parent / "outside.txt")
    ref = reference(f"file://{blob_root}/link.txt")
    assert ref.store == "file"  # lexically inside: only resolving the link tells
    r = operator_client.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 403
    assert b"through a link" in r.content
    assert not Download.objects.exists()


def test_symlink_swapped_in_after_the_link_was_issued_is_refused(blob_root, operator_client, client):
    target = blob_root / "a.txt"
    target.write_text("mine")
    (blob_root.parent / "outside.txt").write_text("not yours")
    ref = reference(f"file://{blob_root}/a.txt")
    link = operator_client.get(f"/blobs/{ref.pk}/download")["Location"]
    target.unlink()
    target.symlink_to(blob_root.parent / "outside.txt")
    r = client.get(link)
    assert r.status_code == 403
    assert b"not yours" not in r.content


def test_stream_of_a_deleted_file_is_404(blob_root, operator_client, client):
    (blob_root / "gone.txt").write_text("x")
    ref = reference(f"file://{blob_root}/gone.txt")
    link = operator_client.get(f"/blobs/{ref.pk}/download")["Location"]
    (blob_root / "gone.txt").unlink()
    assert client.get(link).status_code == 404


@pytest.fixture(autouse=True)
def plain_static_storage(settings):
    # The manifest storage needs collectstatic; pages rendered in tests do not.
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


def test_download_log_in_the_admin_is_read_only(s3_bucket, operator_client, admin_client):
    ref = reference(f"s3://{s3_bucket}/uploads/logged.txt")
    operator_client.get(f"/blobs/{ref.pk}/download")
    d = Download.objects.get()
    page = admin_client.get("/admin/storage/download/")
    assert page.status_code == 200 and b"logged.txt" in page.content
    assert admin_client.get(f"/admin/storage/download/{d.pk}/change/").status_code == 200
    assert admin_client.get("/admin/storage/download/add/").status_code == 403
    assert admin_client.post(f"/admin/storage/download/{d.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Download.objects.filter(pk=d.pk).exists()


def test_no_link_is_signed_for_an_object_known_to_be_missing(moto_s3, s3_bucket, operator_client):
    from storage.refcheck import check_references

    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/here.txt", Body=b"here")
    here = reference(f"s3://{s3_bucket}/uploads/here.txt")
    gone = reference(f"s3://{s3_bucket}/uploads/gone.txt")
    check_references()
    gone.refresh_from_db()
    assert gone.state == "missing"

    page = operator_client.get(f"/blobs/{gone.pk}/download")
    assert page.status_code == 404 and "Location" not in page
    text = page.content.decode()
    assert "<h1>File missing</h1>" in text and gone.uri in text and "X-Amz-Signature" not in text
    assert page["Cache-Control"] == "no-store"

    as_json = operator_client.get(f"/blobs/{gone.pk}/download", HTTP_ACCEPT="application/json")
    assert as_json.status_code == 404
    body = as_json.json()
    assert body["error"].startswith("File missing") and body["state"] == "missing" and body["uri"] == gone.uri
    assert not Download.objects.filter(reference=gone).exists()

    assert operator_client.get(f"/blobs/{here.pk}/download").status_code == 302
