"""Demo users for the embedded default: an admin and one user per group, passwords printed.

Passwords are generated once and kept in var/demo-users.json (mode 600) so that a restart
prints the same ones. Not for production: there, use create_l2_user.
"""
from __future__ import annotations

import json
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from l2site import embedded

DEMO = [("admin", None, True), ("science", "science", False), ("operator", "operators", False)]


class Command(BaseCommand):
    help = "Create the demo admin, science and operator users (embedded default) and print their passwords."

    def handle(self, *args, **options):
        path = embedded.var_dir() / "demo-users.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        User = get_user_model()
        for username, group, superuser in DEMO:
            password = saved.get(username) or secrets.token_urlsafe(9)
            user, created = User.objects.get_or_create(username=username)
            if created or username not in saved:
                user.set_password(password)
            user.is_superuser = user.is_staff = superuser
            user.save()
            if group:
                user.groups.add(Group.objects.get_or_create(name=group)[0])
            saved[username] = password
        path.write_text(json.dumps(saved, indent=2))
        path.chmod(0o600)
        self.stdout.write("Demo users (user / password):")
        for username, group, superuser in DEMO:
            role = "admin" if superuser else group
            self.stdout.write(f"  {username:<9} {saved[username]}   ({role})")
