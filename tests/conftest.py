import os
import sqlite3
import uuid

import psycopg
import pytest

from tests.pg import server_url, url_for_database


@pytest.fixture
def pg_source_url():
    """A fresh PostgreSQL database with LangGraph's PostgresSaver schema."""
    from langgraph.checkpoint.postgres import PostgresSaver

    name = f"lg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = url_for_database(name)
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
    yield url
    from checkpoints.sources.postgres import idle

    idle.close_all()  # the page's kept read connections to it
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_saver(pg_source_url):
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(pg_source_url) as saver:
        yield saver


@pytest.fixture
def sqlite_source_url(tmp_path):
    """A SQLite file with LangGraph's SqliteSaver schema."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = tmp_path / "checkpoints.sqlite"
    conn = sqlite3.connect(path, check_same_thread=False)
    SqliteSaver(conn).setup()
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_saver(sqlite_source_url):
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = sqlite_source_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, check_same_thread=False)
    yield SqliteSaver(conn)
    conn.close()


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on 127.0.0.1, for the whole test session."""
    from tests.s3server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3, settings):
    """A fresh bucket on the moto server, with the console's settings pointing at it."""
    name = f"bucket-{uuid.uuid4().hex[:10]}"
    moto_s3.client().create_bucket(Bucket=name)
    for key, value in moto_s3.env(name, prefix="uploads/").items():
        setattr(settings, key, value)
    yield name


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts with an empty cache: the tag browser caches per filter and sync."""
    from django.core.cache import cache

    cache.clear()
    yield


# Debian's Chromium (docs/architecture.md §6), with the flags this machine needs: no
# sandbox (containers), no GPU, and none of the background traffic (QUIC,
# component updates, sync) that would reach out of a test.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def browser(browser_data):
    """Chromium through Playwright, one launch per test; missing Chromium fails, never skips.

    After `browser_data`, which each browser test module defines (its rows,
    users, sources): sync Playwright runs an event loop, and the ORM refuses
    to run beside one.
    """
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()
