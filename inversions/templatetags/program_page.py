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
