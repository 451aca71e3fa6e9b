"""Expression indexes for the program list's case-insensitive instrument and proposal filters.

``instrument_name__iexact`` / ``primary_proposal_id__iexact`` compare ``UPPER(col)``: the plain
btree indexes cannot serve them, so a filtered page read and sorted every program of the state.
These indexes give the rows of one instrument (and state) or proposal newest observed first,
and the planner gets statistics for the expressions. The instrument column is INCLUDEd so
that the page's COUNT(*) is an index-only scan.
"""
from django.db import migrations, models
from django.db.models.functions import Upper


class Migration(migrations.Migration):
    dependencies = [("inversions", "0008_experiment_descriptions")]

    operations = [
        migrations.AddIndex(
            model_name="observingprogram",
            index=models.Index(Upper("instrument_name"), models.F("state"), models.F("start_time").desc(),
                               name="program_instr_state_start", include=["instrument_name"]),
        ),
        migrations.AddIndex(
            model_name="observingprogram",
            index=models.Index(Upper("instrument_name"), models.F("start_time").desc(), name="program_instr_start",
                               include=["instrument_name"]),
        ),
        migrations.AddIndex(
            model_name="observingprogram",
            index=models.Index(Upper("primary_proposal_id"), models.F("start_time").desc(), name="program_proposal_start"),
        ),
    ]
