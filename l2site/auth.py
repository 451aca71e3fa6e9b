"""Roles (DESIGN §11, §14) and API-token authentication.

Groups: ``science`` claims and reports; ``operators`` retry and prioritise; superusers are
admins (and may do everything). Checks happen on the server in every view and API call.
"""
from __future__ import annotations

from functools import wraps

from django.core.exceptions import PermissionDenied
from django.http import JsonResponse

SCIENCE = "science"
OPERATORS = "operators"
GROUPS = (SCIENCE, OPERATORS)


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
