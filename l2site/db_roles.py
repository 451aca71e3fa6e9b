"""The two database roles (DESIGN §4): the owner migrates, the app role works.

The web and worker processes connect as a role that owns no table (``DATABASE_URL``);
migrations run as the owner (``DATABASE_MIGRATE_URL``; ``manage.py migrate`` switches to it and
then calls :func:`grant_app_role`). The app role may read and write every table but the
history (``inversions_transition``), which it may only SELECT and INSERT: UPDATE, DELETE and
TRUNCATE are not granted, and ``ALTER TABLE … DISABLE TRIGGER`` (owner only) and
``SET session_replication_role`` (superuser only) are out of its reach.

Plain SQL over a DB-API cursor connected as the owner; no Django models.
"""
from __future__ import annotations

HISTORY_TABLE = "inversions_transition"


class RoleError(Exception):
    """The app role cannot be set up as asked (the message says why)."""


def _ident(cursor, name: str) -> str:
    cursor.execute("SELECT quote_ident(%s)", [name])
    return cursor.fetchone()[0]


def grant_app_role(cursor, role: str, *, password: str | None = None, create: bool = True) -> None:
    """Give ``role`` the app's rights on the current database's ``public`` schema (idempotent).

    Creates the role (LOGIN, ``password``) when it does not exist and ``create`` (the owner
    then needs CREATEROLE). Refuses a role that is a superuser, owns tables here, or is a
    member of the history's owner. Afterwards checks what it granted.
    """
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
    row = cursor.fetchone()
    who = _ident(cursor, role)
    if row is None:
        if not create:
            raise RoleError(f"the app role {role} does not exist")
        secret = ""
        if password:
            cursor.execute("SELECT quote_literal(%s)", [password])
            secret = f" PASSWORD {cursor.fetchone()[0]}"
        cursor.execute(f"CREATE ROLE {who} LOGIN{secret}")
    elif row[0]:
        raise RoleError(f"the app role {role} is a superuser: it could change the history; use a plain role")
    cursor.execute("SELECT current_database(), current_user")
    database, owner = cursor.fetchone()
    if owner == role:
        raise RoleError(f"the app role {role} is the role migrating (the owner): give the app a role of its own")
    cursor.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {_ident(cursor, database)} TO {who}")
    cursor.execute(f"GRANT USAGE ON SCHEMA public TO {who}")
    cursor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {who}")
    cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {who}")
    cursor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {HISTORY_TABLE} FROM {who}, PUBLIC")
    cursor.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {who}")
    problems = check_app_role(cursor, role)
    if problems:
        raise RoleError(f"the app role {role} " + "; ".join(problems))


def check_app_role(cursor, role: str) -> list[str]:
    """What is wrong with ``role`` as the app's role here (empty: nothing)."""
    problems = []
    cursor.execute(
        "SELECT rolsuper, has_table_privilege(r.oid, %s, 'SELECT'), has_table_privilege(r.oid, %s, 'INSERT'), "
        "has_table_privilege(r.oid, %s, 'UPDATE'), has_table_privilege(r.oid, %s, 'DELETE'), "
        "has_table_privilege(r.oid, %s, 'TRUNCATE'), "
        "pg_has_role(r.oid, (SELECT relowner FROM pg_class WHERE oid = %s::regclass), 'MEMBER') "
        "FROM pg_roles r WHERE r.rolname = %s",
        [HISTORY_TABLE] * 6 + [role],
    )
    row = cursor.fetchone()
    if row is None:
        return ["does not exist"]
    superuser, select, insert, update, delete, truncate, owns = row
    if superuser:
        problems.append("is a superuser")
    if owns:
        problems.append(f"owns {HISTORY_TABLE} (or is a member of its owner)")
    if not (select and insert):
        problems.append(f"may not SELECT and INSERT {HISTORY_TABLE}")
    for allowed, what in ((update, "UPDATE"), (delete, "DELETE"), (truncate, "TRUNCATE")):
        if allowed:
            problems.append(f"may {what} {HISTORY_TABLE}")
    cursor.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND pg_has_role(%s, tableowner, 'MEMBER')", [role]
    )
    if cursor.fetchone()[0]:
        problems.append("owns tables")
    return problems
