"""Thin Celery wrappers around accounting.services and accounting.vm_usage.

Beat entries (portal/settings.py, CELERY_BEAT_SCHEDULE):
    "ingest-slurm-accounting": {"task": "accounting.tasks.ingest_all_clusters",
                                "schedule": timedelta(minutes=10)},
    "rollup-vm-usage": {"task": "accounting.tasks.rollup_vm_usage",
                        "schedule": timedelta(hours=1)},
"""
import logging

from celery import shared_task

from clusters.backends.base import BackendError

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def ingest_cluster(cluster_id):
    from clusters.models import SlurmCluster

    from . import services

    cluster = SlurmCluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is None:
        return None
    try:
        results = services.ingest_cluster(cluster)
    except BackendError as exc:  # recorded on the watermark; the next run catches up
        log.warning("accounting ingest of %s failed: %s", cluster, exc)
        return None
    return {"records": sum(r.records for r in results), "changed": sum(r.inserted + r.updated for r in results),
            "malformed": sum(r.malformed for r in results)}


@shared_task
def ingest_all_clusters():
    """Periodic: one ingest task per enabled cluster."""
    from clusters.models import SlurmCluster

    for cluster_id in SlurmCluster.objects.filter(enabled=True).values_list("pk", flat=True):
        ingest_cluster.delay(cluster_id)


@shared_task
def rollup_vm_usage(start=None, end=None):
    """Periodic (beat entry "rollup-vm-usage", hourly): rebuild the VM usage
    rollup (CloudDailyUsage) of yesterday and today from the servers' billing
    intervals and the volumes. With `start` (and `end`, ISO dates, both
    included): a backfill of that range, e.g. rollup_vm_usage.delay("2026-01-01", "2026-03-31")."""
    from . import vm_usage

    if start is None:
        return vm_usage.rebuild_recent()
    return vm_usage.rebuild(start, end or start)
