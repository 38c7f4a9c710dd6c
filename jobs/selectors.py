"""Reads filtered by tenant: members see their own jobs, managers all jobs
of their projects, staff everything."""
from django.db.models import Q
from django.shortcuts import get_object_or_404

from .models import Job


def jobs_visible_to(user):
    if not user.is_authenticated:
        return Job.objects.none()
    qs = Job.objects.select_related("project", "owner", "cluster")
    if user.is_staff:
        return qs
    managed = user.memberships.filter(role="manager").values("project_id")
    member_of = user.memberships.values("project_id")
    return qs.filter(Q(owner=user, project_id__in=member_of) | Q(project_id__in=managed))


def job_for(user, pk):
    return get_object_or_404(jobs_visible_to(user), pk=pk)


def job_search(user, *, query="", project="", state="", cluster=""):
    qs = jobs_visible_to(user)
    if query:
        q = Q(name__icontains=query) | Q(scheduler_id=query)
        if query.isdigit():
            q |= Q(pk=int(query))
        qs = qs.filter(q)
    if project:
        qs = qs.filter(project__slug=project)
    if state:
        qs = qs.filter(state=state)
    if cluster:
        qs = qs.filter(cluster__name=cluster)
    return qs


def can_cancel(user, job):
    """Owners, the project's managers and staff may cancel."""
    return user.is_staff or job.owner_id == user.pk or job.project.memberships.filter(
        user=user, role="manager"
    ).exists()
