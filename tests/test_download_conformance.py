"""Conformance tier: a real S3 server that enforces signatures and expiry (SeaweedFS).

moto accepts any signature and ignores response-content-disposition; SeaweedFS
checks both, so what a browser or curl would get is proven here.
"""

import os
from datetime import timedelta
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from checkpoints.models import BlobReference, Source
from storage.models import Download
from storage.refcheck import check_references
from storage.stores import store_for
from tests.graphs import config, file_graph
from tests.seaweed import seaweed_bucket, seaweed_s3  # noqa: F401
from tests.test_download import blob_root, client_for, fetch, make_user, plain_static_storage, reference  # noqa: F401
from tests.test_refcheck import mirror_state

pytestmark = [pytest.mark.conformance, pytest.mark.django_db]


@pytest.fixture
def operator():
    return client_for(make_user("operator"))


def put(seaweed_s3, bucket, key, body, content_type="application/octet-stream"):
    seaweed_s3.client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def test_presigned_url_downloads_exactly_the_bytes_a_real_graph_referenced(seaweed_s3, seaweed_bucket, sqlite_saver, sqlite_source_url, operator):
    body = os.urandom(1_500_000)
    put(seaweed_s3, seaweed_bucket, "uploads/u1/report.pdf", body, "application/pdf")
    uri = f"s3://{seaweed_bucket}/uploads/u1/report.pdf"
    file_graph(sqlite_saver).invoke({"attachment": uri}, config("t-file", tenant="acme", user_id="u1"))
    source = Source.objects.create(name="lite", url=sqlite_source_url, kind="sqlite")
    _, uris = mirror_state(sqlite_saver, source, "t-file")
    assert uris == {uri}

    assert check_references()["present"] == 1
    ref = BlobReference.objects.get(uri=uri)
    assert (ref.size, ref.content_type) == (len(body), "application/pdf")

    r = operator.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 302
    assert r["Cache-Control"] == "no-store" and r["Referrer-Policy"] == "no-referrer"
    status, headers, got = fetch(r["Location"])
    assert status == 200
    assert got == body
    assert headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert Download.objects.filter(reference=ref).count() == 1


def test_the_server_enforces_signatures(seaweed_s3, seaweed_bucket):
    put(seaweed_s3, seaweed_bucket, "uploads/a.txt", b"A")
    assert fetch(f"{seaweed_s3.endpoint_url}/{seaweed_bucket}/uploads/a.txt")[0] == 403  # anonymous


def test_expired_url_is_refused(seaweed_s3, seaweed_bucket, operator, settings, monkeypatch):
    import botocore.auth

    put(seaweed_s3, seaweed_bucket, "uploads/e.txt", b"expiring")
    ref = reference(f"s3://{seaweed_bucket}/uploads/e.txt")
    settings.PRESIGN_EXPIRES = 300
    url = operator.get(f"/blobs/{ref.pk}/download")["Location"]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]
    assert fetch(url)[:3:2] == (200, b"expiring")  # good for five minutes

    # The same URL signed ten minutes ago (the signer's clock moved back, not a wait): expired at the server.
    signed_at = botocore.auth.get_current_datetime
    with monkeypatch.context() as m:
        m.setattr(botocore.auth, "get_current_datetime", lambda: signed_at() - timedelta(minutes=10))
        url = operator.get(f"/blobs/{ref.pk}/download")["Location"]
    status, _, body = fetch(url)
    assert status == 403
    assert b"expired" in body.lower()


def test_tampered_urls_are_refused(seaweed_s3, seaweed_bucket, operator):
    put(seaweed_s3, seaweed_bucket, "uploads/mine.txt", b"mine")
    put(seaweed_s3, seaweed_bucket, "uploads/other.txt", b"someone else's")
    ref = reference(f"s3://{seaweed_bucket}/uploads/mine.txt")
    url = operator.get(f"/blobs/{ref.pk}/download")["Location"]
    assert fetch(url)[0] == 200

    sig_at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = url[:sig_at] + ("0" if url[sig_at] != "0" else "1") + url[sig_at + 1 :]
    other_key = url.replace("/uploads/mine.txt?", "/uploads/other.txt?")
    longer = url.replace("X-Amz-Expires=", "X-Amz-Expires=9")
    renamed = url.replace("filename%3D%22mine.txt%22", "filename%3D%22evil.exe%22")
    assert renamed != url
    for bad in (flipped, other_key, longer, renamed):
        status, _, body = fetch(bad)
        assert status == 403, bad
        assert b"someone else's" not in body


def test_filename_header_arrives_sanitised(seaweed_s3, seaweed_bucket, operator):
    key = 'uploads/r\u00e9sum\u00e9 "final".pdf'
    put(seaweed_s3, seaweed_bucket, key, b"%PDF")
    ref = reference(f"s3://{seaweed_bucket}/{key}")
    status, headers, body = fetch(operator.get(f"/blobs/{ref.pk}/download")["Location"])
    assert (status, body) == (200, b"%PDF")
    cd = headers["Content-Disposition"]
    assert cd == "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''" + quote('r\u00e9sum\u00e9 "final".pdf', safe="")
    assert unquote(cd.split("''", 1)[1]) == 'r\u00e9sum\u00e9 "final".pdf'


def test_viewer_gets_403_and_anonymous_the_login_page(seaweed_bucket, client):
    ref = reference(f"s3://{seaweed_bucket}/uploads/a.txt")
    assert client_for(make_user("viewer")).get(f"/blobs/{ref.pk}/download").status_code == 403
    r = client.get(f"/blobs/{ref.pk}/download")
    assert (r.status_code, r["Location"]) == (302, f"/accounts/login/?next=/blobs/{ref.pk}/download")
    login = client.get(r["Location"])
    assert login.status_code == 200 and b'name="password"' in login.content
    assert not Download.objects.exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "BLOB/../etc/passwd", "BLOB/a/../../x"])
def test_file_paths_outside_the_root_are_refused(seaweed_bucket, blob_root, operator, path):
    ref = reference("file://" + path.replace("BLOB", str(blob_root)))
    r = operator.get(f"/blobs/{ref.pk}/download")
    assert r.status_code == 403
    assert "Location" not in r


def test_list_and_delete_many_on_a_real_server(seaweed_s3, seaweed_bucket):
    keys = [f"uploads/l/{i:02}" for i in range(5)]
    for k in keys:
        put(seaweed_s3, seaweed_bucket, k, b"x")
    put(seaweed_s3, seaweed_bucket, "outside/keep", b"x")
    store = store_for("s3")
    assert sorted(o.key for o in store.list("uploads/", page_size=2)) == keys
    info = store.head(keys[0])
    assert (info.exists, info.size) == (True, 1)
    assert store.delete_many(keys + ["uploads/l/never"]) == []
    assert list(store.list("uploads/")) == []
    assert [o.key for o in store.list("")] == ["outside/keep"]
