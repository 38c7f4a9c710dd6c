"""Thin Celery wrappers around jobs.services."""
import logging
from datetime import datetime

from celery import shared_task

from clusters.backends.base import BackendUnavailable

log = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=6, acks_late=True)
def submit_job(self, job_id, hold=False, retry_ids=None, claimed_at=None):
    """Submit this job and the cluster's other waiting jobs, in batches of
    one SSH exec each (jobs.submission). A retry carries the jobs its batch
    left `submitting` and the claim's timestamp, and takes those back only
    while no one else has claimed them since."""
    from . import services

    claimed = datetime.fromisoformat(claimed_at) if claimed_at else None
    try:
        services.job_submit_message(job_id=job_id, hold=hold, retry_ids=retry_ids or (), claimed_at=claimed)
    except BackendUnavailable as exc:
        ids = getattr(exc, "job_ids", None) or [job_id]
        since = getattr(exc, "claimed_at", None)
        if self.request.retries >= self.max_retries:
            for pk in ids:
                services.job_give_up_submission(job_id=pk, error=exc, claimed_at=since)
            return
        raise self.retry(exc=exc, countdown=min(5 * 2 ** self.request.retries, 300), args=(job_id,), kwargs={
            "hold": hold, "retry_ids": ids, "claimed_at": since.isoformat() if since else None})


@shared_task
def sync_cluster(cluster_id):
    from clusters.models import SlurmCluster

    from . import services

    cluster = SlurmCluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is not None:
        # First the safety net for jobs a lost message or a dead worker left behind.
        services.jobs_submit_pending(cluster=cluster)
        return services.jobs_sync(cluster=cluster)


@shared_task
def sync_all_clusters():
    """Periodic: one sync task per enabled cluster."""
    from clusters.models import SlurmCluster

    for cluster_id in SlurmCluster.objects.filter(enabled=True).values_list("pk", flat=True):
        sync_cluster.delay(cluster_id)
