"""Which kind of checkpoint store a source is, and the object that reads and maintains it.

A kind is one package under `checkpoints/sources/` exposing `KIND`, an object
implementing `checkpoints.sources.kind.SourceKind`. The table below is the
only list of kinds: `Source.kind` holds one of its names, the sources form and
`CHECKPOINT_DATABASE_URL` pick one by the URL's scheme, and the package is
imported on first use (a kind's driver loads only where that kind is used).
Adding a kind is one package and one line here (docs/architecture.md,
"Source kinds").
"""

import importlib
from typing import NamedTuple
from urllib.parse import urlsplit


class Entry(NamedTuple):
    name: str  # Source.kind
    label: str  # shown on pages
    module: str  # holds KIND
    schemes: tuple  # URL schemes (lower case) of this kind's URLs
    prefix: str | None  # the scheme as the error messages spell it (None: not suggested)
    example: str | None  # a URL of this kind, for messages (None: not suggested)


KINDS = (
    Entry("postgres", "PostgreSQL", "checkpoints.sources.postgres",
          ("postgres", "postgresql", "postgresql+psycopg", "pgsql"), "postgresql://", "postgresql://user@host:port/db"),
    Entry("sqlite", "SQLite", "checkpoints.sources.sqlite", ("sqlite",), "sqlite:///", "sqlite:////absolute/path.db"),
    Entry("s3", "S3", "checkpoints.sources.s3", ("s3", "minio"), None, None),
)


def choices() -> list:
    """(name, label) of every kind: `Source.kind`'s choices.

    >>> choices()[:2]
    [('postgres', 'PostgreSQL'), ('sqlite', 'SQLite')]
    """
    return [(e.name, e.label) for e in KINDS]


def get(name: str):
    """The SourceKind named `name`; ValueError for a name no kind has."""
    for entry in KINDS:
        if entry.name == name:
            return importlib.import_module(entry.module).KIND
    raise ValueError(f"unknown source kind {name!r}")


def for_source(source):
    """The SourceKind of a Source (by its `kind`; by its URL when the kind was never set)."""
    return get(source.kind) if source.kind else for_url(source.url)


def for_url(url: str):
    """The SourceKind whose URLs look like `url`; ValueError that says what to write instead."""
    return get(kind_of(url))


def kind_of(url: str) -> str:
    """The name of the kind that reads `url`, after that kind checked the URL (ValueError otherwise).

    >>> kind_of("sqlite:////x.db"), kind_of("postgresql://h/d"), kind_of("minio://b/p/")
    ('sqlite', 'postgres', 's3')
    >>> kind_of("mysql://x/y")
    Traceback (most recent call last):
    ...
    ValueError: unsupported database URL scheme 'mysql': use postgresql:// or sqlite:///
    >>> kind_of("/var/lib/checkpoints.db")
    Traceback (most recent call last):
    ...
    ValueError: a bare path: write sqlite:////var/lib/checkpoints.db for a SQLite file
    >>> kind_of("not-a-url")
    Traceback (most recent call last):
    ...
    ValueError: not a URL: use postgresql://user@host:port/db or sqlite:////absolute/path.db
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    for entry in KINDS:
        if scheme in entry.schemes:
            get(entry.name).check_url(url)
            return entry.name
    if not scheme:
        if url.strip().startswith("/") and any(e.name == "sqlite" for e in KINDS):
            raise ValueError(f"a bare path: write sqlite:///{url.strip()} for a SQLite file")
        raise ValueError(f"not a URL: use {_either(e.example for e in KINDS if e.example)}")
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r}: use {_either(e.prefix for e in KINDS if e.prefix)}")


def _either(words) -> str:
    """'a', 'a or b', 'a, b or c'.

    >>> _either(["a"]), _either(["a", "b"]), _either(["a", "b", "c"])
    ('a', 'a or b', 'a, b or c')
    """
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def maintenance_for(source):
    """The `Maintenance` of a Source's store (nothing opened before its `connect()`): prune's per-thread work."""
    return for_source(source).maintenance(source.url)


def recheck_for(source):
    """A `Recheck` of a Source's store (opened on first use, read-only): the sweep's last look before it deletes."""
    return for_source(source).recheck(source.url)
