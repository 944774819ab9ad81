"""The dashboard's pages: access for each kind of user, and what they show."""

import re
from html import unescape
from urllib.parse import parse_qs, urlencode

import pytest
from django.urls import reverse

from checkpoints.models import Checkpoint, Source, Tag, Thread
from tests.mirror_data import SECRET, TRICKY_VALUES, make_user, static_settings  # noqa: F401
from tests.mirror_data import mirror, operator, operator_client, shared_mirror, viewer, viewer_client  # noqa: F401

pytestmark = pytest.mark.django_db


def page_urls(plan):
    t = plan.threads[7]  # an id with a slash, spaces, non-ASCII and URL metacharacters
    cp = Checkpoint.objects.filter(thread_id=t.pk).order_by("-created_at").first()
    return [
        "/",
        "/?range=7",
        "/?range=all&source=alpha",
        "/threads/",
        "/threads/?" + urlencode([("tag", "tenant:acme"), ("tag", "plan:free"), ("sort", "stored")]),
        reverse("thread", args=[t.source, t.thread_id]),
        reverse("checkpoint", args=[cp.pk]),
    ]


def test_anonymous_is_sent_to_login_on_every_page(client, mirror):
    for url in page_urls(mirror):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_viewer_and_operator_see_every_page(client, mirror, viewer, operator):
    for user in (viewer, operator):
        client.force_login(user)
        for url in page_urls(mirror):
            response = client.get(url)
            assert response.status_code == 200, (user, url)
            assert SECRET not in response.content.decode(), url


def test_user_without_group_is_refused(client, mirror):
    client.force_login(make_user("nobody"))
    for url in page_urls(mirror):
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"viewer" in response.content


def test_login_page_then_the_overview(client, mirror, viewer):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    response = client.post("/accounts/login/", {"username": "vera", "password": "pw-vera", "next": "/threads/"})
    assert response.status_code == 302 and response["Location"] == "/threads/"
    assert client.get("/threads/").status_code == 200


def test_overview_totals_follow_the_mirror(viewer_client, mirror, settings):
    response = viewer_client.get("/")
    rows = {r["name"]: r for r in response.context["rows"]}
    for source in mirror.sources:
        planned = [t for t in mirror.threads if t.source == source.name]
        row = rows[source.name]
        assert row["threads"] == len(planned)
        assert row["checkpoints"] == sum(len(t.checkpoints) for t in planned)
        assert row["stored_bytes"] == sum(t.stored_bytes for t in planned)
        assert row["oversized"] == sum(1 for t in planned for c in t.checkpoints if c["logical_bytes"] > settings.CHECKPOINT_SIZE_LIMIT)
        used = {ref.pk for ref, ids in mirror.references if ref.exists is False and any(t.thread_id in ids for t in planned)}
        assert row["dangling"] == len(used)
        present = {ref.pk: ref.size for ref, ids in mirror.references if ref.exists and any(t.thread_id in ids for t in planned)}
        assert row["external_bytes"] == sum(present.values())
    assert response.context["oversized"] >= 1
    html = response.content.decode()
    # sizes show in powers of 1000 with the exact count in the title
    total = sum(t.stored_bytes for t in mirror.threads)
    assert f'title="{total:,} bytes"' in html
    assert "never synced" not in html and "failed" in html  # beta's last sync failed


def test_overview_charts_are_local_plotly_with_embedded_json(viewer_client, mirror):
    html = viewer_client.get("/").content.decode()
    assert '<script src="/static/js/plotly.min.js" defer>' in html
    # every script and stylesheet is served by us: no external host, no protocol-relative URL
    urls = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]*)"', html)
    local = [url for url in urls if url.startswith("data:") or (url.startswith("/") and not url.startswith("//"))]
    assert urls and local == urls
    for chart in ("fig-stored", "fig-added", "fig-sizes", "fig-top"):
        assert f'data-figure="{chart}"' in html
        assert f'<script id="{chart}" type="application/json">' in html
    assert "<script>" not in html  # no inline script: only JSON data and local files


def test_overview_range_toggles_are_links_and_change_the_data(viewer_client, mirror):
    html = viewer_client.get("/").content.decode()
    for key in ("7", "30", "90", "all"):
        assert f'href="?range={key}"' in html
    week = viewer_client.get("/?range=7").context
    everything = viewer_client.get("/?range=all").context
    assert len(week["series"]) == 7  # summed over sources, one row per day
    assert len(everything["series"]) > len(week["series"])
    cutoff = mirror.today.toordinal() - 6
    created = [c for t in mirror.threads for c in t.checkpoints]
    assert sum(n for _, _, n in week["bins"]) == sum(1 for c in created if c["created_at"].date().toordinal() >= cutoff)
    assert sum(n for _, _, n in everything["bins"]) == len(created)


def test_overview_size_distribution_matches_the_checkpoints(viewer_client, mirror):
    from dashboard.usage import BIN_EDGES

    bins = viewer_client.get("/?range=all").context["bins"]
    created = [c["logical_bytes"] for t in mirror.threads for c in t.checkpoints]
    edges = [0] + BIN_EDGES + [float("inf")]
    for label, low, n in bins:
        i = edges.index(low)
        assert n == sum(1 for size in created if edges[i] <= size < edges[i + 1]), label


def test_overview_per_source_scopes_the_charts(viewer_client, mirror):
    alpha = viewer_client.get("/?range=all&source=alpha").context
    planned = [t for t in mirror.threads if t.source == "alpha"]
    assert sum(n for _, _, n in alpha["bins"]) == sum(len(t.checkpoints) for t in planned)
    assert {t.source.name for t in alpha["top"]} == {"alpha"}


def test_forecast_appears_only_with_a_quota(viewer_client, mirror, settings):
    settings.STORAGE_QUOTA = None
    response = viewer_client.get("/")
    assert response.context["outlook"] is None and "fig-forecast" not in response.content.decode()
    current = sum(t.stored_bytes for t in mirror.threads)
    settings.STORAGE_QUOTA = current * 10
    response = viewer_client.get("/")
    outlook = response.context["outlook"]
    assert outlook["slope"] > 0 and outlook["days_left"] > 0
    assert 'data-figure="fig-forecast"' in response.content.decode()
    settings.STORAGE_QUOTA = 1
    assert viewer_client.get("/").context["outlook"]["days_left"] == 0


def test_overview_without_sources_explains_what_to_do(viewer_client):
    Source.objects.all().delete()  # rolled back with the test
    html = viewer_client.get("/").content.decode()
    assert "CHECKPOINT_DATABASE_URL" in html and "plotly" not in html


def thread_ids(response):
    return [t.thread_id for t, _, _ in response.context["rows"]]


def test_threads_filtered_by_two_tags(viewer_client, mirror):
    pairs = [("tenant", "acme"), ("plan", "free")]
    response = viewer_client.get("/threads/", {"tag": [f"{k}:{v}" for k, v in pairs]})
    expected = mirror.matching(pairs)
    assert expected, "the plan must have matches"
    assert sorted(thread_ids(response)) == sorted(t.thread_id for t in expected)
    assert response.context["page"].paginator.count == len(expected)
    html = unescape(response.content.decode())
    assert "tenant:acme" in html and "plan:free" in html


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_threads_tag_values_are_data_not_sql(viewer_client, mirror, value):
    response = viewer_client.get("/threads/", {"tag": f"tenant:{value}"})
    assert response.status_code == 200
    expected = mirror.matching([("tenant", value)])
    assert expected
    assert sorted(thread_ids(response)) == sorted(t.thread_id for t in expected)
    # the filter is shown as given and kept, encoded, in the links that change the page
    html = unescape(response.content.decode())
    assert f"tenant:{value}" in html
    sort_link = response.context["columns"]["stored"][0]
    assert parse_qs(sort_link.lstrip("?"))["tag"] == [f"tenant:{value}"]
    facet = dict(response.context["facets"])["tenant"]
    assert (value, len(expected)) in [(v, n) for v, n, _, _ in facet]


def test_threads_unknown_values_and_injection_find_nothing(viewer_client, mirror):
    for text in ["tenant:acme' OR '1'='1", "tenant:%", "tenant:_", "nokey:acme", "tenant:ACME"]:
        response = viewer_client.get("/threads/", {"tag": text})
        assert response.status_code == 200
        assert thread_ids(response) == [], text
    assert Thread.objects.count() == len(mirror.threads)


def test_threads_bad_filter_is_reported_and_others_kept(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": ["no-colon", "plan:pro"]})
    assert response.status_code == 200
    assert "write it as key:value" in unescape(response.content.decode())
    assert sorted(thread_ids(response)) == sorted(t.thread_id for t in mirror.matching([("plan", "pro")]))


def test_threads_facets_count_the_filtered_threads(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": "plan:pro"})
    matching = mirror.matching([("plan", "pro")])
    for key, values in response.context["facets"]:
        for value, n, active, url in values:
            assert n == sum(1 for t in matching if t.tags.get(key) == value), (key, value)
            assert active == ((key, value) == ("plan", "pro"))
            assert url.startswith("?")
    keys = [k for k, _ in response.context["facets"]]
    assert "api_key" not in keys and "tenant" in keys


def test_threads_facets_are_computed_once_per_sync_never_the_rows_or_count(viewer_client, mirror):
    from django.utils import timezone

    def values(response, key):
        return {value: n for value, n, _, _ in dict(response.context["facets"]).get(key, [])}

    matching = mirror.matching([("plan", "pro")])
    first = viewer_client.get("/threads/", {"tag": "plan:pro"})
    assert sum(values(first, "tenant").values()) > 0
    # Changed without a sync: the facets stay as they were until one lands; rows and count follow at once.
    pro = Thread.objects.filter(thread_id__in=[t.thread_id for t in matching])
    Tag.objects.filter(thread__in=pro, key="tenant").update(value="renamed")
    again = viewer_client.get("/threads/", {"tag": "plan:pro", "sort": "stored"})  # another sort, same filter
    assert values(again, "tenant") == values(first, "tenant")
    assert "tenant:renamed" in again.content.decode()
    gone = matching[0]
    Tag.objects.filter(thread__thread_id=gone.thread_id, key="plan").delete()
    fewer = viewer_client.get("/threads/", {"tag": "plan:pro"})
    assert fewer.context["page"].paginator.count == len(matching) - 1
    assert gone.thread_id not in thread_ids(fewer)

    Source.objects.filter(pk=Source.objects.first().pk).update(last_sync_at=timezone.now())  # a sync landed
    after = viewer_client.get("/threads/", {"tag": "plan:pro"})
    assert values(after, "tenant") == {"renamed": len(matching) - 1}


def test_threads_prefix_search_and_sorts(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"q": "beta-thread-01"})
    assert sorted(thread_ids(response)) == sorted(t.thread_id for t in mirror.threads if t.thread_id.startswith("beta-thread-01"))
    by_stored = viewer_client.get("/threads/", {"sort": "stored"})
    stored = [t.stored_bytes for t, _, _ in by_stored.context["rows"]]
    assert stored == sorted(stored, reverse=True)
    assert stored[0] == max(t.stored_bytes for t in mirror.threads)
    by_count = viewer_client.get("/threads/", {"sort": "checkpoints"})
    counts = [t.checkpoints for t, _, _ in by_count.context["rows"]]
    assert counts == sorted(counts, reverse=True)
    by_activity = viewer_client.get("/threads/")
    times = [t.last_checkpoint_at for t, _, _ in by_activity.context["rows"]]
    assert times == sorted(times, reverse=True)


def test_threads_pagination_keeps_the_filters(viewer_client, mirror):
    first = viewer_client.get("/threads/", {"tag": "urgent:false"})
    expected = mirror.matching([("urgent", "false")])
    assert len(expected) > 50
    assert len(first.context["rows"]) == 50
    next_url = first.context["page_links"]["next"]
    assert "tag=urgent%3Afalse" in next_url and "page=2" in next_url
    second = viewer_client.get("/threads/" + next_url)
    seen = thread_ids(first) + thread_ids(second)
    assert sorted(seen) == sorted(t.thread_id for t in expected)


def test_threads_filter_links_add_and_remove(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": ["tenant:acme", "plan:free"]})
    (k1, v1, remove_first), (k2, v2, remove_second) = response.context["pairs"]
    after = viewer_client.get("/threads/" + remove_first)
    assert sorted(thread_ids(after)) == sorted(t.thread_id for t in mirror.matching([("plan", "free")]))


def test_thread_page(viewer_client, mirror, settings):
    planned = mirror.threads[5]  # has a spike at its 5th checkpoint
    response = viewer_client.get(reverse("thread", args=[planned.source, planned.thread_id]))
    assert response.status_code == 200
    rows = response.context["rows"]
    assert len(rows) == len(planned.checkpoints)
    spikes = sorted(c.checkpoint_id for c, spike, _ in rows if spike)
    news = sorted(c["new_bytes"] for c in planned.checkpoints)
    threshold = max(3 * news[len(news) // 2], 1000)  # 3x the median
    assert spikes == sorted(c["checkpoint_id"] for c in planned.checkpoints if c["new_bytes"] > threshold)
    assert planned.checkpoints[4]["checkpoint_id"] in spikes
    html = response.content.decode()
    assert 'data-figure="fig-thread"' in html and "spike" in html
    for key, value in planned.tags.items():
        assert f"{key}:{value}" in unescape(html)
    assert SECRET not in html


def test_oversized_checkpoint_is_flagged(viewer_client, mirror, settings):
    planned = mirror.threads[3]
    response = viewer_client.get(reverse("thread", args=[planned.source, planned.thread_id]))
    over = [c.checkpoint_id for c, _, over in response.context["rows"] if over]
    assert over == [c["checkpoint_id"] for c in planned.checkpoints if c["logical_bytes"] > settings.CHECKPOINT_SIZE_LIMIT]


def test_download_buttons_only_for_operators(client, mirror, viewer, operator):
    ref, users = next((r, u) for r, u in mirror.references if r.exists)
    planned = next(t for t in mirror.threads if t.thread_id == users[0])
    url = reverse("thread", args=[planned.source, planned.thread_id])
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert ref.uri in html and "present" in html
    assert "/download" not in html and "Download" not in html
    client.force_login(operator)
    html = client.get(url).content.decode()
    assert f'href="/blobs/{ref.pk}/download"' in html


def test_unknown_thread_is_404(viewer_client, mirror):
    assert viewer_client.get("/threads/alpha/no-such-thread/").status_code == 404
    assert viewer_client.get("/checkpoints/999999999/").status_code == 404


def test_checkpoint_page_from_the_mirror_when_the_source_is_gone(viewer_client, mirror):
    planned = mirror.threads[10]
    thread = Thread.objects.get(pk=planned.pk)
    middle = planned.checkpoints[1]
    cp = Checkpoint.objects.get(thread=thread, checkpoint_ns="", checkpoint_id=middle["checkpoint_id"])
    response = viewer_client.get(reverse("checkpoint", args=[cp.pk]))
    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert "could not be read from the source" in html
    assert SECRET not in html and "[redacted]" in html
    assert response.context["parent"].checkpoint_id == planned.checkpoints[0]["checkpoint_id"]
    assert [c.checkpoint_id for c in response.context["children"]] == [planned.checkpoints[2]["checkpoint_id"]]
    latest = Checkpoint.objects.get(thread=thread, checkpoint_id=planned.latest_root["checkpoint_id"])
    sub = viewer_client.get(reverse("checkpoint", args=[latest.pk])).context["subgraphs"]
    assert [c.checkpoint_ns for c in sub] == [c["checkpoint_ns"] for c in planned.checkpoints if c["checkpoint_ns"]]


def test_facets_are_estimated_above_the_sample_size(viewer_client, mirror, monkeypatch):
    from dashboard import browse

    monkeypatch.setattr(browse, "FACET_SAMPLE", 10)
    monkeypatch.setattr(browse, "FACET_SAMPLE_READ", 0)  # the one-in-step tier, not the block sample
    response = viewer_client.get("/threads/", {"tag": "urgent:false"})
    matching = mirror.matching([("urgent", "false")])
    step = -(-len(matching) // 10)
    assert response.context["facets_estimated"] is True
    assert "Counts estimated from a sample" in response.content.decode()
    sampled = [t for t in matching if t.pk % step == 0]
    for key, values in response.context["facets"]:
        for value, n, _, _ in values:
            assert n == step * sum(1 for t in sampled if t.tags.get(key) == value), (key, value)


@pytest.mark.parametrize("pairs", [[("urgent", "false")], [("urgent", "false"), ("region", "eu")]])
def test_facets_from_a_block_sample_of_the_thread_table(viewer_client, mirror, monkeypatch, pairs):
    from django.db import connection

    from dashboard import browse

    matching = mirror.matching(pairs)
    table = connection.ops.quote_name(Thread._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")  # the planner's row count decides for a block sample
    # A sample size whose block sample holds some matching threads (the table is a few pages).
    for sample in range(2, len(matching)):
        percent = 100 * sample / len(matching)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {table} TABLESAMPLE SYSTEM (%s) REPEATABLE (7)", [percent])
            in_sample = {r[0] for r in cursor.fetchall()}
        sampled = [t for t in matching if t.pk in in_sample]
        if sampled and len(sampled) < len(matching):
            break
    else:
        pytest.fail("no block sample of this mirror splits the matching threads: make the mirror bigger")
    monkeypatch.setattr(browse, "FACET_SAMPLE", sample)
    counted, estimated = browse.facets(pairs, "", None, len(matching))
    assert estimated is True
    scale = len(matching) / sample
    expected = {}
    for t in sampled:
        for key, value in t.tags.items():
            expected[(key, value)] = expected.get((key, value), 0) + 1
    got = {(key, value): n for key, values in counted for value, n in values}
    assert got == {kv: round(n * scale) for kv, n in expected.items() if kv in got}
    assert {key for key, _ in got} == {key for key, _ in expected}


def test_size_distribution_sample_keeps_the_tail_exact(viewer_client, mirror, monkeypatch, settings):
    from dashboard import usage

    everything = usage.size_distribution(None, None, settings.CHECKPOINT_SIZE_LIMIT)[0]
    # A 100% block sample is the whole table: the sampled query agrees with the exact one.
    sampled = usage._sampled_bin_counts(None, None, 100)
    assert {i: n for i, (_, _, n) in enumerate(everything) if n} == sampled
    monkeypatch.setattr(usage, "SAMPLE_ROWS", 10)
    monkeypatch.setattr(usage, "EXACT_ROWS", 20)
    response = viewer_client.get("/?range=all")
    assert response.context["sample_percent"] is not None
    assert "Estimated from a" in response.content.decode()
    over = [(label, n) for label, low, n in response.context["bins"] if low >= settings.CHECKPOINT_SIZE_LIMIT]
    assert over == [(label, n) for label, low, n in everything if low >= settings.CHECKPOINT_SIZE_LIMIT and n]


def test_page_count_is_capped_for_broad_filters(viewer_client, mirror, monkeypatch):
    from dashboard import browse

    monkeypatch.setattr(browse.CappedPaginator, "cap", 10)
    monkeypatch.setattr(browse, "COUNT_CAP", 10)
    response = viewer_client.get("/threads/", {"tag": "urgent:false"})
    assert response.context["page"].paginator.capped
    assert "<strong>10+</strong> threads" in response.content.decode()
    assert response.context["estimated_matches"] > 10
    narrow = viewer_client.get("/threads/", {"tag": ["tenant:acme", "plan:free"]})
    assert not narrow.context["page"].paginator.capped
    assert narrow.context["page"].paginator.count == len(mirror.matching([("tenant", "acme"), ("plan", "free")]))


def test_thread_links_on_the_threads_page_are_the_routes_urls(viewer_client, mirror):
    response = viewer_client.get("/threads/", {"tag": "tenant:" + TRICKY_VALUES[2]})
    rows = response.context["rows"]
    assert rows
    for thread, url, _ in rows:
        assert url == reverse("thread", args=[thread.source.name, thread.thread_id])
        assert viewer_client.get(url).status_code == 200


def test_a_sync_that_changes_a_tenth_of_the_mirror_refreshes_the_planner_statistics(mirror):
    from django.db import connection

    from checkpoints.sync import _analyze_if_grown

    def planner_rows():
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [Thread._meta.db_table])
            return cursor.fetchone()[0]

    assert not _analyze_if_grown({"added": 999, "updated": 0, "removed": 0}, 0)
    assert not _analyze_if_grown({"added": 5000, "updated": 0, "removed": 0}, 100_000)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = %s::regclass", [Thread._meta.db_table])
    assert _analyze_if_grown({"added": 600, "updated": 300, "removed": 100}, 5000)
    assert planner_rows() == Thread.objects.count() > 0
