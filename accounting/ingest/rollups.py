"""DailyUsage: the rollup of a cluster's records by day, and the SQL of the
rollup a first batch takes in the pipeline (see the package docstring, step 4)."""
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection
from django.utils import timezone

ADVISORY_LOCK = 0x6E65  # first key of pg_advisory_xact_lock(key, cluster_id)

ROLLUP_DELETE = "DELETE FROM accounting_dailyusage WHERE cluster_id = %(cluster)s AND day = ANY(%(days)s)"
ROLLUP_INSERT = """
    WITH d AS MATERIALIZED (
        SELECT (u."end" AT TIME ZONE 'UTC')::date AS day, u.project_id, u.user_id,
               sum(u.cpu_seconds) / 3600.0 AS core_hours,
               sum(u.alloc_gpus::bigint * u.elapsed_seconds) / 3600.0 AS gpu_hours,
               count(*) AS jobs
          FROM accounting_usagerecord u
         WHERE u.cluster_id = %(cluster)s AND ({where})
         GROUP BY 1, 2, 3
    )
    INSERT INTO accounting_dailyusage (day, cluster_id, project_id, user_id, resource, amount, updated)
    SELECT d.day, %(cluster)s, d.project_id, d.user_id, r.resource, r.amount, %(now)s
      FROM d
     CROSS JOIN LATERAL (VALUES ('core_hours', d.core_hours::float8), ('gpu_hours', d.gpu_hours::float8),
                                ('jobs', d.jobs::float8)) r(resource, amount)
     WHERE r.resource <> 'gpu_hours' OR r.amount > 0
     ORDER BY 1, 3, 4, 5
"""
# A first batch of a cluster (no record before it): the sums of each chunk's
# records (ids after the last one before the chunk), and a day's rollup from
# them once no later chunk has it. The same sums of the same integers as
# ROLLUP_INSERT: the same amounts.
PARTIALS = ("CREATE TEMPORARY TABLE acct_agg (day date, project_id bigint, user_id bigint, cpu numeric, gpu numeric, "
            "jobs bigint) ON COMMIT DROP")
PARTIAL = """
    INSERT INTO acct_agg
    SELECT (u."end" AT TIME ZONE 'UTC')::date, u.project_id, u.user_id, sum(u.cpu_seconds),
           sum(u.alloc_gpus::bigint * u.elapsed_seconds), count(*)
      FROM accounting_usagerecord u WHERE u.id > %(after)s AND u.id <= %(upto)s AND u.cluster_id = %(cluster)s
     GROUP BY 1, 2, 3
"""
ROLLUP_FROM_PARTIALS = """
    INSERT INTO accounting_dailyusage (day, cluster_id, project_id, user_id, resource, amount, updated)
    SELECT d.day, %(cluster)s, d.project_id, d.user_id, r.resource, r.amount, %(now)s
      FROM (SELECT day, project_id, user_id, sum(cpu) / 3600.0 AS core_hours, sum(gpu) / 3600.0 AS gpu_hours,
                   sum(jobs) AS jobs
              FROM acct_agg WHERE day = ANY(%(days)s) GROUP BY 1, 2, 3) d
     CROSS JOIN LATERAL (VALUES ('core_hours', d.core_hours::float8), ('gpu_hours', d.gpu_hours::float8),
                                ('jobs', d.jobs::float8)) r(resource, amount)
     WHERE r.resource <> 'gpu_hours' OR r.amount > 0
"""
ROLLUP_WORK_MEM = "64MB"  # the GROUP BY over a month of a busy cluster stays in memory


def _lock(cursor, cluster_id):
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK, cluster_id])


def _midnight(day):
    return datetime.combine(day, datetime.min.time(), tzinfo=dt_timezone.utc)


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
        # Records of those days: by ranges of consecutive days (the BRIN index on
        # `end` finds them), or the whole span and a test of the day.
        runs = []
        for day in days:
            if runs and runs[-1][1] == day - timedelta(days=1):
                runs[-1][1] = day
            else:
                runs.append([day, day])
        params = {"cluster": cluster_id, "days": days, "now": timezone.now()}
        if len(runs) <= 8:
            where = " OR ".join(f'(u."end" >= %(lo{i})s AND u."end" < %(hi{i})s)' for i in range(len(runs)))
            for i, (lo, hi) in enumerate(runs):
                params[f"lo{i}"], params[f"hi{i}"] = _midnight(lo), _midnight(hi + timedelta(days=1))
        else:
            where = 'u."end" >= %(lo0)s AND u."end" < %(hi0)s AND (u."end" AT TIME ZONE \'UTC\')::date = ANY(%(days)s)'
            params["lo0"], params["hi0"] = _midnight(days[0]), _midnight(days[-1] + timedelta(days=1))
        cursor.execute("SELECT current_setting('work_mem')")
        work_mem = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('work_mem', %s, true)", [ROLLUP_WORK_MEM])
        cursor.execute(ROLLUP_DELETE, params)
        cursor.execute(ROLLUP_INSERT.format(where=where), params)
        written = cursor.rowcount
        cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem])
        return written
    finally:
        if own:
            cursor.close()
