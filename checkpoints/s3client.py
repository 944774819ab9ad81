"""The S3 settings and the S3 client, for the console and the agent library alike.

Django-free: the console's settings, its stores (storage.stores), the agent
library's offload writer and the S3 checkpoint saver all read the same
variables here and build their botocore client here, so they cannot drift::

    settings = S3Settings.from_env()          # S3_BUCKET_NAME, AWS_REGION, ...
    client = build_client(settings)

A bad value raises ValueError naming the variable (`S3_MAX_ATTEMPTS='x' is
invalid: not a whole number`); the console turns it into ImproperlyConfigured
at start.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from checkpoints import units

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Where the bucket is and how to talk to it.

    Hashable (frozen): the console keeps one client per distinct settings.
    Empty credentials mean "the usual AWS chain" (environment, profile, role).
    """

    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    region: str = DEFAULT_REGION
    path_style: bool = False
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    connect_timeout: int = 5
    read_timeout: int = 30
    # Requests in all, the first one included (botocore `total_max_attempts`).
    max_attempts: int = 3

    @classmethod
    def from_env(cls, environ=os.environ) -> S3Settings:
        """Read S3_BUCKET_NAME, S3_PREFIX, S3_ENDPOINT_URL, S3_FORCE_PATH_STYLE,
        AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
        S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT and S3_MAX_ATTEMPTS.

        >>> S3Settings.from_env({"S3_BUCKET_NAME": " b ", "S3_MAX_ATTEMPTS": "5"})
        S3Settings(bucket='b', prefix='', endpoint_url='', region='us-east-1', path_style=False, \
connect_timeout=5, read_timeout=30, max_attempts=5)
        >>> S3Settings.from_env({"S3_MAX_ATTEMPTS": "0"})
        Traceback (most recent call last):
        ...
        ValueError: S3_MAX_ATTEMPTS='0' is invalid: must be at least 1
        """
        env = _Reader(environ)
        return cls(
            bucket=env.text("S3_BUCKET_NAME"),
            prefix=env.text("S3_PREFIX"),
            endpoint_url=env.parse("S3_ENDPOINT_URL", "", _endpoint),
            region=env.text("AWS_REGION") or DEFAULT_REGION,
            path_style=env.parse("S3_FORCE_PATH_STYLE", False, units.parse_bool),
            access_key=env.text("AWS_ACCESS_KEY_ID"),
            secret_key=env.text("AWS_SECRET_ACCESS_KEY"),
            session_token=env.text("AWS_SESSION_TOKEN"),
            connect_timeout=env.parse("S3_CONNECT_TIMEOUT", 5, _positive_int),
            read_timeout=env.parse("S3_READ_TIMEOUT", 30, _positive_int),
            max_attempts=env.parse("S3_MAX_ATTEMPTS", 3, _positive_int),
        )

    def replace(self, **changes) -> S3Settings:
        """A copy with `changes`; keys whose value is None are left as they are."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def where(self) -> str:
        """The server, for messages: the endpoint, or AWS and the region."""
        return self.endpoint_url or f"AWS S3 ({self.region})"


def build_client(settings: S3Settings, *, max_pool_connections: int = 10, raw_timestamps: bool = False,
                 parameter_validation: bool = True):
    """A botocore S3 client for `settings` (thread-safe; build one and share it).

    SigV4 with the explicit region (presigned URLs need both); standard
    retries where `max_attempts` counts every request, the first included
    (`total_max_attempts`, like AWS_MAX_ATTEMPTS: botocore's `max_attempts`
    key counts retries and would send one request more); checksums only when
    an operation requires them, because S3-compatible servers (MinIO,
    SeaweedFS, older Ceph) do not all accept the CRC trailers botocore adds
    by default since 1.36. `max_pool_connections` is the size of the client's
    HTTP connection pool (botocore's default, 10, unless a caller sends more
    requests at once, as the S3 checkpoint saver does). `raw_timestamps`: dates in
    responses (LastModified of every listed object and every GET) stay the server's
    text instead of going through dateutil, a third of a listing's client time, for
    callers that never read them. `parameter_validation=False` skips botocore's check of every
    call's parameters against the API model (~10% of a small PUT's client time), for a caller
    whose calls are all its own code's, well formed (the S3 checkpoint saver's); a bad call then
    fails at the server instead.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        region_name=settings.region,
        s3={"addressing_style": "path" if settings.path_style else "auto"},
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        parameter_validation=parameter_validation,
    )
    # A session per client: boto3's default session is shared module state
    # and not thread-safe; the client it builds is.
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key or None,
        aws_secret_access_key=settings.secret_key or None,
        aws_session_token=(settings.session_token or None) if settings.access_key else None,
        region_name=settings.region,
    )
    if raw_timestamps:
        session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return session.client("s3", endpoint_url=settings.endpoint_url or None, config=config)


class _Reader:
    def __init__(self, environ):
        self.environ = environ

    def text(self, name) -> str:
        return (self.environ.get(name) or "").strip()

    def parse(self, name, default, parse):
        raw = self.environ.get(name) or ""
        if raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as e:
            raise ValueError(f"{name}={raw!r} is invalid: {e}") from None


def _positive_int(raw: str) -> int:
    """
    >>> _positive_int("3"), _positive_int("x")
    Traceback (most recent call last):
    ...
    ValueError: not a whole number
    """
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("not a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _endpoint(raw: str) -> str:
    """An http(s) URL with a host; anything else would fail at the first request.

    >>> _endpoint("http://127.0.0.1:9000")
    'http://127.0.0.1:9000'
    >>> _endpoint("127.0.0.1:9000")
    Traceback (most recent call last):
    ...
    ValueError: use http://host[:port] or https://host[:port]
    """
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("use http://host[:port] or https://host[:port]")
    return raw
