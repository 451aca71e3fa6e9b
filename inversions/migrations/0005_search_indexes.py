"""Trigram indexes for the dashboard's free-text search of programs.

The state gets the indexes unconditionally (they are in ObservingProgram.Meta.indexes); the
database gets them only where PostgreSQL offers the pg_trgm extension (the embedded server
of ``./l2 up`` does not: there the search reads the table, which is fine at demo sizes).
"""
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import DatabaseError, migrations, transaction
from django.db.models.functions import Upper

FIELDS = (
    ("instrument_program_execution_id", "program_ipeid_trgm"),
    ("observing_program_execution_id", "program_opeid_trgm"),
    ("primary_proposal_id", "program_proposal_trgm"),
    ("primary_experiment_id", "program_experiment_trgm"),
    ("experiment_description", "program_description_trgm"),
)


def indexes():
    return [GinIndex(OpClass(Upper(field), name="gin_trgm_ops"), name=name) for field, name in FIELDS]


def has_trigram(schema_editor) -> bool:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
        if cursor.fetchone() is None:
            return False
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError:  # not allowed to create it: go without the indexes
        return False
    return True


def create_indexes(apps, schema_editor):
    if not has_trigram(schema_editor):
        return
    model = apps.get_model("inversions", "ObservingProgram")
    for index in indexes():
        schema_editor.add_index(model, index)


def drop_indexes(apps, schema_editor):
    for _, name in FIELDS:
        schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"')


class Migration(migrations.Migration):
    dependencies = [("inversions", "0004_dataset_raw_hash")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="observingprogram", index=index) for index in indexes()],
            database_operations=[migrations.RunPython(create_indexes, drop_indexes)],
        )
    ]
