"""Helpers every app's views share: HTMX partials, pagination, safe ``next`` targets, role flags.

One small module, so that no app's ``views.py`` imports another's (the imports stay one-way:
``inversions``, ``scanning`` and ``publishing`` views all import from here).
"""
from __future__ import annotations

import hashlib
import secrets

from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import get_script_prefix
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme

from l2site.auth import is_admin, is_operator, is_science


def wants_partial(request) -> bool:
    """An HTMX swap (not a history restore, which needs the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


#: What stands for the request's CSRF token in a kept page: random, made once per process.
CSRF_HOLE = "csrf" + secrets.token_hex(16)


def render_page(request, full: str, partial: str, context: dict, *, status: int = 200,
                keep: str | None = None, keep_seconds: float = 0.0):
    """``partial`` for an HTMX swap, ``full`` otherwise; the answer varies on the HTMX headers.

    ``keep``, with ``keep_seconds`` > 0: a name for all that ``context`` holds, new whenever any
    of it changes (the program list: its listing's ``made``). The page is then rendered once per
    name, template, user and script prefix, with a hole where the CSRF token goes, kept
    ``keep_seconds`` in the cache, and answered from there with this request's own token
    (:func:`kept_render`). A request with messages to show is rendered as usual: they are shown
    once, and never kept.
    """
    is_partial = wants_partial(request)
    template = partial if is_partial else full
    context = {"partial": is_partial, **context}
    if keep and keep_seconds > 0 and status == 200 and not len(messages.get_messages(request)):
        response = HttpResponse(kept_render(request, template, context, keep, keep_seconds))
    else:
        response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


def kept_render(request, template: str, context: dict, keep: str, seconds: float) -> str:
    """``template`` rendered with ``context`` as :func:`render_page` keeps it (see there).

    Besides the context, a page reads the user in its header (``base.html``: the user name, the
    Admin link of a superuser) and the script prefix in its links: they are part of the key, so
    a kept page is never another user's. The CSRF token is not kept: the page is rendered with
    :data:`CSRF_HOLE` in its place, kept as the text around it, and joined with this request's
    token (:func:`django.middleware.csrf.get_token`, masked anew, as rendering does).
    """
    user = request.user
    whose = (keep, template, get_script_prefix(), user.pk, user.get_username(), user.is_superuser)
    key = "l2:page:" + hashlib.sha1(repr(whose).encode()).hexdigest()
    parts = cache.get(key)
    if parts is None:
        parts = tuple(render_to_string(template, {**context, "csrf_token": CSRF_HOLE}, request).split(CSRF_HOLE))
        cache.set(key, parts, seconds)
    return get_token(request).join(parts) if len(parts) > 1 else parts[0]


def paginate(request, items, per_page: int, param: str = "page", paginator_class=Paginator):
    """A page of ``items``; a bad or out-of-range page number is clamped, with a note."""
    page, notes = page_of(request.GET.get(param, ""), items, per_page, paginator_class)
    for note in notes:
        messages.warning(request, note)
    return page


def page_of(raw: str, items, per_page: int, paginator_class=Paginator):
    """``(page, notes)``: the page ``raw`` names (clamped to the pages there are) and what was clamped, in words."""
    notes = []
    number = 1
    if raw:
        try:
            number = int(raw)
        except ValueError:
            notes.append(f"Ignored page {raw[:20]!r}: not a page number.")
        else:
            if number < 1:
                notes.append(f"There is no page {number}: showing the first.")
                number = 1
    paginator = paginator_class(items, per_page)
    if number > paginator.num_pages:
        notes.append(f"There is no page {number}: showing the last ({paginator.num_pages}).")
        number = paginator.num_pages
    return paginator.page(number), notes


def safe_next(request, default: str) -> str:
    """The ``next`` of a POST when it is a path on this site (``/…``), else ``default``.

    Worked out before the action runs, and redirected to as a URL (never looked up as a view
    name): ``next=yesterday`` or ``next=//elsewhere`` fall back to ``default``.
    """
    target = request.POST.get("next") or ""
    if (target.startswith("/") and not target.startswith(("//", "/\\"))
            and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure())):
        return target
    return default


def roles(user) -> dict:
    """Role flags for templates (what to show; the views check again) and the time of the answer."""
    return {
        "is_science": is_science(user),
        "is_operator": is_operator(user),
        "is_admin": is_admin(user),
        "now": timezone.now(),
    }
