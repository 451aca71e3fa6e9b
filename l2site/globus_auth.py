"""Sign-in with Globus: social-core's Globus OpenID Connect backend plus L2's rules.

The flow is social-auth-app-django's (``/auth/login/globus/`` → Globus Auth →
``/auth/complete/globus/``); this module adds the pipeline steps that make it L2's:

- ``check_domain``: the identity's domain (after ``@`` in its Globus username) must be in
  ``GLOBUS_AUTH_ALLOWED_DOMAINS`` when that is set;
- ``fetch_roles``: the identity's Globus groups (Groups API, with the groups token Globus Auth
  handed over in ``other_tokens``) → the L2 roles; a Groups API failure refuses the sign-in;
- ``refuse_superuser``: superusers stay local (they use the password form);
- ``apply_roles``: the user's ``science`` / ``operators`` groups are set to what Globus says,
  for each role whose Globus group is configured (the reconcile rule in the README).

The first two run before any user exists, so a refused sign-in creates no user and no role.
Sign-out revokes the user's Globus tokens (``revoke_tokens``). Role changes, whoever makes
them, are logged by the ``m2m_changed`` receiver at the end. Tokens never reach a log line.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import Group
from social_core.exceptions import AuthException
from social_django.middleware import SocialAuthExceptionMiddleware

from l2site.auth import GROUPS, OPERATORS, SCIENCE, role_source

log = logging.getLogger("l2.auth")
GROUPS_RESOURCE_SERVER = "groups.api.globus.org"


class SignInRefused(AuthException):
    """A sign-in L2 refuses; ``reason`` is shown on the login page as it is."""

    def __init__(self, backend, reason: str, *, code: str = "authentication_disallowed"):
        super().__init__(backend, code=code, stage="pipeline")
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def refuse(backend, response: dict, reason: str, *, code: str = "authentication_disallowed") -> SignInRefused:
    """The refusal to raise; the tokens Globus just issued for this sign-in are revoked first."""
    revoke(tokens_in(response))
    return SignInRefused(backend, reason, code=code)


# --- Pipeline steps ---------------------------------------------------------------------
def identity_domain(username: str | None) -> str:
    return (username or "").rpartition("@")[2].lower()


def check_domain(backend, details, response, *args, **kwargs):
    allowed = settings.GLOBUS_AUTH_ALLOWED_DOMAINS
    domain = identity_domain(details.get("username") or response.get("preferred_username"))
    if allowed and domain not in allowed:
        log.warning("Globus sign-in refused: identity domain %r not in GLOBUS_AUTH_ALLOWED_DOMAINS", domain)
        raise refuse(backend, response, f"Sign-in refused: identities from {domain or 'an unknown domain'} may not "
                                     f"sign in to L2 (allowed: {', '.join(allowed)}).")


def groups_token(response: dict) -> str | None:
    for token in response.get("other_tokens") or []:
        if isinstance(token, dict) and token.get("resource_server") == GROUPS_RESOURCE_SERVER:
            return token.get("access_token")
    return None


def globus_group_ids(access_token: str) -> set[str]:
    """The ids of the Globus groups the token's identity is an active member of."""
    import globus_sdk
    from globus_sdk.transport import RetryConfig

    client = globus_sdk.GroupsClient(authorizer=globus_sdk.AccessTokenAuthorizer(access_token),
                                     base_url=settings.GLOBUS_GROUPS_URL + "/",
                                     retry_config=RetryConfig(max_retries=1))
    return {str(g["id"]) for g in client.get_my_groups(statuses="active")}


def roles_for(group_ids: set[str]) -> dict[str, bool]:
    """Role → member or not, for each role whose Globus group is configured."""
    mapping = {SCIENCE: settings.GLOBUS_SCIENCE_GROUP, OPERATORS: settings.GLOBUS_OPERATORS_GROUP}
    return {role: gid in group_ids for role, gid in mapping.items() if gid}


def fetch_roles(backend, response, *args, **kwargs):
    if not (settings.GLOBUS_SCIENCE_GROUP or settings.GLOBUS_OPERATORS_GROUP):
        return {"globus_roles": {}}
    import globus_sdk

    token = groups_token(response)
    if not token:
        raise refuse(backend, response, "Sign-in refused: Globus did not grant L2 access to your group memberships, "
                                     "so your roles cannot be known. Sign in again and allow it.")
    try:
        ids = globus_group_ids(token)
    except globus_sdk.GlobusAPIError as exc:
        log.warning("Globus sign-in refused: the Groups API answered HTTP %s", exc.http_status)
        raise refuse(backend, response, f"Sign-in refused: the Globus Groups service answered with an error "
                                     f"(HTTP {exc.http_status}), so your roles cannot be known. Try again later.",
                            code="unavailable") from None
    except (globus_sdk.NetworkError, globus_sdk.GlobusSDKUsageError) as exc:
        log.warning("Globus sign-in refused: the Groups API could not be reached (%s)", type(exc).__name__)
        raise refuse(backend, response, "Sign-in refused: the Globus Groups service could not be reached, so your "
                                     "roles cannot be known. Try again later.", code="connection_failed") from None
    return {"globus_roles": roles_for(ids)}


def refuse_superuser(backend, response, user=None, *args, **kwargs):
    if user is not None and user.is_superuser:
        raise refuse(backend, response, "Administrators sign in with their local user name and password, "
                                     "not with Globus.")


def apply_roles(backend, user=None, globus_roles=None, *args, **kwargs):
    if user is None or user.is_superuser or not globus_roles:
        return
    groups = {g.name: g for g in Group.objects.filter(name__in=GROUPS)}
    current = set(user.groups.filter(name__in=GROUPS).values_list("name", flat=True))
    with role_source("from Globus groups at sign-in"):
        for role, member in sorted(globus_roles.items()):
            group = groups.get(role) or Group.objects.get_or_create(name=role)[0]
            if member and role not in current:
                user.groups.add(group)
            elif not member and role in current:
                user.groups.remove(group)
    user.__dict__.pop("_l2_groups", None)


# --- Sign-out ---------------------------------------------------------------------------
def tokens_in(data: dict) -> list[str]:
    """The access and refresh tokens of a Globus token response (or of what was kept of one)."""
    tokens = [data.get("access_token"), data.get("refresh_token")]
    for other in data.get("other_tokens") or []:
        if isinstance(other, dict):
            tokens += [other.get("access_token"), other.get("refresh_token")]
    return [t for t in tokens if isinstance(t, str) and t]


def revoke(tokens: list[str]) -> int:
    """Revoke tokens at Globus Auth; how many it took. A failure is logged (never the token)."""
    if not tokens:
        return 0
    import globus_sdk

    client = globus_sdk.ConfidentialAppAuthClient(settings.GLOBUS_AUTH_CLIENT_ID, settings.GLOBUS_AUTH_CLIENT_SECRET,
                                                  base_url=settings.GLOBUS_AUTH_URL + "/")
    revoked = 0
    for token in tokens:
        try:
            client.oauth2_revoke_token(token)
            revoked += 1
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            log.warning("could not revoke a Globus token (%s)", getattr(exc, "http_status", type(exc).__name__))
    return revoked


def revoke_tokens(user) -> int:
    """At sign-out: revoke every Globus token kept for ``user`` and forget them; how many were revoked."""
    if not getattr(user, "is_authenticated", False) or not settings.GLOBUS_AUTH_ENABLED:
        return 0
    from social_django.models import UserSocialAuth

    revoked = 0
    for social in UserSocialAuth.objects.filter(user=user, provider="globus"):
        data = social.extra_data or {}
        revoked += revoke(tokens_in(data))
        social.extra_data = {k: v for k, v in data.items()
                             if k not in ("access_token", "refresh_token", "id_token", "other_tokens")}
        social.save(update_fields=["extra_data"])
    if revoked:
        log.info("revoked %d Globus token(s) of %s at sign-out", revoked, user.get_username())
    return revoked


# --- Messages on the login page ----------------------------------------------------------
MESSAGES = {
    "state_mismatch": "Globus sign-in failed: the answer from Globus did not match the sign-in this browser "
                      "started (wrong or expired state). Start again with “Sign in with Globus”.",
    "session_context_missing": "Globus sign-in failed: the answer from Globus did not match the sign-in this "
                               "browser started (wrong or expired state). Start again with “Sign in with Globus”.",
    "missing_parameter": "Globus sign-in failed: the answer from Globus was incomplete. Start again with "
                         "“Sign in with Globus”.",
    "authorization_code_rejected": "Globus sign-in failed: the sign-in code was expired or already used. "
                                   "Start again with “Sign in with Globus”.",
    "credential_rejected": "Globus sign-in failed: the sign-in code was expired or already used. "
                           "Start again with “Sign in with Globus”.",
    "response_expired": "Globus sign-in failed: the answer from Globus has expired. Start again with "
                        "“Sign in with Globus”.",
    "nonce_mismatch": "Globus sign-in failed: the answer from Globus did not match this sign-in. Start again "
                      "with “Sign in with Globus”.",
    "authorization_declined": "Globus sign-in was cancelled.",
}


class SignInErrorMiddleware(SocialAuthExceptionMiddleware):
    """social-auth's error middleware with L2's words: back to the login page with a clear message."""

    def get_message(self, request, exception) -> str:
        if isinstance(exception, SignInRefused):
            return exception.reason
        code = getattr(exception, "code", "")
        if code in MESSAGES:
            return MESSAGES[code]
        if code in ("connection_failed", "timeout", "unavailable", "rate_limited", "tls_error"):
            return "Globus sign-in failed: Globus Auth could not be reached. Try again later."
        return f"Globus sign-in failed ({code or 'unknown error'}). Start again, or ask an administrator."
