"""History the database itself protects: TRUNCATE refused, and an app role that cannot rewrite it (DESIGN §4)."""
from __future__ import annotations

import os
import secrets

import dj_database_url
import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.utils import InternalError, ProgrammingError

from inversions.models import ObservingProgram, Transition
from inversions.states import State
from l2site import db_roles


@pytest.mark.django_db(transaction=True)  # committed rows: no deferred constraint checks pending
def test_truncate_of_the_history_is_refused_without_the_test_runners_setting(make_program):
    make_program(State.INVERTIBLE)
    with pytest.raises((InternalError, ProgrammingError), match="append-only: TRUNCATE refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL l2.allow_history_truncate = off")  # as every connection but the runner's
            cursor.execute("TRUNCATE inversions_transition CASCADE")
    assert Transition.objects.count() == 2
    with connection.cursor() as cursor:  # the runner's own connections carry the setting (tests/settings.py)
        cursor.execute("SHOW l2.allow_history_truncate")
        assert cursor.fetchone()[0] == "on"


def _app_credentials() -> tuple[str, str]:
    """The app role: DATABASE_URL's when it is not the owner the suite runs as (CI), else a test role."""
    url = os.environ.get("DATABASE_URL")
    if url:
        app = dj_database_url.parse(url)
        if app["USER"] and app["USER"] != connection.settings_dict["USER"]:
            return app["USER"], app.get("PASSWORD") or ""
    return "l2_test_app", "test-app-" + secrets.token_hex(8)


def _connect_as(role: str, password: str) -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(dbname=s["NAME"], user=role, password=password or None, host=s["HOST"] or None,
                           port=s["PORT"] or None, autocommit=True)


@pytest.mark.django_db(transaction=True)
def test_the_app_role_may_add_to_the_history_but_not_rewrite_truncate_or_unprotect_it(make_program):
    program = make_program(State.INVERTIBLE)
    role, password = _app_credentials()
    with connection.cursor() as cursor:
        db_roles.grant_app_role(cursor, role, password=password)
        if password:  # a role made earlier by this test: today's password
            cursor.execute(f"ALTER ROLE {role} PASSWORD %s", [password])
        assert db_roles.check_app_role(cursor, role) == []
    refused = {}
    with _connect_as(role, password) as app:
        with app.cursor() as cursor:
            # what the app does: read and add history, change programs
            cursor.execute("SELECT count(*) FROM inversions_transition WHERE program_id = %s", [program.pk])
            assert cursor.fetchone()[0] == 2
            cursor.execute(
                "INSERT INTO inversions_transition (program_id, from_state, to_state, at, actor, reason, details, "
                "is_correction) VALUES (%s, 'invertible', 'invertible', now(), 'app-role test', '', '{}', false)",
                [program.pk],
            )
            cursor.execute("UPDATE inversions_observingprogram SET priority = 5 WHERE id = %s", [program.pk])
            for name, sql in {
                "UPDATE": "UPDATE inversions_transition SET reason = 'rewritten'",
                "DELETE": "DELETE FROM inversions_transition",
                "TRUNCATE": "TRUNCATE inversions_transition CASCADE",
                "DISABLE TRIGGER": "ALTER TABLE inversions_transition DISABLE TRIGGER inversions_transition_append_only",
                "session_replication_role": "SET session_replication_role = replica",
            }.items():
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                    cursor.execute(sql)
                refused[name] = str(caught.value).splitlines()[0]
            cursor.execute("SHOW session_replication_role")
            assert cursor.fetchone()[0] == "origin"
    print("\n".join(f"{name}: {message}" for name, message in refused.items()))
    assert set(refused) == {"UPDATE", "DELETE", "TRUNCATE", "DISABLE TRIGGER", "session_replication_role"}
    assert Transition.objects.filter(program=program).count() == 3
    assert not Transition.objects.filter(reason="rewritten").exists()
    assert ObservingProgram.objects.get(pk=program.pk).priority == 5
    with connection.cursor() as cursor:  # the triggers are all still there and enabled
        cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'inversions_transition'::regclass "
                       "AND NOT tgisinternal AND tgenabled = 'O' ORDER BY tgname")
        assert [r[0] for r in cursor.fetchall()] == ["inversions_transition_append_only",
                                                     "inversions_transition_no_truncate"]


@pytest.mark.django_db
def test_a_superuser_or_the_owner_is_refused_as_the_app_role():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        me, superuser = cursor.fetchone()
        with pytest.raises(db_roles.RoleError, match="superuser" if superuser else "owner"):
            db_roles.grant_app_role(cursor, me)


@pytest.mark.django_db(transaction=True)
def test_migrate_runs_as_the_owner_and_grants_the_app_role(settings):
    """``manage.py migrate`` with DATABASE_MIGRATE_URL: the owner migrates, the app role gets its rights."""
    role, password = _app_credentials()
    runner = {key: connection.settings_dict[key] for key in ("USER", "PASSWORD")}
    with connection.cursor() as cursor:
        db_roles.grant_app_role(cursor, role, password=password)
        cursor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")  # as before a first migrate
        if password:
            cursor.execute(f"ALTER ROLE {role} PASSWORD %s", [password])
    connection.close()
    connection.settings_dict.update(USER=role, PASSWORD=password)  # the app's DATABASE_URL ...
    settings.DATABASE_MIGRATE = dict(runner)  # ... and DATABASE_MIGRATE_URL, the owner
    try:
        call_command("migrate", verbosity=0)
        assert connection.settings_dict["USER"] == role  # back to the app role afterwards
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == role
            assert db_roles.check_app_role(cursor, role) == []
            cursor.execute("SELECT count(*) FROM inversions_transition")  # granted
    finally:
        connection.close()
        connection.settings_dict.update(runner)
