"""A PostgreSQL server with wal_level=logical, for the change-capture tests.

The machine's server (TEST_DATABASE_URL) runs with wal_level=replica, and a
user's machine may have none: these tests start their own from the `pgserver`
wheel, which bundles PostgreSQL with the pgoutput plugin, once per session.
"""

import os
import tempfile
import warnings

_started = {}


def logical_server_url() -> str:
    if "url" not in _started:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
            from pgserver._commands import pg_ctl

        data_dir = tempfile.mkdtemp(prefix="console-pg-logical-")
        os.chmod(data_dir, 0o777)  # pgserver runs postgres as an unprivileged user when we are root
        server = pgserver.get_server(data_dir, cleanup_mode="delete")
        server.psql("ALTER SYSTEM SET wal_level = 'logical';")
        # wal_level only changes with a restart; pg_ctl keeps the socket options of the first start.
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        _started["server"] = server
        _started["url"] = server.get_uri()
    return _started["url"]


def logical_url_for_database(name: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(logical_server_url())
    return parts._replace(path="/" + name).geturl()
