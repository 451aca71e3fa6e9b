"""Sign-in with Globus in a real browser: Chromium → the live server → a local OpenID Connect provider.

The provider and its Groups API (tests/globus_oidc.py) listen on 127.0.0.1 in this process, so
the live server's thread reaches them by the GLOBUS_AUTH_URL / GLOBUS_GROUPS_URL settings.
"""
from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from social_django.models import UserSocialAuth

from inversions.states import State
from tests.dashboard.test_browser import ARGS, CHROMIUM, TIMEOUT_MS, browser, state_of  # noqa: F401
from tests.globus_oidc import CLIENT_SECRET, OTHER_GROUP, SCIENCE_GROUP, globus, local_globus  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def test_sign_in_with_globus_act_as_science_be_refused_as_operator_sign_out(page, globus, make_op):
    claimable = make_op(State.PREPROCESSED)
    errored = make_op(State.ERROR)
    globus.identity.groups = [SCIENCE_GROUP, OTHER_GROUP]

    page.goto(reverse("program-detail", args=[str(claimable)]))
    assert "/accounts/login/" in page.url
    assert page.get_by_label("Password").count() == 0  # Globus is the front door
    page.get_by_role("button", name="Sign in with Globus").click()  # → the provider → back
    page.wait_for_url(re.compile(re.escape(reverse("program-detail", args=[str(claimable)])) + "$"))
    assert "han@colorado.edu" in page.locator("header .who").inner_text()
    assert any(r == "GET /v2/groups/my_groups" for r in globus.requests)
    user = get_user_model().objects.get(username="han@colorado.edu")
    assert set(user.groups.values_list("name", flat=True)) == {"science"}

    # a science action is allowed
    page.get_by_role("button", name=re.compile("^Claim")).click()
    page.wait_for_load_state()
    assert f"You are working on {claimable}" in page.locator("#messages").inner_text()
    assert state_of(claimable) == State.WORKING

    # an operator action is not offered, and refused when sent anyway
    page.goto(reverse("program-detail", args=[str(errored)]))
    assert page.get_by_role("button", name="Retry").count() == 0
    status = page.evaluate(
        """async (url) => {
            const token = document.body.getAttribute('hx-headers').match(/"X-CSRFToken": "([^"]+)"/)[1];
            const r = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token}});
            return r.status;
        }""",
        reverse("program-retry", args=[str(errored)]),
    )
    assert status == 403 and state_of(errored) == State.ERROR
    html = page.content()
    for secret in globus.issued() + [CLIENT_SECRET]:
        assert secret not in html

    # sign out: the tokens are revoked at Globus, the session ends
    issued = set(globus.issued())
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/accounts/login/$"))
    assert set(globus.revoked) == issued and len(issued) == 4
    assert "access_token" not in UserSocialAuth.objects.get(user=user).extra_data
    page.goto("/")
    assert "/accounts/login/" in page.url


def test_a_refused_sign_in_shows_why_on_the_login_page(page, globus):
    globus.identity.username = "eve@evil.example"
    page.goto("/")
    page.get_by_role("button", name="Sign in with Globus").click()
    page.wait_for_url(re.compile(r"/accounts/login/$"))
    assert "identities from evil.example may not sign in" in page.locator("#messages").inner_text()
    assert not get_user_model().objects.filter(username="eve@evil.example").exists()
