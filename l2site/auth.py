"""Roles (DESIGN §11, §14) and API-token authentication.

Groups: ``science`` claims and reports; ``operators`` retry and prioritise; superusers are
admins (and may do everything). Checks happen on the server in every view and API call.
"""
from __future__ import annotations

import contextvars
import logging
from contextlib import contextmanager
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.http import JsonResponse

SCIENCE = "science"
OPERATORS = "operators"
GROUPS = (SCIENCE, OPERATORS)
log = logging.getLogger("l2.auth")
_role_source: contextvars.ContextVar[str] = contextvars.ContextVar("l2_role_source", default="by hand: admin or a command")


@contextmanager
def role_source(text: str):
    """What the role-change log lines inside this block name as the source of the change."""
    token = _role_source.set(text)
    try:
        yield
    finally:
        _role_source.reset(token)


def in_group(user, group: str) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    cache = getattr(user, "_l2_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True))
        user._l2_groups = cache
    return group in cache


def is_science(user) -> bool:
    return in_group(user, SCIENCE)


def is_operator(user) -> bool:
    return in_group(user, OPERATORS)


def is_admin(user) -> bool:
    return user.is_authenticated and user.is_active and user.is_superuser


def require_role(check, message: str):
    """View decorator: PermissionDenied (403) unless ``check(request.user)``."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not check(request.user):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def client_ip(request) -> str | None:
    """The client's address for login throttling (``AXES_CLIENT_IP_CALLABLE``).

    Behind the reverse proxy (``L2_BEHIND_PROXY``) the right-most ``X-Forwarded-For`` entry,
    the one the proxy appended (those left of it are the client's to invent); else ``REMOTE_ADDR``.
    """
    from django.conf import settings

    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if settings.L2_BEHIND_PROXY and forwarded.strip():
        return forwarded.split(",")[-1].strip()[:45] or request.META.get("REMOTE_ADDR")
    return request.META.get("REMOTE_ADDR")


class ApiTokenMiddleware:
    """``Authorization: Bearer <token>`` on /api/ authenticates as the token's user.

    Runs after AuthenticationMiddleware and before LoginRequiredMiddleware. A request with a
    token is exempt from CSRF (no cookies involved); a bad or revoked token is answered 401
    at once, never silently treated as anonymous.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        header = request.headers.get("Authorization", "")
        if request.path.startswith("/api/") and header:
            scheme, _, raw = header.partition(" ")
            if scheme.lower() not in ("bearer", "token") or not raw.strip():
                return JsonResponse({"error": "Authorization must be 'Bearer <token>'"}, status=401)
            from publishing.models import ApiToken

            token = ApiToken.authenticate(raw.strip())
            if token is None:
                return JsonResponse({"error": "invalid or revoked API token"}, status=401)
            request.user = token.user
            request.api_token = token
            request._dont_enforce_csrf_checks = True
        return self.get_response(request)


# --- Every change of a user's roles is logged --------------------------------------------
def _log_role_change(sender, instance, action, reverse, model, pk_set, **kwargs):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    sign = "+" if action == "post_add" else "-"
    User = get_user_model()
    if not reverse:  # user.groups.add/remove/clear
        if action == "pre_clear":
            names = list(instance.groups.filter(name__in=GROUPS).values_list("name", flat=True))
        else:
            names = list(Group.objects.filter(pk__in=pk_set or (), name__in=GROUPS).values_list("name", flat=True))
        changes = [(instance.get_username(), name) for name in names]
    else:  # group.user_set.add/remove/clear
        if instance.name not in GROUPS:
            return
        users = instance.user_set.all() if action == "pre_clear" else User.objects.filter(pk__in=pk_set or ())
        changes = [(u.get_username(), instance.name) for u in users]
    for username, name in sorted(changes):
        log.info("role change: %s %s%s (%s)", username, sign, name, _role_source.get())


def connect_signals() -> None:
    from django.contrib.auth import get_user_model
    from django.db.models.signals import m2m_changed

    m2m_changed.connect(_log_role_change, sender=get_user_model().groups.through, dispatch_uid="l2-role-log")
