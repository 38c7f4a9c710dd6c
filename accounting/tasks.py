"""Thin Celery wrappers around accounting.services.

Beat entry (portal/settings.py, CELERY_BEAT_SCHEDULE):
    "ingest-slurm-accounting": {"task": "accounting.tasks.ingest_all_clusters",
                                "schedule": timedelta(minutes=10)},
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
