"""Thread ids come from end users: any of them is an ordinary thread on every page and in the API.

Real LangGraph graphs write threads whose ids hold newlines, `\\r`, tabs, `../`,
`%`, `?`, `#`, spaces and non-ASCII text through PostgresSaver and SqliteSaver;
the real sync mirrors them; every link the pages print is followed the way a
browser would (dot segments removed) and must land on that thread.
"""

import importlib
import re
from html import unescape
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.urls import reverse

from checkpoints.models import Checkpoint, Thread
from dashboard.links import thread_path
from tests.graphs import chat_graph, config
from tests.mirror_data import make_user, static_settings, synced_source  # noqa: F401
from tests.mirror_data import viewer, viewer_client  # noqa: F401

ODD_IDS = [
    "line\nbreak",
    "cr\rreturn\r\n",
    "tab\there",
    "../../etc/passwd",
    "a/../b/./c",
    "./x",
    "trailing/..",
    "100% done %2F %41",
    "what?x=1&y=2",
    "hash#frag",
    "  spaced  id  ",
    "ünï çødé 東京 🦜",
    "//double//slash//",
    "..",
    ".",
    "...",
]


def write_threads(saver, ids, turns=1):
    chat = chat_graph(saver)
    for thread_id in ids:
        for _ in range(turns):
            chat.invoke({"messages": ["hello " * 50]}, config(thread_id, tenant="odd"))


def hrefs(response):
    return [unescape(h) for h in re.findall(r'href="([^"]*)"', response.content.decode())]


def follow(base, href):
    """The path a browser requests for `href` on a page at `base` (dot segments removed by urljoin)."""
    parts = urlsplit(urljoin("http://testserver" + base, href))
    return parts.path + ("?" + parts.query if parts.query else "")


def thread_links(response, source):
    """Links on a page that point at a thread page of `source`."""
    return [h for h in hrefs(response) if h.startswith(f"/threads/{source}/")]


def no_dot_segment(href):
    path = urlsplit(href).path
    return all(unquote(seg) not in (".", "..") and seg.lower() not in ("%2e", "%2e%2e", ".%2e", "%2e.")
               for seg in path.split("/"))


def check_source(client, name, ids):
    threads = {t.thread_id: t for t in Thread.objects.filter(source__name=name)}
    assert set(threads) == set(ids)

    # the overview lists the ten largest threads: all of them odd
    overview = client.get("/")
    assert overview.status_code == 200
    links = thread_links(overview, name)
    assert len(links) == min(10, len(ids))

    listing = client.get("/threads/", {"source": name})
    assert listing.status_code == 200
    listed = thread_links(listing, name)
    assert len(listed) == len(ids) and set(links) <= set(listed)

    for href in listed:
        assert no_dot_segment(href), href
        page = client.get(follow("/threads/", href))
        assert page.status_code == 200, href
        thread = page.context["thread"]
        assert thread.thread_id in ids
        assert href == thread_path(name, thread.thread_id)
        checkpoint_links = [h for h in hrefs(page) if h.startswith("/checkpoints/")]
        assert len(checkpoint_links) == thread.checkpoints
        for cp_href in checkpoint_links[:3]:
            cp_page = client.get(cp_href)
            assert cp_page.status_code == 200, (thread.thread_id, cp_href)
            assert cp_page.context["thread"].pk == thread.pk
            # the breadcrumb leads back to the thread
            back = thread_links(cp_page, name)
            assert back and all(client.get(follow(cp_href, b)).context["thread"].pk == thread.pk for b in back)

    for thread_id in ids:
        # as Django reverses it, as a script quotes it, and by query (the one way for "." and "..")
        urls = [reverse("api-thread", args=[name, thread_id]), f"/api/threads/{name}/?thread_id={quote(thread_id)}"]
        if thread_id not in (".", ".."):
            urls.append(f"/api/threads/{name}/{quote(thread_id, safe='')}/")
        for url in urls:
            data = client.get(url)
            assert data.status_code == 200, (thread_id, url)
            assert data.json()["thread_id"] == thread_id
            assert data.json()["checkpoints"] == threads[thread_id].checkpoints
    listed_api = client.get("/api/threads/", {"source": name}).json()
    assert sorted(r["thread_id"] for r in listed_api["results"]) == sorted(ids)


@pytest.mark.django_db
def test_odd_thread_ids_on_a_postgres_source(viewer_client, pg_saver, pg_source_url):
    write_threads(pg_saver, ODD_IDS)
    synced_source(pg_source_url, "pg")
    check_source(viewer_client, "pg", ODD_IDS)


@pytest.mark.django_db
def test_odd_thread_ids_on_a_sqlite_source(viewer_client, sqlite_saver, sqlite_source_url):
    write_threads(sqlite_saver, ODD_IDS)
    synced_source(sqlite_source_url, "lite")
    check_source(viewer_client, "lite", ODD_IDS)


@pytest.mark.django_db
def test_the_overview_answers_when_an_odd_thread_is_the_largest(viewer_client, sqlite_saver, sqlite_source_url):
    write_threads(sqlite_saver, [f"plain-{i}" for i in range(12)])
    write_threads(sqlite_saver, ["big\nthread/../x"], turns=6)
    synced_source(sqlite_source_url, "lite")
    response = viewer_client.get("/")
    assert response.status_code == 200
    assert thread_path("lite", "big\nthread/../x") in thread_links(response, "lite")


def test_thread_path_round_trips():
    from django.urls import resolve

    for thread_id in ODD_IDS + ["plain", "user/123/chat", "a:b@c!$&'()*+,;=~"]:
        href = thread_path("src", thread_id)
        assert no_dot_segment(href), href
        parts = urlsplit(href)
        match = resolve(unquote(parts.path))
        got = match.kwargs.get("thread_id")
        if got is None:  # "." and "..": the query form
            from urllib.parse import parse_qs

            got = parse_qs(parts.query, keep_blank_values=True)["thread_id"][0]
        assert (match.kwargs["source"], got) == ("src", thread_id)


# --- in Chromium -----------------------------------------------------------------------

BROWSER_IDS = ["line\nbreak/../x", "../up", "100%?#frag", "..", "ünï 東京"]


@pytest.fixture
def odd_source(transactional_db, sqlite_source_url):
    from langgraph.checkpoint.sqlite import SqliteSaver
    import sqlite3

    if not Group.objects.filter(name="viewer").exists():
        importlib.import_module("dashboard.migrations.0002_groups").create_groups(apps, None)
    conn = sqlite3.connect(sqlite_source_url.removeprefix("sqlite:///"), check_same_thread=False)
    write_threads(SqliteSaver(conn), BROWSER_IDS, turns=2)
    conn.close()
    synced_source(sqlite_source_url, "lite")
    make_user("vera", "viewer")


@pytest.fixture
def browser_data(odd_source):
    """What the shared `browser` fixture (tests/conftest.py) waits for."""
    return odd_source


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_browser_follows_links_to_odd_threads_and_their_checkpoints(browser, live_server):
    base = live_server.url
    page = browser.new_page()
    page.goto(base + "/")
    page.fill("#id_username", "vera")
    page.fill("#id_password", "pw-vera")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")

    def opened_thread():
        # The thread page prints the id in its heading; a newline shows as a line break.
        assert page.locator("h1").count() == 1
        return page.locator("h1").text_content()

    # from the overview's largest threads
    seen = set()
    for i in range(len(BROWSER_IDS)):
        page.goto(base + "/")
        card = page.locator("section.card", has=page.locator("h2", has_text="Largest threads"))
        card.locator("summary").click()  # the chart's data table
        link = card.locator("a[href^='/threads/lite/']").nth(i)
        response_holder = []
        page.once("response", lambda r: response_holder.append(r))
        link.click()
        page.wait_for_load_state()
        assert response_holder and response_holder[0].status == 200, page.url
        seen.add(opened_thread())
    assert seen == set(BROWSER_IDS)

    # from the threads list, then a checkpoint, then back through the breadcrumb
    for thread_id in BROWSER_IDS:
        page.goto(base + "/threads/?source=lite")
        links = page.locator("table.threads td.tid a")
        texts = links.all_text_contents()
        assert texts.count(thread_id) == 1, texts
        links.nth(texts.index(thread_id)).click()
        page.wait_for_load_state()
        assert opened_thread() == thread_id
        page.locator("table.timeline a.mono").first.click()
        page.wait_for_load_state()
        assert "/checkpoints/" in page.url
        assert "Metadata" in page.content()
        page.locator("nav.crumbs a").last.click()
        page.wait_for_load_state()
        assert opened_thread() == thread_id
