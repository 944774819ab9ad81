"""Build demo data, sync it, start a task cluster and serve the console.

The address is checked before anything is written, and the task cluster runs
in its own process group, which is stopped whole on every way out (the
server failing, Ctrl-C, SIGTERM, an exception; on Linux even SIGKILL of this
process): a demo never leaves workers running under PID 1.
"""

import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.core.management.commands.runserver import naiveip_re
from django.core.servers.basehttp import WSGIServer, get_internal_wsgi_application, run

from checkpoints import demo
from checkpoints.models import Source
from checkpoints.sources.registry import kind_of
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
        host, port = parse_addr(options["addr"])
        if not options["no_serve"]:
            check_free(host, port)  # before any data is written
        call_command("migrate", interactive=False, verbosity=0)
        # Hashed, compressed static files (plotly.js among them) for WhiteNoise.
        call_command("collectstatic", interactive=False, verbosity=0)
        db_path = Path(settings.VAR_DIR) / "demo" / "checkpoints.sqlite"
        self.stdout.write(f"Writing demo threads into {db_path} ...")
        counts = demo.build(db_path, Path(settings.BLOB_ROOT), threads=options["threads"])
        files = f"{counts['files']} file" + ("" if counts["files"] == 1 else "s")
        self.stdout.write(f"  {counts['threads']} threads, {counts['checkpoints']} checkpoints, {files}")

        url = f"sqlite:///{db_path.resolve()}"
        source, _ = Source.objects.update_or_create(name="demo", defaults={"url": url, "kind": kind_of(url), "sync_state": {}})
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
        self.stdout.write(self.style.SUCCESS(f"Checkpoint Console: http://{_url_host(host)}:{port}/"))
        self.stdout.write(f"  operator login: demo / {password}")
        self.stdout.write(f"  viewer login:   viewer / {viewer_password}")
        self.stdout.write("")
        if options["no_serve"]:
            return

        cluster = None
        # A plain SIGTERM would end the process without running `finally`
        # and leave the cluster running on its own.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if not options["no_cluster"]:
                # The cluster runs syncs on their schedule and the maintenance
                # runs queued from the pages.
                cluster = start_cluster()
            self.stdout.write("Serving; Ctrl-C stops the server and the task cluster.")
            serve(host, port)
        except KeyboardInterrupt:
            pass
        except OSError as e:
            # Taken between the check and now, or not ours to bind.
            raise CommandError(f"cannot serve on {_url_host(host)}:{port}: {e.strerror or e}; {_suggest(host, port)}") from None
        finally:
            if cluster is not None:
                # A second Ctrl-C must not cut the cleanup short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                stop_cluster(cluster)


# The cluster's command; tests replace it with a small process tree.
CLUSTER_COMMAND = [sys.executable, "manage.py", "qcluster"]
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the cluster's first process: SIGTERM when the demo dies, even by SIGKILL (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_cluster():
    # Its own session, hence its own process group: Ctrl-C in the terminal
    # reaches only the demo, which then stops the whole group, workers included.
    return subprocess.Popen(CLUSTER_COMMAND, cwd=settings.BASE_DIR, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop_cluster(cluster, grace=30):
    """SIGTERM to the cluster's process group (django-q2 stops its workers), SIGKILL to what remains."""
    group = cluster.pid  # the leader of its own session and group
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        cluster.poll()  # reap the leader, so that the group empties
        if not _group_alive(group):
            return
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)
    cluster.wait()


def _signal_group(group, sig):
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def serve(host, port):
    """Django's development server, without runserver's os._exit(1) on a bind error."""
    ipv6 = ":" in host
    run(host, port, get_internal_wsgi_application(), ipv6=ipv6, threading=True, server_cls=WSGIServer)


def parse_addr(text):
    """`host:port`, `[v6]:port` or a port, as runserver takes them.

    >>> parse_addr("127.0.0.1:8001"), parse_addr("9000"), parse_addr("[::1]:8000")
    (('127.0.0.1', 8001), ('127.0.0.1', 9000), ('::1', 8000))
    """
    match = re.match(naiveip_re, text)
    if match is None:
        raise CommandError(f"--addr {text!r} is not an address: use HOST:PORT or PORT, such as 127.0.0.1:8001")
    host = (match["addr"] or "127.0.0.1").strip("[]")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise CommandError(f"--addr {text!r}: the port must be between 1 and 65535")
    return host, port


def check_free(host, port):
    """CommandError (one line, exit 1) when the server could not bind host:port."""
    error = _bind_error(host, port)
    if error:
        raise CommandError(f"{_url_host(host)}:{port} is not free ({error}); {_suggest(host, port)}")


def _bind_error(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the server binds: a port left in TIME_WAIT by a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def _suggest(host, port):
    for candidate in range(port + 1, min(port + 50, 65536)):
        if _bind_error(host, candidate) is None:
            return f"pass another address, such as --addr {_url_host(host)}:{candidate}"
    return "pass another address with --addr HOST:PORT"


def _url_host(host):
    return f"[{host}]" if ":" in host else host


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
