import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError, connection

from checkpoints.dburl import describe
from checkpoints.sources import first_line
from checkpoints.sync import sync_sources


class Command(BaseCommand):
    help = "Mirror LangGraph checkpoint sources into the console (incremental unless --full)."

    def add_arguments(self, parser):
        parser.add_argument("--source", metavar="NAME", help="only this source")
        parser.add_argument("--full", action="store_true",
                            help="re-read everything, and allow removing more than half of the mirror")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        try:
            result = sync_sources(options["source"], full=options["full"], origin="command")
        except Exception as e:
            if options["traceback"] or not _console_database_failed(e):
                raise
            # One line (and the JSON object), not the driver's chained tracebacks.
            where = describe(settings.DATABASES["default"])
            message = f"sync stopped: the console database failed ({where}): {first_line(e)}"
            if options["json"]:
                self.stdout.write(json.dumps({"sources": [], "error": message}))
            raise CommandError(message, returncode=1) from None
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for s in result["sources"]:
                if s["error"]:
                    self.stdout.write(f"{s['name']}: FAILED: {s['error']}")
                else:
                    self.stdout.write(
                        f"{s['name']}: +{s['added']} ~{s['updated']} -{s['removed']} checkpoints in {s['seconds']:.2f}s;"
                        f" mirror holds {s['threads']} threads, {s['checkpoints']} checkpoints"
                    )
            if not result["sources"]:
                self.stdout.write("no enabled sources: set CHECKPOINT_DATABASE_URL or add one on the sources page (/sources/)")
        failed = [s["name"] for s in result["sources"] if s["error"]]
        if failed:
            raise CommandError(f"sync failed for {', '.join(failed)}", returncode=1)


def _console_database_failed(error) -> bool:
    """Whether the error is the console's own database failing (lost, down, shut down).

    Django wraps the errors of its own connections; the mirror's COPY raises
    the driver's errors unwrapped. A source's driver errors never get here:
    the readers turn them into SourceError, reported in the source's `error`.
    """
    return isinstance(error, (OperationalError, InterfaceError,
                              connection.Database.OperationalError, connection.Database.InterfaceError))
