"""Server time the download view adds over the permission check alone.

    python3 bench/bench_download.py [--n 2000] [--database-url URL]

Target (issue 4): `/blobs/<pk>/download` adds at most 5 ms over the
permission check, because presigning is local (no request to S3).

How: Django's test Client drives the real middleware stack and views in this
process. The baseline is a view with the same decorators and the same
permission check as the download view (login, session, user, group
permissions) that returns at once. The measured views are the real
`/blobs/<pk>/download` for an s3:// reference (get the reference, classify
it, presign, record the Download row, redirect) and for a file:// one
(resolve the path, sign a local link). Both wall-clock time and this
thread's CPU time are reported: on a shared machine the CPU time is the
steadier figure, the wall-clock one is the target's. Requests alternate between baseline
and measured so drift hits both; the first requests (boto3 client build,
first queries) are warm-up and not counted. S3 is never contacted: the
endpoint is a closed loopback port, which is also proof that presigning is
local.

The console's database is a throwaway SQLite file (the embedded default)
unless --database-url names a PostgreSQL database this script may migrate.
"""

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure(database_url):
    var = Path(tempfile.mkdtemp(prefix="bench-download-"))
    (var / "blobs").mkdir()
    os.environ.update({
        "CONSOLE_VAR_DIR": str(var),
        "DATABASE_URL": database_url or f"sqlite:///{var / 'console.sqlite3'}",
        "ALLOWED_HOSTS": "testserver",
        "S3_BUCKET_NAME": "bench-bucket",
        "S3_PREFIX": "uploads/",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "S3_FORCE_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "BLOB_ROOT": str(var / "blobs"),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    })
    import django

    django.setup()
    return var


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="timed requests per view (default 2000)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--database-url", default="", help="a PostgreSQL database to migrate and use (default: temp SQLite)")
    args = parser.parse_args()
    var = configure(args.database_url)

    from django.contrib.auth.decorators import login_required
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.http import HttpResponse
    from django.test import Client, override_settings
    from django.urls import include, path
    from django.utils import timezone as djtz
    from django.views.decorators.http import require_GET

    from checkpoints.models import BlobReference, Checkpoint, ReferenceUse, Source, Thread
    from storage import views as storage_views
    from storage.models import Download

    @require_GET
    @login_required
    def permission_only(request, pk):
        if not request.user.has_perm(storage_views.DOWNLOAD_PERM):
            return HttpResponse(status=403)
        return HttpResponse(status=204)

    class URLs:
        urlpatterns = [path("bench/permission/<int:pk>", permission_only), path("", include("dashboard.urls"))]

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench-operator", password="x")
    user.groups.add(Group.objects.get(name="operator"))
    source = Source.objects.create(name="bench", url="sqlite:////nonexistent.db", kind="sqlite")
    thread = Thread.objects.create(source=source, thread_id="bench-thread")
    ckpt = Checkpoint.objects.create(source=source, thread=thread, checkpoint_id="c1", created_at=djtz.now())
    (var / "blobs" / "report.pdf").write_bytes(b"%PDF" * 1000)
    refs = {
        "s3": BlobReference.objects.create(uri="s3://bench-bucket/uploads/u1/report.pdf", store="s3"),
        "file": BlobReference.objects.create(uri=f"file://{var / 'blobs' / 'report.pdf'}", store="file"),
    }
    for ref in refs.values():
        ReferenceUse.objects.create(reference=ref, thread=thread, checkpoint=ckpt, location="value:attachment")

    client = Client()
    client.force_login(user)
    load_before = f"{os.getloadavg()[0]:.2f}"

    def timed(url, expect):
        c, t = time.thread_time_ns(), time.perf_counter_ns()
        r = client.get(url)
        wall, cpu = (time.perf_counter_ns() - t) / 1e6, (time.thread_time_ns() - c) / 1e6
        if r.status_code != expect:
            raise SystemExit(f"{url} answered {r.status_code}, expected {expect}")
        return wall, cpu

    results = {}
    with override_settings(ROOT_URLCONF=URLs):
        for name, ref in refs.items():
            base_url, view_url = f"/bench/permission/{ref.pk}", f"/blobs/{ref.pk}/download"
            for _ in range(args.warmup):
                timed(base_url, 204), timed(view_url, 302)
            base, view = [], []
            for _ in range(args.n):
                base.append(timed(base_url, 204))
                view.append(timed(view_url, 302))
            results[name] = {
                kind: (statistics.median(b[i] for b in base), statistics.median(v[i] for v in view))
                for i, kind in enumerate(("wall", "cpu"))
            }

    engine = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"
    print(f"bench_download: {args.n} timed requests per view, {args.warmup} warm-up; console DB {engine}")
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"downloads recorded: {Download.objects.count()}")
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f}")
    ok = True
    for name, by_kind in results.items():
        for kind, (base, view) in by_kind.items():
            added = view - base
            if kind == "wall":
                ok &= added <= 5.0
            print(f"{name:4} {kind:4}  permission check only: median {base:7.3f} ms   download view: median {view:7.3f} ms   "
                  f"added {added:6.3f} ms   ratio {view / base:.2f}x")
    print(f"target (wall-clock added <= 5 ms): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
