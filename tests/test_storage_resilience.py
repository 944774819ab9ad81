"""Faults injected below botocore's retry layer: retries happen, and S3 down is a clear error.

Two injection points, neither replaces a client: a `before-send` hook (the
request never leaves; the hook answers 503 or raises a connection error, as
the HTTP layer would), and a loopback TCP proxy in front of moto that resets
or stalls the first connections.
"""

import io
import json
import socket
import threading
import time

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError
from django.core.management import call_command
from django.core.management.base import CommandError

from checkpoints.models import BlobReference, Run
from storage.refcheck import check_references
from storage.stores import StoreUnavailable, store_for
from tests.s3server import free_port
from tests.test_download import client_for, make_user, plain_static_storage, reference  # noqa: F401

pytestmark = pytest.mark.django_db


class _Body:
    def __init__(self, data):
        self.data = data

    def stream(self, **kwargs):
        yield self.data


def fail_first(store, operation, n, how="503"):
    """Make the first n sends of `operation` fail; return the list of attempts seen."""
    attempts = []

    def hook(request, **kwargs):
        attempts.append(request.url)
        if len(attempts) > n:
            return None  # let it go to the server
        if how == "503":
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))
        raise ConnectionClosedError(endpoint_url=request.url)

    store.client.meta.events.register(f"before-send.s3.{operation}", hook, unique_id=f"fault-{id(attempts)}")
    return attempts


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 that resets or stalls its first `faults` connections."""

    def __init__(self, target_port, faults, mode):
        self.target_port, self.faults, self.mode = target_port, faults, mode
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.faults:
                if self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    conn.close()  # RST: the client sees a dropped connection
                else:
                    self.stalled.append(conn)  # accepted, never answered: a read timeout
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.listener.close()
        for s in self.stalled:
            s.close()


@pytest.fixture
def proxy(moto_s3, s3_bucket, settings):
    made = []

    def make(faults, mode):
        p = FaultyProxy(moto_s3.port, faults, mode)
        settings.S3_ENDPOINT_URL = p.url
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_503s_below_the_retry_layer_are_retried_until_success(moto_s3, s3_bucket, settings):
    settings.S3_MAX_ATTEMPTS = 3
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/a", Body=b"abc")
    store = store_for("s3")
    attempts = fail_first(store, "HeadObject", 2, "503")
    info = store.head("uploads/a")
    assert (info.exists, info.size) == (True, 3)
    assert len(attempts) == 3


def test_503s_past_the_attempt_budget_are_a_clear_error(moto_s3, s3_bucket, settings):
    settings.S3_MAX_ATTEMPTS = 2
    store = store_for("s3")
    attempts = fail_first(store, "HeadObject", 99, "503")
    with pytest.raises(StoreUnavailable) as e:
        store.head("uploads/a")
    assert len(attempts) == 2
    assert str(e.value).startswith(f"S3 at {moto_s3.endpoint_url} refused HEAD s3://{s3_bucket}/uploads/a: HTTP 503 SlowDown")


def test_connection_errors_are_retried(moto_s3, s3_bucket, settings):
    settings.S3_MAX_ATTEMPTS = 3
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/b", Body=b"bb")
    store = store_for("s3")
    attempts = fail_first(store, "GetObject", 1, "connection")
    assert b"".join(store.stream("uploads/b")) == b"bb"
    assert len(attempts) == 2


def test_reset_connections_through_a_tcp_proxy_are_retried(moto_s3, s3_bucket, settings, proxy):
    settings.S3_MAX_ATTEMPTS = 3
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/c", Body=b"ccc")
    p = proxy(2, "reset")
    info = store_for("s3").head("uploads/c")
    assert (info.exists, info.size) == (True, 3)
    assert p.connections == 3


def test_a_stalled_connection_times_out_and_is_retried(moto_s3, s3_bucket, settings, proxy):
    settings.S3_MAX_ATTEMPTS, settings.S3_READ_TIMEOUT = 2, 1
    moto_s3.client().put_object(Bucket=s3_bucket, Key="uploads/d", Body=b"dddd")
    p = proxy(1, "stall")
    started = time.monotonic()
    info = store_for("s3").head("uploads/d")
    assert (info.exists, info.size) == (True, 4)
    assert p.connections == 2
    assert time.monotonic() - started >= 1  # the read timeout, then the retry


def test_read_timeouts_past_the_budget_are_a_clear_error(s3_bucket, settings, proxy):
    settings.S3_MAX_ATTEMPTS, settings.S3_READ_TIMEOUT = 2, 1
    p = proxy(99, "stall")
    with pytest.raises(StoreUnavailable, match=r"is unavailable \(HEAD .*2 attempts\).*Read timeout"):
        store_for("s3").head("uploads/d")
    assert p.connections == 2


@pytest.fixture
def s3_down(settings):
    """Settings pointing at a loopback port where nothing listens."""
    settings.S3_BUCKET_NAME, settings.S3_PREFIX = "console-bucket", "uploads/"
    settings.S3_ENDPOINT_URL, settings.S3_FORCE_PATH_STYLE = f"http://127.0.0.1:{free_port()}", True
    settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY = "k", "s"
    settings.S3_MAX_ATTEMPTS, settings.S3_CONNECT_TIMEOUT = 2, 1
    return settings.S3_ENDPOINT_URL


def test_s3_down_leaves_references_unchecked_with_one_round_of_retries(s3_down, tmp_path, settings):
    settings.BLOB_ROOT = tmp_path
    (tmp_path / "f.txt").write_text("local")
    refs = [reference(f"s3://console-bucket/uploads/{i}.txt") for i in range(5)]
    BlobReference.objects.filter(pk=refs[0].pk).update(exists=True, size=10)  # known before S3 went down
    local = reference(f"file://{tmp_path}/f.txt")
    attempts = fail_first(store_for("s3"), "HeadObject", 0)  # only counts

    result = check_references()

    assert len(attempts) == 2  # the first object's attempts; the others are not tried against a dead store
    assert result["error"].startswith(f"S3 at {s3_down} is unavailable (HEAD s3://console-bucket/uploads/")
    assert "Could not connect to the endpoint URL" in result["error"]
    assert (result["unchecked"], result["present"], result["checked"]) == (5, 1, 1)
    for ref in BlobReference.objects.filter(pk__in=[r.pk for r in refs]):
        assert ref.exists is None and ref.state == "unchecked"
        assert ref.check_error == result["error"]
    assert BlobReference.objects.get(pk=local.pk).exists is True  # the file store still answers
    assert BlobReference.objects.get(pk=refs[0].pk).size == 10  # last known size kept, not counted


def test_s3_down_pages_render_and_the_run_records_the_error(s3_down, settings):
    from django.test import Client

    ref = reference("s3://console-bucket/uploads/x.txt")
    out = io.StringIO()
    with pytest.raises(CommandError, match="is unavailable") as e:
        call_command("check_references", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["unchecked"] == 1 and result["error"] == str(e.value)
    run = Run.objects.get(pk=result["run"])
    assert (run.kind, run.state, run.error) == ("refcheck", "failed", result["error"])

    operator = client_for(make_user("operator"))
    page = operator.get("/storage/bucket/")
    assert page.status_code == 200
    assert b"is unavailable" in page.content and b"Traceback" not in page.content
    assert operator.get("/").status_code == 200
    # Presigning is local: links are still issued while S3 is down.
    assert operator.get(f"/blobs/{ref.pk}/download").status_code == 302
    assert Client().get("/storage/bucket/").status_code == 302
