"""Thread ids holding "␀" or "␛" take the escaped form of checkpoints.ids.thread_key().

From here on the mirror stores a source's thread id as thread_key(id), which
shows NUL (that PostgreSQL text cannot hold) as "␀" and escapes those two
signs. Ids mirrored before were stored as they are, never with NUL (such
threads could not be mirrored), so applying thread_key() to them is exact.
"""

from django.db import migrations, models
from django.db.models import Q

from checkpoints.ids import ESCAPE, NUL_SIGN, thread_key


def rekey(apps, schema_editor):
    Thread = apps.get_model("checkpoints", "Thread")
    rows = list(Thread.objects.filter(Q(thread_id__contains=NUL_SIGN) | Q(thread_id__contains=ESCAPE))
                .values_list("pk", "thread_id"))
    # An id's key holds more signs than the id, so rewriting those with the
    # most signs first never meets a (source, thread_id) not yet rewritten.
    rows.sort(key=lambda row: -(row[1].count(NUL_SIGN) + row[1].count(ESCAPE)))
    for pk, thread_id in rows:
        Thread.objects.filter(pk=pk).update(thread_id=thread_key(thread_id))


class Migration(migrations.Migration):

    dependencies = [
        ("checkpoints", "0006_capture_mode"),
    ]

    operations = [
        migrations.AlterField(
            model_name="thread",
            name="thread_id",
            field=models.TextField(help_text="LangGraph thread_id, exactly as stored; NUL shown as ␀ (checkpoints.ids.thread_key)."),
        ),
        migrations.RunPython(rekey, migrations.RunPython.noop),
    ]
