"""What every kind's `Recheck` shares (checkpoints/sources/kind.py, docs/architecture.md "Source kinds")."""

from checkpoints.sources import open_reader

ENCRYPTED_SINCE_SYNC = (
    "encrypted values were written since the sync; they cannot be searched, so nothing is deleted "
    "(run the sweep again when the source is quiet)"
)


def changed_since(url: str, since: dict | None):
    """Thread ids of the store at `url` changed since the watermark `since`; None when it cannot tell
    (no watermark, or the reader must compare everything)."""
    with open_reader(url) as reader:
        return reader.changed_thread_ids(since, reader.watermark()) if since else None
