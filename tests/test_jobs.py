"""The job registry (checkpoints/jobs.py) is the one description of every kind of Run.

Each registered job runs for real on a LangGraph database (through the page where the page runs
it, else through its own function), and its run page shows the figures, counts and comparison
rows the registry describes. The views, the task queue and the templates hold no job-kind
strings of their own: a kind is known in one place.
"""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import get_commands
from django.urls import reverse
from django.utils.module_loading import import_string

from checkpoints.jobs import JOBS, KIND_CHOICES, job, kinds
from checkpoints.models import Run, Source
from checkpoints.removal import remove_source
from checkpoints.run_history import ROUTINE_KINDS
from dashboard import run_summary
from dashboard.models import SavedPolicy
from storage.refcheck import run_reference_check
from storage.s3saver import S3Saver
from tests.graphs import chat_graph, config, file_graph
from tests.mirror_data import operator, operator_client  # noqa: F401
from tests.test_maintenance_support import make_source, old_scenarios, prune_post

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
KIND_STRING = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, JOBS)))
# A kind compared, filtered on or locked by a literal of its own (`kind == "prune"`, `kind__in=["sync"]`, `busy_run("remove")`).
KIND_CHECK = re.compile(r"""(kind\w*\s*(==|!=|=|\bin\b)\s*[\[(]?\s*|(start_run|lock_key|busy_run|new_queued_run|queue_run)\(\s*)["'](%s)["']"""
                        % "|".join(map(re.escape, JOBS)))


def test_the_models_and_the_retention_take_the_kinds_from_the_registry():
    assert Run._meta.get_field("kind").choices == KIND_CHOICES == [(k, j.label) for k, j in JOBS.items()]
    assert SavedPolicy._meta.get_field("kind").choices == [(k, job(k).label) for k in kinds(previewed=True)]
    assert set(ROUTINE_KINDS) == {k for k, j in JOBS.items() if j.routine}


def test_every_named_function_form_command_and_template_exists():
    from django.template.loader import get_template

    commands = get_commands()
    for kind, described in JOBS.items():
        assert callable(import_string(described.runner)), kind
        assert described.command in commands, kind
        if described.queued:
            assert callable(import_string(described.queued)), kind
        if described.previewed:
            assert reverse(described.preview_url).endswith(f"/{kind}/preview")
            assert import_string(described.form)(prefix=kind).prefix == kind
            assert described.confirm_template and described.form_template, kind
        for name in (described.form_template, described.confirm_template, described.summary_template,
                     described.result_template):
            if name:
                get_template(name)
        keys = {p.key for p in described.params}
        assert len(keys) == len(described.params), kind


def test_no_view_task_or_template_compares_a_job_kind_of_its_own():
    """Kind strings live in checkpoints/jobs.py; the maintenance code and templates ask it."""
    for old in ['if run.kind == "prune":', 'kind__in=["prune", "sweep"]', 'filter(kind="sync")', 'busy_run("remove", s)',
                'run.kind in ("prune", "sweep")', 'start_run("sync", source']:
        assert KIND_CHECK.search(old), old
    assert not KIND_CHECK.search('{"sweep": run}')
    python = ["dashboard/maintenance.py", "dashboard/maintenance_forms.py", "dashboard/run_summary.py",
              "dashboard/tasks.py", "dashboard/planner.py", "dashboard/api.py", "dashboard/metrics.py",
              "dashboard/sources.py", "storage/overview.py", "storage/sweep.py", "storage/refcheck.py",
              "checkpoints/run_history.py", "checkpoints/removal.py", "checkpoints/sync.py", "checkpoints/prune.py"]
    for name in python:
        code = "\n".join(line for line in (ROOT / name).read_text().splitlines()
                         if not line.lstrip().startswith(("#", ">>>", "...")))
        assert not KIND_CHECK.findall(code), name
    templates = sorted((ROOT / "templates" / "maintenance").rglob("*.html"))
    assert templates
    for path in templates:
        text = path.read_text()
        assert not KIND_STRING.findall(text), path


@pytest.fixture
def file_store(tmp_path, settings):
    root = tmp_path / "blobs"
    root.mkdir()
    settings.BLOB_ROOT = root
    settings.S3_BUCKET_NAME = ""
    settings.PRUNE_ACTIVE_WINDOW = timedelta(0)
    settings.CHECKPOINT_DATABASE_URL = ""
    return root


def test_each_registered_job_runs_and_its_run_page_shows_what_the_registry_describes(
    operator_client, sqlite_saver, sqlite_source_url, file_store, moto_s3, s3_bucket,
):
    referenced = file_store / "u1" / "report.pdf"
    referenced.parent.mkdir(parents=True)
    referenced.write_bytes(b"pdf")
    old_scenarios(sqlite_saver)
    file_graph(sqlite_saver).invoke({"attachment": f"file://{referenced}"}, config("with-file"))
    source = make_source(sqlite_source_url)  # a sync
    run_reference_check(source=source)
    # A lifecycle policy needs an S3 store (one thread written by the S3 saver).
    s3_saver = S3Saver(s3_bucket, "agents/", client=moto_s3.client(), metrics=False)
    chat_graph(s3_saver).invoke({"messages": ["hi"]}, config("on-s3"))
    s3_source = Source.objects.create(name="s3src", url=f"s3://{s3_bucket}/agents/", kind="s3")
    posts = {
        "prune": prune_post(source),
        "sweep": {"sweep-grace": "1h"},
        "lifecycle": {"lifecycle-source": s3_source.pk, "lifecycle-expire_days": "30",
                      "lifecycle-archive_storage_class": "GLACIER", "lifecycle-abort_multipart_days": "7"},
    }
    assert set(posts) == set(kinds(previewed=True)), "a previewed job this test does not post"
    for kind in kinds(previewed=True):
        response = operator_client.post(reverse(job(kind).preview_url), posts[kind])
        preview = Run.objects.get(kind=kind, dry_run=True)
        assert response["Location"] == reverse("maintenance-run", args=[preview.pk]) and preview.state == "done"
        operator_client.post(reverse("maintenance-run-confirm", args=[preview.pk]))
        assert Run.objects.get(kind=kind, dry_run=False).state == "done"
    remove_source(source)
    runs = list(Run.objects.order_by("pk"))
    assert {r.kind for r in runs} == set(JOBS), "a registered job with no run here"

    history = operator_client.get("/maintenance/", {"kind": "all"}).content.decode()
    for run in runs:
        described = job(run.kind)
        assert run.state == "done", (run.kind, run.error)
        page = operator_client.get(reverse("maintenance-run", args=[run.pk])).content.decode()
        assert f"<h1>{described.label}{' preview' if run.dry_run else ''}" in page
        for figure in described.figures:
            label = figure.dry_label if run.dry_run and figure.dry_label else figure.label
            assert f'<span class="label">{label}</span>' in page, (run.kind, label)
        if described.result_template:
            assert "<h2>Result</h2><pre>" not in page
        else:
            assert "<h2>Result</h2><pre>" in page, run.kind
        if run.parameters.get("preview_run"):
            for _, label in described.compared:
                assert f"<td>{label}</td>" in page, (run.kind, label)
        if "preview" in run.result:  # a removal compares its own count with what it removed
            for _, label in described.compared:
                assert f"<th>{label}</th>" in page, (run.kind, label)
        for n, label in run_summary.counts(run.kind, run.result):
            assert f"{n:,} {label}</span>" in history, (run.kind, label)
