"""Notes on a program: append-only (PostgreSQL refuses UPDATE and DELETE, as on the history)."""
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

FORWARD = """
CREATE OR REPLACE FUNCTION l2_refuse_note_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'inversions_programnote is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege', HINT = 'Add a new note instead.';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER inversions_programnote_append_only
    BEFORE UPDATE OR DELETE ON inversions_programnote
    FOR EACH ROW EXECUTE FUNCTION l2_refuse_note_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS inversions_programnote_append_only ON inversions_programnote;
DROP FUNCTION IF EXISTS l2_refuse_note_change();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("inversions", "0015_workorder_heartbeat"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ProgramNote",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("text", models.TextField()),
                ("at", models.DateTimeField(default=django.utils.timezone.now)),
                ("author", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                             to=settings.AUTH_USER_MODEL)),
                ("program", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="notes",
                                              to="inversions.observingprogram")),
            ],
            options={"ordering": ["at", "id"],
                     "indexes": [models.Index(fields=["program", "at"], name="note_program_at")]},
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
