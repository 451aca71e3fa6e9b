"""``{% load globus %}{% globus_link collection path %}``: an "Open in Globus" link (l2site/globus_links.py)."""
from __future__ import annotations

from django import template
from django.utils.html import format_html

from l2site.globus_links import file_manager_url

register = template.Library()


@register.simple_tag
def globus_link(collection, path, label="Open in Globus", what="", is_file=False):
    url = file_manager_url(collection, path, is_file=bool(is_file))
    if url is None:
        return ""
    title = f"{what}: {collection}:{path}" if what else f"{collection}:{path}"
    return format_html('<a class="globus-link" href="{}" target="_blank" rel="noopener noreferrer" title="{}"'
                       ' data-testid="globus-link">{}</a>', url, title, label)


@register.simple_tag
def l1_globus_link(dataset, label="Open in Globus"):
    """The dataset's L1 folder (``L2_L1_COLLECTION``, ``L2_L1_PATH``)."""
    from django.conf import settings

    from inversions.pipeline import l1_path

    return globus_link(settings.L2_L1_COLLECTION, l1_path(dataset), label=label, what=f"L1 folder of {dataset.dataset_id}")
