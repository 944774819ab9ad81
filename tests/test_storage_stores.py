"""The stores against moto's S3 server over HTTP and a real directory."""

import json
import os
import urllib.request

import pytest

from storage.stores import (
    FileStore,
    ForeignURI,
    PathRefused,
    S3Store,
    StoreError,
    StoreNotConfigured,
    locate,
    store_for,
)


def count_calls(store, operation):
    """Count requests the client sends for an operation (observed, nothing replaced)."""
    calls = []
    store.client.meta.events.register(f"before-send.s3.{operation}", lambda request, **kw: calls.append(request.url))
    return calls


# --- S3 --------------------------------------------------------------------------------


def test_head_reports_size_type_time_etag_and_missing(moto_s3, s3_bucket):
    c = moto_s3.client()
    c.put_object(Bucket=s3_bucket, Key="uploads/a.json", Body=b'{"a": 1}', ContentType="application/json")
    real = c.head_object(Bucket=s3_bucket, Key="uploads/a.json")
    store = store_for("s3")
    info = store.head("uploads/a.json")
    assert info.exists
    assert (info.size, info.content_type, info.last_modified) == (8, "application/json", real["LastModified"])
    assert info.etag == real["ETag"].strip('"')
    assert store.head("uploads/nothing-here").exists is False


def test_keys_are_used_exactly_as_found(moto_s3, s3_bucket):
    c = moto_s3.client()
    c.put_object(Bucket=s3_bucket, Key="uploads/a//b", Body=b"double")
    c.put_object(Bucket=s3_bucket, Key="uploads/a/b", Body=b"single")
    store, key = locate(f"s3://{s3_bucket}/uploads/a//b")
    assert key == "uploads/a//b"
    assert b"".join(store.stream(key)) == b"double"


def test_stream_returns_the_bytes_in_chunks(moto_s3, s3_bucket):
    body = os.urandom(200_000)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/big.bin", Body=body)
    chunks = list(store_for("s3").stream("uploads/big.bin", chunk_size=65536))
    assert len(chunks) == 4
    assert b"".join(chunks) == body


def test_list_streams_pages(moto_s3, s3_bucket):
    c = moto_s3.client()
    keys = [f"uploads/k{i:03}" for i in range(7)]
    for k in keys + ["other/x"]:
        c.put_object(Bucket=s3_bucket, Key=k, Body=k.encode())
    store = store_for("s3")
    calls = count_calls(store, "ListObjectsV2")
    listing = store.list("uploads/", page_size=3)
    first = next(listing)
    assert len(calls) == 1  # one page fetched, not the whole listing
    rest = list(listing)
    assert len(calls) == 3
    assert sorted(o.key for o in [first, *rest]) == keys
    assert all(o.size == len(o.key) and o.last_modified for o in [first, *rest])


def test_delete_many_batches_1000_and_reports_per_key_errors(moto_s3, s3_bucket):
    c = moto_s3.client()
    keys = [f"uploads/d/{i:04}" for i in range(2300)]
    for k in keys[:5] + keys[-5:]:
        c.put_object(Bucket=s3_bucket, Key=k, Body=b"x")
    c.put_object(Bucket=s3_bucket, Key="uploads/locked/keep", Body=b"x")
    c.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
                       "Resource": f"arn:aws:s3:::{s3_bucket}/uploads/locked/*"}],
    }))
    store = store_for("s3")
    calls = count_calls(store, "DeleteObjects")
    errors = store.delete_many(keys + ["uploads/locked/keep"])
    assert len(calls) == 3  # 1000 + 1000 + 301
    assert [(e.key, e.code) for e in errors] == [("uploads/locked/keep", "AccessDenied")]
    left = [o["Key"] for o in c.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert left == ["uploads/locked/keep"]


def test_presigned_get_downloads_the_object(moto_s3, s3_bucket):
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/p.txt", Body=b"presigned")
    url = store_for("s3").presign_get("uploads/p.txt", "p.txt", 60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"presigned"


def test_client_is_configured_for_sigv4_retries_and_timeouts(s3_bucket, settings):
    settings.S3_MAX_ATTEMPTS, settings.S3_CONNECT_TIMEOUT, settings.S3_READ_TIMEOUT = 4, 2, 7
    store = store_for("minio")
    cfg = store.client.meta.config
    assert cfg.signature_version == "s3v4"
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (cfg.connect_timeout, cfg.read_timeout) == (2, 7)
    assert cfg.s3["addressing_style"] == "path"
    assert store.client.meta.region_name == "us-east-1"
    assert store_for("s3://x/y") is store  # one client per configuration


def test_no_bucket_means_not_configured(settings):
    settings.S3_BUCKET_NAME = ""
    with pytest.raises(StoreNotConfigured, match="S3_BUCKET_NAME"):
        store_for("s3")
    with pytest.raises(ForeignURI):
        locate("s3://any/uploads/x")


def test_unknown_scheme_and_foreign_uris(s3_bucket):
    with pytest.raises(ValueError, match="no store"):
        store_for("http://x/y")
    for uri in (f"s3://{s3_bucket}/not-uploads/x", "s3://other/uploads/x", "file:///etc/passwd"):
        with pytest.raises(ForeignURI):
            locate(uri)


def test_refused_request_is_a_store_error_with_the_code(moto_s3, s3_bucket, settings):
    settings.S3_BUCKET_NAME = "no-such-bucket-here"
    with pytest.raises(StoreError, match="NoSuchBucket") as e:
        list(store_for("s3").list("uploads/"))
    assert "no-such-bucket-here" in str(e.value)


def test_bucket_config(moto_s3, s3_bucket):
    c = moto_s3.client()
    store = store_for("s3")
    assert store.bucket_config() == {"versioning": "", "mfa_delete": "", "rules": [], "encryption": []}
    c.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    c.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [
        {"ID": "mpu", "Status": "Enabled", "Filter": {"Prefix": ""}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}},
    ]})
    c.put_bucket_encryption(Bucket=s3_bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}},
    ]})
    cfg = store.bucket_config()
    assert cfg["versioning"] == "Enabled"
    assert [r["ID"] for r in cfg["rules"]] == ["mpu"]
    assert cfg["encryption"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


# --- files ---------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path, settings):
    root = (tmp_path / "blobs").resolve()
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "one.txt").write_bytes(b"one")
    (root / "a" / "b" / "two.pdf").write_bytes(b"two!")
    (root / "top.bin").write_bytes(b"t")
    (tmp_path / "outside.txt").write_text("secret")
    (root / "a" / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (root / "a" / "dirlink").symlink_to(tmp_path)
    settings.BLOB_ROOT = root
    return root


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "ROOT/../outside.txt", "ROOT/a/../../outside.txt", "ROOT", "ROOT/a/one.txt\x00.png",
     "ROOT/a/escape.txt", "ROOT/a/dirlink/outside.txt", "ROOTX/a"],
)
def test_file_store_refuses_paths_that_leave_the_root(root, path):
    store = store_for("file")
    key = path.replace("ROOT", str(root))
    for action in (store.head, store.open, lambda k: list(store.stream(k))):
        with pytest.raises(PathRefused):
            action(key)
    assert [e.code for e in store.delete_many([key])] == ["PathRefused"]
    assert (root.parent / "outside.txt").read_text() == "secret"


def test_file_store_head_stream_list_delete(root):
    store = store_for("file:///whatever")
    assert isinstance(store, FileStore)
    info = store.head(f"{root}/a/b/two.pdf")
    assert (info.exists, info.size, info.content_type) == (True, 4, "application/pdf")
    assert info.last_modified.tzinfo is not None and info.etag
    assert store.head(f"{root}/a/missing").exists is False
    assert store.head(f"{root}/a/b").exists is False  # a directory is not an object
    assert b"".join(store.stream(f"{root}/a/one.txt")) == b"one"

    assert sorted(o.key for o in store.list(str(root))) == [f"{root}/a/b/two.pdf", f"{root}/a/one.txt", f"{root}/top.bin"]
    assert [o.key for o in store.list(f"{root}/a/b/")] == [f"{root}/a/b/two.pdf"]
    assert [o.size for o in store.list(f"{root}/top")] == [1]

    assert store.delete_many([f"{root}/a/one.txt", f"{root}/a/never-there"]) == []
    assert not (root / "a" / "one.txt").exists()


def test_store_for_s3_is_not_a_file_store(s3_bucket):
    assert isinstance(store_for("s3"), S3Store)
