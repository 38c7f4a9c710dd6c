from celery import shared_task


@shared_task
def sync_partitions(cluster_id):
    from . import services
    from .models import SlurmCluster

    cluster = SlurmCluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is not None:
        return [p.name for p in services.partitions_sync(cluster=cluster)]


@shared_task
def sync_all_partitions():
    from .models import SlurmCluster

    for cluster_id in SlurmCluster.objects.filter(enabled=True).values_list("pk", flat=True):
        sync_partitions.delay(cluster_id)


@shared_task
def sync_slurm_limits():
    """Periodic: push every active project's accounts and core-hour limits."""
    from .limits import slurm_limits_sync
    from .models import SlurmCluster

    fixed = 0
    for cluster in SlurmCluster.objects.filter(enabled=True):
        fixed += len(slurm_limits_sync(cluster=cluster))
    return fixed
