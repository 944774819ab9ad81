#!/usr/bin/env python3
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    from django.core.management import execute_from_command_line

    from dashboard.startup import run

    # A bad setting or an unreachable console database: one line, exit 1
    # (the traceback with --traceback or DEBUG=true).
    sys.exit(run(lambda: execute_from_command_line(sys.argv), sys.argv))
