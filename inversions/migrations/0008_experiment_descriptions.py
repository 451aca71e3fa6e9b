"""The description search moves from the programs to ExperimentDescription (one row per text).

* The trigram index over every program's copy of its experiment's description (~1 kB each,
  the same text in thousands of programs) is dropped: it cost as much as the rest of a full
  scan's writes.
* ExperimentDescription holds each (experiment id, description) pair once, with the trigram
  index (only where PostgreSQL offers pg_trgm, as in 0005).
* PostgreSQL keeps it filled: a statement trigger on INSERT into the programs table adds the
  pairs of the new rows (one INSERT … SELECT DISTINCT per statement, so a COPY of a thousand
  programs costs one), a row trigger adds the pair of a program whose description or
  experiment id changes (not fired for other updates: state, claim, priority …).
* The pairs of the programs already stored are copied in.
* Datasets no longer copy the description into a column of their own (the raw record has
  the one the store sent; the scan takes it from there).
* The raw records (~3 kB each, always compressed) are compressed with lz4 where the server
  has it (several times faster to write than the default pglz; the embedded server of
  ``./l2 up`` has not: there they stay pglz).
"""
import importlib

from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import DatabaseError, migrations, models, transaction
from django.db.models import F
from django.db.models.functions import MD5, Upper

has_trigram = importlib.import_module("inversions.migrations.0005_search_indexes").has_trigram

TABLE = "inversions_experimentdescription"
PROGRAM_INDEX = GinIndex(OpClass(Upper("experiment_description"), name="gin_trgm_ops"), name="program_description_trgm")
DESCRIPTION_INDEX = GinIndex(OpClass(Upper("description"), name="gin_trgm_ops"), name="experiment_description_trgm")

TRIGGERS = f"""
CREATE OR REPLACE FUNCTION l2_note_new_descriptions() RETURNS trigger AS $$
BEGIN
    INSERT INTO {TABLE} (experiment_id, description)
    SELECT DISTINCT primary_experiment_id, experiment_description FROM l2_new_programs
    WHERE experiment_description <> ''
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER inversions_program_descriptions_insert
    AFTER INSERT ON inversions_observingprogram
    REFERENCING NEW TABLE AS l2_new_programs
    FOR EACH STATEMENT EXECUTE FUNCTION l2_note_new_descriptions();

CREATE OR REPLACE FUNCTION l2_note_changed_description() RETURNS trigger AS $$
BEGIN
    INSERT INTO {TABLE} (experiment_id, description)
    VALUES (NEW.primary_experiment_id, NEW.experiment_description)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER inversions_program_descriptions_update
    AFTER UPDATE OF experiment_description, primary_experiment_id ON inversions_observingprogram
    FOR EACH ROW
    WHEN (NEW.experiment_description <> ''
          AND (OLD.experiment_description IS DISTINCT FROM NEW.experiment_description
               OR OLD.primary_experiment_id IS DISTINCT FROM NEW.primary_experiment_id))
    EXECUTE FUNCTION l2_note_changed_description();

INSERT INTO {TABLE} (experiment_id, description)
SELECT DISTINCT primary_experiment_id, experiment_description FROM inversions_observingprogram
WHERE experiment_description <> ''
ON CONFLICT DO NOTHING;
"""

DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS inversions_program_descriptions_insert ON inversions_observingprogram;
DROP TRIGGER IF EXISTS inversions_program_descriptions_update ON inversions_observingprogram;
DROP FUNCTION IF EXISTS l2_note_new_descriptions();
DROP FUNCTION IF EXISTS l2_note_changed_description();
"""


def drop_program_index(apps, schema_editor):
    schema_editor.execute(f'DROP INDEX IF EXISTS "{PROGRAM_INDEX.name}"')


def restore_program_index(apps, schema_editor):
    if has_trigram(schema_editor):
        schema_editor.add_index(apps.get_model("inversions", "ObservingProgram"), PROGRAM_INDEX)


def create_description_index(apps, schema_editor):
    if has_trigram(schema_editor):
        schema_editor.add_index(apps.get_model("inversions", "ExperimentDescription"), DESCRIPTION_INDEX)


def drop_description_index(apps, schema_editor):
    schema_editor.execute(f'DROP INDEX IF EXISTS "{DESCRIPTION_INDEX.name}"')


def raw_lz4(apps, schema_editor):
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("ALTER TABLE inversions_dataset ALTER COLUMN raw SET COMPRESSION lz4")
    except DatabaseError:  # PostgreSQL built without lz4
        pass


def raw_default_compression(apps, schema_editor):
    schema_editor.execute("ALTER TABLE inversions_dataset ALTER COLUMN raw SET COMPRESSION default")


class Migration(migrations.Migration):
    dependencies = [("inversions", "0007_workorder_intake")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveIndex(model_name="observingprogram", name=PROGRAM_INDEX.name)],
            database_operations=[migrations.RunPython(drop_program_index, restore_program_index)],
        ),
        migrations.CreateModel(
            name="ExperimentDescription",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("experiment_id", models.CharField(max_length=100)),
                ("description", models.TextField()),
            ],
            options={
                "ordering": ["experiment_id", "id"],
                "constraints": [
                    models.UniqueConstraint(F("experiment_id"), MD5("description"), name="experiment_description_unique"),
                ],
            },
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="experimentdescription", index=DESCRIPTION_INDEX)],
            database_operations=[migrations.RunPython(create_description_index, drop_description_index)],
        ),
        migrations.RunSQL(TRIGGERS, DROP_TRIGGERS),
        migrations.RemoveField(model_name="dataset", name="experiment_description"),
        migrations.RunPython(raw_lz4, raw_default_compression),
    ]
