"""``{% program_publishing program %}``: the publishing part of the program page."""
from django import template

from publishing.views import publishing_context

register = template.Library()


@register.inclusion_tag("publishing/partials/program_publishing.html", takes_context=True)
def program_publishing(context, program):
    return publishing_context(program, context["request"].user) | {"csrf_token": context.get("csrf_token")}


@register.inclusion_tag("publishing/partials/results.html", takes_context=True)
def program_results(context, program):
    """``{% program_results program %}``: the results card (maps) of a program with generated L2 files."""
    from publishing.results_views import SHOWN_IN, results_context
    from publishing.selectors import current_inversion

    if program.state not in SHOWN_IN:
        return {"show": False}
    return results_context(program, current_inversion(program))
