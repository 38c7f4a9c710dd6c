"""Reads, already filtered by tenant. Views, API and services all use these,
so a non-member never gets another project's object (they get a 404)."""
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404

from .models import Invitation, Membership, Project


def projects_visible_to(user):
    if not user.is_authenticated:
        return Project.objects.none()
    qs = Project.objects.all()
    if not user.is_staff:
        # A subquery, not a join: a join on memberships would be reused by
        # later annotations (member counts would only count the user).
        qs = qs.filter(pk__in=Membership.objects.filter(user=user).values("project_id"))
    return qs


def owned_or_managed(qs, user):
    """The tenant rule of what users launch (jobs, servers, volumes): members
    see their own in their projects, managers all of their projects', staff
    everything. `qs` is any queryset of a model with `owner` and `project`."""
    if not user.is_authenticated:
        return qs.none()
    if user.is_staff:
        return qs
    managed = user.memberships.filter(role="manager").values("project_id")
    member_of = user.memberships.values("project_id")
    return qs.filter(Q(owner=user, project_id__in=member_of) | Q(project_id__in=managed))


def project_for(user, slug):
    """The project with this slug if the user may see it, else 404."""
    return get_object_or_404(projects_visible_to(user), slug=slug)


def project_search(user, *, query="", status=""):
    qs = projects_visible_to(user).annotate(member_count=Count("memberships", distinct=True))
    if query:
        qs = qs.filter(Q(name__icontains=query) | Q(slug__icontains=query) | Q(description__icontains=query))
    if status:
        qs = qs.filter(status=status)
    return qs


def projects_with_quotas(user):
    return projects_visible_to(user).prefetch_related("quotas")


def role_of(user, project):
    """'manager', 'member', or None. Staff have no implicit role."""
    if not user.is_authenticated:
        return None
    return (
        Membership.objects.filter(user=user, project=project).values_list("role", flat=True).first()
    )


def can_manage(user, project):
    return user.is_authenticated and (user.is_staff or role_of(user, project) == Membership.Role.MANAGER)


def memberships_of(project):
    return project.memberships.select_related("user").order_by("-role", "user__last_name", "user__username")


def quotas_of(project):
    return project.sorted_quotas()


def pending_invitations_of(project):
    return project.invitations.filter(status=Invitation.Status.PENDING).select_related("invited_by")
