"""Search, sorting and pagination for list pages, shared by every app."""
from django.core.paginator import Paginator

PAGE_SIZE = 25


def sort_queryset(request, queryset, allowed, default):
    """Order by `?sort=` if it names an allowed column (prefix '-' for
    descending); anything else falls back to `default`."""
    sort = request.GET.get("sort", default)
    if sort.lstrip("-") not in allowed:
        sort = default
    field = allowed[sort.lstrip("-")]
    return queryset.order_by(f"-{field}" if sort.startswith("-") else field, "pk"), sort


def paginate(request, queryset, per_page=PAGE_SIZE):
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def querystring_without(request, *keys):
    """The current query string minus `keys`, for building sort/page links."""
    params = request.GET.copy()
    for key in keys:
        params.pop(key, None)
    return params.urlencode()
