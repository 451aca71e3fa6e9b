"""Create (or update) a user in the L2 groups: `manage.py create_l2_user NAME --group science`."""
from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from l2site.auth import GROUPS


class Command(BaseCommand):
    help = "Create or update a user, put them in groups (science, operators), print the password if generated."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--group", action="append", choices=GROUPS, default=[], help="repeat for several groups")
        parser.add_argument("--superuser", action="store_true", help="an admin (may do everything)")
        parser.add_argument("--password", help="default: a random one, printed once")
        parser.add_argument("--email", default="")

    def handle(self, *args, username, group, superuser, password, email, **options):
        if not username.strip():
            raise CommandError("The user name must not be empty.")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        generated = password is None and created
        if password is not None or created:
            password = password or secrets.token_urlsafe(12)
            user.set_password(password)
        if superuser:
            user.is_superuser = user.is_staff = True
        user.save()
        for name in group:
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        groups = ", ".join(user.groups.order_by("name").values_list("name", flat=True)) or "no group"
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} {username} ({'admin, ' if user.is_superuser else ''}{groups})")
        if generated:
            self.stdout.write(f"password: {password}")
