"""Database URLs: `postgresql://user:pass@host:port/db` and `sqlite:////abs/path.db`.

Pure parsing shared by the settings module (the console's own database) and
the PostgreSQL and SQLite source kinds (checkpoints/sources/postgres/, sqlite/).
"""

from urllib.parse import parse_qsl, unquote, urlsplit


def parse_database_url(url: str) -> dict:
    """Split a database URL into Django-style parts.

    >>> parse_database_url("postgresql://postgres@127.0.0.1:5432/test")["NAME"]
    'test'
    >>> parse_database_url("postgres://u:p%40ss@db/x?sslmode=require")["OPTIONS"]
    {'sslmode': 'require'}
    >>> parse_database_url("postgresql://postgres:@/postgres?host=/tmp/pg")["HOST"]
    '/tmp/pg'
    >>> parse_database_url("sqlite:////tmp/a.db")["NAME"]
    '/tmp/a.db'
    >>> parse_database_url("mysql://x/y")
    Traceback (most recent call last):
    ...
    ValueError: unsupported database URL scheme 'mysql': use postgresql:// or sqlite:///
    >>> parse_database_url("/var/lib/checkpoints.db")
    Traceback (most recent call last):
    ...
    ValueError: a bare path: write sqlite:////var/lib/checkpoints.db for a SQLite file
    >>> parse_database_url("not-a-url")
    Traceback (most recent call last):
    ...
    ValueError: not a URL: use postgresql://user@host:port/db or sqlite:////absolute/path.db
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg", "pgsql"):
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ValueError(f"database URL {redact(url)!r} names no database")
        options = dict(parse_qsl(parts.query))
        # A Unix socket directory travels as ?host=/path (libpq's convention).
        host = parts.hostname or options.pop("host", "")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": host,
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
        }
    if scheme == "sqlite":
        path = unquote(parts.path)
        # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel -> "/rel"
        if path.startswith("//"):
            path = path[1:]
        elif path.startswith("/"):
            path = path[1:]
        if not path:
            raise ValueError(f"database URL {url!r} names no file")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": {}}
    if not scheme:
        if url.strip().startswith("/"):
            raise ValueError(f"a bare path: write sqlite:///{url.strip()} for a SQLite file")
        raise ValueError("not a URL: use postgresql://user@host:port/db or sqlite:////absolute/path.db")
    raise ValueError(
        f"unsupported database URL scheme {parts.scheme!r}: use postgresql:// or sqlite:///"
    )


def describe(db: dict) -> str:
    """Where a Django database is, for messages: never its password.

    >>> describe(parse_database_url("postgresql://u:pw@db.internal:5433/console"))
    "PostgreSQL at db.internal:5433, database 'console'"
    >>> describe(parse_database_url("sqlite:////var/console.db"))
    'SQLite file /var/console.db'
    """
    if db["ENGINE"].endswith("sqlite3"):
        return f"SQLite file {db['NAME']}"
    host = db.get("HOST") or "the local socket"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"PostgreSQL at {host}{port}, database {db['NAME']!r}"


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and pages.

    >>> redact("postgresql://u:secret@h/db")
    'postgresql://u:***@h/db'
    >>> redact("sqlite:////tmp/a.db")
    'sqlite:////tmp/a.db'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
