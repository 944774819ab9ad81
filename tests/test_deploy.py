"""Deployed behind HTTPS (issue 10.10): Django's deployment check and login throttling."""

import json
import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.auth.models import User
from django.http import HttpRequest

from dashboard.throttle import client_address
from dashboard.tokens import create_token
from tests.mirror_data import make_user, static_settings  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _manage(tmp_path, *args, **env):
    """manage.py in its own process on the production settings, with a fresh embedded console."""
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("HTTPS", "TRUSTED_PROXY", "SECRET_KEY", "DEBUG", "HSTS_SECONDS")},
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "CONSOLE_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path}/console.db",
        **env,
    }
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_https(tmp_path):
    plain = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert plain.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in plain.stderr, plain.stderr

    done = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                   HTTPS="true", TRUSTED_PROXY="true", SECRET_KEY=secrets.token_urlsafe(50))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


RESPONSES = r"""
import json
from django.test import Client
client = Client(HTTP_HOST="127.0.0.1")  # a host the default ALLOWED_HOSTS accepts
plain = client.get("/accounts/login/")
proxied = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location")],
    "proxied": [proxied.status_code, proxied.get("Strict-Transport-Security")],
    "cookies": {name: bool(c["secure"]) for name, c in proxied.cookies.items()},
}))
"""


def test_https_redirects_sets_hsts_and_secure_cookies_behind_a_proxy(tmp_path):
    done = _manage(tmp_path, "shell", "-c", RESPONSES, HTTPS="yes", TRUSTED_PROXY="1", HSTS_SECONDS="600")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://127.0.0.1/accounts/login/"]
    assert seen["proxied"] == [200, "max-age=600; includeSubDomains; preload"]
    assert seen["cookies"] == {"csrftoken": True}


def test_without_a_trusted_proxy_the_forwarded_proto_is_ignored(tmp_path):
    done = _manage(tmp_path, "shell", "-c", RESPONSES, HTTPS="true")
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["proxied"][0] == 301, "a client must not be able to claim https through a header"


# --- login throttling -------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db


def _login(client, username, password, address="10.0.0.1", **headers):
    return client.post("/accounts/login/", {"username": username, "password": password},
                       REMOTE_ADDR=address, **headers)


@pytestmark_db
def test_failed_logins_lock_out_the_user_at_that_address(client, settings):
    assert settings.AXES_FAILURE_LIMIT == 5 and settings.AXES_COOLOFF_TIME == timedelta(minutes=15)
    make_user("ann", "viewer")
    make_user("bob", "viewer")
    for _ in range(4):
        response = _login(client, "ann", "wrong")
        assert response.status_code == 200 and "did not match" in response.content.decode()
    assert _login(client, "ann", "wrong").status_code == 429  # the fifth

    locked = _login(client, "ann", "pw-ann")  # even the right password
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed logins, try again in 15 minutes." in page
    assert "Back to the login page" in page and 'href="/accounts/login/"' in page
    assert "_auth_user_id" not in client.session

    # Every failed login is recorded, with the username and the address.
    failures = AccessFailureLog.objects.filter(username="ann", ip_address="10.0.0.1")
    assert failures.count() == 6 and failures.filter(locked_out=True).count() >= 1

    # Another user at that address, and that user from another address, still log in.
    assert _login(client, "bob", "pw-bob").status_code == 302
    client.logout()
    assert _login(client, "ann", "pw-ann", address="10.0.0.2").status_code == 302


@pytestmark_db
def test_a_lockout_ends_after_its_period(client, settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=30)  # what LOGIN_LOCKOUT=30m sets
    make_user("ann", "viewer")
    for _ in range(5):
        _login(client, "ann", "wrong")
    locked = _login(client, "ann", "pw-ann")
    assert locked.status_code == 429 and "try again in 30 minutes" in locked.content.decode()
    # The clock moves on by 31 minutes (the attempts' times move back: no wall-clock wait).
    for attempt in AccessAttempt.objects.all():
        AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=attempt.attempt_time - timedelta(minutes=31))
    assert _login(client, "ann", "pw-ann").status_code == 302


@pytestmark_db
def test_a_forged_forwarded_for_does_not_buy_fresh_guesses(client, settings):
    make_user("ann", "viewer")
    for i in range(5):
        _login(client, "ann", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    assert _login(client, "ann", "wrong", HTTP_X_FORWARDED_FOR="192.0.2.99").status_code == 429

    # Behind the trusted proxy the address is the one the proxy appended, never the client's claim.
    settings.TRUSTED_PROXY = True
    request = HttpRequest()
    request.META = {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7"}
    assert client_address(request) == "203.0.113.7"
    settings.TRUSTED_PROXY = False
    assert client_address(request) == "10.9.9.9"


@pytestmark_db
def test_tokens_and_admin_login_still_work(client):
    user = make_user("scripts", "viewer")
    token, _ = create_token(user)
    assert client.get("/api/summary/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    User.objects.create_superuser("root", password="pw-root")
    admin_login = client.post("/admin/login/?next=/admin/", {"username": "root", "password": "pw-root"},
                              REMOTE_ADDR="10.0.0.5")
    assert admin_login.status_code == 302 and admin_login["Location"] == "/admin/"
