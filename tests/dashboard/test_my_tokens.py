""""My tokens": a signed-in user creates and revokes their own API tokens (shown once, stored hashed)."""
from __future__ import annotations

import logging
import re

import pytest
from django.urls import reverse

from publishing.models import ApiToken, hash_token

pytestmark = pytest.mark.django_db


def test_create_a_token_see_it_once_use_it_revoke_it(client, scientist, caplog):
    caplog.set_level(logging.DEBUG)
    client.force_login(scientist)
    assert b"No tokens yet" in client.get(reverse("my-tokens")).content
    response = client.post(reverse("my-tokens"), {"name": "my laptop"})
    html = response.content.decode()
    assert response.status_code == 200 and "no-cache" in response["Cache-Control"]
    [raw] = re.findall(r'data-testid="new-token">.*?<code class="ident">(l2t_[^<]+)</code>', html, re.S)
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.key_hash, token.prefix) == (scientist, "my laptop", hash_token(raw), raw[:10])
    assert raw not in caplog.text  # logged by id and prefix only
    # shown once: never again
    again = client.get(reverse("my-tokens")).content.decode()
    assert raw not in again and f"{raw[:10]}…" in again and "active" in again
    # it works for machine clients like any other, with the user's roles
    api = client.__class__()
    assert api.get("/api/v1/programs", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    # revoked: it no longer works
    response = client.post(reverse("my-token-revoke", args=[token.pk]), follow=True)
    assert "revoked: it no longer works" in response.content.decode()
    assert api.get("/api/v1/programs", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


def test_only_ones_own_tokens_are_listed_and_revoked(client, scientist, operator):
    theirs, _ = ApiToken.issue(name="olga's robot", user=operator)
    client.force_login(scientist)
    assert "olga's robot" not in client.get(reverse("my-tokens")).content.decode()
    assert client.post(reverse("my-token-revoke", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_bad_input_gets_a_clear_answer_and_creates_nothing(client, scientist):
    client.force_login(scientist)
    for name, message in (("  ", "Give the token a name"), ("x" * 101, "at most 100 characters")):
        response = client.post(reverse("my-tokens"), {"name": name})
        assert response.status_code == 400 and message in response.content.decode()
    assert client.get(reverse("my-token-revoke", args=[1])).status_code == 405
    assert not ApiToken.objects.exists()


def test_my_tokens_needs_a_login(client):
    assert client.get(reverse("my-tokens")).status_code == 302
    assert client.post(reverse("my-tokens"), {"name": "x"}).status_code == 302
    assert not ApiToken.objects.exists()
