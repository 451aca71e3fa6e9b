"""The quality and product fields of a dataset record (issue 12), and a program's view of all its arms.

Existing rows: ``lines_listed`` is set where the stored record lists its lines, and the
programs' wavelength ranges and embargo are computed from their current datasets (the next
scan keeps them up to date). The new dataset fields are filled as the records come again
(they carry the new fields, so each is updated once).
"""
import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inversions', '0011_gin_pending_lists'),
    ]

    operations = [
        migrations.AddField(
            model_name='dataset',
            name='asdf_object_key',
            field=models.CharField(blank=True, help_text='the L1 ASDF (its gwcs), in bucket', max_length=1000),
        ),
        migrations.AddField(
            model_name='dataset',
            name='browse_movie_object_key',
            field=models.CharField(blank=True, max_length=1000),
        ),
        migrations.AddField(
            model_name='dataset',
            name='dataset_size',
            field=models.FloatField(blank=True, help_text='GB', null=True),
        ),
        migrations.AddField(
            model_name='dataset',
            name='field_warnings',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='dataset',
            name='has_all_stokes',
            field=models.BooleanField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='dataset',
            name='lines_listed',
            field=models.BooleanField(default=False, help_text="spectral_lines are the record's own list, not inferred"),
        ),
        migrations.AddField(
            model_name='dataset',
            name='polarimetric_accuracy',
            field=models.JSONField(blank=True, help_text='POL_SENS {min, p25, med, p75, max}', null=True),
        ),
        migrations.AddField(
            model_name='dataset',
            name='quality_average_fried_parameter',
            field=models.FloatField(blank=True, help_text='m', null=True),
        ),
        migrations.AddField(
            model_name='dataset',
            name='quality_average_polarimetric_accuracy',
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='dataset',
            name='quality_report_object_key',
            field=models.CharField(blank=True, max_length=1000),
        ),
        migrations.AddField(
            model_name='dataset',
            name='status',
            field=models.CharField(blank=True, max_length=50),
        ),
        migrations.AddField(
            model_name='dataset',
            name='target_types',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=100), blank=True, null=True, size=None),
        ),
        migrations.AddField(
            model_name='observingprogram',
            name='embargo_end_date',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='observingprogram',
            name='is_embargoed',
            field=models.BooleanField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='observingprogram',
            name='wavelength_ranges',
            field=django.contrib.postgres.fields.ArrayField(base_field=django.contrib.postgres.fields.ArrayField(base_field=models.FloatField(), size=2), blank=True, default=list, size=None),
        ),
        migrations.RunSQL(
            """
            UPDATE inversions_dataset SET lines_listed = true
            WHERE CASE WHEN jsonb_typeof(raw->'spectralLines') = 'array'
                       THEN jsonb_array_length(raw->'spectralLines') > 0 ELSE false END;
            UPDATE inversions_observingprogram AS p SET
                is_embargoed = d.is_embargoed, embargo_end_date = d.embargo_end_date,
                wavelength_ranges = COALESCE(d.ranges, '{}')
            FROM (
                SELECT program_id, bool_or(is_embargoed) AS is_embargoed, max(embargo_end_date) AS embargo_end_date,
                       (SELECT array_agg(ARRAY[r.lo, r.hi] ORDER BY r.lo, r.hi) FROM (
                            SELECT DISTINCT wavelength_min AS lo, wavelength_max AS hi FROM inversions_dataset AS x
                            WHERE x.program_id = inversions_dataset.program_id AND NOT x.superseded
                              AND x.wavelength_min IS NOT NULL AND x.wavelength_max IS NOT NULL) AS r) AS ranges
                FROM inversions_dataset WHERE NOT superseded GROUP BY program_id
            ) AS d
            WHERE p.id = d.program_id;
            """,
            migrations.RunSQL.noop,
        ),
    ]
