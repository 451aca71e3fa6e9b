"""One input-cleaning rule for every entry point: no NUL character and no lone surrogate, anywhere.

PostgreSQL stores neither (a NUL ends no text of its; a lone surrogate is not UTF-8), and no
program id, path, commit or note needs one. :class:`CleanInputMiddleware` answers 400 for a
request whose path, query, form fields or JSON body holds one (JSON under ``/api/``, the error
page elsewhere), before any view runs; :func:`reject_bad_text` is the same rule as a form-field
validator, and :func:`problem` the rule itself (the event-bus intake checks its messages with it).
"""
from __future__ import annotations

import json
import re

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, ValidationError
from django.http import HttpResponseBadRequest, JsonResponse
from django.template.loader import render_to_string

_BAD = re.compile("[\x00\ud800-\udfff]")
RULE = "must not contain NUL characters or lone surrogates"


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


def _body_problem(request) -> tuple[str, str] | None:
    """(where, what) for the first bad text of a request, or None."""
    if found := problem(request.path):
        return "the path", found
    for key, values in request.GET.lists():
        if found := problem(key) or problem(values):
            return f"the query parameter {key[:40]!r}", found
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return None
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, values in request.POST.lists():
            if found := problem(key) or problem(values):
                return f"the form field {key[:40]!r}", found
        return None
    if request.body:
        try:
            body = json.loads(request.body)
        except ValueError:  # not JSON (or not UTF-8): the view says what it expected
            return None
        if found := problem(body):
            return "the JSON body", found
    return None


class CleanInputMiddleware:
    """400 for NUL or lone surrogates in the path, the query, the form fields or a JSON body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            bad = _body_problem(request)
        except (RequestDataTooBig, TooManyFieldsSent) as exc:
            return refuse(request, f"the request is too large: {exc}")
        if bad is not None:
            where, found = bad
            return refuse(request, f"{where} {RULE} (found {found})")
        return self.get_response(request)


def refuse(request, reason: str):
    """A 400 saying why: JSON under /api/, the error page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": reason}, status=400)
    return HttpResponseBadRequest(render_to_string("400.html", {"reason": reason}, request=request))
