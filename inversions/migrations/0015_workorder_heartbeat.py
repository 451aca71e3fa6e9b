from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inversions", "0014_history_truncate_refused")]
    operations = [
        migrations.AddField(
            model_name="workorder",
            name="heartbeat_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
