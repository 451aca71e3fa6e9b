"""Tags of the program list page: its loops, written in Python.

``{% program_rows rows %}`` (``inversions/partials/program_table.html``): through the template
engine, 50 rows of eight cells (a ``{% url %}``, ``|date``, ``|truncatechars``, a nested loop and
the state-badge include per row: ~700 variable lookups, each resolved and escaped) cost more
than all the rest of the page. Here each row is one f-string of escaped plain values,
with the markup the template had. ``rows`` are the dicts of :func:`inversions.selectors.program_table`.

``{% options choices selected %}``: the ``<option>`` elements of the filter's menus;
``{% sort_headers headers base_url %}``: the table's column headers.
"""
from __future__ import annotations

from functools import lru_cache
from html import escape  # what django.utils.html.escape (autoescape) calls, without the lazy-string wrapper
from urllib.parse import quote

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.http import RFC3986_SUBDELIMS
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator

from inversions.selectors import DESCRIPTION_CHARS
from inversions.states import State
from inversions.selectors import CHANGED_FLAG_STATES  # programs from Working on: "datasets changed" flag

register = template.Library()

NO_LINES = '<span class="muted">—</span>'

LABELS = dict(State.choices)
URL_SAFE = RFC3986_SUBDELIMS + "/~:@"  # as reverse() quotes its arguments
WORKING, QUEUED, DISCOVERED = State.WORKING.value, State.QUEUED.value, State.DISCOVERED.value

# Instruments, proposals, experiments, states and lines repeat from row to row: escaped once.
escape_short = lru_cache(maxsize=4096)(escape)


@lru_cache(maxsize=1024)
def chip(line: str) -> str:
    return f'<span class="chip">{escape(line)}</span>'


def head(text: str) -> str:
    """``text|truncatechars:DESCRIPTION_CHARS``; plain ASCII without the character-by-character walk."""
    if text.isascii():
        return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 1] + "…"
    return Truncator(text).chars(DESCRIPTION_CHARS)


@register.simple_tag
def program_rows(rows) -> SafeString:
    """The ``<tr>`` of each program (nothing for no rows: the template says "No programs")."""
    now = timezone.now()
    tz = timezone.get_current_timezone()  # what |date shows times in
    prefix, suffix = reverse("program-detail", args=["-"]).rsplit("-", 1)
    out = []
    for p in rows:
        ipeid, state = p["instrument_program_execution_id"], p["state"]
        url = escape(prefix + quote(ipeid, safe=URL_SAFE) + suffix)
        description = p["description_head"]
        if description:
            description = f'<div class="desc small muted">{escape(head(description))}</div>'
        lines = "".join([chip(line) for line in p["spectral_lines"]]) or NO_LINES
        note = ""
        if state == WORKING and p["claimant"] is not None:
            note = f' <span class="small muted">by {escape_short(p["claimant"])}</span>'
        elif state == QUEUED:
            note = f' <span class="small muted">priority {p["priority"]}</span>'
        elif state == DISCOVERED and p["settles"] and p["settles"] > now:
            note = f' <span class="small muted">settles {p["settles"].astimezone(tz).date().isoformat()}</span>'
        if p["changed"] and state in CHANGED_FLAG_STATES:
            note += f' <span class="flag" title="datasets changed {p["changed"]} UTC">datasets changed</span>'
        out.append(f"""<tr>
    <td class="ident"><a href="{url}">{escape(ipeid)}</a>
      {description}</td>
    <td>{escape_short(p["instrument_name"])}</td>
    <td>{escape_short(p["primary_proposal_id"])}<div class="small muted">{escape_short(p["primary_experiment_id"])}</div></td>
    <td class="lines">{lines}</td>
    <td class="nowrap">{p["observed"] or "—"}</td>
    <td class="num">{p["dataset_count"]}</td>
    <td><span class="state state-{escape_short(state)}">{escape_short(LABELS.get(state, state))}</span>{note}</td>
  </tr>""")
    return mark_safe("".join(out))


@register.simple_tag
def options(choices, selected, fold_case=False) -> SafeString:
    """``<option>`` of each choice (a ``(value, label)`` pair or a plain value), ``selected`` marked.

    ``fold_case``: the selected value is matched case-insensitively (the instrument filter is).
    """
    if fold_case:
        selected = str(selected or "").lower()
    out = []
    for choice in choices:
        value, label = choice if isinstance(choice, (tuple, list)) else (choice, choice)
        on = (str(value).lower() == selected) if fold_case else value == selected
        out.append(f'<option value="{escape(str(value))}" {"selected" if on else ""}>{escape(str(label))}</option>')
    return mark_safe("".join(out))


ARROWS = {"ascending": ' <span aria-hidden="true">▲</span>', "descending": ' <span aria-hidden="true">▼</span>'}


@register.simple_tag
def sort_headers(headers, base_url: str) -> SafeString:
    """The table's ``<th>`` (``views._sort_headers``): a link that sorts by the column, the current sort marked."""
    out = []
    base = escape(base_url)
    for h in headers:
        aria = h.get("aria")
        th = f'<th scope="col" aria-sort="{escape(aria)}">' if aria else '<th scope="col">'
        label = escape(str(h["label"]))
        if h.get("url"):
            href = base + escape(h["url"])
            out.append(f'{th}<a href="{href}" hx-get="{href}">{label}{ARROWS.get(aria, "")}</a></th>')
        else:
            out.append(f"{th}{label}</th>")
    return mark_safe("".join(out))
