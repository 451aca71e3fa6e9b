# The overview's "datasets changed" count and list read a partial index of the few flagged programs.

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inversions', '0016_program_notes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='observingprogram',
            index=models.Index(models.OrderBy(models.F('datasets_changed_at'), descending=True), models.F('id'), condition=models.Q(('datasets_changed_at__isnull', False)), name='program_changed'),
        ),
    ]
