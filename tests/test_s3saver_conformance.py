"""S3Saver and AsyncS3Saver pass langgraph-checkpoint-conformance on moto's server and SeaweedFS.

The suite calls the async methods and detects a capability where the class
overrides BaseCheckpointSaver's async method. AsyncS3Saver is run as it is;
S3Saver (sync only) through the ThreadedAsync adapter of
test_conformance_wrappers, exactly as PostgresSaver is. Each declared
capability must pass every one of its tests; offload() and limit_size()
around S3Saver must keep all of that.
"""

import uuid

import pytest

from storage.offload import FileStore, offload
from storage.s3saver import AsyncS3Saver, S3Saver
from storage.size_limit import limit_size
from tests.seaweed import seaweed_s3  # noqa: F401
from tests.test_conformance_wrappers import ThreadedAsync, run_suite

DECLARED = {"put", "put_writes", "get_tuple", "list", "delete_thread", "copy_thread", "prune"}


@pytest.fixture(params=["moto", "seaweed"])
def server(request):
    return request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweed_s3")


def _factory(server, make):
    async def factory():
        bucket = f"conf-{uuid.uuid4().hex[:10]}"
        server.client().create_bucket(Bucket=bucket)
        saver = make(bucket, server)
        yield saver
        inner = getattr(saver, "saver", saver)
        while hasattr(inner, "saver"):
            inner = inner.saver
        inner.close()

    return factory


def _saver(cls, bucket, server, **options):
    client = server.client()
    return cls(bucket, "lg/", client=client, metrics=False, **options)


def _assert_all_pass(detected, results):
    assert detected == DECLARED
    failed = {key: error for key, error in results.items() if error is not None}
    assert results, "the suite ran no test"
    assert not failed, "\n".join(f"{cap}/{test}: {error}" for (cap, test), error in sorted(failed.items()))
    assert {cap for cap, _ in results} == DECLARED


def test_async_s3saver_passes_conformance(server):
    detected, results = run_suite("AsyncS3Saver", _factory(server, lambda b, s: _saver(AsyncS3Saver, b, s)))
    _assert_all_pass(detected, results)


def test_s3saver_through_threads_passes_conformance(server):
    detected, results = run_suite("S3Saver", _factory(server, lambda b, s: ThreadedAsync(_saver(S3Saver, b, s))))
    _assert_all_pass(detected, results)


@pytest.mark.parametrize("wrap", ["offload", "limit_size"])
def test_wrapped_s3saver_passes_conformance(moto_s3, wrap, tmp_path):
    def make(bucket, server):
        saver = _saver(S3Saver, bucket, server)
        wrapped = offload(saver, store=FileStore(tmp_path), threshold=1) if wrap == "offload" else limit_size(saver, "10MB")
        return ThreadedAsync(wrapped)

    detected, results = run_suite(f"{wrap}(S3Saver)", _factory(moto_s3, make))
    _assert_all_pass(detected, results)


def test_uncompressed_encrypted_saver_passes_conformance(moto_s3):
    make = lambda b, s: _saver(AsyncS3Saver, b, s, compression=None, sse="AES256")  # noqa: E731
    detected, results = run_suite("AsyncS3Saver(sse)", _factory(moto_s3, make))
    _assert_all_pass(detected, results)
