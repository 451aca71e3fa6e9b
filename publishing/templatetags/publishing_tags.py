"""``{% program_publishing program %}``: the publishing part of the program page."""
from django import template

from publishing.views import SHOWN_IN, publishing_context

register = template.Library()


@register.inclusion_tag("publishing/partials/program_publishing.html", takes_context=True)
def program_publishing(context, program):
    inversions = _inversions(context, program) if program.state in SHOWN_IN else None
    return publishing_context(program, context["request"].user, inversions=inversions) | {
        "csrf_token": context.get("csrf_token")}


def _inversions(context, program) -> list:
    """The program's inversions, read once for both cards of the page (the results card and this one;
    they are in templates of their own, so the list is kept on the program object the page renders)."""
    from publishing.selectors import program_inversions

    cached = getattr(program, "_l2_inversions", None)
    if cached is None:
        cached = program._l2_inversions = program_inversions(program)
    return cached


@register.inclusion_tag("publishing/partials/results.html", takes_context=True)
def program_results(context, program):
    """``{% program_results program %}``: the results card (maps) of a program with generated L2 files."""
    from publishing.results_views import SHOWN_IN, results_context
    from publishing.selectors import pick_current

    if program.state not in SHOWN_IN:
        return {"show": False}
    return results_context(program, pick_current(program, _inversions(context, program)))
