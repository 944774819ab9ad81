"""The sweep's last look at an S3 checkpoint store (docs/architecture.md, "Source kinds").

An S3 store has no statement to search every value with: the values of the
threads its change index names since the sweep's sync (every thread when it
cannot tell) are read and handed over; an encrypted one fails the batch (it
cannot be searched). It has no orphan rows either: the saver deletes a
checkpoint's objects with it.
"""

from checkpoints.sources import ScannedURIs, SourceError
from checkpoints.sources.recheck import ENCRYPTED_SINCE_SYNC

THREADS_PER_READ = 500


class S3Recheck:
    def __init__(self, url: str):
        self.url = url

    def values(self, markers: list, since: dict | None):
        # Every payload and write is read as stored: a manifest's `refs` are a shortcut for the
        # sync, never for the last look before a deletion.
        with _reader(self.url) as reader:
            changed = reader.changed_thread_ids(since, reader.watermark()) if since else None
            ids = sorted(reader.thread_ids() if changed is None else changed)
            for i in range(0, len(ids), THREADS_PER_READ):
                for rows in reader.read_threads(ids[i : i + THREADS_PER_READ]):
                    values = [v for c in rows.checkpoints for v in (c.inline_values or {}).values()]
                    values += [(w.type, w.data) for w in rows.writes]
                    for type_, data in values:
                        if type_ and "+" in type_:
                            raise SourceError(ENCRYPTED_SINCE_SYNC)
                        if isinstance(data, ScannedURIs):  # refs from a manifest: never trusted here
                            raise RuntimeError("the sweep's recheck got a manifest's refs, not the stored values")
                        if data:
                            yield bytes(data)

    def close(self):
        pass


def _reader(url):
    from checkpoints.sources.s3 import settings_for
    from checkpoints.sources.s3.reader import S3Reader

    try:
        return S3Reader(url, settings_for(url), manifest_refs=False)
    except ValueError as e:
        raise SourceError(str(e)) from None


def orphans(url: str, floor: str, *, dry_run: bool) -> dict:
    return {"blobs": 0, "writes": 0, "thread_ids": []}


def owned_prefixes(url: str) -> tuple:
    """(bucket, key prefixes) of the objects the store itself holds: a sweep never deletes them."""
    from checkpoints.sources.s3.reader import parse_url

    _, bucket, prefix = parse_url(url)
    return bucket, tuple(prefix + p for p in ("threads/", "changes/", "delta-threads/"))
