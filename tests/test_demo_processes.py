"""`demo` checks its address first and never leaves its task cluster behind (issue 11.4)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from dashboard.management.commands import demo as demo_command

ROOT = Path(__file__).resolve().parent.parent


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_with(marker):
    """PIDs of live processes whose environment holds marker (this demo's own var dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                if (entry / "stat").read_text().split(") ", 1)[1][0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            pass
    return found


def _demo_env(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/console.db",
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    for name in ("CHECKPOINT_DATABASE_URL", "S3_BUCKET_NAME", "BLOB_ROOT", "DEBUG"):
        env.pop(name, None)
    return env


def test_a_taken_port_stops_the_demo_before_it_touches_anything(tmp_path):
    previous = tmp_path / "var" / "demo" / "checkpoints.sqlite"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"yesterday's demo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "manage.py", "demo", "--addr", f"127.0.0.1:{port}", "--threads", "2"],
                              cwd=ROOT, env=_demo_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stdout == "" and "login" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port} is not free" in lines[0] and "--addr 127.0.0.1:" in lines[0], done.stderr
    assert previous.read_bytes() == b"yesterday's demo"
    assert not (tmp_path / "console.db").exists() or (tmp_path / "console.db").stat().st_size == 0
    assert _processes_with(str(tmp_path / "var")) == []


def test_ctrl_c_stops_the_server_and_the_whole_task_cluster(tmp_path):
    marker = str(tmp_path / "var")
    port = _free_port()
    # As from a terminal: SIGINT at its default even when this test runs in the background (ignored there).
    demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--addr", f"127.0.0.1:{port}", "--threads", "2"],
                            cwd=ROOT, env=_demo_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while True:
            assert demo.poll() is None, demo.communicate()
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=10).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the demo never answered"
            time.sleep(0.5)
        # The cluster's main process and its workers (django-q2 starts several).
        while len(_processes_with(marker)) < 3:
            assert time.monotonic() < deadline, _processes_with(marker)
            time.sleep(0.5)

        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    assert "Traceback" not in err
    assert _processes_with(marker) == []


@pytest.mark.django_db
@pytest.mark.parametrize("failure, says", [
    (RuntimeError("a bug in serving"), None),
    (OSError(98, "Address already in use"), "Address already in use"),
])
def test_an_error_while_serving_stops_the_cluster_group(settings, tmp_path, monkeypatch, failure, says):
    settings.STATIC_ROOT = tmp_path / "static"
    pids = tmp_path / "pids"
    # A cluster stand-in: a leader and a worker of its own, both in the cluster's process group.
    tree = ("import subprocess, sys, time; "
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pids)!r}, 'w').write(f'{{w.pid}}'); time.sleep(600)")
    monkeypatch.setattr(demo_command, "CLUSTER_COMMAND", [sys.executable, "-c", tree])

    def serve(host, port):
        deadline = time.monotonic() + 120
        while not pids.exists() or not pids.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        raise failure

    monkeypatch.setattr(demo_command, "serve", serve)
    with pytest.raises(CommandError if says else RuntimeError) as raised:
        call_command("demo", "--threads", "2", "--addr", f"127.0.0.1:{_free_port()}")
    if says:
        assert says in str(raised.value) and "--addr" in str(raised.value)
    worker = int(pids.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
