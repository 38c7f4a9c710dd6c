"""Accounting services: ingest Slurm accounting per cluster, rebuild rollups.

- `ingest_cluster(cluster)`: sacct over SSH from the watermark (minus an
  overlap) to now, in windows of at most INGEST_CHUNK, each loaded by
  `ingest_lines`;
- `ingest_lines(cluster, lines)`: parse + bulk upsert + rollup, no SSH (tests,
  the benchmark, a file of sacct output);
- `rollup_days(days)`: rebuild DailyUsage for those days on every cluster.
"""
import logging
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from clusters.services import slurm_client

from . import ingest
from .models import IngestWatermark, UsageRecord

log = logging.getLogger(__name__)

# Re-read this far back from the watermark: jobs reach slurmdbd late and out
# of order; the upsert makes re-reading free of effects.
OVERLAP = timedelta(hours=1)
# First run on a cluster: how far back to start (ACCOUNTING_INITIAL_DAYS).
INITIAL_DAYS = 30
# sacct is asked for at most this much time per call (bounded memory).
INGEST_CHUNK = timedelta(days=1)


def ingest_lines(cluster, lines, *, now=None):
    """Ingest sacct lines (accounting.ingest.FIELDS, SEP- or '|'-delimited)
    for `cluster`. Returns an ingest.IngestResult."""
    return ingest.ingest_lines(cluster, lines, now=now)


def ingest_cluster(cluster, *, now=None, overlap=OVERLAP):
    """Fetch and ingest what finished on `cluster` since its watermark.
    Returns the list of IngestResults (one per window). A backend error is
    recorded on the watermark and raised."""
    now = now or timezone.now()
    mark = IngestWatermark.objects.filter(cluster=cluster).first()
    if mark is not None and mark.last_end is not None:
        start = min(mark.last_end - overlap, now - overlap)
    else:
        start = now - timedelta(days=getattr(settings, "ACCOUNTING_INITIAL_DAYS", INITIAL_DAYS))
    client = slurm_client(cluster)
    results = []
    while True:
        end = min(start + INGEST_CHUNK, now)
        try:
            lines = client.accounting_window(start, end)
        except Exception as exc:
            IngestWatermark.objects.update_or_create(
                cluster=cluster, defaults={"last_error": str(exc)[:2000], "last_run": timezone.now()})
            raise
        results.append(ingest_lines(cluster, lines, now=timezone.now()))
        if end >= now:
            return results
        start = end


def rollup_days(days, *, clusters=None):
    """Rebuild DailyUsage for `days` (dates) on `clusters` (default: every
    cluster with records on those days). Returns the number of rows written."""
    days = sorted(set(days))
    if not days:
        return 0
    if clusters is None:
        lo = datetime.combine(days[0], datetime.min.time(), tzinfo=dt_timezone.utc)
        hi = datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), tzinfo=dt_timezone.utc)
        from .models import DailyUsage

        cluster_ids = set(UsageRecord.objects.filter(end__gte=lo, end__lt=hi)
                          .values_list("cluster_id", flat=True).distinct())
        cluster_ids |= set(DailyUsage.objects.filter(day__in=days).values_list("cluster_id", flat=True).distinct())
    else:
        cluster_ids = {getattr(c, "pk", c) for c in clusters}
    written = 0
    for cluster_id in sorted(cluster_ids):
        with transaction.atomic():
            written += ingest.rollup(cluster_id, days)
    return written
