"""``{% program_publishing program %}``: the publishing part of the program page."""
from django import template

from publishing.views import publishing_context

register = template.Library()


@register.inclusion_tag("publishing/partials/program_publishing.html", takes_context=True)
def program_publishing(context, program):
    known = context.render_context.get(CURRENT_KEY)
    extra = {"known_inversion": known[1]} if known and known[0] == program.pk else {}
    return publishing_context(program, context["request"].user, **extra) | {"csrf_token": context.get("csrf_token")}


#: render_context key: (program pk, its current inversion), read once for both cards of the page
CURRENT_KEY = "l2_current_inversion"


@register.inclusion_tag("publishing/partials/results.html", takes_context=True)
def program_results(context, program):
    """``{% program_results program %}``: the results card (maps) of a program with generated L2 files."""
    from publishing.results_views import SHOWN_IN, results_context
    from publishing.selectors import current_inversion

    if program.state not in SHOWN_IN:
        return {"show": False}
    inversion = current_inversion(program)
    context.render_context[CURRENT_KEY] = (program.pk, inversion)
    return results_context(program, inversion)
