"""A key's one list of topics becomes two grants: what it publishes to, and what it reads.

Existing keys keep publishing where they did (an empty list meant every topic: it becomes ``*``) and
lose reading: they read nothing until given ``read_topics`` (docs/operations.md: Upgrade notes).
"""

from django.db import migrations, models


def every_topic_explicitly(apps, schema_editor):
    apps.get_model("echo", "ApiKey").objects.filter(publish_topics="").update(publish_topics="*")


class Migration(migrations.Migration):
    dependencies = [("echo", "0001_initial")]

    operations = [
        migrations.RenameField("apikey", "topics", "publish_topics"),
        migrations.AddField("apikey", "read_topics", models.CharField(blank=True, max_length=512)),
        migrations.RunPython(every_topic_explicitly, migrations.RunPython.noop),
    ]
