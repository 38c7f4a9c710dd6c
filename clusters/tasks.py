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


@shared_task
def sync_openstack_quotas():
    """Periodic: create missing OpenStack projects and push every active
    project's limits to each enabled cloud's quota sets. A cloud that cannot
    be reached is logged and skipped; returns the number of differences fixed."""
    import logging

    from .backends.base import BackendError
    from .clouds import openstack_quotas_sync
    from .models import Cloud

    fixed = 0
    for cloud in Cloud.objects.filter(enabled=True):
        try:
            fixed += sum(1 for d in openstack_quotas_sync(cloud) if not d.error)
        except BackendError as exc:
            logging.getLogger(__name__).warning("OpenStack quota sync of %s failed: %s", cloud.name, exc)
    return fixed


@shared_task
def sync_catalogs():
    """Periodic: pull every enabled cloud's flavors and images into the
    portal's catalog (`catalog.catalog_sync`). A cloud that cannot be reached
    is logged and skipped; returns {cloud name: counts or error text}.

    Beat entry (portal/settings.py, CELERY_BEAT_SCHEDULE):
        "sync-openstack-catalogs": {"task": "clusters.tasks.sync_catalogs", "schedule": timedelta(hours=1)}
    """
    import logging

    from .backends.base import BackendError
    from .catalog import catalog_sync
    from .models import Cloud

    done = {}
    for cloud in Cloud.objects.filter(enabled=True):
        try:
            done[cloud.name] = catalog_sync(cloud)
        except BackendError as exc:
            logging.getLogger(__name__).warning("OpenStack catalog sync of %s failed: %s", cloud.name, exc)
            done[cloud.name] = str(exc)
    return done
