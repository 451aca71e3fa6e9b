"""Outbox rows say which bus they go to: the event bus, or the interservice bus (frame catalog)."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inversions', '0012_dataset_quality_fields'),
    ]

    operations = [
        migrations.AddField(
            model_name='outboxevent',
            name='bus',
            field=models.CharField(choices=[('events', 'Event bus'), ('isb', 'Interservice bus')], db_default='events',
                                   default='events', max_length=10),
        ),
    ]
