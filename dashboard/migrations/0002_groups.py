"""Create the `viewer` and `operator` groups (docs/architecture.md §4, permissions)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from dashboard.migrations._groups import OPERATOR_EXTRA, VIEW_MODELS


def create_groups(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure the
    # ones the groups need exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")

    def perm(app_label, codename):
        return Permission.objects.get(content_type__app_label=app_label, codename=codename)

    view = [perm(app, f"view_{model}") for app, model in VIEW_MODELS]
    viewer, _ = Group.objects.get_or_create(name="viewer")
    viewer.permissions.add(*view)
    operator, _ = Group.objects.get_or_create(name="operator")
    operator.permissions.add(*view, *[perm(app, code) for app, code in OPERATOR_EXTRA])


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["viewer", "operator"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0001_initial"),
        ("checkpoints", "0001_initial"),
        ("storage", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_groups, remove_groups)]
