"""The JSON API (docs/architecture.md §4, contract): threads by tag, one thread, a summary.

Sizes are integer bytes, times ISO 8601 in UTC, tags an object. Bad input
answers 400 with {"error": ...}; authentication is dashboard.access.api_auth.
"""

from datetime import UTC
from urllib.parse import urlencode

from django.conf import settings
from django.core.paginator import EmptyPage, Paginator
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from checkpoints.ids import thread_key
from checkpoints.models import BlobReference, Checkpoint, Source, Tag, Thread
from checkpoints.tags import redact_metadata
from dashboard import browse, state_json, usage
from dashboard.access import api_auth

PAGE_SIZE = 100


def iso(moment):
    """ISO 8601 in UTC, or None.

    >>> from datetime import datetime, timezone, timedelta
    >>> iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))))
    '2026-01-02T01:04:05+00:00'
    """
    return moment.astimezone(UTC).isoformat() if moment else None


def _error(message, status=400):
    return JsonResponse({"error": message}, status=status)


def _bad_common(request):
    """The error message for a `range` or `page` that the pages would quietly correct, or None.

    The pages fall back to a default; a script gets told, so that a typo does
    not pass for an answer.
    """
    if "range" in request.GET and request.GET["range"] not in usage.RANGES:
        return f"range must be one of {', '.join(usage.RANGES)}"
    raw = request.GET.get("page", "1")
    if not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
        return f"page must be a whole number from 1, not {raw!r}"
    return None


def _thread_json(t, tags):
    return {
        "source": t.source.name,
        "thread_id": t.thread_id,
        "checkpoints": t.checkpoints,
        "logical_bytes": t.logical_bytes,
        "stored_bytes": t.stored_bytes,
        "last_checkpoint_at": iso(t.last_checkpoint_at),
        "tags": tags,
    }


def _tags_of(thread_pks):
    tags = {pk: {} for pk in thread_pks}
    for thread_id, key, value in Tag.objects.filter(thread__in=thread_pks).order_by("key").values_list("thread_id", "key", "value"):
        tags[thread_id][key] = value
    return tags


@require_GET
@api_auth
def threads(request):
    if message := _bad_common(request):
        return _error(message)
    try:
        pairs = browse.parse_tag_filters(request.GET.getlist("tag"))
    except browse.BadFilter as e:
        return _error(str(e))
    sort = request.GET.get("sort", browse.DEFAULT_SORT)
    if sort not in browse.SORTS:
        return _error(f"sort must be one of {', '.join(browse.SORTS)}")
    direction = request.GET.get("dir") or None
    if direction is not None and direction not in browse.DIRECTIONS:
        return _error(f"dir must be one of {', '.join(browse.DIRECTIONS)}")
    source = None
    if request.GET.get("source"):
        source = Source.objects.filter(name=request.GET["source"]).first()
        if source is None:
            return _error(f"no source named {request.GET['source']!r}", status=404)
    number = int(request.GET.get("page", "1"))

    found = browse.find_threads(pairs, request.GET.get("q", "").strip(), source, sort, direction)
    paginator = Paginator(found, PAGE_SIZE)
    try:
        page = paginator.page(number)
    except EmptyPage:
        if number == 1:  # no match at all: an empty first page, not an error
            page = None
        else:
            return _error(f"page {number} is out of range (there are {paginator.num_pages})", status=404)
    items = browse.attach_sources(list(page.object_list)) if page else []
    tags = _tags_of([t.pk for t in items])
    next_url = None
    if page and page.has_next():
        params = [(k, v) for k, values in request.GET.lists() for v in values if k != "page"]
        params.append(("page", str(page.next_page_number())))
        next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params)
    return JsonResponse(
        {"count": paginator.count, "next": next_url, "results": [_thread_json(t, tags[t.pk]) for t in items]},
        json_dumps_params={"ensure_ascii": False},
    )


@require_GET
@api_auth
def thread_by_query(request, source):
    """One thread by ?thread_id=, for ids such as ".." that HTTP clients drop from a path."""
    thread_id = request.GET.get("thread_id")
    if not thread_id:
        return _error("thread_id is required: /api/threads/<source>/?thread_id=<id>")
    return _thread_detail(source, thread_id)


@require_GET
@api_auth
def thread(request, source, thread_id):
    return _thread_detail(source, thread_id)


def _thread_detail(source, thread_id):
    t = Thread.objects.select_related("source").filter(source__name=source, thread_id=thread_id).first()
    if t is None:
        return _error(f"no thread {thread_id!r} in source {source!r}", status=404)
    out = _thread_json(t, _tags_of([t.pk])[t.pk])
    references = BlobReference.objects.filter(uses__thread=t).distinct().order_by("uri")
    # Foreign URIs are never checked: "unchecked" keeps the contract's three states.
    out["blobs"] = [
        {"id": r.pk, "uri": r.uri, "size": r.size, "state": "unchecked" if r.state == "foreign" else r.state}
        for r in references
    ]
    return JsonResponse(out, json_dumps_params={"ensure_ascii": False})


@require_GET
@api_auth
def summary(request):
    if message := _bad_common(request):
        return _error(message)
    rows, _ = usage.sources_summary(settings.CHECKPOINT_SIZE_LIMIT)
    return JsonResponse(
        {
            "sources": [
                {
                    "name": r["name"],
                    "threads": r["threads"],
                    "checkpoints": r["checkpoints"],
                    "stored_bytes": r["stored_bytes"],
                    "external_bytes": r["external_bytes"],
                    "last_sync_at": iso(r["last_sync_at"]),
                    "last_sync_ok": r["last_sync_ok"],
                }
                for r in rows
            ]
        }
    )


@require_GET
@api_auth
def state(request):
    """One checkpoint's state: values as LangGraph's get_state gives them, in JSON (dashboard.state_json).

    The checkpoint is found in the mirror (default: the thread's latest in
    the namespace, the root one unless checkpoint_ns is given) and its values
    read from the source; DeltaChannel values are rebuilt as on the page.
    """
    from dashboard.snapshot_cache import read_values_cached
    from dashboard.source_values import ReadError

    name, thread_id = request.GET.get("source"), request.GET.get("thread_id")
    if not name or thread_id is None:
        return _error("source and thread_id are required: /api/state/?source=S&thread_id=T")
    ns = request.GET.get("checkpoint_ns", "")
    checkpoint_id = request.GET.get("checkpoint_id")
    source = Source.objects.filter(name=name).first()
    if source is None:
        return _error(f"no source named {name!r}", status=404)
    t = Thread.objects.filter(source=source, thread_id=thread_key(thread_id)).first()
    if t is None:
        return _error(f"no thread {thread_id!r} in source {name!r}", status=404)
    rows = Checkpoint.objects.filter(thread=t, checkpoint_ns=ns)
    cp = rows.filter(checkpoint_id=checkpoint_id).first() if checkpoint_id else rows.order_by("-checkpoint_id").first()
    if cp is None:
        what = f"checkpoint {checkpoint_id!r}" if checkpoint_id else "checkpoint"
        return _error(f"no {what} in namespace {ns!r} of thread {thread_id!r}", status=404)
    cp.thread = t
    try:
        values = read_values_cached(source, cp, limit=settings.DISPLAY_DECODE_LIMIT,
                             aes_key=settings.LANGGRAPH_AES_KEY or None, digest=True)
    except ReadError as e:
        gone = "no longer in the source" in str(e)
        return _error(str(e), status=404 if gone else 502)
    shown = [v for v in values.channels if not state_json.is_internal(v.name)]
    return JsonResponse(
        {
            "source": source.name,
            "thread_id": thread_id,
            "checkpoint_ns": cp.checkpoint_ns,
            "checkpoint_id": cp.checkpoint_id,
            "parent_checkpoint_id": cp.parent_checkpoint_id or None,
            "created_at": iso(cp.created_at),
            "metadata": redact_metadata(cp.metadata, settings.TAG_EXCLUDE),
            "values": {v.name: state_json.to_json(v.value) for v in shown},
            "reconstructed": [v.name for v in shown if v.delta and v.delta.status == "reconstructed"],
            "pending_writes": [
                {"task_id": w["task_id"], "channel": w["value"].name, "value": state_json.to_json(w["value"].value)}
                for w in values.writes
            ],
        },
        json_dumps_params={"ensure_ascii": False},
    )
