"""``{% program_live program %}`` and ``{% program_stepper program history %}`` on the program page."""
from django import template

from inversions import live

register = template.Library()


@register.inclusion_tag("inversions/partials/live.html")
def program_live(program):
    return live.watcher_context(program)


@register.inclusion_tag("inversions/partials/stepper.html")
def program_stepper(program, history):
    return {"steps": live.stepper(program, list(reversed(history)))}


@register.simple_tag
def history_entries(history, program):
    """The history (newest first) with the program's notes in their place: [{"transition"} | {"note"}]."""
    from inversions.models import ProgramNote

    notes = list(ProgramNote.objects.filter(program=program).select_related("author").order_by("-at", "-id"))
    entries = [{"at": t.at, "transition": t} for t in history] + [{"at": n.at, "note": n} for n in notes]
    return sorted(entries, key=lambda e: e["at"], reverse=True)
