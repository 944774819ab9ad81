"""sweep_orphans: delete unreferenced objects and orphan database rows (docs/architecture.md §4)."""

import json

from django.core.management.base import BaseCommand, CommandError

from checkpoints.units import format_bytes
from storage.sweep import SweepBusy, SweepRefused, check_grace, contract_result, run_sweep


class Command(BaseCommand):
    help = (
        "Delete objects under S3_PREFIX and BLOB_ROOT that no checkpoint or write of any registered source "
        "names and that are older than the grace, and the checkpoint_blobs / write rows no checkpoint "
        "uses. Every source is synced first; references are re-checked at the sources before each delete. "
        "Try --dry-run first."
    )

    def add_arguments(self, parser):
        parser.add_argument("--grace", metavar="DURATION",
                            help="Only objects older than this (90s, 15m, 24h, 30d; default SWEEP_GRACE, 24h).")
        parser.add_argument("--force", action="store_true", help="Allow a grace under 1h.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would go; change nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        try:
            grace = check_grace(options["grace"], options["force"])
            run = run_sweep(grace=grace, force=options["force"], dry_run=options["dry_run"], origin="command")
        except (SweepRefused, SweepBusy) as e:
            raise CommandError(str(e)) from None
        result = run.result
        if options["json"]:
            self.stdout.write(json.dumps(contract_result(result)))
        else:
            self._summary(result)
        for reason in result["refused"] if result["dry_run"] else ():
            self.stderr.write(f"a real run would delete nothing: {reason}")
        for warning in result["warnings"]:
            self.stderr.write(f"warning: {warning}")
        if run.error:
            raise CommandError(run.error)

    def _summary(self, r):
        verb = "would delete" if r["dry_run"] else "deleted"
        stores = ", ".join(s["store"] for s in r["stores"]) or "no store"
        self.stdout.write(
            f"Swept {stores}: {r['objects_scanned']} objects, {r['orphans']} orphans "
            f"({format_bytes(r['orphan_bytes'])}, {r['orphan_bytes']} bytes), "
            f"{verb} {r['orphans'] if r['dry_run'] else r['deleted']}."
        )
        self.stdout.write(f"References counted from: {', '.join(r['sources']) or 'no source'}.")
        rows = "would remove" if r["dry_run"] else "removed"
        self.stdout.write(f"Database orphans: {rows} {r['db_orphans']} rows.")
        if r["dangling"]:
            self.stdout.write(f"{len(r['dangling'])} referenced object(s) are missing:")
            for uri in r["dangling"][:50]:
                self.stdout.write(f"  {uri}")
        for e in r["errors"][:50]:
            self.stdout.write(f"  error: {e.get('key') or e.get('uri')}: {e['error']}")
