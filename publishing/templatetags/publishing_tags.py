"""``{% program_publishing program %}``: the publishing part of the program page."""
from django import template

from publishing.views import publishing_context

register = template.Library()


@register.inclusion_tag("publishing/partials/program_publishing.html", takes_context=True)
def program_publishing(context, program):
    return publishing_context(program, context["request"].user) | {"csrf_token": context.get("csrf_token")}
