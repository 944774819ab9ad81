"""The read-only bucket panel, against moto's S3 server."""

import pytest
from django.test import Client

from tests.test_download import client_for, make_user, plain_static_storage  # noqa: F401

pytestmark = pytest.mark.django_db

ABORT = "aborts incomplete multipart uploads under uploads/"


@pytest.fixture
def viewer():
    return client_for(make_user("viewer"))


def test_bare_bucket_warns_about_multipart_uploads(s3_bucket, viewer):
    r = viewer.get("/storage/bucket/")
    assert r.status_code == 200
    html = r.content.decode()
    assert s3_bucket in html
    assert f"No enabled lifecycle rule {ABORT}" in html
    assert "Never enabled" in html
    assert "No lifecycle rules." in html
    assert "No default encryption configured." in html


def test_configured_bucket_shows_versioning_rules_and_encryption(moto_s3, s3_bucket, viewer):
    c = moto_s3.client()
    c.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    c.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [
        {"ID": "tidy-uploads", "Status": "Enabled", "Filter": {"Prefix": "uploads/"},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
        {"ID": "old-logs", "Status": "Disabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 90}},
    ]})
    c.put_bucket_encryption(Bucket=s3_bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/console"}},
    ]})
    html = viewer.get("/storage/bucket/").content.decode()
    assert "Enabled" in html
    assert "tidy-uploads" in html and "abort incomplete multipart uploads after 7 days" in html
    assert "expire noncurrent versions after 30 days" in html
    assert "old-logs" in html and "disabled" in html and "expire current versions after 90 days" in html
    assert "aws:kms with key alias/console" in html
    assert ABORT not in html
    assert "expires noncurrent versions" not in html


def test_rule_for_another_prefix_does_not_count(moto_s3, s3_bucket, viewer):
    c = moto_s3.client()
    c.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    c.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [
        {"ID": "tmp-only", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]})
    html = viewer.get("/storage/bucket/").content.decode()
    assert f"No enabled lifecycle rule {ABORT}" in html
    assert "no enabled rule expires noncurrent versions under uploads/" in html


def test_not_configured(settings, viewer):
    settings.S3_BUCKET_NAME = ""
    r = viewer.get("/storage/bucket/")
    assert r.status_code == 200
    assert b"No S3 bucket is configured: set S3_BUCKET_NAME" in r.content


def test_login_and_read_permission_required(s3_bucket):
    r = Client().get("/storage/bucket/")
    assert (r.status_code, r["Location"]) == (302, "/accounts/login/?next=/storage/bucket/")
    assert client_for(make_user()).get("/storage/bucket/").status_code == 403  # in no group
    assert client_for(make_user("operator")).get("/storage/bucket/").status_code == 200
