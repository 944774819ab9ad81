"""One readable line instead of a traceback when the console cannot start.

A bad setting or an unreachable console database is an operator's problem,
not a bug: manage.py and the WSGI entry point print one line naming the
variable or the host and exit non-zero. The traceback stays available with
`--traceback` or DEBUG=true, and any other exception (a bug) keeps it always.
This module is imported before the settings are, so it must not need them.
"""

import os
import sys

from checkpoints import units


def wants_traceback(argv=()) -> bool:
    if "--traceback" in argv:
        return True
    try:
        return units.parse_bool(os.environ.get("DEBUG", "") or "0")
    except ValueError:
        return False


def describe(exc) -> str | None:
    """The line to print for an exception that is an operator's to fix, or None."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import InterfaceError, OperationalError

    if isinstance(exc, ImproperlyConfigured):
        return f"Configuration error: {exc}"
    if isinstance(exc, (OperationalError, InterfaceError)) and not console_database_reachable():
        return console_database_error(exc)
    return None


def console_database_reachable() -> bool:
    """Whether the console's own database answers now.

    An OperationalError can come from a statement (a lock, a timeout) on a
    live database; only a database that cannot be reached at all is reported
    as such, anything else keeps its traceback.
    """
    from django.db import DatabaseError, connections

    try:
        connections["default"].close()
        connections["default"].ensure_connection()
    except DatabaseError:
        return False
    return True


def console_database() -> str:
    """Where the console's database is, without its password, and which setting says so."""
    from django.conf import settings

    from checkpoints.dburl import describe

    origin = "DATABASE_URL" if os.environ.get("DATABASE_URL", "").strip() else "the default of DATABASE_URL"
    return f"{describe(settings.DATABASES['default'])} ({origin})"


def console_database_error(exc) -> str:
    from checkpoints.sources import first_line

    return f"The console database cannot be reached: {console_database()}: {first_line(exc)}"


def run(main, argv):
    """Run main(); an operator's error ends it with one line on stderr and `status`."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - described below or re-raised
        if wants_traceback(argv):
            raise
        message = describe(exc)
        if message is None:
            raise
        sys.stderr.write(message + "\n")
        return 1
    return 0
