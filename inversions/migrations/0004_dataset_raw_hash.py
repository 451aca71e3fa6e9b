from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inversions", "0003_groups")]

    operations = [
        migrations.AddField(
            model_name="dataset",
            name="raw_hash",
            field=models.CharField(default="", editable=False, help_text="SHA-1 of the canonical raw JSON", max_length=40),
            preserve_default=False,
        ),
    ]
