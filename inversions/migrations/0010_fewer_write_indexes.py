"""Fewer indexes to maintain on every scan write (DESIGN §13).

A CharField with db_index gets a second, LIKE-pattern (varchar_pattern_ops) index that no
query here uses (the dashboard's search is trigram-indexed, its filters are UPPER(col)
expression indexes); the proposal and experiment ids keep a plain btree (the API's
proposal filter, the description search). instrument_name alone is the leading column of
program_instrument_state, and Dataset.program of dataset_program_current.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inversions', '0009_list_filter_indexes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='dataset',
            name='product_id',
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
        migrations.AlterField(
            model_name='dataset',
            name='program',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='datasets', to='inversions.observingprogram'),
        ),
        migrations.AlterField(
            model_name='observingprogram',
            name='instrument_name',
            field=models.CharField(max_length=50),
        ),
        migrations.AlterField(
            model_name='observingprogram',
            name='primary_experiment_id',
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AlterField(
            model_name='observingprogram',
            name='primary_proposal_id',
            field=models.CharField(max_length=100),
        ),
        migrations.AddIndex(
            model_name='dataset',
            index=models.Index(fields=['product_id'], name='dataset_product'),
        ),
        migrations.AddIndex(
            model_name='observingprogram',
            index=models.Index(fields=['primary_proposal_id'], name='program_proposal'),
        ),
        migrations.AddIndex(
            model_name='observingprogram',
            index=models.Index(fields=['primary_experiment_id'], name='program_experiment'),
        ),
    ]
