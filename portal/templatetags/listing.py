from django import template
from django.utils.html import format_html

register = template.Library()


@register.simple_tag
def sort_header(label, field, current, base_qs):
    """A sortable column header: a link that toggles the order, with
    aria-sort so screen readers announce it."""
    descending = current == f"-{field}"
    active = current in (field, f"-{field}")
    target = field if descending or not active else f"-{field}"
    qs = f"{base_qs}&" if base_qs else ""
    arrow = ("▼" if descending else "▲") if active else ""
    aria = ("descending" if descending else "ascending") if active else "none"
    return format_html(
        '<th scope="col" aria-sort="{}"><a href="?{}sort={}">{} <span aria-hidden="true">{}</span></a></th>',
        aria, qs, target, label, arrow,
    )
