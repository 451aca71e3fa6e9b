"""A larger pending list for the programs' GIN indexes (DESIGN §13).

With the default 4 MB pending list, a full scan of tens of thousands of programs merges the
list into the trigram and spectral-line indexes several times, in the scan's own
transactions. With a larger one the inserts are appended and autovacuum merges them in
bulk afterwards (searches read the pending list meanwhile). The indexes are altered in
place (the trigram ones exist only where PostgreSQL has pg_trgm, see 0005).
"""
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import migrations
from django.db.models.functions import Upper

PENDING_KB = 65536
TRIGRAM = (
    ("instrument_program_execution_id", "program_ipeid_trgm"),
    ("observing_program_execution_id", "program_opeid_trgm"),
    ("primary_proposal_id", "program_proposal_trgm"),
    ("primary_experiment_id", "program_experiment_trgm"),
)
NAMES = ["program_lines", *(name for _, name in TRIGRAM)]


def indexes(**options):
    return [
        GinIndex(fields=["spectral_lines"], name="program_lines", **options),
        *[GinIndex(OpClass(Upper(column), name="gin_trgm_ops"), name=name, **options) for column, name in TRIGRAM],
    ]


def state_operations(old, new):
    return [migrations.RemoveIndex(model_name="observingprogram", name=index.name) for index in old] + [
        migrations.AddIndex(model_name="observingprogram", index=index) for index in new
    ]


class Migration(migrations.Migration):
    dependencies = [("inversions", "0010_fewer_write_indexes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=state_operations(indexes(), indexes(gin_pending_list_limit=PENDING_KB)),
            database_operations=[
                migrations.RunSQL(
                    [f'ALTER INDEX IF EXISTS "{name}" SET (gin_pending_list_limit = {PENDING_KB})' for name in NAMES],
                    [f'ALTER INDEX IF EXISTS "{name}" RESET (gin_pending_list_limit)' for name in NAMES],
                )
            ],
        )
    ]
