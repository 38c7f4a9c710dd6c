"""Thin Celery wrappers around jobs.services."""
import logging

from celery import shared_task

from clusters.backends.base import BackendUnavailable

log = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=6, acks_late=True)
def submit_job(self, job_id, hold=False):
    from . import services

    try:
        services.job_submit(job_id=job_id, hold=hold)
    except BackendUnavailable as exc:
        if self.request.retries >= self.max_retries:
            services.job_give_up_submission(job_id=job_id, error=exc)
            return
        raise self.retry(exc=exc, countdown=min(5 * 2 ** self.request.retries, 300))


@shared_task
def sync_cluster(cluster_id):
    from clusters.models import SlurmCluster

    from . import services

    cluster = SlurmCluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is not None:
        return services.jobs_sync(cluster=cluster)


@shared_task
def sync_all_clusters():
    """Periodic: one sync task per enabled cluster."""
    from clusters.models import SlurmCluster

    for cluster_id in SlurmCluster.objects.filter(enabled=True).values_list("pk", flat=True):
        sync_cluster.delay(cluster_id)
