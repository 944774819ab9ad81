"""In Debian's Chromium through Playwright: log in, filter by two tags, open a thread, see its chart.

Chromium missing is a failure, never a skip: CI installs it (docs/architecture.md §6).
"""

import importlib
from urllib.parse import parse_qs, urlsplit

import pytest
from django.apps import apps
from django.contrib.auth.models import Group

from tests.mirror_data import build_mirror, make_user, static_settings  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser_data(data):
    """What the shared `browser` fixture (tests/conftest.py) waits for."""
    return data


@pytest.fixture
def data(transactional_db):
    # A transactional test flushes the tables after each test, groups included: recreate them.
    if not Group.objects.filter(name="viewer").exists():
        importlib.import_module("dashboard.migrations.0002_groups").create_groups(apps, None)
    plan = build_mirror(sources=("alpha", "beta"), threads_per_source=30)
    make_user("vera", "viewer")
    return plan


def log_in(page, base):
    page.goto(base + "/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", "vera")
    page.fill("#id_password", "pw-vera")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def test_viewer_filters_by_two_tags_and_opens_a_thread(browser, live_server, data):
    ref, users = next((r, u) for r, u in data.references if r.exists)
    target = next(t for t in data.threads if t.thread_id == users[0])
    wanted = [("tenant", target.tags["tenant"]), ("plan", target.tags["plan"])]
    errors = []
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    log_in(page, live_server.url)
    page.wait_for_selector('[data-figure="fig-stored"] .main-svg')

    page.click("header nav >> text=Threads")
    for key, value in wanted:  # click the facets, as a user would
        page.locator(".facet", has=page.locator(f"h3:text-is('{key}')")).locator(f"a:has(.v:text-is('{value}'))").click()
        page.wait_for_load_state()
    query = parse_qs(urlsplit(page.url).query)
    assert sorted(query["tag"]) == sorted(f"{k}:{v}" for k, v in wanted)
    shown = page.locator("table.threads td.tid a").all_inner_texts()
    assert sorted(shown) == sorted(t.thread_id for t in data.matching(wanted))

    page.locator("table.threads td.tid a", has_text=target.thread_id).click()
    page.wait_for_selector('[data-figure="fig-thread"] .main-svg')
    assert page.locator('[data-figure="fig-thread"] .main-svg').count() >= 1
    assert page.locator("h1").inner_text() == target.thread_id
    assert page.locator("td.uri", has_text=ref.uri).count() == 1
    assert page.locator("a.download").count() == 0 and page.get_by_text("Download").count() == 0
    assert errors == []


def test_everything_but_charts_works_without_javascript(browser, live_server, data):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    log_in(page, live_server.url)
    assert page.locator(".chart-fallback").first.is_visible()
    page.goto(live_server.url + "/threads/")
    page.fill("input[name=tag]", "plan:pro")
    page.click("form.search button[type=submit]")
    page.fill("input[name=tag] >> nth=-1", "region:us")
    page.click("form.search button[type=submit]")
    wanted = [("plan", "pro"), ("region", "us")]
    shown = page.locator("table.threads td.tid a").all_inner_texts()
    assert sorted(shown) == sorted(t.thread_id for t in data.matching(wanted))
    page.locator("table.threads td.tid a").first.click()
    page.locator("table.timeline a.mono").first.click()
    page.locator("details.value summary").first.count()  # collapsible values are plain <details>
    assert "Metadata" in page.content()
    context.close()
