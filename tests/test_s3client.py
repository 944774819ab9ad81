"""checkpoints.s3client: one environment reader and one client for the console and the agent library.

Requests are counted on the wire (a tiny local HTTP server), and the agent
library's offload writer runs against SeaweedFS, which enforces signatures.
"""

import http.server
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from langgraph.checkpoint.sqlite import SqliteSaver

from storage import offload as offload_module
from storage.offload import OffloadError, OffloadSerializer, S3Store, offload
from checkpoints.s3client import S3Settings, build_client
from storage.stores import StoreUnavailable, store_for
from tests.seaweed import seaweed_s3  # noqa: F401
from tests.test_offload import cfg, count_calls, make_pdf, pdf_graph

REPO = Path(__file__).resolve().parent.parent


# --- the environment reader -------------------------------------------------------------


def test_from_env_reads_every_variable():
    s = S3Settings.from_env(
        {
            "S3_BUCKET_NAME": "b",
            "S3_PREFIX": "agents/",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "S3_FORCE_PATH_STYLE": "yes",
            "AWS_REGION": "eu-west-3",
            "AWS_ACCESS_KEY_ID": "AK",
            "AWS_SECRET_ACCESS_KEY": "SK",
            "AWS_SESSION_TOKEN": "TOK",
            "S3_CONNECT_TIMEOUT": "2",
            "S3_READ_TIMEOUT": "9",
            "S3_MAX_ATTEMPTS": "4",
        }
    )
    assert s == S3Settings(
        bucket="b", prefix="agents/", endpoint_url="http://127.0.0.1:9000", region="eu-west-3", path_style=True,
        access_key="AK", secret_key="SK", session_token="TOK", connect_timeout=2, read_timeout=9, max_attempts=4,
    )
    assert "SK" not in repr(s) and "TOK" not in repr(s)
    assert S3Settings.from_env({}) == S3Settings()
    assert S3Settings().region == "us-east-1" and S3Settings().max_attempts == 3


@pytest.mark.parametrize(
    "name, value",
    [
        ("S3_MAX_ATTEMPTS", "three"),
        ("S3_MAX_ATTEMPTS", "0"),
        ("S3_CONNECT_TIMEOUT", "-1"),
        ("S3_READ_TIMEOUT", "1.5"),
        ("S3_FORCE_PATH_STYLE", "maybe"),
        ("S3_ENDPOINT_URL", "127.0.0.1:9000"),
    ],
)
def test_bad_values_fail_naming_the_variable(name, value, monkeypatch):
    with pytest.raises(ValueError, match=f"^{name}='{value}' is invalid: "):
        S3Settings.from_env({name: value})
    # The agent library reads the same way ...
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name}="):
        S3Store("bucket")


@pytest.mark.parametrize("name, value", [("S3_MAX_ATTEMPTS", "three"), ("S3_ENDPOINT_URL", "minio:9000")])
def test_console_refuses_to_start_with_a_bad_value(name, value):
    # ... and the console stops at start with ImproperlyConfigured naming it.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", name: value}
    code = "import django; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {name}='{value}' is invalid" in result.stderr
    assert ImproperlyConfigured.__name__ in result.stderr


# --- on the wire ---------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's status and records it."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        status = self.server.status
        body = b"" if self.command == "HEAD" else (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>busy</Message></Error>"
            if status >= 400 else b""
        )
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"0"')
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def wire():
    """A local HTTP server answering 503 to everything (set .status to change), counting requests."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    server.status = 503
    server.endpoint_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _wire_env(wire, **extra):
    return {
        "S3_BUCKET_NAME": "bucket",
        "S3_ENDPOINT_URL": wire.endpoint_url,
        "S3_FORCE_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        **extra,
    }


def test_max_attempts_3_sends_3_requests_from_the_agent_library(wire, monkeypatch):
    for key, value in _wire_env(wire, S3_MAX_ATTEMPTS="3").items():
        monkeypatch.setenv(key, value)
    serde = OffloadSerializer(store=S3Store(), threshold=10)
    with pytest.raises(OffloadError, match="503|SlowDown"):
        serde.dumps_typed(b"v" * 100)
    assert [(method, path) for method, path, _ in wire.requests] == [("HEAD", wire.requests[0][1])] * 3


def test_max_attempts_3_sends_3_requests_from_the_console(wire, settings):
    for key, value in _wire_env(wire).items():
        setattr(settings, key, value)
    settings.S3_FORCE_PATH_STYLE, settings.S3_MAX_ATTEMPTS = True, 3
    with pytest.raises(StoreUnavailable, match="503"):
        store_for("s3").head("uploads/x")
    assert [method for method, _, _ in wire.requests] == ["HEAD"] * 3


def test_uploads_carry_no_checksum_trailers(wire):
    """S3-compatible servers that reject botocore's default CRC checksums get none."""
    wire.status = 200
    client = build_client(S3Settings.from_env(_wire_env(wire)))
    client.put_object(Bucket="bucket", Key="k", Body=b"payload")
    ((method, _, headers),) = wire.requests
    assert method == "PUT"
    names = {name.lower() for name in headers}
    assert not any(name.startswith("x-amz-checksum") or name == "x-amz-sdk-checksum-algorithm" for name in names)
    assert "x-amz-trailer" not in names and "aws-chunked" not in headers.get("Content-Encoding", "")


# --- the agent library against a signature-enforcing server ----------------------------


def test_agent_offload_against_seaweedfs(seaweed_s3, monkeypatch, tmp_path):  # noqa: F811
    bucket = f"offload-{uuid.uuid4().hex[:10]}"
    seaweed_s3.client().create_bucket(Bucket=bucket)
    for key, value in seaweed_s3.env(bucket, prefix="agents/").items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    pdf = make_pdf(1_200_000)
    with sqlite3.connect(tmp_path / "cp.db", check_same_thread=False) as conn:
        saver = SqliteSaver(conn)
        checkpointer = offload(saver, threshold="100KB")  # the store from the environment
        assert isinstance(checkpointer.offloader.store, S3Store)
        assert checkpointer.offloader.store.settings.max_attempts == 2
        graph = pdf_graph(checkpointer, pdf=pdf)
        graph.invoke({"name": "doc"}, cfg("t1"))
        assert graph.get_state(cfg("t1")).values["pdf"] == pdf
        rows = conn.execute("select checkpoint from checkpoints").fetchall()
        assert all(pdf[:1000] not in row[0] for row in rows)  # offloaded, not stored inline

    listing = seaweed_s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    (obj,) = listing
    assert obj["Key"].startswith("agents/sha256/") and obj["Size"] == len(pdf)

    # Multipart upload and the refresh (copy onto itself) are signed requests too.
    big = make_pdf(6_000_000)
    store = S3Store(multipart_threshold="5MB", multipart_chunksize="5MB")
    typed = OffloadSerializer(store=store, threshold="1MB").dumps_typed(big)
    calls = count_calls(again := S3Store(), "CopyObject", "PutObject")
    stale = OffloadSerializer(store=again, threshold="1MB", sweep_grace="0s")
    assert stale.dumps_typed(big) == typed
    assert calls == {"CopyObject": 1, "PutObject": 0}  # found, and refreshed in place
    assert OffloadSerializer(store=S3Store(), threshold="1MB").loads_typed(typed) == big
    keys = {o["Key"]: o["Size"] for o in seaweed_s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert sorted(keys.values()) == [len(pdf), len(big)]


# --- the agent library stands alone ----------------------------------------------------------


def test_agent_library_imports_nothing_of_django(tmp_path):
    code = """
import sys
import storage.offload, storage.size_limit, checkpoints.s3client
from checkpoints.s3client import S3Settings, build_client
build_client(S3Settings(bucket="b", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="s"))
storage.offload.S3Store("b", endpoint_url="http://127.0.0.1:9").client
assert "django" not in sys.modules, sorted(m for m in sys.modules if m.startswith("django"))
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert offload_module.S3Store is S3Store


def test_raw_timestamps_leave_dates_as_the_servers_text_for_that_client_only(moto_s3, s3_bucket):
    """The console's S3 reader lists with raw_timestamps (it never reads a date); other clients keep datetimes."""
    from datetime import datetime

    settings = S3Settings(endpoint_url=moto_s3.endpoint_url, path_style=True, access_key="testing", secret_key="testing")
    raw, parsed = build_client(settings, raw_timestamps=True), build_client(settings)
    raw.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    listed = raw.list_objects_v2(Bucket=s3_bucket)["Contents"][0]
    assert isinstance(listed["LastModified"], str) and datetime.fromisoformat(listed["LastModified"].replace("Z", "+00:00"))
    assert isinstance(raw.get_object(Bucket=s3_bucket, Key="k")["LastModified"], str)
    assert isinstance(parsed.list_objects_v2(Bucket=s3_bucket)["Contents"][0]["LastModified"], datetime)
