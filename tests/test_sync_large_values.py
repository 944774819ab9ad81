"""References inside values too large to fetch whole (issue 10.4), written by the real savers.

A value above WHOLE_VALUE_LIMIT is never fetched whole: the reader gets its
size and scans it in windows read from the database (PostgreSQL substring(),
SQLite's incremental blob API). Here a 5 MB `bytes` value, with a window of
256 KiB, holds references at its start, across a window's end, across the
start of the next window's overlap, and at its very end: every one is
recorded, on both backends, and sizes stay exact. (The memory figure is
bench/bench_sync_memory.py's, not a test's.)
"""

import pytest

from checkpoints import sources
from checkpoints.models import BlobReference, ReferenceUse, Source, Thread
from checkpoints.sources import ScannedURIs, open_reader
from checkpoints.sync import sync_source
from checkpoints.uris import MAX_URI_BYTES
from tests.graphs import chat_graph, config
from tests.truth import assert_mirror_matches

pytestmark = pytest.mark.django_db

WINDOW = 256 * 1024
STEP = WINDOW - MAX_URI_BYTES  # where the second window starts


def big_value():
    """5 MB of bytes with references placed around the first window's boundaries."""
    data = bytearray(b"\x00\x01" * 2_500_000)
    planted = {}

    def plant(offset, uri):
        text = b" " + uri.encode() + b" "
        data[offset : offset + len(text)] = text
        planted[uri] = offset

    plant(0, "s3://bucket/uploads/head.bin")
    plant(WINDOW - 12, "s3://bucket/uploads/across-the-first-window-end.bin")
    plant(STEP - 7, "minio://bucket/uploads/across-the-second-window-start.bin")
    plant(3 * STEP - 3, "file:///srv/blobs/across-a-later-start/ü.txt")
    end = "s3://bucket/uploads/tail.bin"
    data[-len(end) - 1 :] = b" " + end.encode()
    planted[end] = len(data) - len(end)
    return bytes(data), set(planted)


@pytest.fixture(params=["postgres", "sqlite"])
def saver_and_url(request):
    if request.param == "postgres":
        return request.getfixturevalue("pg_saver"), request.getfixturevalue("pg_source_url"), "postgres"
    return request.getfixturevalue("sqlite_saver"), request.getfixturevalue("sqlite_source_url"), "sqlite"


def test_references_in_a_large_bytes_value_are_recorded(saver_and_url, monkeypatch):
    saver, url, kind = saver_and_url
    monkeypatch.setattr(sources, "SCAN_WINDOW", WINDOW)
    value, uris = big_value()
    assert len(value) > 4 * sources.WHOLE_VALUE_LIMIT
    chat = chat_graph(saver)
    chat.invoke({"messages": ["upload"], "payload": value}, config("big", tenant="acme"))
    chat.invoke({"messages": ["small"], "payload": b"see s3://bucket/uploads/small.bin"}, config("small"))

    # The reader scanned the large values (PostgreSQL: the blob and the input's write row;
    # SQLite: the checkpoint rows holding it and the write row) instead of fetching them.
    with open_reader(url) as reader:
        (rows,) = reader.read_threads(["big"])
    scanned = [r.data for r in (*rows.blobs, *rows.writes)] + [r.value_data for r in rows.checkpoints]
    scanned = [d for d in scanned if isinstance(d, ScannedURIs)]
    assert scanned and all(set(d) == uris for d in scanned)

    source = Source.objects.create(name="large", url=url, kind=kind)
    result = sync_source(source)
    assert result["error"] is None, result["error"]
    assert_mirror_matches(source, url)  # sizes exact
    big = Thread.objects.get(source=source, thread_id="big")
    recorded = set(ReferenceUse.objects.filter(thread=big).values_list("reference__uri", flat=True))
    assert recorded == uris
    # A small bytes value is decoded as before, and its references are recorded too.
    small = Thread.objects.get(source=source, thread_id="small")
    assert set(ReferenceUse.objects.filter(thread=small).values_list("reference__uri", flat=True)) == {
        "s3://bucket/uploads/small.bin"
    }
    assert BlobReference.objects.filter(uri__in=uris).count() == len(uris)

    # An incremental sync keeps them (the rows are not read again).
    chat.invoke({"messages": ["more"]}, config("small"))
    assert sync_source(source)["error"] is None
    assert set(ReferenceUse.objects.filter(thread=big).values_list("reference__uri", flat=True)) == uris
