"""Losing the console database mid-sync (issue 10.9): one line, and the JSON object with --json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.graphs import run_scenarios

ROOT = Path(__file__).resolve().parent.parent

# The console's connection is cut (as a restart or failover of its server
# cuts it) at the sync's first write into the mirror's checkpoints.
CUT = """
CREATE FUNCTION cut_console() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
CREATE TRIGGER cut_console BEFORE INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION cut_console();
"""


@pytest.fixture
def console_that_dies(django_db_setup, django_db_blocker):
    from checkpoints.models import Checkpoint

    table = connection.ops.quote_name(Checkpoint._meta.db_table)
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(CUT.format(table=table))
        settings = connection.settings_dict
        url = f"postgresql://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"
        try:
            yield url
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TRIGGER cut_console ON {table}; DROP FUNCTION cut_console()")


@pytest.mark.django_db(transaction=True)
def test_losing_the_console_database_mid_sync_is_one_line(console_that_dies, sqlite_saver, sqlite_source_url, tmp_path):
    run_scenarios(sqlite_saver)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "DATABASE_URL": console_that_dies,
           "CHECKPOINT_DATABASE_URL": sqlite_source_url, "CONSOLE_VAR_DIR": str(tmp_path / "var")}
    env.pop("DEBUG", None)

    def sync(*args):
        return subprocess.run([sys.executable, "manage.py", "sync_checkpoints", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    done = sync()
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("CommandError: sync stopped: the console database failed (PostgreSQL at ")
    assert "terminat" in lines[0] or "closed" in lines[0], lines[0]

    as_json = sync("--json")
    assert as_json.returncode == 1 and len(as_json.stderr.splitlines()) == 1, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["sources"] == [] and result["error"].startswith("sync stopped: the console database failed")

    traced = sync("--traceback")
    assert traced.returncode != 0 and "Traceback" in traced.stderr
    assert "During handling of the above exception, another exception occurred" not in traced.stderr


@pytest.mark.django_db
def test_a_database_that_stays_down_raises_its_first_error_only(monkeypatch):
    """When recording the failure fails too (the database is still down), the first error goes up alone."""
    from django.db import OperationalError

    from checkpoints import sync
    from checkpoints.models import Source

    source = Source.objects.create(name="s", url="sqlite:////nowhere.db", kind="sqlite")
    lost = OperationalError("server closed the connection unexpectedly")

    def fail(*args, **kwargs):
        raise lost

    monkeypatch.setattr(sync, "_sync", fail)
    monkeypatch.setattr(sync, "_record", lambda *a, **k: fail())
    with pytest.raises(OperationalError) as raised:
        sync.sync_source(source)
    assert raised.value is lost and raised.value.__context__ is None
