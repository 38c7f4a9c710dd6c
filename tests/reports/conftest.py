"""Report fixtures: a small, hand-computed usage history built with
ingest_lines on the offline cluster (no SSH).

Days are relative to today (UTC), so the reports' default range (the last 30
days) covers them. Project Alpha, in the default range:

  job  user (posix)    day   CPUs  elapsed  core-h  GPUs  GPU-h
  101  alice (ada)     D1    4     1 h      4.00
  102  alice (ada)     D2    2     30 min   1.00    1     0.50
  103  amy (amelia)    D2    8     1.5 h    12.00   2     3.00
  104  amy (amelia)    D1    1     15 min   0.25
  105  nobody (zoe)    D1    2     1 h      2.00
                                            -----         ----
                                            19.25         3.50   (5 jobs)

  per member: alice 5.00 (26.0 %), amy 12.25 (63.6 %), unmapped 2.00 (10.4 %);
              GPU: alice 0.50 (14.3 %), amy 3.00 (85.7 %); jobs 2 / 2 / 1 (40/40/20 %)
  per day:    D1 6.25 core-h, 3 jobs; D2 13.00 core-h, 3.50 GPU-h, 2 jobs

Outside the range or the project: job 99 (alice, 40 days ago, 100 core-h),
job 100 (alice, one second before the range starts, 1 core-h), job 201 (bob
in Beta, D2, 32 core-h).
"""
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest

from accounting import reports, services
from clusters.models import PosixAccount
from projects.models import Quota
from tests.accounting.conftest import line, offline  # noqa: F401  (fixture)


def epoch(day, hour=12, minute=0, second=0):
    return int(datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=timezone.utc).timestamp())


def set_quota(project, resource="core_hours", **values):
    Quota.objects.filter(project=project, resource=resource).update(**values)


@dataclass
class Days:
    today: date
    d1: date
    d2: date
    start: date  # the default range's first day


@pytest.fixture
def usage(offline):
    c = offline
    PosixAccount.objects.create(user=c.amy, cluster=c.cluster, username="amelia")
    today = reports.today_utc()
    c.days = Days(today=today, d1=today - timedelta(days=3), d2=today - timedelta(days=2),
                  start=today - timedelta(days=reports.DEFAULT_DAYS - 1))
    d1, d2 = c.days.d1, c.days.d2
    lines = [
        line("101", user="ada", name="sim-a", cpus=4, elapsed=3600, end=epoch(d1, 10)),
        line("102", user="ada", name="gpu-a", cpus=2, elapsed=1800, end=epoch(d2, 12), tres="cpu=2,gres/gpu=1"),
        line("103", user="amelia", name="=big", cpus=8, elapsed=5400, end=epoch(d2, 9), tres="cpu=8,gres/gpu=2"),
        line("104", user="amelia", name="small", cpus=1, elapsed=900, end=epoch(d1, 8)),
        line("105", user="zoe", name="stray", cpus=2, elapsed=3600, end=epoch(d1, 14)),
        line("99", user="ada", name="old", cpus=10, elapsed=36000, end=epoch(today - timedelta(days=40))),
        line("100", user="ada", name="edge", cpus=1, elapsed=3600, end=epoch(c.days.start, 0) - 1),
        line("201", user="bert", account="beta-acct", name="beta-job", cpus=16, elapsed=7200, end=epoch(d2, 15)),
    ]
    result = services.ingest_lines(c.cluster, lines)
    assert (result.records, result.malformed) == (8, 0)
    set_quota(c.alpha, limit=100, used=40, reserved=0)
    set_quota(c.beta, limit=1000, used=0, reserved=0)
    return c
