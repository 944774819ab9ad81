"""Test settings: the console's own database is a real PostgreSQL."""

import os
import tempfile

os.environ.setdefault("CONSOLE_VAR_DIR", tempfile.mkdtemp(prefix="console-var-"))

from checkpoints.dburl import parse_database_url  # noqa: E402
from dashboard.settings import *  # noqa: E402,F401,F403
from tests.pg import server_url  # noqa: E402

DATABASES = {"default": parse_database_url(server_url())}
# One test database per pytest process, so that concurrent runs on one
# server (a developer's and CI's, or several checkouts) never collide.
DATABASES["default"]["TEST"] = {"NAME": f"test_console_{os.getpid()}"}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
# Pages render without collectstatic having run; the manifest storage is
# exercised by the demo test, which collects into a temporary directory.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
