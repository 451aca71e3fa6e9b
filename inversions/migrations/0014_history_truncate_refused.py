"""TRUNCATE of the history is refused too, by PostgreSQL itself (DESIGN §4).

0002's row trigger refuses UPDATE and DELETE; TRUNCATE fires no row trigger, so a
statement-level one refuses it. The test runner alone empties tables between tests with
TRUNCATE: its connections set ``l2.allow_history_truncate = on`` (tests/settings.py); no other
connection does, and the app's role has no TRUNCATE privilege at all (l2site/db_roles.py).
"""
from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION l2_refuse_history_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('l2.allow_history_truncate', true) = 'on' THEN
        RETURN NULL;  -- the test runner resetting its database
    END IF;
    RAISE EXCEPTION 'inversions_transition is append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Record a new transition (a correction) instead of changing history.';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER inversions_transition_no_truncate
    BEFORE TRUNCATE ON inversions_transition
    FOR EACH STATEMENT EXECUTE FUNCTION l2_refuse_history_truncate();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS inversions_transition_no_truncate ON inversions_transition;
DROP FUNCTION IF EXISTS l2_refuse_history_truncate();
"""


class Migration(migrations.Migration):
    dependencies = [("inversions", "0013_outbox_bus")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
