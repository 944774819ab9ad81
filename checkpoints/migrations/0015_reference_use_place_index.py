import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Reference uses indexed by (thread, location) instead of by thread alone.

    The new index is built before the old one goes, so lookups by thread
    always have one.
    """

    dependencies = [
        ("checkpoints", "0014_source_totals"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="referenceuse",
            index=models.Index(fields=["thread", "location"], name="reference_use_place_idx"),
        ),
        migrations.AlterField(
            model_name="referenceuse",
            name="thread",
            field=models.ForeignKey(
                db_constraint=False, db_index=False, help_text="Thread.", on_delete=django.db.models.deletion.CASCADE,
                related_name="reference_uses", to="checkpoints.thread",
            ),
        ),
    ]
