"""Issue, list and revoke API tokens for machine clients (stored hashed)."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from publishing.models import ApiToken


class Command(BaseCommand):
    help = "API tokens: `create NAME --user U`, `list`, `revoke ID_OR_PREFIX`."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        create = sub.add_parser("create", help="issue a token; it is printed once")
        create.add_argument("name")
        create.add_argument("--user", required=True, help="the client acts as this user (and has its groups)")
        create.add_argument("--any-claimant", action="store_true",
                            help="a cluster client that may report programs inverted for any claimant")
        sub.add_parser("list", help="list tokens")
        revoke = sub.add_parser("revoke", help="revoke a token by id or prefix")
        revoke.add_argument("token")

    def handle(self, *args, verb, **options):
        getattr(self, f"do_{verb}")(**options)

    def do_create(self, name, user, any_claimant=False, **_):
        try:
            owner = get_user_model().objects.get(username=user)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {user!r}; create it first with create_l2_user.")
        token, raw = ApiToken.issue(name=name, user=owner, reports_for_any_claimant=any_claimant)
        anyone = ", reports for any claimant" if any_claimant else ""
        self.stdout.write(f"token {token.pk} for {name} (acts as {owner.username}{anyone}); it is shown only now:")
        self.stdout.write(raw)

    def do_list(self, **_):
        for t in ApiToken.objects.select_related("user"):
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            anyone = "  any-claimant" if t.reports_for_any_claimant else ""
            self.stdout.write(f"{t.pk:>4}  {t.prefix}…  {t.name}  user={t.user.username}{anyone}  {state}")

    def do_revoke(self, token, **_):
        query = Q(prefix=token) | Q(prefix__startswith=token) if not token.isdigit() else Q(pk=int(token))
        matches = list(ApiToken.objects.filter(query))
        if len(matches) != 1:
            raise CommandError(f"{len(matches)} tokens match {token!r}; give the id or a longer prefix.")
        matches[0].revoke()
        self.stdout.write(f"revoked token {matches[0].pk} ({matches[0].name})")
