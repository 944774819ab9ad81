"""The maintenance page: prune and sweep previews, confirmed runs, saved policies, the audit log.

Destructive work follows Django admin's delete_selected: a preview that lists
what goes (a dry run, recorded as a Run like every other), a confirmation on
a POST, the run, a report. Previews and real runs both go through the task
queue (dashboard.tasks), so a preview of a large source never holds a web
request for minutes; the run page shows its progress either way.

Same rows in the preview and the real run: a prune preview records the `now`
it counted back from, and the real run confirmed from it reuses that `now`
with the same policy, so the age cut is the same instant. Rows that changed
in between are the only difference: a checkpoint written after the preview
is newer than that `now`, which makes its thread "active" (skipped, never
trimmed further), and rows someone else deleted are simply not there. The
run page puts the preview's counts beside the run's and says when they differ.
Previews older than PREVIEW_MAX_AGE cannot be confirmed: preview again.

Everyone with the view permission sees the page and the history; previews,
runs and policies need `checkpoints.run_maintenance` (the operator group).
"""

import json
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views.decorators.http import require_POST

from checkpoints.jobs import JOBS, job, kinds
from checkpoints.models import Run, Source
from checkpoints.runs import fail_dead_runs
from checkpoints.units import duration_text
from dashboard import run_summary
from dashboard.access import viewer_required
from dashboard.cluster import cluster_health
from dashboard.maintenance_forms import PolicyForm
from dashboard.models import SavedPolicy
from dashboard.space import sources_space
from dashboard.tasks import QueueError, busy_run, enqueue, fail_lost_runs, lost_after, new_queued_run, reap_runs
from dashboard.views import _page_links, _query

MAINTENANCE_PERM = "checkpoints.run_maintenance"
RUNS_PER_PAGE = 50
PREVIEW_MAX_AGE = timedelta(hours=1)  # past that, what the operator saw is too old to confirm
WAITING_HINT_AFTER = 10  # seconds queued before the page asks whether a cluster runs
SKIPPED_SHOWN = 100
# The audit log first (the jobs that change data), then each kind, audit kinds before routine ones.
HISTORY_FILTERS = {
    "maintenance": ("Prune, sweep, removal", kinds(routine=False)),
    **{kind: (job(kind).label, [kind]) for kind in kinds(routine=False) + kinds(routine=True)},
    "all": ("All", None),
}
DEFAULT_FILTER = "maintenance"


def operator_required(view):
    """POSTs of the page: login, view permission (viewer_required), then run_maintenance, else 403."""

    @wraps(view)
    @viewer_required
    def wrapped(request, *args, **kwargs):
        if not request.user.has_perm(MAINTENANCE_PERM):
            ctx = {"message": "Running maintenance needs the operator group; this account can only view it."}
            return render(request, "maintenance/forbidden.html", ctx, status=403)
        return view(request, *args, **kwargs)

    return wrapped


# --- The page ------------------------------------------------------------------


@viewer_required
def index(request):
    reap_runs()
    return _render_index(request)


def _job_form(kind, data=None, **kwargs):
    """The preview form of a previewed job (checkpoints/jobs.py names it); its prefix is the kind."""
    return import_string(job(kind).form)(data, prefix=kind, **kwargs)


def _render_index(request, *, forms=None, policy_forms=None, status=200):
    kind_key = request.GET.get("kind", DEFAULT_FILTER)
    if kind_key not in HISTORY_FILTERS:
        kind_key = DEFAULT_FILTER
    shown = HISTORY_FILTERS[kind_key][1]
    runs = Run.objects.select_related("source", "requested_by").order_by("-created_at", "-id")
    if shown is not None:
        runs = runs.filter(kind__in=shown)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    params = [(k, v) for k, v in request.GET.items()]
    sources = list(Source.objects.all())
    enabled = [s for s in sources if s.enabled]
    forms, policy_forms = forms or {}, policy_forms or {}
    previewed = kinds(previewed=True)
    active = list(Run.objects.filter(kind__in=previewed, state__in=["queued", "running"]).select_related("source"))
    for run in active:
        run.progress_view = _progress(run)
    now = timezone.now()
    ctx = {
        "can_run": request.user.has_perm(MAINTENANCE_PERM),
        "sources": enabled,
        # Each previewed job's form and its policy form, laid out by the job's own partial.
        "job_forms": [{
            "job": job(kind),
            "form": forms.get(kind) or _job_form(
                kind, initial={"source": enabled[0].pk if enabled else None} if job(kind).needs_source else None),
            "policy_form": policy_forms.get(kind) or PolicyForm(prefix="policy", auto_id=f"{kind}_%s"),
        } for kind in previewed],
        "policies": [_policy_row(p) for p in SavedPolicy.objects.select_related("source", "last_run", "created_by")],
        "bucket": settings.S3_BUCKET_NAME,
        "prefix": settings.S3_PREFIX,
        "blob_root": settings.BLOB_ROOT,
        "active_window": duration_text(settings.PRUNE_ACTIVE_WINDOW),
        "space": sources_space(sources),
        "run_keep_days": settings.RUN_KEEP_DAYS,
        "audit_keep_days": settings.AUDIT_KEEP_DAYS,
        "active": active,
        "waiting": any(r.state == "queued" and (now - r.created_at).total_seconds() > WAITING_HINT_AFTER for r in active),
        "cluster": cluster_health(now),
        "rows": [_history_row(r) for r in page.object_list],
        "page": page,
        "page_links": _page_links(page, params),
        "kind_key": kind_key,
        "kind_links": [(key, label, _query(params, kind=key, page=None)) for key, (label, _) in HISTORY_FILTERS.items()],
    }
    return render(request, "maintenance/index.html", ctx, status=status)


def _policy_row(policy):
    return {
        "policy": policy,
        "parameters": run_summary.describe_parameters(policy.kind, policy.parameters),
        "interval": duration_text(policy.interval),
        "hidden": _hidden_fields(policy.kind, policy.source_id, policy.parameters),
        "preview_url": job(policy.kind).preview_url,
    }


def _hidden_fields(kind, source_id, params):
    """(name, value) of the form fields that preview these parameters again."""
    described = job(kind)
    hidden = [(f"{kind}-source", source_id)] if described.needs_source else []
    return hidden + [pair for param in described.params for pair in param.field(kind, params)]


def _history_row(run):
    return {
        "run": run,
        "parameters": run_summary.describe_parameters(run.kind, run.parameters),
        "counts": run_summary.counts(run.kind, run.result),
        "bytes": run_summary.freed_bytes(run.kind, run.result),
    }


# --- Previews ------------------------------------------------------------------


@require_POST
@operator_required
def preview(request, kind):
    """Queue a dry run of a previewed job (one route per kind: `maintenance-<kind>-preview`)."""
    form = _job_form(kind, request.POST)
    if not form.is_valid():
        return _render_index(request, forms={kind: form}, status=400)
    parameters = dict(form.cleaned_data["parameters"])
    if job(kind).preview_clock:
        parameters["now"] = timezone.now().isoformat()
    return _queue(request, kind, form.cleaned_data.get("source"), parameters, dry_run=True, form=form)


def _queue(request, kind, source, parameters, *, dry_run, form):
    with transaction.atomic():
        holder = busy_run(kind, source)
        if holder is None:
            run = new_queued_run(kind, source=source, parameters=parameters, dry_run=dry_run,
                                 requested_by=request.user, origin="page")
    if holder is not None:
        form.add_error(None, _busy_message(holder))
        return _render_index(request, forms={kind: form}, status=409)
    try:
        enqueue(run)
    except QueueError as e:
        form.add_error(None, str(e))
        return _render_index(request, forms={kind: form}, status=503)
    return redirect("maintenance-run", pk=run.pk)


def _busy_message(holder):
    what = f"A {holder.kind}" + (f" of {holder.source.name}" if holder.source else "")
    return f"{what} is {holder.state} (run #{holder.pk}): wait for it to finish, then try again."


# --- A run -----------------------------------------------------------------------


def _get_run(pk):
    run = get_object_or_404(Run.objects.select_related("source", "requested_by"), pk=pk)
    now = timezone.now()
    # A run whose worker died or that never reached a worker is failed
    # here, so nobody watches a progress bar that will never move.
    if run.state == "running" and fail_dead_runs(run.lock_key, now=now):
        run.refresh_from_db()
    elif run.state == "queued" and now - run.created_at > lost_after():
        fail_lost_runs(now)
        run.refresh_from_db()
    return run


@viewer_required
def run_detail(request, pk):
    run = _get_run(pk)
    result = run.result or {}
    preview = follow_up = None
    if run.parameters.get("preview_run"):
        preview = Run.objects.filter(pk=run.parameters["preview_run"]).first()
    if run.dry_run:
        follow_up = Run.objects.filter(parameters__preview_run=run.pk).order_by("created_at").first()
    age = (timezone.now() - (run.finished_at or run.created_at)).total_seconds()
    can_run = request.user.has_perm(MAINTENANCE_PERM)
    described = job(run.kind)
    ctx = {
        "run": run,
        "job": described,
        "result": result,
        "figures": run_summary.figures(run.kind, result, dry_run=run.dry_run),
        "vacuum_rows": run_summary.vacuum_rows(result.get("vacuum")),
        "parameters": run_summary.describe_parameters(run.kind, run.parameters),
        "finished": run.state in ("done", "failed"),
        "waiting": run.state == "queued" and (timezone.now() - run.created_at).total_seconds() > WAITING_HINT_AFTER,
        "progress": _progress(run),
        "can_run": can_run,
        "preview": preview,
        "comparison": run_summary.compare(run.kind, preview.result, result) if preview and run.state == "done" else [],
        "changed": preview is not None and any(d for *_, d in run_summary.compare(run.kind, preview.result, result)),
        "follow_up": follow_up,
        "confirmable": (can_run and run.dry_run and run.state == "done" and described.previewed
                        and follow_up is None and age <= PREVIEW_MAX_AGE.total_seconds()),
        "stale_preview": run.dry_run and run.state == "done" and follow_up is None and age > PREVIEW_MAX_AGE.total_seconds(),
        "preview_max_age": duration_text(PREVIEW_MAX_AGE),
        "skipped_reasons": run_summary.skipped_by_reason(result.get("skipped")),
        "skipped_shown": (result.get("skipped") or [])[:SKIPPED_SHOWN],
        "skipped_total": len(result.get("skipped") or []),
        "freed": run_summary.freed_bytes(run.kind, result),
        "again": (_hidden_fields(run.kind, run.source_id, run.parameters)
                  if can_run and described.previewed and (run.source_id or not described.needs_source) else None),
        "active_window": duration_text(settings.PRUNE_ACTIVE_WINDOW),
        "result_json": json.dumps(result, indent=2, sort_keys=True, default=str),
        "policy_id": run.parameters.get("policy_id"),
        # A run that counted before it changed anything keeps those counts as its result's "preview" (a removal).
        "own_preview": run_summary.compare(run.kind, result["preview"], result) if "preview" in result else [],
    }
    return render(request, "maintenance/run.html", ctx)


def _progress(run):
    done, total = run.progress_done, run.progress_total
    percent = min(100, round(100 * done / total)) if total else None
    described = job(run.kind)
    return {"done": done, "total": total, "percent": percent, "unit": described.progress_unit,
            "listing": described.listing}


@viewer_required
def run_progress(request, pk):
    """The progress fragment the run page polls; JSON with ?format=json or Accept: application/json."""
    run = _get_run(pk)
    progress = _progress(run)
    if request.GET.get("format") == "json" or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({
            "id": run.pk, "kind": run.kind, "state": run.state, "dry_run": run.dry_run,
            "finished": run.state in ("done", "failed"), "progress_done": progress["done"],
            "progress_total": progress["total"], "percent": progress["percent"], "error": run.error,
            "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
            "url": reverse("maintenance-run", args=[run.pk]),
        })
    ctx = {"run": run, "progress": progress, "finished": run.state in ("done", "failed"),
           "waiting": run.state == "queued" and (timezone.now() - run.created_at).total_seconds() > WAITING_HINT_AFTER}
    response = render(request, "maintenance/_progress.html", ctx)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@operator_required
def run_confirm(request, pk):
    """Queue the real run of a finished preview, with the preview's parameters (and its `now`)."""
    with transaction.atomic():
        # The row lock makes a double click queue one run, not two.
        preview = get_object_or_404(Run.objects.select_for_update(), pk=pk, dry_run=True, kind__in=kinds(previewed=True))
        follow_up = Run.objects.filter(parameters__preview_run=preview.pk).first()
        if follow_up is not None:
            return redirect("maintenance-run", pk=follow_up.pk)
        if preview.state != "done":
            messages.error(request, "This preview did not finish: there is nothing to confirm.")
            return redirect("maintenance-run", pk=preview.pk)
        if timezone.now() - (preview.finished_at or preview.created_at) > PREVIEW_MAX_AGE:
            messages.error(request, "This preview is too old to confirm: preview again to see what goes now.")
            return redirect("maintenance-run", pk=preview.pk)
        if job(preview.kind).needs_source and preview.source is None:
            messages.error(request, "The source of this preview no longer exists.")
            return redirect("maintenance-run", pk=preview.pk)
        holder = busy_run(preview.kind, preview.source)
        if holder is not None:
            messages.error(request, _busy_message(holder))
            return redirect("maintenance-run", pk=preview.pk)
        run = new_queued_run(
            preview.kind, source=preview.source, parameters={**preview.parameters, "preview_run": preview.pk},
            dry_run=False, requested_by=request.user, origin="page",
        )
    try:
        enqueue(run)
    except QueueError as e:
        messages.error(request, str(e))
    return redirect("maintenance-run", pk=run.pk)


# --- Saved policies ------------------------------------------------------------------


@require_POST
@operator_required
def policy_new(request, kind):
    if kind not in JOBS or not job(kind).previewed:
        raise Http404("no such kind of policy")
    form = _job_form(kind, request.POST)
    policy_form = PolicyForm(request.POST, prefix="policy", auto_id=f"{kind}_%s")
    valid = form.is_valid()
    if not (policy_form.is_valid() and valid):
        return _render_index(request, forms={kind: form}, policy_forms={kind: policy_form}, status=400)
    source, parameters = form.cleaned_data.get("source"), form.cleaned_data["parameters"]
    interval = policy_form.cleaned_data["interval"]
    policy = SavedPolicy.objects.create(
        name=policy_form.cleaned_data["name"], kind=kind, source=source, parameters=parameters, interval=interval,
        created_by=request.user, next_run_at=timezone.now() + interval,
    )
    messages.success(request, f"Saved the {kind} policy “{policy.name}”: it runs every {duration_text(interval)}, first in {duration_text(interval)}.")
    return redirect(reverse("maintenance") + "#policies")


@require_POST
@operator_required
def policy_toggle(request, pk):
    policy = get_object_or_404(SavedPolicy, pk=pk)
    policy.enabled = not policy.enabled
    if policy.enabled:
        # Not at the next tick: a policy switched back on waits one interval, as a new one does.
        policy.next_run_at = timezone.now() + policy.interval
    policy.save(update_fields=["enabled", "next_run_at"])
    messages.success(request, f"{'Enabled' if policy.enabled else 'Disabled'} the policy “{policy.name}”.")
    return redirect(reverse("maintenance") + "#policies")


@require_POST
@operator_required
def policy_delete(request, pk):
    policy = get_object_or_404(SavedPolicy, pk=pk)
    name = policy.name
    policy.delete()
    messages.success(request, f"Deleted the policy “{name}”; its runs stay in the history.")
    return redirect(reverse("maintenance") + "#policies")
