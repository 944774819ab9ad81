import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dashboard.tokens import create_token


class Command(BaseCommand):
    help = "Create a bearer token for scripts acting as USERNAME; prints the token (shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, username, **options):
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}: create it first (createsuperuser, or the admin)") from None
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        token, row = create_token(user)
        if options["json"]:
            self.stdout.write(json.dumps({"username": username, "token": token, "prefix": row.prefix}))
            return
        # The token alone on stdout, so `TOKEN=$(manage.py create_api_token bob)` works.
        self.stdout.write(token)
        if not user.has_perm("checkpoints.view_thread"):
            self.stderr.write(f"note: {username} is in neither the viewer nor the operator group; the API will answer 403")
