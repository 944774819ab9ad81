"""Issue 11.6, the UI details: sortable headers both ways, one-click filter removal, ids never broken."""

import re
import sqlite3
from html import unescape
from urllib.parse import parse_qs

import pytest

from checkpoints.models import Thread
from dashboard import browse
from tests.graphs import run_scenarios
from tests.mirror_data import static_settings, synced_source  # noqa: F401
from tests.mirror_data import mirror, shared_mirror, viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db

COLUMNS = {"thread": "thread_id", "checkpoints": "checkpoints", "logical": "logical_bytes",
           "stored": "stored_bytes", "activity": "last_checkpoint_at"}


def shown(response, field):
    return [getattr(t, field) for t, _, _ in response.context["rows"]]


def query_of(url):
    return parse_qs(url.lstrip("?"))


@pytest.mark.parametrize("sort", list(COLUMNS))
def test_every_column_sorts_both_ways(viewer_client, mirror, sort):
    field = COLUMNS[sort]
    everything = list(Thread.objects.values_list(field, flat=True))
    assert len(set(everything)) > 5, "the plan must give the column different values"
    for direction in ("asc", "desc"):
        response = viewer_client.get("/threads/", {"sort": sort, "dir": direction})
        values = shown(response, field)
        assert values == sorted(everything, reverse=direction == "desc")[: len(values)], (sort, direction)
        url, aria = response.context["columns"][sort]
        # The sorted header says how it is sorted, and its link turns the order round.
        assert aria == ("descending" if direction == "desc" else "ascending")
        assert query_of(url)["dir"] == ["asc" if direction == "desc" else "desc"]
        assert f'aria-sort="{aria}"' in response.content.decode()


def test_headers_link_each_column_in_its_natural_order_keeping_the_filters(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": "plan:pro", "q": "alpha", "page": "2"})
    html = unescape(response.content.decode())
    for sort, (url, aria) in response.context["columns"].items():
        q = query_of(url)
        assert q["sort"] == [sort] and q["dir"] == [browse.SORTS[sort][2]] or aria
        assert q["tag"] == ["plan:pro"] and q["q"] == ["alpha"] and "page" not in q
        assert url in html
    assert response.context["columns"]["activity"][1] == "descending"  # the default order
    assert html.count('aria-sort="') == 1


@pytest.mark.parametrize("params", [{"sort": "thread_id; DROP TABLE x"}, {"sort": "-stored_bytes"},
                                    {"sort": "stored", "dir": "up"}, {"dir": "asc; --"}])
def test_unknown_sort_names_fall_back_to_the_whitelist(viewer_client, mirror, params):
    response = viewer_client.get("/threads/", params)
    assert response.status_code == 200
    sort = params.get("sort") if params.get("sort") in browse.SORTS else browse.DEFAULT_SORT
    field = COLUMNS[sort]
    values = shown(response, field)
    assert values == sorted(values, reverse=browse.SORTS[sort][2] == "desc")
    assert Thread.objects.count() == len(mirror.threads)


def test_api_sorts_both_ways_and_refuses_unknown_directions(viewer_client, mirror):
    up = viewer_client.get("/api/threads/", {"sort": "stored", "dir": "asc"}).json()["results"]
    down = viewer_client.get("/api/threads/", {"sort": "stored"}).json()["results"]
    assert [r["stored_bytes"] for r in up] == sorted(t.stored_bytes for t in mirror.threads)[: len(up)]
    assert [r["stored_bytes"] for r in down] == sorted((t.stored_bytes for t in mirror.threads), reverse=True)[: len(down)]
    bad = viewer_client.get("/api/threads/", {"dir": "sideways"})
    assert bad.status_code == 400 and "dir must be one of" in bad.json()["error"]


def test_sorting_both_ways_on_real_langgraph_data(viewer_client, sqlite_saver, sqlite_source_url):
    run_scenarios(sqlite_saver, prefix="s")
    synced_source(sqlite_source_url, "lite")
    path = sqlite_source_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # the truth: SQL on the source
        counts = dict(conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY 1").fetchall())
    for direction in ("asc", "desc"):
        by_count = viewer_client.get("/threads/", {"sort": "checkpoints", "dir": direction, "source": "lite"})
        got = [(t.thread_id, t.checkpoints) for t, _, _ in by_count.context["rows"]]
        assert sorted(got) == sorted(counts.items())
        assert [n for _, n in got] == sorted(counts.values(), reverse=direction == "desc")
        by_id = viewer_client.get("/threads/", {"sort": "thread", "dir": direction, "source": "lite"})
        assert shown(by_id, "thread_id") == sorted(counts, reverse=direction == "desc")
        by_stored = shown(viewer_client.get("/threads/", {"sort": "stored", "dir": direction, "source": "lite"}), "stored_bytes")
        assert by_stored == sorted(by_stored, reverse=direction == "desc") and len(set(by_stored)) > 3


def test_a_tag_already_filtered_is_not_a_link_that_adds_it_again(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": "plan:pro"})
    html = response.content.decode()
    rows = html[html.index("<tbody>"):html.index("</tbody>")]
    # Every row carries plan:pro: shown as active, not linked.
    assert rows.count('<span class="chip active" title="Filtered by this tag">plan:pro</span>') == len(response.context["rows"])
    for href in re.findall(r'href="([^"]*)"', unescape(html)):
        tags = query_of(href.split("?", 1)[1]).get("tag", []) if "?" in href else []
        assert len(tags) == len(set(tags)), href
    # Asked twice in the URL, it is used (and linked) once.
    twice = viewer_client.get("/threads/", {"tag": ["plan:pro", "plan=pro"]})
    assert len(twice.context["pairs"]) == 1
    assert query_of(twice.context["columns"]["stored"][0])["tag"] == ["plan:pro"]


def test_prefix_and_source_chips_remove_with_one_click(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": "plan:pro", "q": "alpha-", "source": "alpha", "sort": "stored"})
    html = unescape(response.content.decode())
    without_prefix = response.context["prefix_clear_url"]
    without_source = response.context["source_clear_url"]
    assert f'<a class="chip active" href="{without_prefix}" title="Remove this filter">id starts with “alpha-”' in html
    assert f'<a class="chip active" href="{without_source}" title="Remove this filter">source alpha' in html
    assert query_of(without_prefix) == {"tag": ["plan:pro"], "source": ["alpha"], "sort": ["stored"]}
    assert query_of(without_source) == {"tag": ["plan:pro"], "q": ["alpha-"], "sort": ["stored"]}
    after = viewer_client.get("/threads/" + without_prefix)
    assert after.context["prefix"] == "" and len(after.context["rows"]) > 0


def test_thread_ids_are_whole_with_a_title_and_a_copy_button(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"sort": "thread"})
    html = response.content.decode()
    for t, url, _ in response.context["rows"]:
        cell = re.search(r'<td class="tid"><div class="id-cell"><a class="id" href="([^"]*)" title="([^"]*)">([^<]*)</a>'
                         r'<button type="button" class="copy" data-copy="([^"]*)"', html[html.index(url.replace("&", "&amp;")) - 60:])
        assert cell, t.thread_id
        assert unescape(cell[2]) == unescape(cell[3]) == unescape(cell[4]) == t.thread_id


# --- the thread page ---------------------------------------------------------------


def test_step_axis_has_a_tick_per_step_on_short_threads():
    from dashboard.charts import STEP_TICKS, thread_sizes

    short = thread_sizes([(s, f"c{s}", 1000 * (s + 1), 10) for s in range(-1, 3)], set())
    axis = short["layout"]["xaxis"]
    assert (axis["tickmode"], axis["tick0"], axis["dtick"], axis["tickformat"]) == ("linear", 0, 1, "d")
    long = thread_sizes([(s, f"c{s}", 1000, 10) for s in range(STEP_TICKS + 5)], set())
    assert "dtick" not in long["layout"]["xaxis"] and long["layout"]["xaxis"]["tickformat"] == "d"
    assert [t["name"] for t in short["data"]] == ["Logical bytes", "New bytes"]
    assert [t["name"] for t in thread_sizes([(0, "c", 5, 5)], set(), new_bytes=False)["data"]] == ["Logical bytes"]


def test_sqlite_thread_hides_new_bytes_that_only_repeat_the_logical_bytes(viewer_client, sqlite_saver, sqlite_source_url):
    from django.urls import reverse

    run_scenarios(sqlite_saver, prefix="s")
    synced_source(sqlite_source_url, "lite")
    t = Thread.objects.get(source__name="lite", thread_id="s-chat0")
    response = viewer_client.get(reverse("thread", args=["lite", t.thread_id]))
    html = unescape(response.content.decode())
    assert response.context["shares_blobs"] is False
    assert ">New</abbr>" not in html and "SQLite stores each checkpoint whole" in html
    assert [tr["name"] for tr in response.context["figure"]["data"]] == ["Logical bytes"]
    # Absolute times (UTC, to the second) beside the relative ones.
    for c, _, _ in response.context["rows"]:
        assert f'{c.created_at:%Y-%m-%d %H:%M:%S}</time> <span class="ago">' in html


def test_postgres_thread_explains_new_bytes(viewer_client, pg_saver, pg_source_url):
    from django.urls import reverse

    run_scenarios(pg_saver, prefix="p")
    synced_source(pg_source_url, "pg")
    response = viewer_client.get(reverse("thread", args=["pg", "p-chat0"]))
    html = unescape(response.content.decode())
    assert response.context["shares_blobs"] is True
    assert '<abbr title="What it added over its parent: its row, its writes and the blob rows its parent does not name">New</abbr>' in html
    assert "blob rows it shares with its parent count in its logical bytes only" in html
    assert [tr["name"] for tr in response.context["figure"]["data"]] == ["Logical bytes", "New bytes"]
    assert response.context["figure"]["layout"]["xaxis"]["dtick"] == 1  # a short thread: a tick per step


def test_chart_axes_use_the_unit_of_the_cards(viewer_client, mirror):
    from checkpoints.units import format_bytes

    response = viewer_client.get("/")
    total = response.context["total"]["stored_bytes"]
    card_unit = format_bytes(total).split()[1]
    assert f">{format_bytes(total)}</span>" in response.content.decode() and card_unit == "MB"
    stored = response.context["figures"]["stored"]
    assert stored["layout"]["yaxis"]["ticksuffix"] == " MB"
    assert stored["data"][0]["hovertemplate"] == "%{y:,.1f} MB"
    # The stacked areas add up to the day's stored bytes, in MB.
    last = response.context["series"][-1]
    stacked = sum(trace["y"][-1] for trace in stored["data"])
    assert abs(stacked * 1e6 - sum(last[k] or 0 for k in ("checkpoint_bytes", "blob_bytes", "write_bytes", "external_bytes"))) < 1
    top = response.context["figures"]["top"]
    assert top["layout"]["xaxis"]["ticksuffix"].strip() == format_bytes(max(t.stored_bytes for t in response.context["top"])).split()[1]


# --- the admin -----------------------------------------------------------------------


def test_admin_is_branded_and_healthy_booleans_read_as_words(admin_client, mirror):
    from checkpoints.models import Run, Source

    index = admin_client.get("/admin/").content.decode()
    assert "<title>Site administration | Checkpoint Console administration</title>" in index or \
        "Checkpoint Console administration</title>" in index
    assert '<a href="/admin/">Checkpoint Console administration</a>' in index
    assert ">API tokens</a>" in index and "Api tokens" not in index
    Run.objects.create(kind="prune", lock_key="prune:x", dry_run=False, state="done")
    for url, column in (("/admin/checkpoints/source/", "column-references"),
                        ("/admin/checkpoints/run/", "column-mode"),
                        ("/admin/checkpoints/blobreference/", "column-object_state")):
        html = admin_client.get(url).content.decode()
        assert column in html, url
        # No red cross for a healthy False in these columns.
        cells = re.findall(r'<td class="field-(?:references|mode|object_state)">(.*?)</td>', html)
        assert cells and not any("icon-no" in c for c in cells), (url, cells)
    sources = admin_client.get("/admin/checkpoints/source/").content.decode()
    assert sources.count('<td class="field-references">known</td>') == Source.objects.filter(references_unknown=False).count()


# --- the checkpoint page -------------------------------------------------------------


def test_checkpoint_page_sets_new_bytes_apart_from_the_change_against_the_parent(viewer_client, pg_saver, pg_source_url):
    from django.urls import reverse

    from checkpoints.models import Checkpoint
    from dashboard.templatetags.console import size_delta

    run_scenarios(pg_saver, prefix="p")
    synced_source(pg_source_url, "pg")
    from django.db.models import F

    # One that shares blob rows with its parent.
    cp = Checkpoint.objects.filter(thread__source__name="pg", checkpoint_ns="", new_bytes__lt=F("logical_bytes"))\
        .exclude(parent_checkpoint_id="").order_by("checkpoint_id").first()
    parent = Checkpoint.objects.get(thread=cp.thread, checkpoint_ns="", checkpoint_id=cp.parent_checkpoint_id)
    html = viewer_client.get(reverse("checkpoint", args=[cp.pk])).content.decode()
    logical_card = html[html.index('<span class="label">Logical</span>'):html.index('<span class="label">New bytes</span>')]
    new_card = html[html.index('<span class="label">New bytes</span>'):html.index('<span class="label">Pending writes</span>')]
    # The change against the parent is a change of logical bytes, and it says so in that card;
    # the new bytes say what they are, with no "vs parent" figure beside them to contradict.
    assert f"{size_delta(cp.logical_bytes - parent.logical_bytes)} against the parent's logical bytes" in logical_card
    assert "vs parent" not in html and "parent does not name" in new_card
    assert f"{cp.created_at:%Y-%m-%d %H:%M:%S} UTC" in html
