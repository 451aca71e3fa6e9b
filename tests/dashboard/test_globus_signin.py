"""Sign-in with Globus against a local OpenID Connect provider (tests/globus_oidc.py), with the test client.

Roles from the (local) Groups API at each sign-in, the reconcile rule, refusals that leave no
user behind, sign-out revoking the tokens, and no token or secret in pages or logs.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse
from social_django.models import UserSocialAuth

from tests.globus_oidc import CLIENT_SECRET, OPERATORS_GROUP, OTHER_GROUP, SCIENCE_GROUP, globus, local_globus  # noqa: F401

User = get_user_model()


def begin(client) -> str:
    """Press "Sign in with Globus"; the URL Globus Auth is asked to authorize."""
    page = client.get(reverse("login"))
    assert b"Sign in with Globus" in page.content
    response = client.post(reverse("social:begin", args=["globus"]))
    assert response.status_code == 302
    return response["Location"]


def authorize(url: str) -> str:
    """What the provider redirects the browser back to (its login page approves at once)."""
    answer = requests.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    return answer.headers["Location"]


def back(client, callback: str, **replace):
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | replace
    return client.get(parts.path, query)


def sign_in(client):
    return back(client, authorize(begin(client)))


def login_page_message(client, response) -> str:
    assert response.status_code == 302 and response["Location"] == reverse("login")
    page = client.get(response["Location"])
    return " ".join(re.findall(r'<p class="message[^"]*"[^>]*>([^<]*)</p>', page.content.decode()))


def roles_of(username: str) -> set[str]:
    return set(Group.objects.filter(user__username=username).values_list("name", flat=True))


@pytest.mark.django_db
def test_sign_in_creates_the_user_with_roles_from_globus_groups(client, globus, caplog):
    caplog.set_level(logging.DEBUG)
    authorize_url = begin(client)
    query = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(globus.url + "/v2/oauth2/authorize")
    assert "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships" in query["scope"][0]
    response = back(client, authorize(authorize_url))
    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(username="han@colorado.edu")
    assert roles_of(user.username) == {"science"}
    assert not user.is_staff and not user.is_superuser and not user.has_usable_password()
    assert UserSocialAuth.objects.get(user=user).uid == globus.identity.sub
    assert "role change: han@colorado.edu +science (from Globus groups at sign-in)" in caplog.text
    page = client.get("/")
    assert page.status_code == 200 and b"han@colorado.edu" in page.content
    # no token or secret in the page or in any log line
    secrets = globus.issued() + [CLIENT_SECRET]
    assert len(secrets) == 5
    for secret in secrets:
        assert secret not in caplog.text and secret not in page.content.decode()


@pytest.mark.django_db
def test_each_sign_in_reconciles_roles_with_globus_groups(client, globus, caplog, settings):
    caplog.set_level(logging.INFO, logger="l2.auth")
    sign_in(client)
    user = User.objects.get(username="han@colorado.edu")
    assert roles_of(user.username) == {"science"}
    client.post(reverse("logout"))

    # an admin makes han an operator by hand (logged), and han leaves the science group in Globus
    user.groups.add(Group.objects.get(name="operators"))
    assert "role change: han@colorado.edu +operators (by hand: admin or a command)" in caplog.text
    globus.identity.groups = [OTHER_GROUP]
    sign_in(client)
    assert roles_of(user.username) == set()  # Globus has the last word for configured groups
    assert "role change: han@colorado.edu -operators (from Globus groups at sign-in)" in caplog.text
    assert "role change: han@colorado.edu -science (from Globus groups at sign-in)" in caplog.text
    client.post(reverse("logout"))

    # a role whose Globus group is not configured is set by hand only, and kept at sign-in
    settings.GLOBUS_OPERATORS_GROUP = ""
    globus.identity.groups = [SCIENCE_GROUP, OPERATORS_GROUP]
    user.groups.add(Group.objects.get(name="operators"))
    sign_in(client)
    assert roles_of(user.username) == {"science", "operators"}
    assert User.objects.filter(username__startswith="han").count() == 1  # the same user each time


@pytest.mark.django_db
def test_an_identity_in_neither_group_reads_but_takes_no_action(client, globus, make_op):
    from inversions.states import State

    program = make_op(State.QUEUED)
    globus.identity.groups = [OTHER_GROUP]
    assert sign_in(client)["Location"] == "/"
    assert roles_of("han@colorado.edu") == set()
    assert client.get(reverse("program-detail", args=[str(program)])).status_code == 200
    assert client.post(reverse("program-claim", args=[str(program)])).status_code == 403


def assert_nothing_created(before: int):
    assert User.objects.count() == before
    assert not UserSocialAuth.objects.exists()
    assert not Group.objects.filter(user__isnull=False).exists()


@pytest.mark.django_db
def test_a_wrong_state_is_refused_with_a_message(client, globus):
    before = User.objects.count()
    callback = authorize(begin(client))
    message = login_page_message(client, back(client, callback, state="not-the-state-we-sent"))
    assert "did not match the sign-in this browser started" in message
    assert_nothing_created(before)
    assert globus.issued() == []
    assert "POST /v2/oauth2/token" not in globus.requests  # the code was never redeemed


@pytest.mark.django_db
def test_an_expired_code_is_refused_with_a_message(client, globus):
    before = User.objects.count()
    globus.code_lifetime = -1  # every code has expired by the time it is redeemed
    message = login_page_message(client, sign_in(client))
    assert "the sign-in code was expired or already used" in message
    assert_nothing_created(before)


@pytest.mark.django_db
def test_a_used_code_is_refused_on_replay(client, globus):
    callback = authorize(begin(client))
    assert back(client, callback)["Location"] == "/"
    client.post(reverse("logout"))
    replay = back(client, callback)
    assert replay["Location"] == reverse("login")
    assert "Globus sign-in failed" in login_page_message(client, replay)


@pytest.mark.django_db
def test_an_identity_from_a_domain_not_allowed_is_refused(client, globus, caplog):
    caplog.set_level(logging.INFO)
    before = User.objects.count()
    globus.identity.username = globus.identity.email = "eve@evil.example"
    message = login_page_message(client, sign_in(client))
    assert "identities from evil.example may not sign in to L2 (allowed: colorado.edu, nso.edu)" in message
    assert_nothing_created(before)
    assert "GET /v2/groups/my_groups" not in globus.requests
    assert set(globus.revoked) == set(globus.issued()) and len(globus.revoked) == 4  # nothing left usable


@pytest.mark.django_db
def test_a_groups_api_5xx_is_refused_with_a_message(client, globus):
    before = User.objects.count()
    globus.groups_status = 503
    message = login_page_message(client, sign_in(client))
    assert "the Globus Groups service answered with an error (HTTP 503)" in message
    assert_nothing_created(before)
    assert set(globus.revoked) == set(globus.issued()) and len(globus.revoked) == 4


@pytest.mark.django_db
def test_superusers_stay_local(client, globus):
    sign_in(client)
    client.post(reverse("logout"))
    User.objects.filter(username="han@colorado.edu").update(is_superuser=True)
    message = login_page_message(client, sign_in(client))
    assert "Administrators sign in with their local user name and password" in message
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_sign_out_revokes_the_tokens(client, globus):
    sign_in(client)
    social = UserSocialAuth.objects.get()
    assert social.extra_data["access_token"] in globus.issued("access")
    issued = set(globus.issued())
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert set(globus.revoked) == issued  # access + refresh, of Globus Auth and of Groups
    social.refresh_from_db()
    assert not {"access_token", "refresh_token", "id_token", "other_tokens"} & set(social.extra_data)
    assert client.get("/").status_code == 302  # signed out


@pytest.mark.django_db
def test_login_page_offers_globus_and_keeps_the_local_form_for_admins(client, globus, admin_user):
    page = client.get(reverse("login")).content.decode()
    assert "Sign in with Globus" in page and 'name="password"' not in page
    local = client.get(reverse("login") + "?local=1").content.decode()
    assert "Sign in with Globus" in local and 'name="password"' in local
    response = client.post(reverse("login"), {"username": "ada", "password": "pw-for-tests-0"})
    assert response.status_code == 302


@pytest.mark.django_db
def test_without_globus_settings_the_login_page_is_the_local_form(client):
    page = client.get(reverse("login")).content.decode()
    assert "Sign in with Globus" not in page and 'name="password"' in page
    assert client.post(reverse("social:begin", args=["globus"])).status_code == 404
    assert client.get(reverse("social:complete", args=["globus"]), {"code": "x", "state": "y"}).status_code == 404


@pytest.mark.django_db
def test_the_admin_shows_linked_identities_never_their_tokens(client, globus, admin_user):
    sign_in(client)  # and still signed in: the tokens are kept, to be revoked at sign-out
    social = UserSocialAuth.objects.get()
    assert social.extra_data["access_token"]
    client.force_login(admin_user)
    page = client.get(reverse("admin:social_django_usersocialauth_change", args=[social.pk])).content.decode()
    assert globus.identity.sub in page
    assert "extra_data" not in page
    for token in globus.issued():
        assert token not in page
