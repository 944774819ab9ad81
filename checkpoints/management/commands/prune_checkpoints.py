"""prune_checkpoints: delete old checkpoints from the LangGraph sources (docs/architecture.md §4)."""

import json

from django.core.management.base import BaseCommand, CommandError

from checkpoints.models import Source
from checkpoints.prune import CONTRACT_KEYS, PruneBusy, PrunePolicy, contract_result, run_prune
from checkpoints.sync import register_default_source
from checkpoints.units import format_bytes


class Command(BaseCommand):
    help = (
        "Delete checkpoints older than --older-than, keeping the last --keep-last of every thread, "
        "with their writes and the blob rows nothing else uses. --threads also deletes whole threads "
        "idle for longer than the age. Busy and DeltaChannel threads are skipped. Try --dry-run first."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, metavar="DURATION",
                            help="Age of the checkpoints to delete: 90s, 15m, 24h, 30d.")
        parser.add_argument("--keep-last", type=int, default=1, metavar="N",
                            help="Checkpoints kept per thread whatever their age (default 1; 0 only with --threads).")
        parser.add_argument("--tag", action="append", default=[], metavar="KEY:VALUE",
                            help="Only threads with this tag, key:value or KEY=VALUE (repeat: all must match).")
        parser.add_argument("--source", metavar="NAME", help="Only this source (default: all).")
        parser.add_argument("--threads", action="store_true",
                            help="Also delete whole threads idle for longer than the age.")
        parser.add_argument("--vacuum", action="store_true",
                            help="After a real run, a plain VACUUM of the pruned tables (never VACUUM FULL); "
                                 "the result reports dead rows or free pages and bytes before and after.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would go; change nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        try:
            policy = PrunePolicy.from_options(
                options["older_than"], options["keep_last"], options["tag"], options["threads"], options["vacuum"]
            )
        except ValueError as e:
            raise CommandError(str(e)) from None
        register_default_source()
        sources = list(Source.objects.all())
        if options["source"] is not None:
            sources = [s for s in sources if s.name == options["source"]]
            if not sources:
                raise CommandError(f"no source named {options['source']!r}")
        else:
            sources = [s for s in sources if s.enabled]  # a disabled source is pruned only when named
        if not sources:
            raise CommandError("no enabled source: set CHECKPOINT_DATABASE_URL or add a source on the sources page (/sources/)")

        total = {k: 0 for k in CONTRACT_KEYS}
        total.update(dry_run=options["dry_run"], skipped=[])
        if policy.vacuum and not options["dry_run"]:
            total["vacuum"] = {}  # per source: what VACUUM changed
        errors = []
        for source in sources:
            try:
                run = run_prune(source, policy, dry_run=options["dry_run"], origin="command")
            except PruneBusy as e:
                errors.append(str(e))
                continue
            if run.error:
                errors.append(f"{source.name}: {run.error}")
            if not run.result:
                continue
            part = contract_result(run.result)
            for key in ("threads", "checkpoints", "writes", "blobs", "bytes", "disk_bytes_before", "disk_bytes_after"):
                total[key] += part[key]
            total["skipped"] += part["skipped"]
            if "vacuum" in run.result:
                total["vacuum"][source.name] = run.result["vacuum"]
            if not options["json"]:
                self._summary(source, run.result)

        if options["json"]:
            self.stdout.write(json.dumps(total))
        if errors:
            raise CommandError("; ".join(errors))

    def _summary(self, source, r):
        verb = "would remove" if r["dry_run"] else "removed"
        self.stdout.write(
            f"{source.name}: {verb} {r['checkpoints']} checkpoints, {r['writes']} writes and "
            f"{r['blobs']} blob rows from {r['threads']} threads "
            f"({format_bytes(r['bytes'])}, {r['bytes']} serialized bytes)"
            + (f"; {r['whole_threads']} threads whole" if r["whole_threads"] else "")
        )
        for s in r["skipped"][:20]:
            self.stdout.write(f"  skipped {s['thread_id']!r}: {s['reason']}")
        if len(r["skipped"]) > 20:
            self.stdout.write(f"  ... and {len(r['skipped']) - 20} more skipped threads")
        vacuum = r.get("vacuum")
        self.stdout.write(
            f"  on disk: {format_bytes(r['disk_bytes_before'])} before, {format_bytes(r['disk_bytes_after'])} after"
            + (" VACUUM" if vacuum and not vacuum.get("error") else " (the database gives space back only after VACUUM)")
        )
        if vacuum and vacuum.get("error"):
            self.stdout.write(f"  VACUUM failed: {vacuum['error']}")
        elif vacuum:
            before, after = vacuum["before"], vacuum["after"]
            if "dead_rows" in before:
                change = ", ".join(f"{t} {n} -> {after['dead_rows'].get(t)}" for t, n in before["dead_rows"].items())
                self.stdout.write(f"  VACUUM in {vacuum['seconds']}s: dead rows {change}")
            else:
                self.stdout.write(f"  VACUUM in {vacuum['seconds']}s: free pages {before['free_pages']} -> {after['free_pages']}")
            self.stdout.write(f"  tables: {format_bytes(before['bytes'])} before VACUUM, {format_bytes(after['bytes'])} after")
