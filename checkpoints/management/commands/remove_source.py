import json

from django.core.management.base import BaseCommand, CommandError

from checkpoints.models import Source
from checkpoints.jobs import REMOVE, job
from checkpoints.removal import RemovalRefused, check_removable, removal_preview, remove_source
from checkpoints.runs import RunBusy


class Command(BaseCommand):
    help = ("Remove a source and its mirror from the console (threads, checkpoints, tags, references, usage); "
            "the checkpoint database itself is never touched. --dry-run shows what would leave.")

    def add_arguments(self, parser):
        parser.add_argument("name", help="the source's name")
        parser.add_argument("--dry-run", action="store_true", help="Count what would leave the mirror; change nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        source = Source.objects.filter(name=options["name"]).first()
        if source is None:
            raise CommandError(f"no source named {options['name']!r}")
        error, run = None, None
        if options["dry_run"]:
            counts = removal_preview(source)
            try:
                check_removable(source)
            except RemovalRefused as e:
                error = str(e)
        else:
            try:
                run = remove_source(source, origin="command")
                counts = {k: v for k, v in run.result.items() if k != "preview"}
            except (RemovalRefused, RunBusy) as e:
                error, counts = str(e), removal_preview(source)
        result = {"dry_run": options["dry_run"], "source": source.name, **counts, "run": run.pk if run else None,
                  "error": error}
        if options["json"]:
            self.stdout.write(json.dumps(result, default=str))
        else:
            verb = "would remove" if options["dry_run"] else "removed"
            parts = ", ".join(f"{counts.get(k, 0)} {label.lower()}" for k, label in job(REMOVE).compared)
            self.stdout.write(f"{source.name}: {verb} {parts}")
            if error:
                self.stdout.write(f"{source.name}: REFUSED: {error}")
        if error:
            raise CommandError(f"{source.name} was not removed", returncode=1)
