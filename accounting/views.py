"""Report pages: /reports/ (index), projects/<slug>/ (managers and staff),
site/ (staff), me/ (everyone signed in). Each also answers ?format=csv|xlsx|pdf
with the same report rendered by accounting.exports.

Order in every view: sign-in (redirect), tenant lookup (404), permission
(403), parameters, then compute once and render."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponseBadRequest
from django.shortcuts import render

from clusters.models import Cloud, SlurmCluster
from portal.listing import PAGE_SIZE, querystring_without
from projects import selectors
from projects.models import Membership

from . import exports, reports


def _format(request):
    """The export format asked for, '' for the page; None when unknown."""
    fmt = request.GET.get("format", "").strip().lower()
    if fmt in ("", "html"):
        return ""
    return fmt if fmt in exports.FORMATS else None


def _bad_request(errors):
    text = "\n".join(f"{field}: {message}" for field, message in errors.items())
    return HttpResponseBadRequest(text + "\n", content_type="text/plain; charset=utf-8")


def _range(request, fmt):
    """(Range, response): exports refuse bad parameters (400 naming the
    field); pages fall back to the defaults and say so."""
    if fmt:
        try:
            return reports.parse_range(request.GET), None
        except reports.ParamError as e:
            return None, _bad_request(e.errors)
    rng, errors = reports.parse_range_or_default(request.GET)
    for name, message in errors.items():
        messages.warning(request, f"Ignored {name}: {message}")
    return rng, None


def _export(request, report, fmt):
    table = request.GET.get("table") or None
    if table is not None and table not in {t.name for t in report.tables()}:
        return _bad_request({"table": f"{table!r} is not one of "
                                      f"{', '.join(t.name for t in report.tables())}."})
    return exports.response(report, fmt, table=table)


def _export_links(request):
    base = querystring_without(request, "format", "page", "table")
    return {fmt: f"?{base}&format={fmt}" if base else f"?format={fmt}" for fmt in exports.FORMATS}


@login_required
def index(request):
    user = request.user
    managed = selectors.projects_visible_to(user)
    if not user.is_staff:
        managed = managed.filter(memberships__user=user, memberships__role=Membership.Role.MANAGER)
    return render(request, "accounting/index.html", {"managed": managed.order_by("name")})


@login_required
def project_report(request, slug):
    project = selectors.project_for(request.user, slug)
    if not selectors.can_manage(request.user, project):
        raise PermissionDenied("Only the project's managers and the staff see its report.")
    fmt = _format(request)
    if fmt is None:
        return _bad_request({"format": f"one of {', '.join(exports.FORMATS)}."})
    rng, error = _range(request, fmt)
    if error:
        return error
    report = reports.project_report(project, rng)
    if fmt:
        return _export(request, report, fmt)
    return render(request, "accounting/project_report.html", {
        "project": project, "report": report, "range": rng, "periods": reports.PERIODS,
        "chart": report.chart(), "vm_chart": report.vm_chart(), "exports": _export_links(request),
        "role": selectors.role_of(request.user, project), "burn_window": reports.BURN_WINDOW,
        "top_n": reports.TOP_JOBS,
    })


@login_required
def site_report(request):
    if not request.user.is_staff:
        return render(request, "portal/staff_only.html", status=403)
    fmt = _format(request)
    if fmt is None:
        return _bad_request({"format": f"one of {', '.join(exports.FORMATS)}."})
    rng, error = _range(request, fmt)
    if error:
        return error
    clusters = list(SlurmCluster.objects.order_by("name"))
    name = request.GET.get("cluster", "").strip()
    cluster = next((c for c in clusters if c.name == name), None)
    if name and cluster is None:
        if fmt:
            return _bad_request({"cluster": f"no cluster named {name!r}."})
        messages.warning(request, f"Ignored cluster: no cluster named {name!r}.")
    clouds = list(Cloud.objects.order_by("name"))
    cloud_name = request.GET.get("cloud", "").strip()
    cloud = next((c for c in clouds if c.name == cloud_name), None)
    if cloud_name and cloud is None:
        if fmt:
            return _bad_request({"cloud": f"no cloud named {cloud_name!r}."})
        messages.warning(request, f"Ignored cloud: no cloud named {cloud_name!r}.")
    report = reports.site_report(rng, cluster=cluster, cloud=cloud,
                                 sort=request.GET.get("sort", reports.SITE_DEFAULT_SORT))
    if fmt:
        return _export(request, report, fmt)
    page = Paginator(report.queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "accounting/site_report.html", {
        "report": report, "range": rng, "page": page, "rows": report.rows(page.object_list),
        "clusters": clusters, "cluster": cluster, "clouds": clouds, "cloud": cloud, "sort": report.sort,
        "sort_qs": querystring_without(request, "sort", "page", "format"),
        "page_qs": querystring_without(request, "page", "format"),
        "exports": _export_links(request),
    })


@login_required
def my_report(request):
    fmt = _format(request)
    if fmt is None:
        return _bad_request({"format": f"one of {', '.join(exports.FORMATS)}."})
    rng, error = _range(request, fmt)
    if error:
        return error
    report = reports.personal_report(request.user, rng)
    if fmt:
        return _export(request, report, fmt)
    return render(request, "accounting/my_report.html", {
        "report": report, "range": rng, "periods": reports.PERIODS, "chart": report.chart(),
        "vm_chart": report.vm_chart(),
        "exports": _export_links(request),
    })
