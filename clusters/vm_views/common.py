"""Shared by the server, volume and SSH key pages: tenant lookups (404), who
may act (403), service errors shown as messages or form errors, list
responses for htmx, and the quota panel next to the create forms."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, render
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme

from portal.listing import paginate, querystring_without, sort_queryset
from projects import selectors as project_selectors
from projects.models import Resource
from projects.services import QuotaExceeded

from .. import vms
from ..models import Cloud
from ..vm_forms import launchable_projects

# The quotas a create form draws on, in the order shown.
QUOTA_RESOURCES = {
    "server": [Resource.CORES, Resource.RAM_MB, Resource.DISK_GB, Resource.INSTANCES, Resource.FLOATING_IPS,
               Resource.VOLUMES, Resource.VOLUME_GB],
    "volume": [Resource.VOLUMES, Resource.VOLUME_GB],
}


def server_for(user, pk):
    """The server if the user may see it, else 404."""
    return get_object_or_404(vms.servers_visible_to(user), pk=pk)


def volume_for(user, pk):
    return get_object_or_404(vms.volumes_visible_to(user), pk=pk)


def can_act(user, record):
    """The owner, the project's managers and staff act on a server or volume."""
    return user.is_staff or record.owner_id == user.pk or project_selectors.can_manage(user, record.project)


def check_can_act(user, record):
    if not can_act(user, record):
        raise PermissionDenied("Only the owner, the project's managers and staff can do this.")


def attach_errors(form, exc, aliases=None):
    """A service ValidationError onto the form: at the field it names when
    the form has that field, else at the top."""
    aliases = aliases or {}
    if not hasattr(exc, "error_dict"):
        form.add_error(None, " ".join(exc.messages))
        return
    for field, errors in exc.message_dict.items():
        name = aliases.get(field, field)
        for error in errors:
            form.add_error(name if name in form.fields else None, error)


def run_request(request, call, success):
    """Call a `clusters.vms` request; its refusal (state, quota, input)
    becomes an error message, else `success` is shown. Returns the result
    or None."""
    try:
        result = call()
    except (vms.RequestRefused, QuotaExceeded) as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, success)
        return result
    return None


def form_error_message(request, form):
    messages.error(request, " ".join(str(e) for errors in form.errors.values() for e in errors))


def safe_next(request, default):
    """Where to go back to after a POST: `next` if it is on this site."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return target
    return default


def list_response(request, template, table_template, context):
    """The whole list page, or only its table for htmx's filter requests
    (except when htmx restores history: it then replaces the body)."""
    partial = request.htmx and not request.htmx.history_restore_request
    response = render(request, table_template if partial else template, context)
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


def record_list(request, qs, *, states, sorts, search, templates):
    """The server and volume lists: state filter (deleted ones only when
    asked for), project, cloud, search (`search(q)` gives the Q), sorting
    and pagination; htmx filter requests get only the table."""
    query = request.GET.get("q", "").strip()
    state = request.GET.get("state", "")
    if state not in states.values:
        state = ""
    project, cloud = request.GET.get("project", ""), request.GET.get("cloud", "")
    qs = qs.filter(state=state) if state else qs.exclude(state=states.DELETED)
    if project:
        qs = qs.filter(project__slug=project)
    if cloud:
        qs = qs.filter(cloud__name=cloud)
    if query:
        qs = qs.filter(search(query))
    qs, sort = sort_queryset(request, qs, sorts, "-created")
    context = {
        "page": paginate(request, qs), "query": query, "state": state, "sort": sort, "project": project,
        "cloud": cloud, "states": states.choices,
        "projects": project_selectors.projects_visible_to(request.user).order_by("name"),
        "clouds": Cloud.objects.filter(enabled=True).order_by("name"),
        "sort_qs": querystring_without(request, "sort", "page"),
        "page_qs": querystring_without(request, "page"),
    }
    return list_response(request, *templates, context)


def quota_rows(project, user, kind):
    """What is left of the project's quotas a create form draws on, with the
    user's own share where a per-member limit is set."""
    if project is None:
        return []
    order = [r.value for r in QUOTA_RESOURCES[kind]]
    quotas = {q.resource: q for q in project.quotas.filter(resource__in=order).prefetch_related("member_usage")}
    rows = []
    for resource in order:
        quota = quotas.get(resource)
        if quota is None:
            continue
        mine = None
        if quota.per_member_limit is not None:
            usage = next((u for u in quota.member_usage.all() if u.user_id == user.pk), None)
            mine = max(quota.per_member_limit - (usage.consumed if usage else 0), 0)
        rows.append({"quota": quota, "left": quota.available, "mine": mine})
    return rows


def quota_context(project, user, kind):
    return {"quota_project": project, "quota_rows": quota_rows(project, user, kind), "quota_kind": kind}


@login_required
def quota_left(request, kind):
    """htmx: the quota panel of a create form, for the project chosen."""
    project = launchable_projects(request.user).filter(slug=request.GET.get("project", "")).first()
    return render(request, "clusters/vms/_quota_left.html", quota_context(project, request.user, kind))
