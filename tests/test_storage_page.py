"""The storage page (issue 11.6): per store, the last sweep's objects and bytes, referenced or not, the largest."""

import re
from html import unescape

import pytest

from checkpoints.models import BlobReference
from storage.sweep import run_sweep
from tests.graphs import config, file_graph
from tests.mirror_data import synced_source
from tests.test_download import client_for, make_user, plain_static_storage  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def blob_root(tmp_path, settings):
    root = tmp_path / "blobs"
    root.mkdir()
    settings.BLOB_ROOT = root
    return root


def figures(html, label):
    """The stat cards of the store section whose <h2> is `label`: {label: (value, hint)}."""
    section = html[html.index(f"<h2>{label}</h2>"):]
    section = section[: section.index("</section>\n\n") if "</section>\n\n" in section else None]
    cards = re.findall(r'<span class="label">([^<]*)</span><span class="value[^"]*">(.*?)</span><span class="hint">(.*?)</span>',
                       section, re.S)
    return {unescape(k): (re.sub("<[^>]+>", "", v), re.sub("<[^>]+>", "", h)) for k, v, h in cards}


def test_bucket_and_file_store_show_the_last_sweep(moto_s3, s3_bucket, blob_root, sqlite_saver, sqlite_source_url, settings):
    c = moto_s3.client()
    sizes = {"uploads/ref/report.pdf": 4000, "uploads/old/a.bin": 2_500_000, "uploads/old/b.bin": 700, "outside/x.bin": 9}
    for key, n in sizes.items():
        c.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * n)
    (blob_root / "kept.txt").write_bytes(b"y" * 1500)
    file_graph(sqlite_saver).invoke({"attachment": f"s3://{s3_bucket}/uploads/ref/report.pdf"}, config("t1"))
    synced_source(sqlite_source_url, "lite")
    viewer = client_for(make_user("viewer"))

    before = unescape(viewer.get("/storage/bucket/").content.decode())
    assert "not listed yet" in before

    run = run_sweep(dry_run=True)
    html = unescape(viewer.get("/storage/bucket/").content.decode())
    bucket = figures(html, "S3 bucket")
    assert bucket["Objects under the prefix"] == ("3", "2.5 MB")  # outside/x.bin is not under uploads/
    assert bucket["Referenced"][0] == "1" and bucket["Referenced"][1].startswith("4.0 KB")
    assert bucket["Unreferenced"][0] == "2" and bucket["Unreferenced"][1].startswith("2.5 MB")
    assert bucket["Referenced by the mirror"][0] == str(BlobReference.objects.filter(store="s3").count())
    assert f"sweep #{run.pk} of" in html.replace("sweep <a", "sweep").replace(f'href="/maintenance/runs/{run.pk}/">', "").replace("</a>", "")
    largest = re.findall(r'<td class="uri">([^<]*)</td><td class="num"><span class="size" title="([\d,]+) bytes">', html[html.index("<h2>S3 bucket</h2>"):])
    assert largest[:3] == [(f"s3://{s3_bucket}/uploads/old/a.bin", "2,500,000"), (f"s3://{s3_bucket}/uploads/ref/report.pdf", "4,000"),
                           (f"s3://{s3_bucket}/uploads/old/b.bin", "700")]
    files = figures(html, "File store")
    assert files["Objects under the root"] == ("1", "1.5 KB")


def test_no_bucket_names_no_endpoint_and_no_whole_bucket(settings, blob_root):
    settings.S3_BUCKET_NAME = ""
    html = client_for(make_user("viewer")).get("/storage/bucket/").content.decode()
    assert "No S3 bucket is configured: set S3_BUCKET_NAME" in html
    assert "AWS S3" not in html and "whole bucket" not in html and "Endpoint" not in html
    assert "<h2>File store</h2>" in html and 'class="stats"' in html
