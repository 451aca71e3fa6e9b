"""One input-cleaning rule for every entry point: no NUL character and no lone surrogate, anywhere.

PostgreSQL stores neither (a NUL ends no text of its; a lone surrogate is not UTF-8), and no
program id, path, commit or note needs one. :class:`CleanInputMiddleware` answers 400 for a
request whose path, query, form fields or JSON body holds one (JSON under ``/api/``, the error
page elsewhere), before any view runs; :func:`reject_bad_text` is the same rule as a form-field
validator, and :func:`problem` the rule itself (the event-bus intake checks its messages with it).
One more, for the admin: an empty ``_to_field`` is refused (Django's admin would answer 500).
"""
from __future__ import annotations

import json
import re

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, ValidationError
from django.http import HttpResponseBadRequest, JsonResponse
from django.template.loader import render_to_string

_BAD = re.compile("[\x00\ud800-\udfff]")
RULE = "must not contain NUL characters or lone surrogates"
#: The admin refuses (400) a ``_to_field`` naming a field it may not reference, but an empty one
#: reaches ``get_field("")`` and a 500 (Django 5.2): refused here with the rest.
TO_FIELD = "_to_field"


def problem(value) -> str | None:
    """What is wrong with a text (or a JSON-like value: lists, dicts and their keys), or None."""
    if isinstance(value, str):
        match = _BAD.search(value)
        if match is None:
            return None
        char = match.group()
        return "a NUL character" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
    if isinstance(value, dict):
        return next((p for k, v in value.items() for p in (problem(k), problem(v)) if p), None)
    if isinstance(value, (list, tuple)):
        return next((p for v in value if (p := problem(v))), None)
    return None


def reject_bad_text(value) -> None:
    """Form-field validator: the same rule."""
    found = problem(value)
    if found:
        raise ValidationError(f"Text {RULE} (found {found}).", code="bad_characters")


def _request_problem(request) -> str | None:
    """Why a request is refused (its first bad text), or None."""
    if found := problem(request.path):
        return f"the path {RULE} (found {found})"
    for key, values in request.GET.lists():
        if found := problem(key) or problem(values):
            return f"the query parameter {key[:40]!r} {RULE} (found {found})"
    if request.path.startswith("/admin/") and "" in (request.GET.get(TO_FIELD), request.POST.get(TO_FIELD)):
        return f"{TO_FIELD} must name a field"
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return None
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, values in request.POST.lists():
            if found := problem(key) or problem(values):
                return f"the form field {key[:40]!r} {RULE} (found {found})"
        return None
    if request.body:
        try:
            body = json.loads(request.body)
        except ValueError:  # not JSON (or not UTF-8): the view says what it expected
            return None
        if found := problem(body):
            return f"the JSON body {RULE} (found {found})"
    return None


class CleanInputMiddleware:
    """400 for NUL or lone surrogates in the path, the query, the form fields or a JSON body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            reason = _request_problem(request)
        except (RequestDataTooBig, TooManyFieldsSent) as exc:
            return refuse(request, f"the request is too large: {exc}")
        if reason is not None:
            return refuse(request, reason)
        return self.get_response(request)


def refuse(request, reason: str):
    """A 400 saying why: JSON under /api/, the error page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": reason}, status=400)
    return HttpResponseBadRequest(render_to_string("400.html", {"reason": reason}, request=request))
