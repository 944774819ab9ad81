"""Errors a person reads (issue 11.3): one line for a bad setting or an unreachable
console database, and the console's own 400/403/404/500 pages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import path

from dashboard.urls import handler404, handler500, urlpatterns as console_urls  # noqa: F401
from tests.mirror_data import make_user, static_settings  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql://postgres@127.0.0.1:9/console"  # the discard port: nothing listens


def _run(tmp_path, args, **env):
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("DEBUG", "CHECKPOINT_DATABASE_URL", "DATABASE_URL")},
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path}/console.db",
        **env,
    }
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variable, value, says", [
    ("DATABASE_URL", "not-a-url", "not a URL"),
    ("SYNC_INTERVAL", "soon", "not a duration"),
    ("CHECKPOINT_DATABASE_URL", "/srv/agents/checkpoints.db", "write sqlite:////srv/agents/checkpoints.db"),
    ("DATABASE_URL", "postgresql://console:hunter2@db.internal/", "names no database"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path, variable, value, says):
    for command in (["manage.py", "sync_checkpoints"], ["manage.py", "migrate"], ["-c", "import dashboard.wsgi"]):
        done = _run(tmp_path, command, **{variable: value})
        assert done.returncode != 0 and done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"Configuration error: {variable}=") and says in lines[0], lines[0]
        assert "hunter2" not in done.stderr

    traced = _run(tmp_path, ["manage.py", "sync_checkpoints", "--traceback"], **{variable: value})
    assert traced.returncode != 0 and "Traceback" in traced.stderr and "ImproperlyConfigured" in traced.stderr
    debug = _run(tmp_path, ["manage.py", "sync_checkpoints"], DEBUG="true", **{variable: value})
    assert "Traceback" in debug.stderr


def test_an_unreachable_console_database_is_one_line_naming_the_host(tmp_path):
    for command in (["manage.py", "migrate"], ["manage.py", "createsuperuser", "--noinput", "--username", "x"]):
        done = _run(tmp_path, command, DATABASE_URL=UNREACHABLE)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("The console database cannot be reached: PostgreSQL at 127.0.0.1:9, database 'console'")
        assert "DATABASE_URL" in lines[0]
    # The sync says so in its own words, with its JSON object under --json.
    for command in (["manage.py", "sync_checkpoints"], ["manage.py", "sync_checkpoints", "--json"]):
        done = _run(tmp_path, command, DATABASE_URL=UNREACHABLE)
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
        assert "the console database failed (PostgreSQL at 127.0.0.1:9, database 'console')" in done.stderr

    wsgi = _run(tmp_path, ["-c", "import dashboard.wsgi"], DATABASE_URL=UNREACHABLE)
    assert wsgi.returncode == 3 and len(wsgi.stderr.splitlines()) == 1 and "127.0.0.1:9" in wsgi.stderr

    traced = _run(tmp_path, ["manage.py", "migrate", "--traceback"], DATABASE_URL=UNREACHABLE)
    assert "Traceback" in traced.stderr and "OperationalError" in traced.stderr


def test_a_healthy_start_prints_nothing(tmp_path):
    done = _run(tmp_path, ["-c", "import dashboard.wsgi; print(dashboard.wsgi.application)"])
    assert done.returncode == 0 and done.stderr == "" and "WSGIHandler" in done.stdout


# --- pages --------------------------------------------------------------------------------


def boom(request):
    raise RuntimeError("a bug")


def refused(request):
    raise PermissionDenied("only operators may do this")


urlpatterns = console_urls + [path("boom/", boom), path("api/boom/", boom), path("refused/", refused)]


@pytest.fixture
def error_urls(settings):
    settings.ROOT_URLCONF = "tests.test_errors"
    settings.DEBUG = False


@pytest.mark.django_db
def test_404_500_and_403_pages_are_the_consoles_own(error_urls, client):
    client.force_login(make_user("vera", "viewer"))
    missing = client.get("/no/such/page/")
    assert missing.status_code == 404
    page = missing.content.decode()
    assert "<h1>Not found</h1>" in page and "/no/such/page/" in page and 'href="/">Back to the overview' in page
    assert "css/console.css" in page and "vera" in page  # styled like every page, with the navigation

    api = client.get("/api/no-such-thing/")
    assert api.status_code == 404 and api.json() == {"error": "not found"}

    denied = client.get("/refused/")
    assert denied.status_code == 403
    assert "<h1>Not allowed</h1>" in denied.content.decode() and "only operators may do this" in denied.content.decode()

    quiet = Client(raise_request_exception=False)
    quiet.force_login(make_user("otto", "viewer"))
    error = quiet.get("/boom/")
    assert error.status_code == 500
    page = error.content.decode()
    assert "<h1>Server error</h1>" in page and 'href="/">Back to the overview' in page and "a bug" not in page
    api_error = quiet.get("/api/boom/")
    assert api_error.status_code == 500 and "error" in api_error.json()


@pytest.mark.django_db
def test_a_form_that_fails_its_csrf_check_gets_the_consoles_page():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    assert "<h1>Form expired</h1>" in response.content.decode() and "css/console.css" in response.content.decode()


@pytest.mark.django_db
def test_a_viewer_opening_the_admin_is_told_it_is_for_staff(client):
    client.force_login(make_user("vera", "viewer"))
    response = client.get("/admin/", follow=True)
    assert response.status_code == 403
    page = response.content.decode()
    assert "Admin: staff only" in page and "not a staff account" in page and 'name="password"' not in page
    assert client.get("/admin/login/?next=/admin/").status_code == 403


@pytest.mark.django_db
def test_staff_and_anonymous_users_still_reach_the_admin(client, admin_user):
    login = client.get("/admin/", follow=True)
    assert login.status_code == 200 and 'name="password"' in login.content.decode()
    client.force_login(admin_user)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/login/").status_code == 302
