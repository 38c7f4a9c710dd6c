"""Bulk ingest of Slurm accounting (sacct) into UsageRecord, and the daily rollup.

Input: the lines of `SlurmClient.accounting_window` -- `sacct -a --parsable2
--noheader --delimiter=SEP` with FIELDS, times as epoch seconds (ISO times
are accepted too and taken as UTC), steps included. Allocation rows ('123',
'123_4') become records; step rows ('123.batch', '123_4.0', '123.extern')
only contribute their MaxRSS (the largest over a job's steps). Rows of jobs
not finished yet (no End, or an active state) are skipped, not counted as
malformed. Malformed lines are counted and the first few logged; they never
abort the batch.

A batch goes in in one transaction, serialized per cluster by an advisory
lock, as a pipeline: this thread parses while a loader thread has
PostgreSQL load what was parsed before.
  1. The mappings are read once: POSIX name -> portal user (PosixAccount of
     the cluster), Slurm account -> project (ClusterAccount of the cluster,
     else the project whose slug is the account and which has no mapping on
     the cluster). A job whose user or project is unknown is kept, with
     `unmapped` set.
  2. The lines are parsed in blocks (a chunk each, ~40k lines) into rows with
     the final column values, written at once in COPY's binary format, except
     the rows whose job name names a portal job (nephele-<pk>-<hex>) when the
     cluster has more portal jobs than a quarter of the lines: those wait for
     the loader's look-up of the jobs each chunk names. With fewer (none, in a
     backfill of the time before the portal), they are read once up front and
     the parser matches the names.
  3. For each chunk the loader looks up, in one round trip, whether one of a
     sample of its job ids is stored, the portal jobs named, and the largest
     record id; then
     - a chunk of new records (the usual case) is COPYed straight into
       accounting_usagerecord, in a savepoint: a stored id the sample missed
       makes the COPY fail on the unique index, and the chunk takes the next
       way;
     - any other chunk is COPYed into a staging table and merged: one look-up
       of each row by the unique key, UPDATE of the rows whose values differ
       (IS DISTINCT FROM), INSERT of the ids not stored. Re-ingesting a window
       therefore writes nothing, not even `updated`.
  4. DailyUsage is rebuilt for the (cluster, day) pairs whose records were
     inserted or changed (old and new day of a moved job): delete those days,
     insert one GROUP BY over the records of those days. The day is the UTC
     date of a job's end; all of its usage counts there. In the first batch of
     a cluster (a backfill: no record before it), the loader takes the sums
     of each chunk's records (by id) while the parser works, and writes the
     rollup of a day as soon as a chunk without it comes; days that come back,
     or that a merged chunk touched, are rebuilt from the records at the end.
     Sums are over integers (CPU seconds, GPU seconds, jobs), so the amounts
     are exactly those of the full rebuild.

The code: `parsing` (sacct lines -> Chunks of rows), `rows` (the rows'
columns and binary COPY format), `loading` (the mappings and the loader
thread), `rollups` (DailyUsage); here the pipeline that joins them.
"""
import gc
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection, transaction
from django.utils import timezone

from ..models import IngestWatermark
from .loading import EPOCH_DAY, _Loader, _portal_jobs, load_maps
from .parsing import FIELDS, Batch, _blocks, _Orphan, detect_sep, parse
from .rollups import _lock, rollup

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005  # s: how soon the loader thread gets the GIL back after each round trip


@dataclass
class IngestResult:
    lines: int = 0
    records: int = 0  # allocation records in the batch
    inserted: int = 0
    updated: int = 0
    malformed: int = 0
    skipped: int = 0
    days: list = field(default_factory=list)  # days whose rollup was rebuilt
    last_end: datetime | None = None  # the watermark after the batch

    @property
    def unchanged(self):
        return self.records - self.inserted - self.updated


def ingest_lines(cluster, lines, *, now=None):
    """Load sacct lines for `cluster` (see the module docstring); returns an
    IngestResult. Everything happens in one transaction."""
    now = now or timezone.now()
    if not isinstance(lines, (list, tuple)):
        lines = list(lines)
    sep = detect_sep(lines)
    result = IngestResult()
    with transaction.atomic(), connection.cursor() as cursor:
        _lock(cursor, cluster.pk)
        mark, _ = IngestWatermark.objects.select_for_update().get_or_create(cluster=cluster)
        users, projects = load_maps(cluster.pk, cursor)
        # fresh: the first batch of this cluster (a backfill), rolled up in the pipeline
        cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM accounting_usagerecord WHERE cluster_id = %s)", [cluster.pk])
        fresh = cursor.fetchone()[0]
        jobs = _portal_jobs(cursor, cluster.pk, len(lines))
        orphan_rss = None
        while True:
            batch = Batch()
            try:
                with transaction.atomic():
                    loader = _load(cluster, lines, batch, users, projects, sep, orphan_rss, now, fresh, jobs)
                break
            except _Orphan:  # rare: parse once to collect the stray steps, then again
                orphan_rss = Batch().orphan_rss
                for _ in parse(lines, Batch(orphan_rss=orphan_rss), sep=sep, dry=True):
                    pass
        if batch.malformed:
            log.warning("accounting ingest on %s: %d malformed line(s) of %d skipped; first: %s", cluster,
                        batch.malformed, batch.lines,
                        "; ".join(f"{line!r} ({why})" for line, why in batch.samples))
        result.inserted, result.updated = loader.inserted, loader.updated
        days = loader.days | {EPOCH_DAY + timedelta(days=day) for day in loader.epoch_days}
        done = {EPOCH_DAY + timedelta(days=day) for day in loader.rolled - loader.redo}  # in the pipeline
        if days - done:
            rollup(cluster.pk, days - done, cursor=cursor)
        if batch.max_end:
            batch_end = datetime.fromtimestamp(batch.max_end, tz=dt_timezone.utc)
            if mark.last_end is None or batch_end > mark.last_end:
                mark.last_end = batch_end
        mark.last_run = now
        mark.last_error = ""
        mark.last_rows = batch.records
        mark.last_changed = result.inserted + result.updated
        mark.last_malformed = batch.malformed
        mark.rows_total += batch.records
        mark.malformed_total += batch.malformed
        mark.save()
    result.lines, result.records = batch.lines, batch.records
    result.malformed, result.skipped = batch.malformed, batch.skipped
    result.days = sorted(days)
    result.last_end = mark.last_end
    return result


def _load(cluster, lines, batch, users, projects, sep, orphan_rss, now, fresh=False, jobs=None):
    """Parse `lines` and load them through a _Loader; returns the loader."""
    cursor = connection.connection.cursor()  # for the formatting only: created before the loader uses the connection
    loader = _Loader(connection.connection, cluster.pk, fresh)
    loader.start()
    collecting, switch = gc.isenabled(), sys.getswitchinterval()
    gc.disable()  # the parser makes a tuple per record and no cycles: no collections while it runs
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for chunk in parse(lines, batch, users=users, projects=projects, cluster_id=cluster.pk, now=now, sep=sep,
                           orphan_rss=orphan_rss, cursor=cursor, jobs=jobs):
            loader.put(chunk)
    except BaseException:
        loader.finish(abort=True)
        raise
    finally:
        sys.setswitchinterval(switch)
        if collecting:
            gc.enable()
    loader.finish()
    with connection.cursor() as cursor:
        for table, made in (("acct_tmp", loader.staged), ("acct_agg", loader.partials)):
            if made:
                cursor.execute(f"DROP TABLE {table}")
    return loader


__all__ = ["FIELDS", "parse", "Batch", "ingest_lines", "rollup", "load_maps", "IngestResult",
           "_blocks", "_portal_jobs"]  # _blocks, _portal_jobs: for the tests and bench/ingest_throughput.py
