"""apply_lifecycle: put the S3 saver's lifecycle rules on an S3 source's bucket (docs/s3-layout.md §7)."""

import json

from django.core.management.base import BaseCommand, CommandError

from checkpoints.lifecycle import LifecycleBusy, LifecycleRefused, run_lifecycle
from checkpoints.models import Source
from checkpoints.s3layout import ARCHIVE_CLASSES


class Command(BaseCommand):
    help = (
        "Replace the S3 saver's lifecycle rules (IDs s3saver:<prefix>:) for an S3 source's prefix; rules of "
        "other prefixes stay. Options left out leave their rule out. Try --dry-run first: it says which rules "
        "would be added, changed or removed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--source", required=True, help="The S3 source's name.")
        parser.add_argument("--expire-days", type=int, metavar="N", help="Delete checkpoints N days after they were written.")
        parser.add_argument("--archive-days", type=int, metavar="N", help="Move checkpoints to --archive-class after N days.")
        parser.add_argument("--archive-class", default="GLACIER", choices=ARCHIVE_CLASSES)
        parser.add_argument("--intelligent-tiering-days", type=int, metavar="N",
                            help="Move checkpoints to INTELLIGENT_TIERING after N days.")
        parser.add_argument("--changes-expire-days", type=int, metavar="N",
                            help="Delete change-index entries after N days (above every sync interval).")
        parser.add_argument("--abort-multipart-days", type=int, metavar="N", default=7,
                            help="Abort unfinished multipart uploads after N days (default 7; 0 leaves the rule out).")
        parser.add_argument("--dry-run", action="store_true", help="Say what would change; change nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        source = Source.objects.filter(name=options["source"]).first()
        if source is None:
            raise CommandError(f"no source named {options['source']!r}")
        parameters = {
            "expire_days": options["expire_days"], "archive_days": options["archive_days"],
            "intelligent_tiering_days": options["intelligent_tiering_days"],
            "changes_expire_days": options["changes_expire_days"],
            "abort_multipart_days": options["abort_multipart_days"] or None,
        }
        if options["archive_days"] is not None:
            parameters["archive_storage_class"] = options["archive_class"]
        try:
            run = run_lifecycle(source, parameters, dry_run=options["dry_run"], origin="command")
        except (LifecycleRefused, LifecycleBusy) as e:
            raise CommandError(str(e)) from None
        if run.error:
            raise CommandError(run.error)
        r = run.result
        if options["json"]:
            self.stdout.write(json.dumps(r, default=str))
            return
        verb = "would" if options["dry_run"] else "did"
        self.stdout.write(f"s3://{r['bucket']}/{r['prefix']}: {verb} add {len(r['added'])}, change {len(r['changed'])}, "
                          f"remove {len(r['removed'])} of the saver's rules; {r['other_rules']} rule(s) of other "
                          "prefixes stay.")
        for what in ("added", "changed", "removed"):
            for rule_id in r[what]:
                self.stdout.write(f"  {what}: {rule_id}")
