"""The S3 source's space report (its reader's `space()`): the bucket's objects under the prefix,
versioning, default encryption and the saver's lifecycle rules; nothing to warn about yet."""

TEMPLATE = "space/s3.html"
BRIEF_TEMPLATE = "space/s3_brief.html"


def report(found: dict) -> dict:
    """`found` with `warnings` (none).

    >>> report({"kind": "s3", "bucket": "b", "prefix": "p/"})["warnings"]
    []
    """
    return {**found, "warnings": []}
