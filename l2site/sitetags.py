"""Template tags every page shares (``{% load site %}``; registered in ``TEMPLATES`` as the ``site`` library).

``{% site_url 'name' %}``: ``{% url 'name' %}`` for a URL without arguments (the header's
links on every page), reversed once per script prefix instead of on every page: ten
``reverse()`` calls were a tenth of the program list's own time.

``{% site_static 'path' %}``: ``{% static 'path' %}`` for the stylesheet and scripts every page
links, looked up once per process (the storage's URL of a file does not change while it runs:
collectstatic and a restart come together).
"""
from __future__ import annotations

from functools import lru_cache

from django import template
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse

register = template.Library()


@register.simple_tag
def site_url(name: str) -> str:
    return _reversed(name, get_script_prefix())


@lru_cache(maxsize=128)
def _reversed(name: str, prefix: str) -> str:
    return reverse(name)


@register.simple_tag
def site_static(path: str) -> str:
    return _static(path)


@lru_cache(maxsize=64)
def _static(path: str) -> str:
    return static(path)
