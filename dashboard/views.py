"""The dashboard's pages: overview, threads by tag, a thread, a checkpoint."""

import json
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import F
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views import defaults

from checkpoints.decode import plain
from checkpoints.models import BlobReference, Checkpoint, Source, Tag, Thread
from checkpoints.sources import registry
from checkpoints.tags import redact_metadata, split_tag
from dashboard import browse, charts, usage
from dashboard.access import viewer_required
from dashboard.cluster import cluster_health
from dashboard.forecast import forecast
from dashboard.links import thread_path, thread_pattern
from dashboard.state_json import is_internal
from storage.models import DOWNLOAD_PERM

THREADS_PER_PAGE = 50
TIMELINE_PER_PAGE = 100
CHART_POINTS = 2000
TABLE_DAYS = 31
SPIKE_FACTOR = 3
SPIKE_MIN_BYTES = 1000


def _query(params, **changes):
    """A query string from a list of (name, value) pairs with some names replaced.

    >>> _query([("tag", "a:1"), ("page", "3")], page=None, sort="stored")
    '?tag=a%3A1&sort=stored'
    """
    pairs = [(k, v) for k, v in params if k not in changes]
    for k, v in changes.items():
        if v is None:
            continue
        pairs.extend((k, item) for item in (v if isinstance(v, list) else [v]))
    return "?" + urlencode(pairs) if pairs else "?"


def _selected_source(request):
    name = request.GET.get("source", "")
    if not name:
        return None
    return Source.objects.filter(name=name).first()


def blob_download_url(pk):
    """The storage app's download route; its literal path while the route is not there."""
    try:
        return reverse("blob-download", args=[pk])
    except NoReverseMatch:
        return f"/blobs/{pk}/download"


@viewer_required
def overview(request):
    range_key = request.GET.get("range", usage.DEFAULT_RANGE)
    if range_key not in usage.RANGES:
        range_key = usage.DEFAULT_RANGE
    source = _selected_source(request)
    since = usage.since_for(range_key)
    limit = settings.CHECKPOINT_SIZE_LIMIT
    params = [(k, v) for k, v in request.GET.items()]

    rows, total = usage.sources_summary(limit)
    series = usage.daily_series(source, since)
    bins, sample_percent = usage.size_distribution(source, since, limit)
    top = usage.top_threads(source)
    quota = settings.STORAGE_QUOTA
    points = usage.trend_points(source) if quota else []
    outlook = forecast(points, quota) if quota else None

    figures = {
        "stored": charts.stored_over_time(series),
        "added": charts.checkpoints_per_day(series),
        "sizes": charts.size_distribution(bins, limit),
        "top": charts.top_threads(top),
    }
    if quota:
        figures["forecast"] = charts.growth_forecast(points, outlook)

    synced = [r["last_sync_at"] for r in rows if r["last_sync_at"]]
    latest = max(synced) if synced else None
    sync = {
        "latest": latest,
        "age": (timezone.now() - latest).total_seconds() if latest else None,
        # Disabled sources are not synced: neither failed nor waiting for a first sync.
        "failed": sum(1 for r in rows if r["source"].enabled and r["last_sync_ok"] is False),
        "never": sum(1 for r in rows if r["source"].enabled and not r["last_sync_at"]),
        "enabled": sum(1 for r in rows if r["source"].enabled),
    }
    ctx = {
        "cluster": cluster_health(),
        "rows": rows,
        "total": total,
        "sync": sync,
        "source": source,
        "sources": [r["source"] for r in rows],
        "source_links": [("All sources", _query(params, source=None), source is None)]
        + [(r["name"], _query(params, source=r["name"]), source is not None and source.pk == r["source"].pk) for r in rows],
        "range_key": range_key,
        "ranges": [(key, "All" if key == "all" else f"{key} days", _query(params, range=key)) for key in usage.RANGES],
        "series": series,
        # The tables under the charts (their no-JavaScript form) list the latest days only.
        "recent": series[::-1][:TABLE_DAYS],
        "table_days": TABLE_DAYS,
        "bins": [b for b in bins if b[2]],
        "sample_percent": sample_percent,
        "top": top,
        "limit": limit,
        "quota": quota,
        "outlook": outlook,
        "figures": figures,
        "oversized": next((r["oversized"] for r in rows if source and r["source"].pk == source.pk), total["oversized"]),
        "dangling": next((r["dangling"] for r in rows if source and r["source"].pk == source.pk), total["dangling"]),
    }
    return render(request, "dashboard/overview.html", ctx)


@viewer_required
def threads(request):
    errors, pairs = [], []
    for text in request.GET.getlist("tag"):
        if not text.strip():  # the form's empty "add a tag" box
            continue
        try:
            pair = split_tag(text)
        except ValueError:
            errors.append(f"Ignored the tag filter {text!r}: write it as key:value.")
            continue
        if pair not in pairs:
            pairs.append(pair)
    if len(pairs) > browse.MAX_FILTERS:
        errors.append(f"Only the first {browse.MAX_FILTERS} tag filters are used.")
        pairs = pairs[: browse.MAX_FILTERS]
    prefix = request.GET.get("q", "").strip()
    # Both checked against the whitelists: only a known name picks a column.
    sort = request.GET.get("sort", browse.DEFAULT_SORT)
    if sort not in browse.SORTS:
        sort = browse.DEFAULT_SORT
    direction = request.GET.get("dir")
    if direction not in browse.DIRECTIONS:
        direction = browse.SORTS[sort][2]
    source = _selected_source(request)
    sources = list(Source.objects.all())

    found = browse.find_threads(pairs, prefix, source, sort, direction)
    page = browse.CappedPaginator(found, THREADS_PER_PAGE).get_page(request.GET.get("page"))
    matches, counted, facets_estimated = browse.filter_summary(
        found, pairs, prefix, source, sources, page.paginator.count
    )
    listed = browse.attach_sources(list(page.object_list))
    tags_by_thread = {}
    for thread_pk, key, value in (
        Tag.objects.filter(thread__in=[t.pk for t in listed]).order_by("key").values_list("thread_id", "key", "value")
    ):
        tags_by_thread.setdefault(thread_pk, []).append((key, value))

    # Links keep every filter in the URL; a page number is dropped on any change.
    params = [(k, v) for k, v in request.GET.lists() for v in v if k != "tag"]
    params += [("tag", browse.tag_text(k, v)) for k, v in pairs]
    selected = set(pairs)

    base = _query(params, page=None)
    links = {}

    def with_tag(key, value):
        # Fifty rows repeat the same few tags: build each link once.
        link = links.get((key, value))
        if link is None:
            link = links[(key, value)] = base + "&" + urlencode([("tag", browse.tag_text(key, value))])
        return link

    def without_tag(key, value):
        rest = [(k, v) for k, v in params if not (k == "tag" and v == browse.tag_text(key, value))]
        return _query(rest, page=None)

    facets = [
        (key, [(value, n, (key, value) in selected, without_tag(key, value) if (key, value) in selected else with_tag(key, value)) for value, n in values])
        for key, values in counted
    ]
    chips = {}

    def chip(tag):
        # Rendered here once per distinct tag: fifty rows of template loops
        # over the same few tags cost more than the page's queries.
        html = chips.get(tag)
        if html is None:
            key, value = tag
            text = f"{escape(key)}:{escape(value)}"
            if tag in selected:  # already filtered by: a link would only add it again
                html = f'<span class="chip active" title="Filtered by this tag">{text}</span>'
            else:
                html = f'<a class="chip" href="{escape(with_tag(key, value))}" title="Filter by {text}">{text}</a>'
            chips[tag] = html
        return html

    pattern = thread_pattern()  # reversed once: reverse() costs 20 µs a row
    rows = [
        (t, thread_path(t.source.name, t.thread_id, pattern), mark_safe("".join(chip(tag) for tag in tags_by_thread.get(t.pk, []))))
        for t in listed
    ]
    ctx = {
        "page": page,
        "rows": rows,
        "pairs": [(k, v, without_tag(k, v)) for k, v in pairs],
        "facets": facets,
        "facets_estimated": facets_estimated,
        "count_cap": browse.COUNT_CAP,
        "estimated_matches": matches if page.paginator.capped else None,
        "errors": errors,
        "prefix": prefix,
        "sort": sort,
        "direction": direction,
        "columns": _sort_columns(params, sort, direction),
        "prefix_clear_url": _query(params, q=None, page=None),
        "source_clear_url": _query(params, source=None, page=None),
        "source": source,
        "sources": sources,
        "multi_source": len(sources) > 1,
        "hidden_tags": [browse.tag_text(k, v) for k, v in pairs],
        "page_links": _page_links(page, params),
        "clear_url": _query([(k, v) for k, v in params if k != "tag"], page=None),
    }
    return render(request, "dashboard/threads.html", ctx)


def _sort_columns(params, sort, direction):
    """{name: (url, aria-sort or None)} of the sortable headers: the sorted column's link turns its direction round.

    >>> cols = _sort_columns([("sort", "stored")], "stored", "desc")
    >>> cols["stored"], cols["thread"]
    (('?sort=stored&dir=asc', 'descending'), ('?sort=thread&dir=asc', None))
    """
    columns = {}
    for key, (_, _, natural) in browse.SORTS.items():
        if key == sort:
            flipped = "asc" if direction == "desc" else "desc"
            columns[key] = (_query(params, sort=key, dir=flipped, page=None), "descending" if direction == "desc" else "ascending")
        else:
            columns[key] = (_query(params, sort=key, dir=natural, page=None), None)
    return columns


def _page_links(page, params):
    links = []
    for number in page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1):
        if number == page.paginator.ELLIPSIS:
            links.append((None, number, False))
        else:
            links.append((_query(params, page=str(number)), number, number == page.number))
    return {
        "numbers": links,
        "previous": _query(params, page=str(page.previous_page_number())) if page.has_previous() else None,
        "next": _query(params, page=str(page.next_page_number())) if page.has_next() else None,
    }


def _spike_threshold(checkpoints):
    """New bytes above which a checkpoint is a size spike: 3x the thread's median.

    The median is the middle row in new_bytes order, found by SQL.
    """
    n = checkpoints.count()
    if n < 3:
        return None
    median = checkpoints.order_by("new_bytes").values_list("new_bytes", flat=True)[n // 2]
    return max(SPIKE_FACTOR * median, SPIKE_MIN_BYTES)


@viewer_required
def thread_by_query(request, source):
    """A thread whose id is "." or "..", from ?thread_id= (no browser keeps those as path segments)."""
    thread_id = request.GET.get("thread_id")
    if not thread_id:
        return redirect(reverse("threads") + _query([("source", source)]))
    return _thread_page(request, source, thread_id)


@viewer_required
def thread(request, source, thread_id):
    return _thread_page(request, source, thread_id)


def _thread_page(request, source, thread_id):
    t = get_object_or_404(Thread.objects.select_related("source"), source__name=source, thread_id=thread_id)
    checkpoints = Checkpoint.objects.filter(thread=t)
    threshold = _spike_threshold(checkpoints)
    limit = settings.CHECKPOINT_SIZE_LIMIT

    fields = ("id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "created_at", "step", "origin",
              "logical_bytes", "new_bytes", "write_count")
    timeline = checkpoints.only(*fields).order_by("-created_at", "-checkpoint_id", "checkpoint_ns")
    page = Paginator(timeline, TIMELINE_PER_PAGE).get_page(request.GET.get("page"))
    rows = [
        (c, threshold is not None and c.new_bytes > threshold, c.logical_bytes > limit)
        for c in page.object_list
    ]

    # New bytes differ from logical bytes only where checkpoints share blob
    # rows (PostgreSQL). Where the kind stores every checkpoint whole (SQLite,
    # S3) the column and the bars would only repeat the logical bytes.
    kind_shares_blobs = registry.for_source(t.source).shares_blobs
    shares_blobs = kind_shares_blobs and checkpoints.exclude(new_bytes=F("logical_bytes")).exists()

    recent = checkpoints.filter(checkpoint_ns="").order_by("-created_at", "-checkpoint_id")
    points = list(recent.values_list("step", "checkpoint_id", "logical_bytes", "new_bytes")[:CHART_POINTS])[::-1]
    spikes = {p[1] for p in points if threshold is not None and p[3] > threshold}

    can_download = request.user.has_perm(DOWNLOAD_PERM)
    references = BlobReference.objects.filter(uses__thread=t).distinct().order_by("uri")
    # No button where there is nothing to sign: foreign URIs, or objects found missing.
    blobs = [
        (ref, blob_download_url(ref.pk) if can_download and ref.state in ("present", "unchecked") else None)
        for ref in references
    ]

    params = [(k, v) for k, v in request.GET.items()]
    ctx = {
        "thread": t,
        "tags": [(tag, "/threads/" + _query([("tag", browse.tag_text(tag.key, tag.value))])) for tag in t.tag_rows.order_by("key")],
        "rows": rows,
        "page": page,
        "page_links": _page_links(page, params),
        "threshold": threshold,
        "limit": limit,
        "figure": charts.thread_sizes(points, spikes, new_bytes=shares_blobs),
        "shares_blobs": shares_blobs,
        "kind_shares_blobs": kind_shares_blobs,
        "chart_points": len(points),
        "chart_capped": len(points) == CHART_POINTS,
        "blobs": blobs,
        "can_download": can_download,
        "namespaces": checkpoints.values("checkpoint_ns").distinct().count(),
    }
    return render(request, "dashboard/thread.html", ctx)


def _link_delta_sources(values, cp):
    """Mirror pks of the checkpoints (in `cp`'s thread and namespace) a DeltaChannel value was rebuilt from, for links."""
    sources = [v.delta for v in values.channels if v.delta and v.delta.status != "snapshot"]
    ids = {s.seed_checkpoint_id for s in sources if s.seed_checkpoint_id} | {w.checkpoint_id for s in sources for w in s.writes}
    if not ids:
        return
    same_ns = Checkpoint.objects.filter(thread_id=cp.thread_id, checkpoint_ns=cp.checkpoint_ns)  # built only when needed
    links = dict(same_ns.filter(checkpoint_id__in=ids).values_list("checkpoint_id", "pk"))
    for s in sources:
        s.links = links


def _content_previews(request, values, references, *, can_download, kept=None):
    """Offloaded and external objects named by the values, with their content for those who may download.

    Previews read the objects (storage.previews): where a download needs the
    operator's permission, so does seeing the content inline. `kept`: the
    content HTML's cache entry (dashboard.fragments). Returns (rows, HTML):
    when `kept` was rendered from the object versions the reference check
    saw last, its HTML, and rows whose previews are read only if something
    asks for them (the page's template does not); else None and rows with
    their previews read.
    """
    from dashboard import fragments, snapshot_cache
    from storage import previews

    found = [(v.name, v.value) for v in values.channels]
    found += [(f"pending write {w['value'].name}", w["value"].value) for w in values.writes]
    targets = previews.find_targets(found)
    if not targets:
        return [], None
    downloads = {
        use.reference.uri: blob_download_url(use.reference.pk)
        for use in references if can_download and use.reference.state in ("present", "unchecked")
    }
    # The ETag the reference check saw last (after each sync): a preview kept under it needs no request.
    etags = {use.reference.uri: use.reference.etag for use in references if use.reference.exists and use.reference.etag}
    more = request.GET.get("more", "")
    rows = []
    for index, target in enumerate(targets, 1):
        previewed = can_download and index <= previews.MAX_TARGETS
        limit = settings.PREVIEW_LIMIT * (previews.MORE_FACTOR if more == target.uri else 1) if previewed else 0
        rows.append(_ContentRow(index=index, target=target, download=downloads.get(target.uri), limit=limit))

    def load(row):
        preview, more_url = None, None
        if row["limit"]:
            target = row["target"]
            preview = previews.preview(target, limit=row["limit"], aes_key=settings.LANGGRAPH_AES_KEY or None,
                                       cache=snapshot_cache.PREVIEWS, known_etag=etags.get(target.uri, ""))
            cut = not preview.complete and preview.status in ("text", "too large")
            if cut and more != target.uri and (preview.size or 0) <= previews.VERIFY_MAX:
                more_url = _query([], more=target.uri) + f"#content-{row['index']}"
        return preview, more_url

    html = fragments.content_kept(kept, fragments.planned_parts(rows, etags))
    for row in rows:
        row.load = load
        if html is None:
            row.read()
    return rows, html


class _ContentRow(dict):
    """A row of the content table: index, target, download, limit; "preview" and "more_url" are read
    when first asked for (at once unless the content's HTML was kept)."""

    load = None

    def read(self):
        self["preview"], self["more_url"] = self.load(self)

    def __missing__(self, key):
        if key in ("preview", "more_url") and self.load is not None:
            self.read()
            return self[key]
        raise KeyError(key)


@viewer_required
def checkpoint(request, pk):
    from dashboard import fragments, snapshot_cache
    from dashboard.lineage import lineage
    from dashboard.snapshot_cache import read_values_cached
    from dashboard.source_values import ReadError

    from dashboard import page_rows

    cp = page_rows.checkpoint(pk)
    if cp is None:
        raise Http404("No checkpoint matches the given query.")
    t = cp.thread
    parent, children, subgraphs = lineage(cp)
    metadata = redact_metadata(cp.metadata, settings.TAG_EXCLUDE)
    graph_parents = []
    if isinstance(cp.metadata, dict) and isinstance(cp.metadata.get("parents"), dict):
        for ns, cid in sorted(cp.metadata["parents"].items()):
            target = Checkpoint.objects.filter(thread=t, checkpoint_ns=ns, checkpoint_id=cid).first()
            graph_parents.append((ns, cid, target))

    error, values = "", None
    options = {"limit": settings.DISPLAY_DECODE_LIMIT, "aes_key": settings.LANGGRAPH_AES_KEY or None}
    # The values, the diff and the previews never change for this checkpoint: the values and the HTML of
    # both parts are kept, and fetched in one request to the cache (a round trip to a shared one).
    key = snapshot_cache.cached_values_key(t.source, cp, **options)
    can_download = request.user.has_perm(DOWNLOAD_PERM)
    values_part = fragments.values_key(key, settings.DISPLAY_DECODE_LIMIT)
    content_part = fragments.content_key(key, can_download, settings.PREVIEW_LIMIT, request.GET.get("more", ""))
    kept = snapshot_cache.fetch([key, values_part, content_part])
    try:
        values = read_values_cached(t.source, cp, **options, fetched=kept.get(key))
    except ReadError as e:
        error = str(e)
    if values:
        _link_delta_sources(values, cp)
    diff = values.diff() if values else None
    references = page_rows.references(cp)
    content, content_html = [], ""
    if values:
        content, kept_content = _content_previews(request, values, references, can_download=can_download,
                                                  kept=kept.get(content_part))
        content_html = kept_content or ""
    can_preview = bool(content) and can_download
    shown_diff = diff if diff is None else [c for c in diff if not is_internal(c.channel)]
    # LangGraph's own channels (__start__, branch:to:*) change at every step: named, not detailed.
    internal_changes = [c.channel for c in diff or [] if is_internal(c.channel)]
    values_html = ""
    if values:
        values_html = fragments.values_html(values_part, {
            "values": values, "diff": shown_diff, "internal_changes": internal_changes,
            "parent_checkpoint_id": cp.parent_checkpoint_id, "decode_limit": settings.DISPLAY_DECODE_LIMIT},
            kept.get(values_part))
        if not content_html:
            content_html = fragments.content_html(content_part, {
                "content": content, "can_preview": can_preview, "preview_limit": settings.PREVIEW_LIMIT},
                kept.get(content_part))

    ctx = {
        "cp": cp,
        "thread": t,
        "parent": parent,
        "children": children,
        "graph_parents": graph_parents,
        # The display caps of channel values: a 1 MB string shows its first 10,000 characters and its size.
        "metadata": json.dumps(plain(metadata), indent=2, ensure_ascii=False, sort_keys=True),
        "metadata_bytes": len(json.dumps(cp.metadata, ensure_ascii=False).encode()),
        "values": values,
        "diff": shown_diff,
        "internal_changes": internal_changes,
        "values_html": values_html,
        "content_html": content_html,
        "error": error,
        "logical_delta": cp.logical_bytes - parent.logical_bytes if parent else None,
        "references": references,
        "content": content,
        "can_preview": can_preview,
        "preview_limit": settings.PREVIEW_LIMIT,
        "limit": settings.CHECKPOINT_SIZE_LIMIT,
        "decode_limit": settings.DISPLAY_DECODE_LIMIT,
        "subgraphs": subgraphs,
        "kind_shares_blobs": registry.for_source(t.source).shares_blobs,
    }
    return render(request, "dashboard/checkpoint.html", ctx)


# --- error pages and the admin's door ----------------------------------------------


def _wants_json(request):
    return request.path.startswith(("/api/", "/metrics"))


def not_found(request, exception):
    """The console's own 404 page; JSON for the API, like its other errors."""
    if _wants_json(request):
        return JsonResponse({"error": "not found"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """templates/500.html needs neither the database nor the static files; JSON for the API."""
    if _wants_json(request):
        return JsonResponse({"error": "server error: see the console's log"}, status=500)
    return defaults.server_error(request)


def admin_login(request):
    """The admin's login page, except for a logged-in user who is not staff.

    Django's admin would show that user its login form ("log in as another
    account"), which reads like a broken login: say why instead.
    """
    if request.user.is_authenticated and not (request.user.is_active and request.user.is_staff):
        return render(request, "dashboard/staff_only.html", {}, status=403)
    return admin.site.login(request)
