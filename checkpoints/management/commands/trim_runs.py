import json

from django.core.management.base import BaseCommand

from checkpoints.run_history import trim_runs


class Command(BaseCommand):
    help = ("Delete finished runs past their retention: syncs and reference checks after RUN_KEEP_DAYS, "
            "prunes, sweeps and removals (the audit log) after AUDIT_KEEP_DAYS.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        result = trim_runs(dry_run=options["dry_run"])
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        verb = "would delete" if result["dry_run"] else "deleted"
        self.stdout.write(
            f"{verb} {result['routine']} routine runs (sync, reference check) created before {result['routine_before']}"
            f" and {result['audit']} maintenance runs created before {result['audit_before']}"
        )
