"""Build demo data, sync it, start a task cluster and serve the console."""

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand

from checkpoints import demo
from checkpoints.models import Source
from checkpoints.sync import sync_source


class Command(BaseCommand):
    help = (
        "Write real LangGraph demo threads into a local SQLite checkpoint DB (files in the local blob "
        "store), sync them, create a login, start a task cluster and serve the console."
    )

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="where to serve (default 127.0.0.1:8000)")
        parser.add_argument("--threads", type=int, default=40, help="demo threads to write (default 40)")
        parser.add_argument("--no-serve", action="store_true", help="build and sync only")
        parser.add_argument("--no-cluster", action="store_true", help="do not start the task cluster")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        # Hashed, compressed static files (plotly.js among them) for WhiteNoise.
        call_command("collectstatic", interactive=False, verbosity=0)
        db_path = Path(settings.VAR_DIR) / "demo" / "checkpoints.sqlite"
        self.stdout.write(f"Writing demo threads into {db_path} ...")
        counts = demo.build(db_path, Path(settings.BLOB_ROOT), threads=options["threads"])
        files = f"{counts['files']} file" + ("" if counts["files"] == 1 else "s")
        self.stdout.write(f"  {counts['threads']} threads, {counts['checkpoints']} checkpoints, {files}")

        url = f"sqlite:///{db_path.resolve()}"
        source, _ = Source.objects.update_or_create(name="demo", defaults={"url": url, "kind": "sqlite", "sync_state": {}})
        result = sync_source(source, full=True, origin="demo")
        if result["error"]:
            self.stderr.write(f"sync failed: {result['error']}")
            sys.exit(1)
        self.stdout.write(f"  synced: {result['threads']} threads, {result['checkpoints']} checkpoints")

        password = secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username="demo")
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        user.groups.add(Group.objects.get(name="operator"))
        viewer_password = secrets.token_urlsafe(12)
        viewer, _ = User.objects.get_or_create(username="viewer")
        viewer.set_password(viewer_password)
        viewer.save()
        viewer.groups.add(Group.objects.get(name="viewer"))

        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"Checkpoint Console: http://{options['addr']}/"))
        self.stdout.write(f"  operator login: demo / {password}")
        self.stdout.write(f"  viewer login:   viewer / {viewer_password}")
        self.stdout.write("")
        if options["no_serve"]:
            return

        cluster = None
        if not options["no_cluster"]:
            # The cluster runs syncs on their schedule and the maintenance
            # runs queued from the pages.
            cluster = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR, start_new_session=True
            )
        # A plain SIGTERM would end the process without running `finally`
        # and leave the cluster running on its own.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            call_command("runserver", options["addr"], use_reloader=False)
        except KeyboardInterrupt:
            pass
        finally:
            if cluster is not None:
                # django-q2 stops its own workers on SIGTERM to the main process.
                cluster.terminate()
                try:
                    cluster.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(cluster.pid, signal.SIGKILL)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
