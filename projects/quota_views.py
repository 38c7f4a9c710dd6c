"""Pages for quota change requests: members ask, staff decide."""
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.listing import paginate, querystring_without

from . import quota_requests, selectors
from .forms import QuotaDecisionForm, QuotaRequestForm
from .models import QuotaRequest


def _errors_to_form(form, exc):
    for field, errors in getattr(exc, "message_dict", {"__all__": exc.messages}).items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


@login_required
def quota_request_new(request, slug):
    project = selectors.project_for(request.user, slug)
    if not selectors.role_of(request.user, project):
        raise PermissionDenied("Only the project's members can ask for a quota change.")
    initial = {"resource": request.GET.get("resource")} if request.GET.get("resource") else {}
    form = QuotaRequestForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            quota_requests.quota_request_create(project=project, user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            _errors_to_form(form, exc)
        else:
            messages.success(request, "Your request was sent to the staff. You will get an e-mail with the decision.")
            return redirect(project)
    quotas = {q.resource: q for q in selectors.quotas_of(project)}
    return render(request, "projects/quota_request_form.html", {"project": project, "form": form, "quotas": quotas})


@staff_member_required
def quota_request_list(request):
    status = request.GET.get("status", QuotaRequest.Status.PENDING)
    qs = QuotaRequest.objects.select_related("project", "requested_by", "decided_by")
    if status in QuotaRequest.Status.values:
        qs = qs.filter(status=status)
    page = paginate(request, qs.order_by("created" if status == "pending" else "-created"))
    return render(request, "projects/quota_request_list.html", {
        "page": page, "status": status, "statuses": QuotaRequest.Status.choices,
        "page_qs": querystring_without(request, "page"), "decision_form": QuotaDecisionForm(),
    })


@staff_member_required
@require_POST
def quota_request_decide(request, pk):
    quota_request = get_object_or_404(QuotaRequest, pk=pk)
    form = QuotaDecisionForm(request.POST)
    if form.is_valid():
        try:
            quota_requests.quota_request_decide(request=quota_request, staff=request.user, **form.cleaned_data)
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
        else:
            quota_request.refresh_from_db()
            messages.success(request, f"{quota_request} {quota_request.get_status_display().lower()}.")
    else:
        messages.error(request, "Choose a decision.")
    return redirect("projects:quota-requests")
