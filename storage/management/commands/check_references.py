import json

from django.core.management.base import BaseCommand, CommandError

from storage.refcheck import run_reference_check


class Command(BaseCommand):
    help = "HEAD the referenced objects and record their size, type and existence."

    def add_arguments(self, parser):
        parser.add_argument("--only-unchecked", action="store_true", help="Only references never checked or left unchecked.")
        parser.add_argument("--limit", type=int, default=None, help="At most this many, unchecked and stalest first.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        result = run_reference_check(only_unchecked=options["only_unchecked"], limit=options["limit"], origin="command")
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                f"Checked {result['checked']} references: {result['present']} present, "
                f"{result['missing']} missing, {result['unchecked']} unchecked, "
                f"{result['skipped']} outside the configured stores; "
                f"{result['threads_updated']} threads updated in {result['seconds']:.1f}s."
            )
            for item in result["errors"]:
                self.stdout.write(f"  {item['uri']}: {item['error']}")
        if result["error"]:
            raise CommandError(result["error"])
