from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from rest_framework.authtoken.models import Token

from projects import selectors as project_selectors

from .auth import REFUSAL_SESSION_KEY


@login_required
def dashboard(request):
    projects = project_selectors.projects_with_quotas(request.user).filter(status="active")
    if request.user.is_staff:
        # Staff see every project in the list page; the dashboard stays personal.
        projects = projects.filter(memberships__user=request.user)
    return render(request, "portal/dashboard.html", {"projects": projects, "work": _my_work(request.user)})


def _my_work(user):
    """Counts for the dashboard's "Your work" strip: the user's own jobs and
    servers still alive, and volumes, each linking to its list."""
    from clusters.models import Server, Volume
    from clusters.vm_models import ServerState, VolumeState
    from jobs.models import ACTIVE, Job, State

    return {
        "jobs": Job.objects.filter(owner=user, state__in=[State.QUEUED, *ACTIVE]).count(),
        "servers": Server.objects.filter(owner=user).exclude(state=ServerState.DELETED).count(),
        "volumes": Volume.objects.filter(owner=user).exclude(state=VolumeState.DELETED).count(),
    }


def login_refused(request):
    reason = request.session.pop(REFUSAL_SESSION_KEY, None)
    return render(request, "portal/login_refused.html", {"reason": reason}, status=403)


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def admin_login(request):
    """The admin's login goes through the one login page. A signed-in user
    who is not staff gets a clear refusal instead of a redirect loop."""
    if request.user.is_authenticated:
        if request.user.is_staff:
            target = request.GET.get("next", "")
            safe = url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()})
            return redirect(target if target and safe else "admin:index")
        return render(request, "portal/staff_only.html", status=403)
    query = request.GET.urlencode()
    return redirect(reverse("account_login") + (f"?{query}" if query else ""))


@login_required
def api_token(request):
    """Show the caller's API token; POST creates or replaces it."""
    if request.method == "POST":
        with transaction.atomic():
            Token.objects.filter(user=request.user).delete()
            Token.objects.create(user=request.user)
        messages.success(request, "A new API token was created.")
        return redirect("api-token")
    token = Token.objects.filter(user=request.user).first()
    return render(request, "portal/api_token.html", {"token": token})
