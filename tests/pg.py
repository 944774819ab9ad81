"""Find or start the PostgreSQL server the tests run against.

TEST_DATABASE_URL wins (CI points it at the machine's server). Without it a
throwaway server is started from the `pgserver` wheel, which bundles
PostgreSQL, so the test command works on a machine that has only Python.
"""

import os
import tempfile
import warnings

_started = {}


def server_url() -> str:
    """URL of a PostgreSQL server database the tests may create databases on."""
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        return url
    if "url" not in _started:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        data_dir = tempfile.mkdtemp(prefix="console-pg-")
        # pgserver runs postgres as an unprivileged user when we are root.
        os.chmod(data_dir, 0o777)
        server = pgserver.get_server(data_dir, cleanup_mode="delete")
        _started["server"] = server
        _started["url"] = server.get_uri()
        os.environ["TEST_DATABASE_URL"] = _started["url"]
    return _started["url"]


def url_for_database(name: str) -> str:
    """The server URL with another database name."""
    from urllib.parse import urlsplit

    parts = urlsplit(server_url())
    return parts._replace(path="/" + name).geturl()
