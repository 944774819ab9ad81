import os
import sys

from django.core.wsgi import get_wsgi_application

from dashboard.startup import console_database_error, describe, wants_traceback

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

# gunicorn's status for a worker that failed to boot: it stops instead of
# respawning the worker forever. Any other server just sees a failed start.
BOOT_ERROR = 3


def _start():
    application = get_wsgi_application()
    # Fail at start, with the host named, rather than on every request.
    from django.db import DatabaseError, connections

    try:
        connections["default"].ensure_connection()
    except DatabaseError as exc:
        if wants_traceback():
            raise
        sys.stderr.write(console_database_error(exc) + "\n")
        sys.exit(BOOT_ERROR)
    finally:
        connections["default"].close()
    return application


try:
    application = _start()
except Exception as exc:  # noqa: BLE001 - described below or re-raised
    message = None if wants_traceback() else describe(exc)
    if message is None:
        raise
    sys.stderr.write(message + "\n")
    sys.exit(BOOT_ERROR)
