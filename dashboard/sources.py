"""The sources page: list with health, add, edit, disable and remove (operators).

Adding or changing a URL opens it with the kind's reader, read-only, before
anything is saved, and shows the reader's error on the form: a mistyped URL
never becomes a source that fails every sync. Disabling keeps the mirror and
makes every sync skip the source. Removal is a preview of what leaves the
mirror, a confirmation, then a Run of kind "remove" on the task queue (the
run history is the audit log), like a prune; the checkpoint database itself
is never touched.

All of it needs `checkpoints.manage_sources` (the operator group); viewers
see the sources' health on the overview.
"""

from functools import wraps

from django import forms
from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from checkpoints.jobs import REMOVE, SYNC, job
from checkpoints.models import Run, Source
from checkpoints.removal import RemovalRefused, check_removable, release_slot, removal_preview
from checkpoints.sources import SourceError, first_line, open_reader
from checkpoints.sources import registry
from checkpoints.sources.registry import kind_of
from dashboard import usage
from dashboard.access import viewer_required
from dashboard.space import source_space
from dashboard.tasks import QueueError, busy_run, enqueue, new_queued_run

SOURCES_PERM = "checkpoints.manage_sources"
CHECK_TIMEOUT = 5  # seconds to connect when checking a URL: the form waits for it


def sources_required(view):
    @wraps(view)
    @viewer_required
    def wrapped(request, *args, **kwargs):
        if not request.user.has_perm(SOURCES_PERM):
            return render(request, "sources/forbidden.html", {}, status=403)
        return view(request, *args, **kwargs)

    return wrapped


def check_url(url) -> tuple[str, str]:
    """(kind, layout) of the LangGraph database at `url`, opened read-only; ValidationError with the reader's error."""
    try:
        kind = kind_of(url)
    except ValueError as e:
        raise forms.ValidationError(str(e)) from None
    try:
        with open_reader(url, connect_timeout=CHECK_TIMEOUT) as reader:
            layout = reader.layout()
            if not registry.get(kind).layout_reads_data:  # S3: totals would list the whole prefix layout() has read
                reader.totals()  # the tables can be read, not only described
    except SourceError as e:
        raise forms.ValidationError(first_line(e)) from None
    return kind, layout


class SourceForm(forms.Form):
    name = forms.SlugField(max_length=50, help_text="Short name used in URLs and commands (letters, digits, - and _).")
    url = forms.CharField(
        label="Database URL", widget=forms.TextInput(attrs={"size": 60, "autocomplete": "off", "spellcheck": "false"}),
        help_text="postgresql://user:password@host:5432/db, sqlite:////absolute/path.db or s3://bucket/prefix/ "
        "(an S3Saver store, read with the console's S3 settings); "
        "opened read-only to check it before saving.",
    )

    capture = forms.ChoiceField(
        label="Change capture", choices=Source.CAPTURE_CHOICES, initial="scan", required=False,
        help_text="PostgreSQL only. Scan: look for rows written since the last sync (no setup; its cost grows "
        "with the database). Logical decoding: read a replication slot, whose cost follows the changes; needs "
        "wal_level=logical, the REPLICATION attribute and a publication (checked before saving; see README).",
    )

    def __init__(self, *args, source=None, **kwargs):
        self.source = source
        initial = {"name": source.name, "url": source.url, "capture": source.capture} if source is not None else None
        super().__init__(*args, initial=initial, **kwargs)
        self.checked = None
        if source is not None and env_owned(source):
            for field in self.fields.values():
                field.disabled = True

    def clean_name(self):
        name = self.cleaned_data["name"]
        taken = Source.objects.filter(name=name)
        if self.source is not None:
            taken = taken.exclude(pk=self.source.pk)
        if taken.exists():
            raise forms.ValidationError(f"A source named {name} exists already.")
        return name

    def clean_url(self):
        url = self.cleaned_data["url"].strip()
        if self.source is not None and url == self.source.url:
            return url  # unchanged: a source that is down can still be renamed
        self.checked = check_url(url)
        return url

    def clean_capture(self):
        return self.cleaned_data.get("capture") or "scan"

    def clean(self):
        cleaned = super().clean()
        url, capture = cleaned.get("url"), cleaned.get("capture")
        changed = self.source is None or capture != self.source.capture or url != self.source.url
        if url and capture == "logical" and changed:
            problems = check_capture(url)
            if problems:
                self.add_error("capture", forms.ValidationError(" ".join(problems)))
        return cleaned


def check_capture(url) -> list:
    """What keeps logical decoding from running on the database at `url`, one sentence each."""
    from checkpoints.sources.capture import Capture

    try:
        if not registry.for_url(url).logical_capture:
            return ["Logical decoding is for PostgreSQL sources."]
        with Capture(url, "", connect_timeout=CHECK_TIMEOUT) as capture:
            return capture.requirements()
    except (ValueError, SourceError) as e:
        return [first_line(e)]


def env_owned(source) -> bool:
    """Whether CHECKPOINT_DATABASE_URL sets this source now (edits would be overwritten by the next job)."""
    return source.registered_by_env and bool(settings.CHECKPOINT_DATABASE_URL)


@sources_required
def index(request):
    rows, _ = usage.sources_summary(settings.CHECKPOINT_SIZE_LIMIT)
    now = timezone.now()
    for row in rows:
        s = row["source"]
        row["lag"] = (now - s.last_success_started_at).total_seconds() if s.last_success_started_at else None
        row["env_owned"] = env_owned(s)
        row["space"] = source_space(s)
        # What the last sync could not read (S3 stores: payloads missing or corrupt, objects not the saver's).
        row["problems"] = (s.sync_state or {}).get("problems")
        slot = (s.sync_state or {}).get("slot_status") if s.capture == "logical" else None
        row["slot"] = slot
        row["slot_warn"] = bool(slot) and (slot.get("wal_status") == "lost"
                                           or (slot.get("retained_bytes") or 0) > settings.CAPTURE_WAL_WARN)
    ctx = {"rows": rows, "env_set": bool(settings.CHECKPOINT_DATABASE_URL), "wal_warn": settings.CAPTURE_WAL_WARN}
    return render(request, "sources/index.html", ctx)


@sources_required
def new(request):
    form = SourceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        kind, layout = form.checked
        source = Source.objects.create(name=form.cleaned_data["name"], url=form.cleaned_data["url"], kind=kind,
                                       layout=layout, capture=form.cleaned_data["capture"])
        messages.success(request, f"Added the source {source.name} ({source.get_kind_display()}): "
                                  "the next scheduled sync mirrors it.")
        return redirect("sources")
    return render(request, "sources/form.html", {"form": form, "source": None}, status=400 if form.errors else 200)


@sources_required
def edit(request, pk):
    source = get_object_or_404(Source, pk=pk)
    form = SourceForm(request.POST or None, source=source)
    if request.method == "POST" and form.is_valid():
        fields = {"name": form.cleaned_data["name"], "capture": form.cleaned_data["capture"]}
        if source.capture == "logical" and fields["capture"] == "scan":
            slot_note = release_slot(source)  # no longer read: it would only retain WAL
            if slot_note:
                messages.info(request, slot_note)
        if form.checked is not None:  # another URL: another database, whose watermark and errors are not these
            slot_note = release_slot(source)  # on the old database
            if slot_note:
                messages.info(request, slot_note)
            kind, layout = form.checked
            fields.update(Source.repointed(form.cleaned_data["url"]), kind=kind, layout=layout, last_sync_ok=None,
                          last_error="")
        for k, v in fields.items():
            setattr(source, k, v)
        source.save(update_fields=list(fields))
        messages.success(request, f"Saved the source {source.name}.")
        return redirect("sources")
    ctx = {"form": form, "source": source, "env_owned": env_owned(source)}
    return render(request, "sources/form.html", ctx, status=400 if form.errors else 200)


@require_POST
@sources_required
def toggle(request, pk):
    source = get_object_or_404(Source, pk=pk)
    if source.enabled:
        source.enabled = False
        source.disabled_reason = f"disabled by {request.user.get_username()} on {timezone.now():%Y-%m-%d %H:%M} UTC"
        note = "Syncs skip it; its mirror stays."
        slot_note = release_slot(source)  # nobody reads it while disabled: it would only retain WAL
        if slot_note:
            note += f" {slot_note[0].upper()}{slot_note[1:]}."
    else:
        source.enabled, source.disabled_reason = True, ""
        note = "The next scheduled sync picks it up."
    source.save(update_fields=["enabled", "disabled_reason"])
    messages.success(request, f"{'Enabled' if source.enabled else 'Disabled'} the source {source.name}. {note}")
    return redirect("sources")


@sources_required
def remove(request, pk):
    """GET: what leaves the mirror; POST: queue the removal and show its run."""
    source = get_object_or_404(Source, pk=pk)
    refused = None
    try:
        check_removable(source)
    except RemovalRefused as e:
        refused = str(e)
    if request.method == "POST" and refused is None:
        with transaction.atomic():
            holder = busy_run(REMOVE, source)
            if holder is None:
                run = new_queued_run(REMOVE, source=source, parameters={"source": source.name},
                                     dry_run=False, requested_by=request.user, origin="page")
        if holder is not None:
            return redirect("maintenance-run", pk=holder.pk)
        try:
            enqueue(run)
        except QueueError as e:
            messages.error(request, str(e))
        return redirect("maintenance-run", pk=run.pk)
    preview = removal_preview(source)
    ctx = {
        "source": source,
        "counts": [(label, preview[key], key) for key, label in job(REMOVE).compared],
        "refused": refused,
        "runs": Run.objects.filter(source=source).exclude(kind=SYNC).count(),
    }
    return render(request, "sources/remove.html", ctx, status=409 if refused and request.method == "POST" else 200)
