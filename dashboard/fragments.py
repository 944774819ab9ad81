"""The checkpoint page's heavy parts, rendered once and kept in the cache beside the values.

A cached view of a checkpoint still rendered its diff, its channel values
(each value pretty-printed as JSON and escaped) and the previews of its
objects (up to PREVIEW_LIMIT of text each, escaped): a third of the view.
These parts are functions of immutable things, so their HTML is kept in
Django's cache (dashboard.snapshot_cache) under a key naming all of them:

- values and diff (`_checkpoint_values.html`): kept under the checkpoint's
  values key (source, thread, namespace, id, mirror row, decode options: a
  removed or re-mirrored checkpoint, or another decryption key, is another
  entry) and the decode limit, with the mirror rows the DeltaChannel
  provenance links to (found on each view) beside it: served only when
  they are the same;
- content (`_checkpoint_content.html`): kept under the same values key,
  whether the viewer may download (operators see the content, others only
  that it exists), the preview limit and the "show more" target, with, per
  object, its URI, where it was found (pending writes are read on each
  view and may name new objects), its envelope, its download link and the
  ETag and limit of the preview shown beside it: served only when they are
  the same. Before any preview is read, the page compares them with the
  ETags its reference check saw last (the ETags under which previews are
  served without asking the store, storage.previews): when they match, no
  preview is read at all (`content_kept`). When an object's preview has no
  ETag or says "unavailable" (missing, not reached, foreign, a failed read:
  states that can change without a new version), the part is rendered on
  each view instead, as is everything when the values are not readable.

Each view fetches the values and both parts in one request to the cache
(`keys`, dashboard.snapshot_cache.fetch). The keys also name a digest of
the templates, so a new release never serves HTML rendered by the old one
from a shared cache. Nothing in these parts depends on the time or the
mirror beyond what is compared; pending writes, references and metadata
are rendered on each view.
"""

import hashlib
import json

from django.template.loader import get_template, render_to_string
from django.utils.safestring import mark_safe

from dashboard import snapshot_cache

VALUES_TEMPLATE = "dashboard/_checkpoint_values.html"
CONTENT_TEMPLATE = "dashboard/_checkpoint_content.html"
_INCLUDED = ("dashboard/_delta_source.html",)

_template_digest = None


def template_digest() -> str:
    """A digest of the fragments' template sources (computed once per process)."""
    global _template_digest
    if _template_digest is None:
        h = hashlib.sha256()
        for name in (VALUES_TEMPLATE, CONTENT_TEMPLATE, *_INCLUDED):
            h.update(get_template(name).template.source.encode())
        _template_digest = h.hexdigest()[:16]
    return _template_digest


def values_key(values_key, decode_limit):
    """Where the diff and channel values' HTML of a checkpoint is kept; None when `values_key` is."""
    if not values_key:
        return None
    return snapshot_cache.key_for("html", "values", template_digest(), values_key, decode_limit)


def content_key(values_key, can_preview, preview_limit, more):
    """Where the content's HTML of a checkpoint is kept, for this permission and "show more" target."""
    if not values_key:
        return None
    return snapshot_cache.key_for("html", "content", template_digest(), values_key, bool(can_preview), preview_limit,
                                  more or "")


_UNFETCHED = object()


def values_html(key, context, entry=_UNFETCHED):
    """The diff and channel values' HTML; `key` (values_key) None: rendered, not kept.

    `context`: values, diff, internal_changes, parent_checkpoint_id, decode_limit.
    `entry`: what dashboard.snapshot_cache.fetch found under `key` (None: nothing), when the caller fetched it.
    """
    links = sorted({(cid, pk) for v in context["values"].channels if v.delta for cid, pk in v.delta.links.items()})
    return _rendered(key, VALUES_TEMPLATE, context, links, entry)


def planned_parts(rows, etags):
    """What the content's HTML is compared with before any preview is read: the rows (index, target,
    download, and `limit`: the preview limit, 0 when not previewed) and for each previewed object the
    ETag the reference check saw (`etags`: {uri: ETag}); None when a previewed object has none."""
    parts = []
    for row in rows:
        target = row["target"]
        if row["limit"]:
            etag = etags.get(target.uri)
            if not etag:
                return None
            shown = (etag, row["limit"])
        else:
            shown = None
        parts.append(_row_parts(row, shown))
    return parts


def content_kept(entry, planned):
    """The kept content HTML when it was rendered from the objects `planned` names, else None (counted)."""
    if planned is not None and _matches(entry, planned):
        snapshot_cache.count("html", True)
        return mark_safe(entry[1])
    return None


def content_html(key, context, entry=_UNFETCHED):
    """The offloaded and external content's HTML; rendered each time when a part of it may change.

    `context`: content (rows of dashboard.views._content_previews, previews read), can_preview, preview_limit.
    """
    rows = context["content"]
    if not all(_settled(row["preview"]) for row in rows):
        key = None
    parts = [_row_parts(row, (row["preview"].etag, row["preview"].limit) if row["preview"] is not None else None)
             for row in rows]
    return _rendered(key, CONTENT_TEMPLATE, context, parts, entry)


def _row_parts(row, shown):
    target = row["target"]
    return (row["index"], target.uri, target.where, _envelope(target.envelope), row["download"] or "", shown)


def _settled(preview):
    """Whether a preview is what any later view would show for the same object version."""
    # No ETag: the object was missing or never reached; "unavailable" after the HEAD: a read failed.
    return preview is None or (preview.etag and preview.status != "unavailable")


def _envelope(envelope):
    return json.dumps(envelope, sort_keys=True, default=repr) if envelope is not None else ""


def _matches(entry, parts):
    return isinstance(entry, tuple) and len(entry) == 2 and entry[0] == parts


def _rendered(key, template, context, parts, entry):
    """The HTML kept under `key` when it was rendered for the same `parts`; else rendered (and kept)."""
    if key is not None:
        if entry is _UNFETCHED:
            entry = snapshot_cache.fetch([key]).get(key)
        if _matches(entry, parts):
            snapshot_cache.count("html", True)
            return mark_safe(entry[1])
        snapshot_cache.count("html", False)
    html = render_to_string(template, context)
    if key is not None:
        snapshot_cache.put(key, (parts, str(html)))
    return mark_safe(html)
