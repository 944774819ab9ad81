import json

from django.core.management.base import BaseCommand, CommandError

from checkpoints.sync import sync_sources


class Command(BaseCommand):
    help = "Mirror LangGraph checkpoint sources into the console (incremental unless --full)."

    def add_arguments(self, parser):
        parser.add_argument("--source", metavar="NAME", help="only this source")
        parser.add_argument("--full", action="store_true",
                            help="re-read everything, and allow removing more than half of the mirror")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        result = sync_sources(options["source"], full=options["full"], origin="command")
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
