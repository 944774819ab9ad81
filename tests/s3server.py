"""A real S3 protocol endpoint on loopback: moto's server mode.

Tests reach it through boto3 over HTTP, exactly as the console reaches S3 or
MinIO; no client is patched.
"""

import socket

import boto3
from botocore.config import Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def env(self, bucket: str, prefix: str = "") -> dict:
        """The console's settings (docs/architecture.md §4) for this endpoint and bucket."""
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
        self.server.stop()
