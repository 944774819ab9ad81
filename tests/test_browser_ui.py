"""Issue 11.6 in Chromium: every page at 1400 px and 390 px wide, without horizontal scrolling.

Set UI_SHOTS=/some/dir to keep a screenshot of each page and width there.
"""

import importlib
import os

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.urls import reverse

from checkpoints.models import Checkpoint
from tests.mirror_data import build_mirror, make_user, static_settings  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = (1400, 390)
# Whether anything sticks out sideways: the page itself must not scroll horizontally.
OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"
# For the failure message: the outermost elements that reach past the right edge.
WIDE = """() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1
  && !(e.parentElement.getBoundingClientRect().right > innerWidth + 1)).slice(0, 5)
  .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""


@pytest.fixture
def data(transactional_db):
    if not Group.objects.filter(name="viewer").exists():
        importlib.import_module("dashboard.migrations.0002_groups").create_groups(apps, None)
    plan = build_mirror(sources=("alpha", "beta"), threads_per_source=30)
    make_user("otto", "operator", is_staff=True)
    make_user("vera", "viewer")
    plan.urls = urls(plan)  # the ORM refuses to run beside Playwright's event loop: ask it now
    return plan


@pytest.fixture
def browser_data(data):
    """What the shared `browser` fixture (tests/conftest.py) waits for."""
    return data


def page_for(browser, base, width, username="otto"):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(base + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-" + username)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return context, page


def shot(page, name):
    folder = os.environ.get("UI_SHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def urls(plan):
    t = plan.threads[7]  # an id with a slash, spaces, non-ASCII and URL metacharacters
    cp = Checkpoint.objects.filter(thread_id=t.pk).order_by("-created_at").first()
    return {
        "overview": "/",
        "threads": "/threads/?sort=stored&dir=asc",
        "threads-filtered": "/threads/?tag=plan:pro&q=alpha",
        "thread": reverse("thread", args=[t.source, t.thread_id]),
        "checkpoint": reverse("checkpoint", args=[cp.pk]),
        "maintenance": "/maintenance/",
        "storage": reverse("storage-bucket"),
        "sources": "/sources/",
        "admin": "/admin/checkpoints/source/",
    }


@pytest.mark.parametrize("width", WIDTHS)
def test_no_page_scrolls_sideways(browser, live_server, data, width):
    context, page = page_for(browser, live_server.url, width)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for name, url in data.urls.items():
        page.goto(live_server.url + url)
        page.wait_for_load_state("load")
        if page.locator("[data-figure]").count():
            page.wait_for_selector("[data-figure] .main-svg")
        shot(page, f"{name}-{width}")
        assert page.evaluate(OVERFLOW), (name, width, page.evaluate(WIDE))
    assert errors == []
    context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_navigation_is_usable_when_narrow(browser, live_server, data, width):
    context, page = page_for(browser, live_server.url, width)
    links = page.locator("header nav a")
    assert links.count() >= 4
    for i in range(links.count()):
        box = links.nth(i).bounding_box()
        # Every link is on screen, wide and tall enough to tap, and none overlaps the next.
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, links.nth(i).inner_text()
        assert box["height"] >= 24
    boxes = [links.nth(i).bounding_box() for i in range(links.count())]
    for a, b in zip(boxes, boxes[1:]):
        assert a["x"] + a["width"] <= b["x"] + 1 or a["y"] + a["height"] <= b["y"] + 1
    page.locator("header nav a", has_text="Threads").click()
    page.wait_for_url("**/threads/")
    assert page.evaluate(OVERFLOW)
    context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_thread_ids_stay_whole_with_a_working_copy_button(browser, live_server, data, width):
    context, page = page_for(browser, live_server.url, width)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    longest = max(data.threads, key=lambda t: len(t.thread_id))
    page.goto(live_server.url + "/threads/?sort=thread&dir=desc&q=" + longest.thread_id[:3])
    link = page.locator("table.threads td.tid a.id", has_text=longest.thread_id[:12]).first
    style = link.evaluate("a => { const s = getComputedStyle(a); return [s.whiteSpace, s.textOverflow, s.overflowX] }")
    assert style == ["nowrap", "ellipsis", "hidden"]
    line = link.evaluate("a => parseFloat(getComputedStyle(a).lineHeight) || 20")
    for cell in page.locator("table.threads td.tid a.id").all():
        assert cell.bounding_box()["height"] <= line * 1.5, cell.inner_text()  # one line: no break inside the id
        assert cell.get_attribute("title") == cell.text_content()
    ids = page.locator("table.threads td.tid a.id").all_text_contents()
    assert ids == sorted(ids, reverse=True)
    button = page.locator("table.threads td.tid button.copy").first
    assert button.is_visible()
    button.click()
    page.wait_for_selector("button.copy.copied")
    assert page.evaluate("navigator.clipboard.readText()") == ids[0]
    assert page.evaluate(OVERFLOW)
    context.close()
