"""S3 checkpoint stores written by storage.s3saver.S3Saver: the `s3` source kind.

URL `s3://bucket/prefix/` (or `minio://bucket/prefix/`); the endpoint, region,
path style, credentials, timeouts and attempts are the console's S3 settings
(S3_ENDPOINT_URL, AWS_REGION, ...: checkpoints.s3client). The object layout is
docs/s3-layout.md, read through checkpoints.s3layout, the module the saver
writes by.

reader.py: the sync's reads, incremental through the saver's change index;
values.py: one checkpoint's values for display; maintenance.py: prune;
recheck.py: the sweep's re-check and the objects it never deletes;
lifecycle.py: the saver's lifecycle policy, previewed and applied.
"""

from checkpoints.sources.s3.reader import S3Reader, parse_url


def settings_for(url: str):
    """The S3Settings to read the store at `url`: the console's S3 settings, the URL's bucket and prefix."""
    from django.conf import settings

    from checkpoints.s3client import S3Settings

    _, bucket, prefix = parse_url(url)
    return S3Settings(
        bucket=bucket, prefix=prefix, endpoint_url=settings.S3_ENDPOINT_URL, region=settings.AWS_REGION,
        path_style=settings.S3_FORCE_PATH_STYLE, access_key=settings.AWS_ACCESS_KEY_ID,
        secret_key=settings.AWS_SECRET_ACCESS_KEY, session_token=settings.AWS_SESSION_TOKEN,
        connect_timeout=settings.S3_CONNECT_TIMEOUT, read_timeout=settings.S3_READ_TIMEOUT,
        max_attempts=settings.S3_MAX_ATTEMPTS,
    )


class S3Kind:
    name = "s3"
    shares_blobs = False  # each checkpoint's values are in its own payload
    logical_capture = False
    layout_reads_data = True  # layout() lists the whole prefix: the store was read

    def check_url(self, url):
        parse_url(url)

    def reader(self, url, *, connect_timeout=10):
        return S3Reader(url, settings_for(url))

    def read_values(self, url, key, parent, *, limit, aes_key=None, digest=False, memo=None):
        from checkpoints.sources.s3.values import read_values

        return read_values(url, key, parent, limit=limit, aes_key=aes_key, digest=digest, memo=memo)

    def read_writes(self, url, key, *, limit, aes_key=None, digest=False, memo=None):
        from checkpoints.sources.s3.values import read_writes

        return read_writes(url, key, limit=limit, aes_key=aes_key, digest=digest, memo=memo)

    def maintenance(self, url):
        from checkpoints.sources.s3.maintenance import S3Maintenance

        return S3Maintenance(url, settings_for(url))

    def recheck(self, url):
        from checkpoints.sources.s3.recheck import S3Recheck

        return S3Recheck(url)

    def orphans(self, url, floor, *, dry_run):
        from checkpoints.sources.s3.recheck import orphans

        return orphans(url, floor, dry_run=dry_run)

    def lifecycle(self, url):
        """The bucket's lifecycle rules for the saver's prefix (only this kind has any)."""
        from checkpoints.sources.s3.lifecycle import S3Lifecycle

        return S3Lifecycle(url, settings_for(url))

    def owned_prefixes(self, url):
        from checkpoints.sources.s3.recheck import owned_prefixes

        return owned_prefixes(url)

    def space_report(self, found):
        from checkpoints.sources.s3 import space

        return {**space.report(found), "template": space.TEMPLATE, "brief_template": space.BRIEF_TEMPLATE}


KIND = S3Kind()
