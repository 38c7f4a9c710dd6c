"""Reports read the DailyUsage rollup: the only query on UsageRecord is the
project report's top jobs, bounded by project and end time; query counts
stay small and do not grow with the data."""
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounting import services

from .conftest import epoch, line

pytestmark = pytest.mark.django_db
RAW = "accounting_usagerecord"


def capture(client, url, params=None):
    with CaptureQueriesContext(connection) as ctx:
        resp = client.get(url, params or {})
    assert resp.status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


@pytest.mark.parametrize("fmt", [None, "csv", "xlsx", "pdf"])
def test_project_report_reads_records_only_for_top_jobs(usage, client_for, fmt):
    sqls = capture(client_for(usage.alice), reverse("reports:project", args=["alpha"]),
                   {"format": fmt} if fmt else {})
    raw = [s for s in sqls if RAW in s]
    assert len(raw) == 1, raw
    [top] = raw
    assert re.search(r'"accounting_usagerecord"\."project_id" = \d+', top)
    assert '"accounting_usagerecord"."end" >=' in top and '"accounting_usagerecord"."end" <' in top
    assert "ORDER BY" in top and top.rstrip().endswith("LIMIT 10")
    assert "::date" not in top and "AT TIME ZONE" not in top  # the BRIN index on "end" applies
    assert len(sqls) <= 25


@pytest.mark.parametrize("name, params", [("reports:site", {}), ("reports:site", {"format": "xlsx"}),
                                          ("reports:me", {}), ("reports:me", {"format": "csv"}),
                                          ("reports:index", {})])
def test_other_reports_never_read_records(usage, client_for, name, params):
    sqls = capture(client_for(usage.staff if "site" in name else usage.alice), reverse(name), params)
    assert not [s for s in sqls if RAW in s]
    assert len(sqls) <= 20


@pytest.mark.parametrize("group_by", ["user", "day", "cluster", "resource"])
def test_api_never_reads_records(usage, api_for, group_by):
    with CaptureQueriesContext(connection) as ctx:
        resp = api_for(usage.alice).get("/api/v1/usage/", {"project": "alpha", "group_by": group_by})
    assert resp.status_code == 200
    assert not [q for q in ctx.captured_queries if RAW in q["sql"]]
    assert len(ctx.captured_queries) <= 6


def test_query_count_does_not_grow_with_data(usage, client_for, django_assert_max_num_queries):
    client = client_for(usage.alice)
    url = reverse("reports:project", args=["alpha"])
    before = len(capture(client, url))
    services.ingest_lines(usage.cluster, [line(f"9{i:03d}", user="ada" if i % 2 else "amelia", cpus=1 + i % 4,
                                               end=epoch(usage.days.d1, i % 24)) for i in range(200)])
    with django_assert_max_num_queries(before):
        client.get(url)
