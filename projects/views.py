"""Project pages. Order in every view: tenant lookup (404), permission (403),
input validation (form errors), then a service call."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from portal.listing import paginate, querystring_without, sort_queryset

from . import selectors, services
from .forms import InvitationForm, MembershipRoleForm, ProjectForm, QuotaForm
from .models import Invitation, Project

PROJECT_SORTS = {"name": "name", "slug": "slug", "status": "status", "created": "created", "members": "member_count"}


def _managed_project(request, slug):
    project = selectors.project_for(request.user, slug)
    if not selectors.can_manage(request.user, project):
        raise PermissionDenied("Only the project's managers can do this.")
    return project


def _form_errors(error):
    return "; ".join(error.messages)


@login_required
def project_list(request):
    query = request.GET.get("q", "").strip()
    status = request.GET.get("status", "")
    if status not in Project.Status.values:
        status = ""
    qs = selectors.project_search(request.user, query=query, status=status)
    qs, sort = sort_queryset(request, qs, PROJECT_SORTS, "name")
    page = paginate(request, qs)
    context = {
        "page": page,
        "query": query,
        "status": status,
        "sort": sort,
        "statuses": Project.Status.choices,
        "sort_qs": querystring_without(request, "sort", "page"),
        "page_qs": querystring_without(request, "page"),
    }
    # htmx swaps in just the table, except when restoring history (it then
    # replaces the whole body); Vary keeps caches from mixing the two.
    partial = request.htmx and not request.htmx.history_restore_request
    template = "projects/_project_table.html" if partial else "projects/project_list.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


@login_required
def project_detail(request, slug):
    project = selectors.project_for(request.user, slug)
    can_manage = selectors.can_manage(request.user, project)
    context = {
        "project": project,
        "role": selectors.role_of(request.user, project),
        "can_manage": can_manage,
        "memberships": selectors.memberships_of(project),
        "quotas": selectors.quotas_of(project),
        "invitations": selectors.pending_invitations_of(project) if can_manage else [],
        "invite_form": InvitationForm() if can_manage else None,
        "role_choices": InvitationForm.base_fields["role"].choices,
        "quota_requests": project.quota_requests.select_related("requested_by")[:10],
    }
    return render(request, "projects/project_detail.html", context)


@login_required
def project_edit(request, slug):
    project = _managed_project(request, slug)
    # A separate instance, so a rejected edit does not show up in the heading.
    form = ProjectForm(request.POST or None, instance=Project.objects.get(pk=project.pk))
    if not request.user.is_staff:
        # Suspending or archiving a project is the operators' call.
        form.fields.pop("status")
    if request.method == "POST" and form.is_valid():
        services.project_update(project=project, actor=request.user, **form.cleaned_data)
        messages.success(request, "Project updated.")
        return redirect(project)
    return render(request, "projects/project_form.html", {"project": project, "form": form})


@login_required
@require_POST
def invitation_create(request, slug):
    project = _managed_project(request, slug)
    form = InvitationForm(request.POST)
    if form.is_valid():
        try:
            invitation = services.invitation_create(
                project=project, actor=request.user, request=request, **form.cleaned_data
            )
        except ValidationError as error:
            messages.error(request, _form_errors(error))
        else:
            messages.success(request, f"Invitation sent to {invitation.email}.")
    else:
        messages.error(request, "Invitation not sent: " + "; ".join(e for errs in form.errors.values() for e in errs))
    return redirect(project)


@login_required
@require_POST
def invitation_revoke(request, slug, pk):
    project = _managed_project(request, slug)
    invitation = get_object_or_404(project.invitations, pk=pk, status=Invitation.Status.PENDING)
    services.invitation_revoke(invitation=invitation, actor=request.user)
    messages.success(request, f"Invitation of {invitation.email} revoked.")
    return redirect(project)


@login_required
@require_POST
def membership_role(request, slug, pk):
    project = _managed_project(request, slug)
    membership = get_object_or_404(project.memberships.select_related("user"), pk=pk)
    form = MembershipRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid role.")
        return redirect(project)
    try:
        services.membership_set(
            project=project, user=membership.user, role=form.cleaned_data["role"], actor=request.user
        )
    except ValidationError as error:
        messages.error(request, _form_errors(error))
    else:
        messages.success(request, f"{membership.user} is now {form.cleaned_data['role']}.")
    return redirect(project)


@login_required
@require_POST
def membership_remove(request, slug, pk):
    project = _managed_project(request, slug)
    membership = get_object_or_404(project.memberships.select_related("user"), pk=pk)
    try:
        services.membership_remove(membership=membership, actor=request.user)
    except ValidationError as error:
        messages.error(request, _form_errors(error))
    else:
        messages.success(request, f"{membership.user} removed from {project.name}.")
    return redirect(project)


@login_required
def quota_edit(request, slug, resource):
    project = selectors.project_for(request.user, slug)
    if not request.user.is_staff:
        raise PermissionDenied("Quotas are set by staff; ask for a change instead.")
    quota = get_object_or_404(project.quotas, resource=resource)
    form = QuotaForm(request.POST or None, instance=quota)
    if request.method == "POST" and form.is_valid():
        services.quota_set(project=project, resource=resource, actor=request.user, **form.cleaned_data)
        messages.success(request, f"{quota.get_resource_display()} limit updated.")
        return redirect(project)
    return render(request, "projects/quota_form.html", {"project": project, "quota": quota, "form": form})


@login_required
def invitation_accept(request, token):
    invitation = get_object_or_404(Invitation.objects.select_related("project", "invited_by"), token=token)
    is_open = services.invitation_is_open(invitation)
    if request.method == "POST" and is_open:
        try:
            services.invitation_accept(invitation=invitation, user=request.user)
        except ValidationError as error:
            messages.error(request, _form_errors(error))
        else:
            messages.success(request, f"Welcome to {invitation.project.name}.")
            return redirect(invitation.project)
    return render(request, "projects/invitation_accept.html", {"invitation": invitation, "is_open": is_open})
