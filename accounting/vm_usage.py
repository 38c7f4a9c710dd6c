"""VM usage: core-, RAM- and disk-GB-hours from the servers' billing
intervals (clusters.ServerInterval) and volume-GB-hours from the volumes
(clusters.Volume), rolled up per UTC day into CloudDailyUsage, which the
reports read.

Billing rule (docs/reports.md, "VM usage"):

- a running interval bills, per hour, the profile's vcpus core-hours,
  ram_mb / 1024 RAM-GB-hours and disk_gb disk-GB-hours;
- a stopped interval (shut off, or in error) bills disk-GB-hours only: the
  disk is still held;
- a volume bills size_gb volume-GB-hours per hour from `created` to
  `deleted_at`, to its project, cloud and owner; one that never reached the
  cloud (no openstack_id, in error or deleted) bills nothing. The portal
  cannot resize a volume, so its own row is its only span: no interval
  table is needed;
- spans are split at UTC midnight, so each day gets its share; an open one
  (`ended` or `deleted_at` empty) counts up to "now", nothing after "now".

`rebuild(start, end)` recomputes the days start..end (inclusive) from every
interval and volume that overlaps them and replaces their rows in one
transaction (delete + bulk insert, serialized by an advisory lock on
PostgreSQL), so it is idempotent and can be re-run for any range. Amounts
are summed exactly (in integer unit-microseconds) and divided once, so
splitting a span never loses a fraction.
"""
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from itertools import chain

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from clusters.models import ServerInterval, Volume
from clusters.vm_models import VolumeState

from .models import CloudDailyUsage

R = CloudDailyUsage.Resource
RESOURCES = (R.VM_CORE_HOURS, R.RAM_GB_HOURS, R.DISK_GB_HOURS, R.VOLUME_GB_HOURS)
ADVISORY_LOCK = (0x6E76, 0)  # pg_advisory_xact_lock(key1, key2); the Slurm ingest uses (0x6E65, cluster)
CHUNK_DAYS = 31  # days rebuilt per transaction (bounded memory on a backfill)
BATCH = 5000  # rows per INSERT
MICRO_PER_HOUR = 3600 * 10**6
_MICRO = timedelta(microseconds=1)


def _midnight(day):
    return datetime.combine(day, time.min, tzinfo=dt_timezone.utc)


def _as_date(value):
    if isinstance(value, datetime):
        return value.astimezone(dt_timezone.utc).date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def split_days(start, end):
    """[(UTC day, microseconds)] of the stretch [start, end), split at UTC
    midnight (nothing when end <= start)."""
    out = []
    start, end = start.astimezone(dt_timezone.utc), end.astimezone(dt_timezone.utc)
    while start < end:
        day = start.date()
        cut = min(end, _midnight(day + timedelta(days=1)))
        out.append((day, (cut - start) // _MICRO))
        start = cut
    return out


def rates(*, vcpus, ram_mb, disk_gb, running):
    """What one hour of an interval bills, as {resource: (numerator, divisor)}
    so that sums stay exact integers: RAM is ram_mb / 1024 GB."""
    out = {R.DISK_GB_HOURS: (disk_gb, 1)}
    if running:
        out[R.VM_CORE_HOURS] = (vcpus, 1)
        out[R.RAM_GB_HOURS] = (ram_mb, 1024)
    return out


def _overlapping(qs, start, end, lo, cap):
    """qs narrowed to the spans [start, end or open) that overlap [lo, cap)."""
    return qs.filter(**{f"{start}__lt": cap}).filter(Q(**{f"{end}__isnull": True}) | Q(**{f"{end}__gt": lo}))


def _interval_spans(lo, cap):
    """(cloud, project, user, rates, start, end) of every interval
    overlapping [lo, cap): one query, joined with its server and profile."""
    intervals = (_overlapping(ServerInterval.objects, "started", "ended", lo, cap).order_by()
                 .values_list("server__cloud_id", "server__project_id", "server__owner_id", "profile__vcpus",
                              "profile__ram_mb", "profile__disk_gb", "running", "started", "ended"))
    for cloud, project, user, vcpus, ram_mb, disk_gb, running, started, ended in intervals.iterator(chunk_size=2000):
        yield cloud, project, user, rates(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, running=running), started, ended


def _volume_spans(lo, cap):
    """(cloud, project, user, rates, start, end) of every volume overlapping
    [lo, cap), in one query; a volume the cloud never made is left out."""
    never_made = Q(openstack_id="", state__in=(VolumeState.ERROR, VolumeState.DELETED))
    volumes = (_overlapping(Volume.objects, "created", "deleted_at", lo, cap).exclude(never_made).order_by()
               .values_list("cloud_id", "project_id", "owner_id", "size_gb", "created", "deleted_at"))
    for cloud, project, user, size_gb, created, deleted_at in volumes.iterator(chunk_size=2000):
        yield cloud, project, user, {R.VOLUME_GB_HOURS: (size_gb, 1)}, created, deleted_at


def compute(first, last, *, now=None):
    """{(day, cloud_id, project_id, user_id, resource): amount} for the UTC
    days first..last (inclusive), from every interval and volume that
    overlaps them (two queries); open spans count up to `now`. Zero amounts
    are left out."""
    now = now or timezone.now()
    lo = _midnight(first)
    cap = min(_midnight(last + timedelta(days=1)), now)
    if cap <= lo:
        return {}
    micro = {}  # key -> (sum of amount-per-hour x microseconds, divisor)
    for cloud, project, user, per_hour, started, ended in chain(_interval_spans(lo, cap), _volume_spans(lo, cap)):
        end = cap if ended is None else min(ended, cap)
        for day, us in split_days(max(started, lo), end):
            for resource, (numerator, divisor) in per_hour.items():
                key = (day, cloud, project, user, resource)
                total, _ = micro.get(key, (0, divisor))
                micro[key] = (total + numerator * us, divisor)
    return {key: total / (divisor * MICRO_PER_HOUR) for key, (total, divisor) in micro.items() if total > 0}


def _lock(cursor):
    if connection.vendor == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(ADVISORY_LOCK))


def rebuild(start, end=None, *, now=None):
    """Rebuild CloudDailyUsage for the UTC days start..end (dates or ISO
    strings, both included; end defaults to start): per chunk of CHUNK_DAYS,
    in one transaction, compute from the intervals and volumes, delete the
    chunk's rows, insert the new ones in bulk. Idempotent. Returns the
    number of rows written."""
    start = _as_date(start)
    end = _as_date(end) if end is not None else start
    if end < start:
        raise ValueError(f"start {start} is after end {end}")
    now = now or timezone.now()
    written = 0
    chunk_start = start
    while chunk_start <= end:
        chunk_end = min(chunk_start + timedelta(days=CHUNK_DAYS - 1), end)
        with transaction.atomic(), connection.cursor() as cursor:
            _lock(cursor)  # one rebuild at a time: no duplicate keys, the newest "now" wins
            sums = compute(chunk_start, chunk_end, now=now)
            rows = [CloudDailyUsage(day=day, cloud_id=cloud, project_id=project, user_id=user, resource=resource,
                                    amount=amount)
                    for (day, cloud, project, user, resource), amount in sorted(sums.items())]
            CloudDailyUsage.objects.filter(day__gte=chunk_start, day__lte=chunk_end).delete()
            CloudDailyUsage.objects.bulk_create(rows, batch_size=BATCH)
        written += len(rows)
        chunk_start = chunk_end + timedelta(days=1)
    return written


def rebuild_recent(*, days=2, now=None):
    """The periodic rebuild: the last `days` UTC days up to today (default
    yesterday and today, so the run after midnight completes yesterday)."""
    now = now or timezone.now()
    today = now.astimezone(dt_timezone.utc).date()
    return rebuild(today - timedelta(days=days - 1), today, now=now)
