"""History is append-only, enforced by PostgreSQL itself (DESIGN §4).

A row trigger refuses UPDATE and DELETE on the transitions table, whoever asks (the ORM, the
admin, raw SQL, a cascade). TRUNCATE stays a database-owner operation (the test runner
uses it to empty tables between tests).
"""
from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION l2_refuse_history_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'inversions_transition is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Record a new transition (a correction) instead of changing history.';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER inversions_transition_append_only
    BEFORE UPDATE OR DELETE ON inversions_transition
    FOR EACH ROW EXECUTE FUNCTION l2_refuse_history_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS inversions_transition_append_only ON inversions_transition;
DROP FUNCTION IF EXISTS l2_refuse_history_change();
"""


class Migration(migrations.Migration):
    dependencies = [("inversions", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
