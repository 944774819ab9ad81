"""Grant `checkpoints.manage_sources` to the `operator` group (the sources page, issue 11.1)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from dashboard.migrations._groups import OPERATOR_SOURCES


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations: make sure this one exists now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    operator, _ = Group.objects.get_or_create(name="operator")
    operator.permissions.add(*[
        Permission.objects.get(content_type__app_label=app, codename=code) for app, code in OPERATOR_SOURCES
    ])


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    group = apps.get_model("auth", "Group").objects.filter(name="operator").first()
    if group is not None:
        group.permissions.remove(*Permission.objects.filter(
            content_type__app_label="checkpoints", codename__in=[code for _, code in OPERATOR_SOURCES]))


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0003_saved_policies"),
        ("checkpoints", "0009_source_management"),
    ]
    operations = [migrations.RunPython(grant, revoke)]
