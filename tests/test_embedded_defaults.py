"""The README's first command on the embedded defaults: a SQLite console and the local file store.

The rest of the suite runs the console on PostgreSQL; this runs `demo` in a
separate process on a fresh SQLite console, as a new user would, then opens
every page as its operator (a download included), checks what the sync
and the reference check after it wrote, and runs each job's command.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PAGES = r"""
import json, sys
from django.http import HttpRequest
from django.test import Client
from django.urls import reverse
from checkpoints.models import BlobReference, Checkpoint, Run, Thread

user, password = sys.argv[1], sys.argv[2]
client = Client(HTTP_HOST="127.0.0.1")  # a host the default ALLOWED_HOSTS accepts
assert client.login(request=HttpRequest(), username=user, password=password)  # axes needs the request
thread = Thread.objects.filter(external_bytes__gt=0).first()
ref = BlobReference.objects.filter(exists=True, uses__thread=thread).first()
checkpoint = Checkpoint.objects.filter(thread=thread).order_by("-checkpoint_id").first()
tag = thread.tag_rows.first()
urls = [
    "/", "/?range=all", "/threads/", f"/threads/?tag={tag.key}:{tag.value}&sort=stored",
    reverse("thread", args=[thread.source.name, thread.thread_id]), reverse("checkpoint", args=[checkpoint.pk]),
    "/maintenance/", "/api/summary/", "/api/threads/",
    reverse("api-thread", args=[thread.source.name, thread.thread_id]), "/metrics",
]
status = {url: client.get(url).status_code for url in urls}
download = client.get(reverse("blob-download", args=[ref.pk]))
status["download"] = download.status_code
if download.status_code == 302:
    status["download target"] = client.get(download["Location"]).status_code
runs = {f"{run.kind} {run.state}": run.error for run in Run.objects.all()}
print(json.dumps({"status": status, "runs": runs, "external": thread.external_bytes}))
"""


def test_demo_on_a_sqlite_console_syncs_checks_references_and_serves_every_page(tmp_path, pg_saver, pg_source_url):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/console.db",
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    for name in ("CHECKPOINT_DATABASE_URL", "S3_BUCKET_NAME", "BLOB_ROOT"):
        env.pop(name, None)
    demo = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-serve", "--no-cluster", "--threads", "6"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output and "failed" not in output, output
    user, password = re.search(r"operator login: (\S+) / (\S+)", output).groups()

    pages = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PAGES.replace("sys.argv[1], sys.argv[2]", f"{user!r}, {password!r}")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert pages.returncode == 0, pages.stdout + pages.stderr
    report = json.loads(pages.stdout.strip().splitlines()[-1])
    assert report["status"].pop("download") == 302
    assert set(report["status"].values()) == {200}, report["status"]
    assert report["runs"] == {"sync done": "", "refcheck done": ""}, report["runs"]
    assert report["external"] > 0

    # The jobs, as a user scripts them on the same console: dry runs first, then a real prune.
    def command(*args):
        done = subprocess.run([sys.executable, "manage.py", *args, "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    assert command("sync_checkpoints")["sources"][0]["error"] is None
    preview = command("prune_checkpoints", "--older-than", "0s", "--keep-last", "1", "--dry-run")
    assert preview["checkpoints"] > 0
    pruned = command("prune_checkpoints", "--older-than", "0s", "--keep-last", "1")
    assert pruned["checkpoints"] == preview["checkpoints"] and pruned["threads"] == preview["threads"]
    sweep = command("sweep_orphans", "--dry-run")
    assert sweep["deleted"] == 0 and not sweep.get("error"), sweep
    assert command("check_references")["error"] is None

    # A PostgreSQL source mirrored into the SQLite console: metadata arrives as JSON text there.
    from tests.graphs import run_scenarios

    run_scenarios(pg_saver)
    env["CHECKPOINT_DATABASE_URL"] = pg_source_url
    assert all(s["error"] is None for s in command("sync_checkpoints")["sources"])
    check = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from checkpoints.models import Checkpoint, Thread; "
         "rows = Checkpoint.objects.filter(source__name='default'); "
         "print(rows.count(), all(isinstance(c.metadata, dict) for c in rows), "
         "Thread.objects.get(source__name='default', thread_id='t-chat2').tags['tenant'])"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    count, all_dicts, tenant = check.stdout.split()[-3:]
    assert int(count) > 0 and all_dicts == "True" and tenant == "globex", check.stdout + check.stderr
