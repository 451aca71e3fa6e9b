"""``migrate``, run as the database owner, then the app role's rights (l2site/db_roles.py).

With ``DATABASE_MIGRATE_URL`` (or the embedded default, whose owner is its superuser) the
default connection is switched to the owner for the migrations; afterwards the role of
``DATABASE_URL`` is given SELECT/INSERT/UPDATE/DELETE on every table but the history, which
it may only SELECT and INSERT. Without it (one role for both) this is Django's migrate.
"""
from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands import migrate
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from l2site import db_roles

CONNECTION_KEYS = ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


class Command(migrate.Command):
    help = migrate.Command.help + " As the owner (DATABASE_MIGRATE_URL); then grants the app role (DATABASE_URL)."

    def handle(self, *args, **options):
        owner = getattr(settings, "DATABASE_MIGRATE", None)
        if not owner or options["database"] != DEFAULT_DB_ALIAS:
            return super().handle(*args, **options)
        conn = connections[DEFAULT_DB_ALIAS]
        app = {key: conn.settings_dict.get(key) for key in CONNECTION_KEYS}
        conn.close()
        conn.settings_dict.update({key: owner[key] for key in CONNECTION_KEYS if key in owner})
        try:
            super().handle(*args, **options)
            with transaction.atomic(), conn.cursor() as cursor:  # the app's rights change at once
                db_roles.grant_app_role(cursor, app["USER"], password=app.get("PASSWORD") or None)
        except db_roles.RoleError as exc:
            raise CommandError(f"migrated, but {exc}") from exc
        finally:
            conn.close()
            conn.settings_dict.update(app)
        if options["verbosity"] >= 1:
            self.stdout.write(f"The app role {app['USER']} may read and write the tables, and only add to the history.")
