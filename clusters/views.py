"""Staff page: where the clusters' accounts and limits differ from the portal."""
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .backends.base import BackendError
from .limits import slurm_limits_diff, slurm_limits_sync
from .models import SlurmCluster


@staff_member_required
def limits(request):
    report = []
    for cluster in SlurmCluster.objects.filter(enabled=True):
        try:
            report.append((cluster, slurm_limits_diff(cluster=cluster), None))
        except BackendError as exc:
            report.append((cluster, [], str(exc)))
    return render(request, "clusters/limits.html", {"report": report})


@staff_member_required
@require_POST
def limits_sync(request, pk):
    cluster = get_object_or_404(SlurmCluster, pk=pk)
    try:
        fixed = slurm_limits_sync(cluster=cluster)
    except BackendError as exc:
        messages.error(request, f"{cluster}: {exc}")
    else:
        messages.success(request, f"{cluster}: {len(fixed)} difference(s) fixed.")
    return redirect("clusters:limits")
