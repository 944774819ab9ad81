"""An S3 outage during a reference check (issue 10.9): what is known missing stays missing."""

import uuid

import pytest

from checkpoints.models import BlobReference
from storage import refcheck
from storage.refcheck import check_references
from tests.s3server import MotoS3
from tests.test_download import reference

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_s3(settings):
    """A moto server of this test's own, so that it can be stopped mid-check."""
    server = MotoS3()
    bucket = f"bucket-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=bucket)
    for key, value in server.env(bucket, prefix="uploads/").items():
        setattr(settings, key, value)
    settings.S3_MAX_ATTEMPTS, settings.S3_CONNECT_TIMEOUT = 1, 1
    yield server, bucket
    server.stop()


def test_s3_stopping_mid_check_leaves_known_missing_objects_missing(own_s3, monkeypatch):
    server, bucket = own_s3
    client = server.client()
    refs = []
    for i in range(40):
        key = f"uploads/{i:02}.bin"
        if i % 4 == 0:  # one in four is there; the rest are dangling
            client.put_object(Bucket=bucket, Key=key, Body=b"x" * (i + 1))
        refs.append(reference(f"s3://{bucket}/{key}"))
    first = check_references()
    assert (first["present"], first["missing"], first["error"]) == (10, 30, None)
    known = dict(BlobReference.objects.values_list("pk", "exists"))
    checked_at = dict(BlobReference.objects.values_list("pk", "checked_at"))

    # The server goes away after the first batch of the second check.
    monkeypatch.setattr(refcheck, "BATCH", 10)
    batches = []

    def progress(done):
        batches.append(done)
        if len(batches) == 1:
            server.stop()

    second = check_references(progress=progress)
    assert batches == [10, 20, 30, 40]
    assert second["error"] and "unavailable" in second["error"]
    assert second["checked"] == 10 and second["unchecked"] == 30

    after = {ref.pk: ref for ref in BlobReference.objects.all()}
    for pk, was in known.items():
        ref = after[pk]
        if was is False:
            assert ref.state == "missing", ref.uri  # still dangling: an outage is no news that it came back
        if pk in [r.pk for r in refs[10:]]:
            assert ref.check_error == second["error"]
            assert ref.checked_at == checked_at[pk]  # the time of the last real answer
            if was:
                assert ref.state == "unchecked"  # a presence we cannot vouch for now
    assert BlobReference.objects.filter(exists=False).count() == 30
