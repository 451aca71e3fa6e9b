"""Tags of the program list page: its loops, written in Python.

``{% program_rows rows %}`` (``inversions/partials/program_table.html``): through the template
engine, 50 rows of eight cells (a ``{% url %}``, ``|date``, ``|truncatechars``, a nested loop and
the state-badge include per row: ~700 variable lookups, each resolved and escaped) cost more
than all the rest of the page. Here each row is one ``str.format`` of escaped plain values,
with the markup the template had. ``rows`` are the dicts of :func:`inversions.selectors.program_table`.

``{% options choices selected %}``: the ``<option>`` elements of the filter's menus.
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

register = template.Library()

ROW = """<tr>
    <td class="ident"><a href="{url}">{ipeid}</a>
      {description}</td>
    <td>{instrument}</td>
    <td>{proposal}<div class="small muted">{experiment}</div></td>
    <td class="lines">{lines}</td>
    <td class="nowrap">{observed}</td>
    <td class="num">{datasets}</td>
    <td><span class="state state-{state}">{label}</span>{note}{flag}</td>
  </tr>"""
DESCRIPTION = '<div class="desc small muted">{}</div>'
CHIP = '<span class="chip">{}</span>'
NO_LINES = '<span class="muted">—</span>'
NOTE = ' <span class="small muted">{}</span>'
FLAG = ' <span class="flag" title="datasets changed {} UTC">datasets changed</span>'

LABELS = dict(State.choices)
# Programs from Working on whose datasets changed carry a flag (DESIGN §4).
CHANGED_FLAG_STATES = frozenset((State.WORKING, State.INVERTED, State.PUBLISHED, State.ERROR))
URL_SAFE = RFC3986_SUBDELIMS + "/~:@"  # as reverse() quotes its arguments


# Instruments, proposals, experiments, states and lines repeat from row to row: escaped once.
escape_short = lru_cache(maxsize=4096)(escape)


@lru_cache(maxsize=1024)
def chip(line: str) -> str:
    return CHIP.format(escape(line))


def head(text: str) -> str:
    """``text|truncatechars:DESCRIPTION_CHARS``; plain ASCII without the character-by-character walk."""
    if text.isascii():
        return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 1] + "…"
    return Truncator(text).chars(DESCRIPTION_CHARS)


WORKING, QUEUED, DISCOVERED = State.WORKING.value, State.QUEUED.value, State.DISCOVERED.value


@register.simple_tag
def program_rows(rows) -> SafeString:
    """The ``<tr>`` of each program (nothing for no rows: the template says "No programs")."""
    now = timezone.now()
    tz = timezone.get_current_timezone()  # what |date shows times in
    prefix, suffix = reverse("program-detail", args=["-"]).rsplit("-", 1)
    out = []
    for p in rows:
        ipeid, state = p["instrument_program_execution_id"], p["state"]
        if state == WORKING and p["claimant"] is not None:
            note = NOTE.format("by " + escape_short(p["claimant"]))
        elif state == QUEUED:
            note = NOTE.format(f"priority {p['priority']}")
        elif state == DISCOVERED and p["settles"] and p["settles"] > now:
            note = NOTE.format("settles " + p["settles"].astimezone(tz).date().isoformat())
        else:
            note = ""
        changed = p["changed"]
        description = p["description_head"]
        lines = p["spectral_lines"]
        out.append(ROW.format(
            url=escape(prefix + quote(ipeid, safe=URL_SAFE) + suffix),
            ipeid=escape(ipeid),
            description=DESCRIPTION.format(escape(head(description))) if description else "",
            instrument=escape_short(p["instrument_name"]),
            proposal=escape_short(p["primary_proposal_id"]),
            experiment=escape_short(p["primary_experiment_id"]),
            lines="".join([chip(line) for line in lines]) if lines else NO_LINES,
            observed=p["observed"] or "—",
            datasets=p["dataset_count"],
            state=escape_short(state),
            label=escape_short(LABELS.get(state, state)),
            note=note,
            flag=FLAG.format(changed) if changed and state in CHANGED_FLAG_STATES else "",
        ))
    return mark_safe("".join(out))


OPTION = '<option value="{}" {}>{}</option>'


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
        out.append(OPTION.format(escape(str(value)), "selected" if on else "", escape(str(label))))
    return mark_safe("".join(out))
