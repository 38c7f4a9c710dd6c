"""Staff page: where the clusters' accounts and limits (Slurm) and the clouds'
projects and quota sets (OpenStack) differ from the portal."""
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .backends.base import BackendError
from .clouds import openstack_quotas_diff, openstack_quotas_sync
from .limits import slurm_limits_diff, slurm_limits_sync
from .models import Cloud, SlurmCluster


@staff_member_required
def limits(request):
    report = []
    for cluster in SlurmCluster.objects.filter(enabled=True):
        try:
            report.append((cluster, slurm_limits_diff(cluster=cluster), None))
        except BackendError as exc:
            report.append((cluster, [], str(exc)))
    clouds = []
    for cloud in Cloud.objects.filter(enabled=True):
        try:
            diffs = openstack_quotas_diff(cloud)
        except BackendError as exc:
            clouds.append((cloud, [], [], str(exc)))
        else:
            clouds.append((cloud, [d for d in diffs if d.fixable], [d for d in diffs if not d.fixable], None))
    return render(request, "clusters/limits.html", {"report": report, "clouds": clouds})


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


@staff_member_required
@require_POST
def cloud_limits_sync(request, pk):
    cloud = get_object_or_404(Cloud, pk=pk)
    try:
        fixed = openstack_quotas_sync(cloud)
    except BackendError as exc:
        messages.error(request, f"{cloud}: {exc}")
    else:
        failed = [d for d in fixed if d.error]
        messages.success(request, f"{cloud}: {len(fixed) - len(failed)} difference(s) fixed.")
        for d in failed:
            messages.error(request, f"{cloud}: {d.project} {d.resource or d.what}: {d.error}")
    return redirect("clusters:limits")
