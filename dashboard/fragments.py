"""The checkpoint page's heavy parts, rendered once and kept in the cache beside the values.

A cached view of a checkpoint still rendered its diff, its channel values
(each value pretty-printed as JSON and escaped) and the previews of its
objects (up to PREVIEW_LIMIT of text each, escaped): a third of the view.
These parts are functions of immutable things, so their HTML is kept in
Django's cache (dashboard.snapshot_cache) under a key naming all of them:

- values and diff (`_checkpoint_values.html`): the checkpoint's values key
  (source, thread, namespace, id, mirror row, decode options: a removed or
  re-mirrored checkpoint, or another decryption key, is another entry) and
  the mirror rows the DeltaChannel provenance links to, found on each view;
- content (`_checkpoint_content.html`): the same values key, whether the
  viewer may download (operators see the content, others only that it
  exists), the "show more" target, and per object its URI, where it was
  found, its envelope, its download link and the ETag of the preview shown.
  When an object's preview has no ETag or says "unavailable" (missing, not
  reached, foreign, a failed read: states that can change without a new
  version), the part is rendered on each view instead, as is everything
  when the values are not cached.

The keys also name a digest of the templates, so a new release never
serves HTML rendered by the old one from a shared cache. Nothing in these
parts depends on the time or the mirror beyond what the key names; pending
writes, references and metadata are rendered on each view.
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


def values_html(values_key, context):
    """The diff and channel values' HTML; `values_key` None: rendered, not kept.

    `context`: values, diff, internal_changes, parent_checkpoint_id, decode_limit.
    """
    key = None
    if values_key:
        links = sorted({(cid, pk) for v in context["values"].channels if v.delta for cid, pk in v.delta.links.items()})
        key = snapshot_cache.key_for("html", "values", template_digest(), values_key, context["decode_limit"], links)
    return _rendered(key, VALUES_TEMPLATE, context)


def content_html(values_key, context):
    """The offloaded and external content's HTML; rendered each time when a part of it may change.

    `context`: content (rows of dashboard.views._content_previews), can_preview, preview_limit.
    """
    key = None
    rows = context["content"]
    if values_key and all(_settled(row["preview"]) for row in rows):
        parts = [
            (row["index"], row["target"].uri, row["target"].where, _envelope(row["target"].envelope),
             row["download"] or "", row["more_url"] or "",
             (row["preview"].etag, row["preview"].limit) if row["preview"] is not None else None)
            for row in rows
        ]
        key = snapshot_cache.key_for("html", "content", template_digest(), values_key, bool(context["can_preview"]),
                                     context["preview_limit"], parts)
    return _rendered(key, CONTENT_TEMPLATE, context)


def _settled(preview):
    """Whether a preview is what any later view would show for the same object version."""
    # No ETag: the object was missing or never reached; "unavailable" after the HEAD: a read failed.
    return preview is None or (preview.etag and preview.status != "unavailable")


def _envelope(envelope):
    return json.dumps(envelope, sort_keys=True, default=repr) if envelope is not None else ""


def _rendered(key, template, context):
    if key is not None:
        html = snapshot_cache.get("html", key)
        if html is not None:
            return mark_safe(html)
    html = render_to_string(template, context)
    if key is not None:
        snapshot_cache.put(key, str(html))
    return mark_safe(html)
