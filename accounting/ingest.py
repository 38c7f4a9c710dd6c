"""Bulk ingest of Slurm accounting (sacct) into UsageRecord, and the daily rollup.

Input: the lines of `SlurmClient.accounting_window` -- `sacct -a --parsable2
--noheader --delimiter=SEP` with FIELDS, times as epoch seconds (ISO times
are accepted too and taken as UTC), steps included. Allocation rows ('123',
'123_4') become records; step rows ('123.batch', '123_4.0', '123.extern')
only contribute their MaxRSS (the largest over a job's steps). Rows of jobs
not finished yet (no End, or an active state) are skipped, not counted as
malformed.

How a batch goes in (one transaction, serialized per cluster by an advisory
lock):
  1. parse the lines in Python into tuples (malformed ones are counted and the
     first few logged; they never abort the batch);
  2. COPY the tuples into a temporary table (psycopg's COPY protocol);
  3. one INSERT ... SELECT ... ON CONFLICT (cluster_id, job_id) DO UPDATE,
     mapping in the same statement: POSIX name -> portal user (PosixAccount),
     Slurm account -> project (ClusterAccount of the cluster, else the project
     whose slug is the account and which has no mapping on the cluster), job
     name nephele-<pk>-<hex> -> portal Job. A row whose values are unchanged
     is not touched (DO UPDATE ... WHERE ... IS DISTINCT FROM), so re-ingesting
     a window changes nothing;
  4. rebuild DailyUsage for the (cluster, day) pairs whose records changed:
     delete those days, insert one GROUP BY over the records of those days.
     The day is the UTC date of a job's end; all of its usage counts there.
"""
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection, transaction
from django.utils import timezone

from clusters.backends.slurm import SEP

from .models import IngestWatermark

log = logging.getLogger(__name__)

FIELDS = ("JobID", "JobName", "User", "Account", "Partition", "State", "ExitCode", "AllocCPUS", "AllocTRES",
          "ElapsedRaw", "CPUTimeRAW", "ReqMem", "Submit", "Start", "End", "MaxRSS")
NFIELDS = len(FIELDS)
LOG_SAMPLES = 5  # malformed lines quoted in the log per batch
ADVISORY_LOCK = 0x6E65  # first key of pg_advisory_xact_lock(key, cluster_id)

# 123; 123_4 (array task); 123_[5-9] (array tasks cancelled before they ran: one row); 123+1 (het job)
ALLOCATION_ID = re.compile(r"^[0-9]{1,18}(?:_[0-9]{1,9}|_\[[0-9,:%-]{1,200}\]|\+[0-9]{1,9})?$")
STEP_ID = re.compile(r"^([0-9]{1,18}(?:_[0-9]{1,9}|_\[[0-9,:%-]{1,200}\]|\+[0-9]{1,9})?)\.[A-Za-z0-9_+-]{1,64}$")
PORTAL_NAME = re.compile(r"^nephele-([0-9]{1,18})-([0-9a-f]{12})$")
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                           "RESIZING", "SIGNALING", "STAGE_OUT", "COMPLETING", "CONFIGURING"})
NO_TIME = frozenset({"", "Unknown", "None", "N/A", "NONE", "(null)", "0"})
MEM_FACTOR = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2, "P": 1024 ** 3}
INT32 = 2 ** 31 - 1
MAX_EPOCH = 10 ** 11  # year 5138: anything later is garbage (and out of range for timestamptz)

# The temporary table the batch is COPYed into; the order of the parsed tuples.
TMP_COLUMNS = (
    ("job_id", "text"), ("job_name", "text"), ("posix_user", "text"), ("account", "text"),
    ("partition", "text"), ("state", "text"), ("exit_code", "integer"), ("exit_signal", "integer"),
    ("alloc_cpus", "integer"), ("alloc_gpus", "integer"), ("elapsed_seconds", "bigint"),
    ("cpu_seconds", "bigint"), ("req_mem_mb", "bigint"), ("max_rss_mb", "bigint"),
    ("submit", "bigint"), ("start", "bigint"), ("end", "bigint"),  # epoch seconds
    ("portal_pk", "bigint"), ("portal_hex", "text"),
)
RSS = 13  # index of max_rss_mb in a parsed row
# Columns copied as they are (and compared to decide whether a row changed).
PLAIN = ("job_name", "posix_user", "account", "partition", "state", "exit_code", "exit_signal", "alloc_cpus",
         "alloc_gpus", "elapsed_seconds", "cpu_seconds", "req_mem_mb", "max_rss_mb")
TIMES = ("submit", "start", "end")
MAPPED = ("user_id", "project_id", "portal_job_id", "unmapped")


class Malformed(ValueError):
    pass


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


# -- parsing --------------------------------------------------------------------------
#
# Lines are turned into COPY text rows (TMP_COLUMNS, delimiter SEP, NULL \N)
# while they stream to the server, so Python's parsing and PostgreSQL's COPY
# run side by side. A fast path handles the usual line with string methods
# only; anything unusual (ISO times, the delimiter or a backslash in a job
# name, odd memory units) goes through the careful `_slow_row`.

NULL = "\\N"
SPECIAL = re.compile(r"[\\\x00\r\n]")


def _epoch(value):
    if value.isdigit():
        n = int(value)
        if n == 0:
            return None
    elif value in NO_TIME:
        return None
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Malformed(f"bad time {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt_timezone.utc)
        n = int(parsed.timestamp())
    if not 0 < n < MAX_EPOCH:
        raise Malformed(f"time out of range {value!r}")
    return n


def _count(value, limit=INT32):
    if not value.isdigit():
        raise Malformed(f"not a count: {value!r}")
    n = int(value)
    if n > limit:
        raise Malformed(f"count out of range {value!r}")
    return n


def _memory_mb(value, cpus=0):
    """'24105M', '4G', '3956K', '4000Mc' (per CPU, old Slurm), '4000Mn' -> MB
    (rounded up), or None when empty/unparsable: memory never rejects a row."""
    if not value:
        return None
    per_cpu = False
    if value[-1] in "nc":
        per_cpu, value = value[-1] == "c", value[:-1]
    unit = value[-1:].upper()
    if unit in MEM_FACTOR:
        value = value[:-1]
    else:
        unit = "M"  # a bare number is MB
    try:
        number = float(value)
    except ValueError:
        return None
    if not 0 <= number < 1e12:
        return None
    mb = math.ceil(number * MEM_FACTOR[unit])
    return mb * max(cpus, 1) if per_cpu else mb


def _gpus(tres):
    """GPUs in AllocTRES ('billing=4,cpu=4,gres/gpu=2,gres/gpu:a100=2,node=1'):
    the untyped gres/gpu count, else the sum of the typed ones."""
    if "gres/gpu" not in tres:
        return 0
    total, typed = None, 0
    for item in tres.split(","):
        key, _, count = item.partition("=")
        if key == "gres/gpu":
            total = _count(count)
        elif key.startswith("gres/gpu:"):
            typed += _count(count)
    return total if total is not None else min(typed, INT32)


def _text(value):
    if "\x00" in value:
        raise Malformed("NUL byte")
    return (value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
            .replace(SEP, "\\x1f"))


def _opt(value):
    return NULL if value is None else str(value)


def _fields(line, sep):
    f = line.split(sep)
    if len(f) != NFIELDS:
        if len(f) < NFIELDS:
            raise Malformed(f"{len(f)} fields, not {NFIELDS}")
        extra = len(f) - NFIELDS  # the delimiter inside JobName (no other field can hold it)
        f = [f[0], sep.join(f[1:2 + extra])] + f[2 + extra:]
    return f


def _slow_row(f):
    """Fields of an allocation line -> the COPY row (list of str), the end
    epoch; or None for a job not finished; Malformed when it makes no sense."""
    job_id = f[0]
    if ALLOCATION_ID.match(job_id) is None:
        raise Malformed(f"bad job id {job_id!r}")
    state = f[5].strip().split(" ", 1)[0]
    end = _epoch(f[14].strip())
    if end is None or state in ACTIVE_STATES:
        return None, None
    cpus = _count(f[7].strip())
    code, signal = NULL, NULL
    if f[6]:
        a, colon, b = f[6].partition(":")
        if not colon:
            raise Malformed(f"bad exit code {f[6]!r}")
        code, signal = str(_count(a, 1 << 16)), str(_count(b, 1 << 16))
    name = f[1]
    m = PORTAL_NAME.match(name)
    return [
        _text(job_id), _text(name), _text(f[2]), _text(f[3]), _text(f[4]), _text(state), code, signal, str(cpus),
        str(_gpus(f[8])), str(_count(f[9], 1 << 50)), str(_count(f[10], 1 << 50)),
        _opt(_memory_mb(f[11].strip(), cpus)), _opt(_memory_mb(f[15].strip())),
        _opt(_epoch(f[12].strip())), _opt(_epoch(f[13].strip())), str(end),
        m.group(1) if m else NULL, m.group(2) if m else NULL,
    ], end


@dataclass
class Batch:
    """What a stream of lines contained (filled in by `rows`)."""

    lines: int = 0
    records: int = 0
    malformed: int = 0
    skipped: int = 0  # unfinished jobs
    samples: list = field(default_factory=list)
    max_end: int | None = None
    duplicates: bool = False
    orphan_rss: dict = field(default_factory=dict)  # MaxRSS of steps not right after their allocation


def rows(lines, batch, sep=None):
    """Yield COPY text rows (str, without newline) for `lines`, one per job
    allocation; counts go to `batch`. Steps fold their MaxRSS into the
    allocation they follow (sacct prints them right after it); others end in
    batch.orphan_rss for the caller to apply."""
    if sep is None:
        if not isinstance(lines, (list, tuple)):
            lines = list(lines)
        sep = next((SEP if SEP in line else "|" for line in lines[:50] if line.strip()), SEP)
    seen = set()
    pending = None  # [row, job_id, rss]: the last allocation, until its steps have passed
    max_end = 0
    n_lines = malformed = skipped = 0
    samples = batch.samples
    alloc_match = ALLOCATION_ID.fullmatch
    special = SPECIAL.search
    active = ACTIVE_STATES
    for line in lines:
        if line.endswith(("\n", "\r")):
            line = line.rstrip("\r\n")
        if not line or line.isspace():
            continue
        n_lines += 1
        try:
            f = line.split(sep)
            if len(f) != NFIELDS or sep != SEP or special(line) is not None:
                f = _fields(line, sep)
                fast = False
            else:
                fast = True
            job_id = f[0]
            if "." in job_id:  # a step: only its MaxRSS counts
                m = STEP_ID.match(job_id)
                if m is None:
                    raise Malformed(f"bad step id {job_id!r}")
                rss = _memory_mb(f[15])
                if rss is not None:
                    base = m.group(1)
                    if pending is not None and pending[1] == base:
                        if pending[2] is None or rss > pending[2]:
                            pending[2] = rss
                    elif rss > batch.orphan_rss.get(base, -1):
                        batch.orphan_rss[base] = rss
                continue
            row = None
            if fast and alloc_match(job_id) is not None:
                # job_id name user account partition state exit cpus tres elapsed cputime reqmem submit start end rss
                state, code, cpus, elapsed, cputime, reqmem, submit, start, end = (
                    f[5], f[6], f[7], f[9], f[10], f[11], f[12], f[13], f[14])
                if " " in state:
                    state = state.split(" ", 1)[0]
                a, _, b = code.partition(":")
                if (end.isdigit() and 0 < len(end) < 12 and end != "0" and cpus.isdigit() and len(cpus) < 10
                        and elapsed.isdigit() and len(elapsed) < 16 and cputime.isdigit() and len(cputime) < 16
                        and a.isdigit() and b.isdigit() and len(code) < 12 and state not in active):
                    if submit.isdigit() and len(submit) < 12:
                        pass
                    elif submit in NO_TIME:
                        submit = NULL
                    else:
                        submit = None
                    if start.isdigit() and len(start) < 12:
                        pass
                    elif start in NO_TIME:
                        start = NULL
                    else:
                        start = None
                    if submit is not None and start is not None:
                        if reqmem.isdigit() and len(reqmem) < 13:
                            pass
                        elif reqmem[-1:] == "M" and reqmem[:-1].isdigit() and len(reqmem) < 14:
                            reqmem = reqmem[:-1]
                        else:
                            reqmem = _opt(_memory_mb(reqmem, int(cpus)))
                        name = f[1]
                        m = PORTAL_NAME.match(name) if name.startswith("nephele-") else None
                        tres = f[8]
                        row = [job_id, name, f[2], f[3], f[4], state, a, b, cpus,
                               str(_gpus(tres)) if "gres/gpu" in tres else "0", elapsed, cputime, reqmem,
                               f[15], submit, start, end,
                               m.group(1) if m else NULL, m.group(2) if m else NULL]
                        end = int(end)
            if row is None:
                row, end = _slow_row(f)
                if row is None:
                    skipped += 1
                    continue
            rss = row[RSS]
            row[RSS] = None if rss == NULL else _memory_mb(rss) if rss else None
            if job_id in seen:
                batch.duplicates = True
            else:
                seen.add(job_id)
            if end > max_end:
                max_end = end
            if pending is not None:
                yield _render(pending)
            pending = [row, job_id, row[RSS]]
        except (Malformed, ValueError, IndexError) as exc:
            malformed += 1
            if len(samples) < LOG_SAMPLES:
                samples.append((line[:300], str(exc)))
    if pending is not None:
        yield _render(pending)
    batch.lines, batch.malformed, batch.skipped = n_lines, malformed, skipped
    batch.records = len(seen)
    batch.max_end = max_end or None


def _render(pending):
    row, _, rss = pending
    row[RSS] = NULL if rss is None else str(rss)
    return SEP.join(row)


# -- the database side ------------------------------------------------------------------

_ACCOUNT_MAP = """
    SELECT account, CASE WHEN count(*) = 1 THEN min(project_id) END AS project_id FROM (
        SELECT ca.account, ca.project_id FROM clusters_clusteraccount ca WHERE ca.cluster_id = %(cluster)s
        UNION ALL
        SELECT p.slug, p.id FROM projects_project p
         WHERE NOT EXISTS (SELECT 1 FROM clusters_clusteraccount c1
                            WHERE c1.cluster_id = %(cluster)s AND (c1.project_id = p.id OR c1.account = p.slug))
    ) m GROUP BY account
"""


def _upsert_sql():
    plain = ", ".join(f"t.{c}" for c in PLAIN)
    times = ", ".join(f"to_timestamp(t.{c})" if c != "end" else 'to_timestamp(t."end")' for c in TIMES)
    target = ["cluster_id", "job_id", *PLAIN, "submit", "start", '"end"', *MAPPED, "ingested", "updated"]
    compared = [*PLAIN, "submit", "start", '"end"', *MAPPED]
    return f"""
    WITH acct AS ({_ACCOUNT_MAP}),
    up AS (
        INSERT INTO accounting_usagerecord AS u ({", ".join(target)})
        SELECT %(cluster)s, t.job_id, {plain}, {times},
               pa.user_id, acct.project_id, j.id, (pa.user_id IS NULL OR acct.project_id IS NULL),
               %(now)s, %(now)s
          FROM acct_tmp t
          LEFT JOIN clusters_posixaccount pa ON pa.cluster_id = %(cluster)s AND pa.username = t.posix_user
          LEFT JOIN acct ON acct.account = t.account
          LEFT JOIN jobs_job j ON t.portal_pk IS NOT NULL AND j.id = t.portal_pk AND j.cluster_id = %(cluster)s
                              AND left(replace(j.uid::text, '-', ''), 12) = t.portal_hex
        ON CONFLICT (cluster_id, job_id) DO UPDATE SET
            {", ".join(f"{c} = EXCLUDED.{c}" for c in compared)}, updated = EXCLUDED.updated
        WHERE ({", ".join(f"u.{c}" for c in compared)})
              IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in compared)})
        RETURNING (xmax = 0) AS inserted, (u."end" AT TIME ZONE 'UTC')::date AS day
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
           coalesce(array_agg(DISTINCT day), '{{}}') FROM up
    """


UPSERT = _upsert_sql()

# Days a changed job moves away from (its end time changed, e.g. requeued).
MOVED_DAYS = """
    SELECT DISTINCT (u."end" AT TIME ZONE 'UTC')::date FROM acct_tmp t
      JOIN accounting_usagerecord u ON u.cluster_id = %(cluster)s AND u.job_id = t.job_id
     WHERE u."end" <> to_timestamp(t."end")
"""

ROLLUP_DELETE = "DELETE FROM accounting_dailyusage WHERE cluster_id = %(cluster)s AND day = ANY(%(days)s)"
ROLLUP_INSERT = """
    INSERT INTO accounting_dailyusage (day, cluster_id, project_id, user_id, resource, amount, updated)
    SELECT d.day, %(cluster)s, d.project_id, d.user_id, r.resource, r.amount, %(now)s
      FROM (SELECT (u."end" AT TIME ZONE 'UTC')::date AS day, u.project_id, u.user_id,
                   sum(u.cpu_seconds) / 3600.0 AS core_hours,
                   sum(u.alloc_gpus::bigint * u.elapsed_seconds) / 3600.0 AS gpu_hours,
                   count(*) AS jobs
              FROM accounting_usagerecord u
             WHERE u.cluster_id = %(cluster)s AND u."end" >= %(lo)s AND u."end" < %(hi)s
               AND (u."end" AT TIME ZONE 'UTC')::date = ANY(%(days)s)
             GROUP BY 1, 2, 3) d
     CROSS JOIN LATERAL (VALUES ('core_hours', d.core_hours::float8), ('gpu_hours', d.gpu_hours::float8),
                                ('jobs', d.jobs::float8)) r(resource, amount)
     WHERE r.resource <> 'gpu_hours' OR r.amount > 0
"""


def _lock(cursor, cluster_id):
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK, cluster_id])


def rollup(cluster_id, days, *, cursor=None):
    """Rebuild DailyUsage of one cluster for `days` (dates) from its records
    (delete + one INSERT ... SELECT ... GROUP BY). Idempotent; call inside a
    transaction (the per-cluster lock serializes it with ingests)."""
    days = sorted(set(days))
    if not days:
        return 0
    own = cursor is None
    cursor = cursor or connection.cursor()
    try:
        _lock(cursor, cluster_id)
        lo = datetime.combine(days[0], datetime.min.time(), tzinfo=dt_timezone.utc)
        hi = datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), tzinfo=dt_timezone.utc)
        params = {"cluster": cluster_id, "days": days, "lo": lo, "hi": hi, "now": timezone.now()}
        cursor.execute(ROLLUP_DELETE, params)
        cursor.execute(ROLLUP_INSERT, params)
        return cursor.rowcount
    finally:
        if own:
            cursor.close()


CHUNK = 1 << 20  # bytes per COPY write


def ingest_lines(cluster, lines, *, now=None):
    """Load sacct lines for `cluster` (see the module docstring); returns an
    IngestResult. Everything happens in one transaction."""
    now = now or timezone.now()
    batch = Batch()
    result = IngestResult()
    with transaction.atomic(), connection.cursor() as cursor:
        _lock(cursor, cluster.pk)
        mark, _ = IngestWatermark.objects.select_for_update().get_or_create(cluster=cluster)
        cursor.execute("DROP TABLE IF EXISTS acct_tmp")
        cursor.execute("CREATE TEMPORARY TABLE acct_tmp ({}) ON COMMIT DROP".format(
            ", ".join(f'"{name}" {kind}' for name, kind in TMP_COLUMNS)))
        columns = ", ".join(f'"{name}"' for name, _ in TMP_COLUMNS)
        raw = connection.connection.cursor()
        try:
            with raw.copy(f"COPY acct_tmp ({columns}) FROM STDIN (DELIMITER E'\\x1f')") as copy:
                buffer, size = [], 0
                for row in rows(lines, batch):
                    buffer.append(row)
                    size += len(row)
                    if size > CHUNK:
                        buffer.append("")
                        copy.write("\n".join(buffer).encode("utf-8", "replace"))
                        buffer, size = [], 0
                if buffer:
                    buffer.append("")
                    copy.write("\n".join(buffer).encode("utf-8", "replace"))
        finally:
            raw.close()
        if batch.malformed:
            log.warning("accounting ingest on %s: %d malformed line(s) of %d skipped; first: %s", cluster,
                        batch.malformed, batch.lines,
                        "; ".join(f"{line!r} ({why})" for line, why in batch.samples))
        days = set()
        if batch.records:
            if batch.duplicates:  # a job id twice in one batch: the last line wins
                cursor.execute("DELETE FROM acct_tmp a USING acct_tmp b WHERE a.job_id = b.job_id AND a.ctid < b.ctid")
            if batch.orphan_rss:
                ids, values = zip(*batch.orphan_rss.items())
                cursor.execute(
                    "UPDATE acct_tmp t SET max_rss_mb = GREATEST(t.max_rss_mb, v.rss) "
                    "FROM unnest(%s::text[], %s::bigint[]) v(job_id, rss) WHERE t.job_id = v.job_id",
                    [list(ids), list(values)])
            params = {"cluster": cluster.pk, "now": now}
            cursor.execute(MOVED_DAYS, params)
            days.update(day for (day,) in cursor.fetchall())
            cursor.execute(UPSERT, params)
            result.inserted, result.updated, changed_days = cursor.fetchone()
            days.update(changed_days)
        cursor.execute("DROP TABLE acct_tmp")
        if days:
            rollup(cluster.pk, days, cursor=cursor)
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


__all__ = ["FIELDS", "rows", "Batch", "ingest_lines", "rollup", "IngestResult"]
