"""Error answers: JSON under /api/ (an API client never gets an HTML page, not even for a 500),
Django's error pages (templates/4xx.html, 500.html) everywhere else."""
from __future__ import annotations

from django.http import JsonResponse
from django.views import csrf, defaults


def _api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    if _api(request):
        return JsonResponse({"error": "bad request"}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _api(request):
        return JsonResponse({"error": str(exception) if exception and str(exception) else "not allowed"}, status=403)
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception=None):
    if _api(request):
        return JsonResponse({"error": f"nothing at {request.path[:200]!r}: see /api/v1/openapi.json"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _api(request):
        return JsonResponse({"error": "internal error: it is logged; please try again later"}, status=500)
    return defaults.server_error(request)


def csrf_failure(request, reason=""):
    if _api(request):
        return JsonResponse({"error": f"CSRF check failed ({reason}): send an API token, or the session's CSRF token"},
                            status=403)
    return csrf.csrf_failure(request, reason=reason)
