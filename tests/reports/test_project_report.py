"""The project report against hand-computed numbers (see conftest), on the
page and in every export; grouping; the burn-down projection."""
import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from openpyxl import load_workbook

from accounting import reports, services
from projects import services as project_services
from projects.models import QuotaRequest

from .conftest import epoch, line, set_quota

pytestmark = pytest.mark.django_db

# (username, core-h, core %, GPU-h, GPU %, jobs, jobs %), sorted by core-hours
MEMBERS = [
    ("amy", 12.25, 63.6, 3.0, 85.7, 2, 40.0),
    ("", 2.0, 10.4, 0.0, 0.0, 1, 20.0),  # no portal user (zoe)
    ("alice", 5.0, 26.0, 0.5, 14.3, 2, 40.0),
]
MEMBERS.sort(key=lambda m: -m[1])
TOTALS = {"core_hours": 19.25, "gpu_hours": 3.5, "jobs": 5}
TOP = [("103", 12.0, 3.0), ("101", 4.0, 0.0), ("105", 2.0, 0.0), ("102", 1.0, 0.5), ("104", 0.25, 0.0)]


def url(project="alpha"):
    return reverse("reports:project", args=[project])


def member_tuples(rows):
    return [(m["username"], m["core_hours"], m["core_pct"], m["gpu_hours"], m["gpu_pct"], m["jobs"], m["jobs_pct"])
            for m in rows]


def test_page_numbers(usage, client_for):
    page = client_for(usage.alice).get(url())
    assert page.status_code == 200
    report = page.context["report"]
    assert report.range == reports.Range(usage.days.start, usage.days.today, "day")
    assert report.totals == TOTALS
    assert member_tuples(report.members) == MEMBERS
    assert [m["role"] for m in report.members] == ["member", "manager", ""]
    assert report.members[-1]["name"] == "(no portal user)"
    assert [(j["job_id"], j["core_hours"], j["gpu_hours"]) for j in report.top_jobs] == TOP
    assert report.top_jobs[0]["user"] == "amy" and report.top_jobs[2]["user"] == "zoe"
    by_day = {p["start"]: p for p in report.points}
    assert len(report.points) == reports.DEFAULT_DAYS
    assert by_day[usage.days.d1] | {"start": None} == {"start": None, "label": usage.days.d1.isoformat(),
                                                       "core_hours": 6.25, "gpu_hours": 0.0, "jobs": 3}
    assert (by_day[usage.days.d2]["core_hours"], by_day[usage.days.d2]["gpu_hours"]) == (13.0, 3.5)
    assert sum(p["core_hours"] for p in report.points) == 19.25
    # quota bars (reused) and the chart's data, passed without an inline script
    html = page.content.decode()
    assert 'aria-label="Core-hours usage" aria-valuenow="40"' in html
    chart = page.context["chart"]
    assert chart["datasets"][0]["data"] == [p["core_hours"] for p in report.points]
    assert '<script id="usage-chart-data" type="application/json">' in html
    assert "12.25" in html and "63.6%" in html


def test_no_inline_scripts(usage, client_for):
    import re

    html = client_for(usage.alice).get(url()).content.decode()
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert "vendor/chartjs/chart.umd.min.js" in html and "js/charts.js" in html


def test_csv_has_the_same_numbers(usage, client_for):
    client = client_for(usage.alice)
    resp = client.get(url(), {"format": "csv", "table": "members"})
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/csv")
    assert 'filename="usage-alpha-' in resp["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.content.decode())))
    assert [(r["User"], float(r["Core-hours"]), float(r["Core-hours %"]) if r["Core-hours %"] else None,
             float(r["GPU-hours"]), float(r["GPU-hours %"] or 0), int(r["Jobs"]), float(r["Jobs %"]))
            for r in rows[:-1]] == MEMBERS
    assert (rows[-1]["Name"], float(rows[-1]["Core-hours"]), int(rows[-1]["Jobs"])) == ("Total", 19.25, 5)

    whole = client.get(url(), {"format": "csv"}).content.decode()
    for title in ("# Quotas", "# Usage per day", "# Usage per member", "# Top 10 jobs by core-hours",
                  "# Core-hour projection"):
        assert title in whole
    top = list(csv.DictReader(io.StringIO(client.get(url(), {"format": "csv", "table": "top_jobs"}).content.decode())))
    assert [(r["Job id"], float(r["Core-hours"])) for r in top] == [(j, c) for j, c, _ in TOP]
    assert top[0]["Name"] == "'=big"  # never a formula in a spreadsheet
    assert client.get(url(), {"format": "csv", "table": "nope"}).status_code == 400


def test_xlsx_has_the_same_numbers(usage, client_for):
    resp = client_for(usage.alice).get(url(), {"format": "xlsx"})
    assert resp.status_code == 200 and "spreadsheetml" in resp["Content-Type"]
    wb = load_workbook(io.BytesIO(resp.content))
    assert wb.sheetnames == ["Report", "quotas", "usage", "members", "top_jobs", "burndown"]
    rows = list(wb["members"].iter_rows(values_only=True))
    assert rows[0][:4] == ("User", "Name", "Role", "Core-hours")
    got = [(r[0] or "", r[3], r[4], r[5], r[6] or 0.0, r[7], r[8]) for r in rows[1:-1]]
    assert got == MEMBERS
    assert rows[-1][1] == "Total" and rows[-1][3] == 19.25 and rows[-1][7] == 5
    top = list(wb["top_jobs"].iter_rows(values_only=True))[1:]
    assert [(r[1], r[8], r[9]) for r in top] == TOP
    assert top[0][2] == "=big"  # stored as text, not as a formula
    assert wb["top_jobs"]["C2"].data_type == "s"
    usage_rows = list(wb["usage"].iter_rows(values_only=True))[1:]
    assert sum(r[2] for r in usage_rows) == 19.25 and len(usage_rows) == reports.DEFAULT_DAYS


def test_pdf(usage, client_for):
    resp = client_for(usage.alice).get(url(), {"format": "pdf"})
    assert resp.status_code == 200 and resp["Content-Type"] == "application/pdf"
    assert resp.content.startswith(b"%PDF") and len(resp.content) > 2000
    assert 'filename="usage-alpha-' in resp["Content-Disposition"]


def test_bad_parameters(usage, client_for):
    client = client_for(usage.alice)
    # exports refuse them, naming the field
    resp = client.get(url(), {"format": "csv", "start": "yesterday"})
    assert resp.status_code == 400 and b"start:" in resp.content
    assert client.get(url(), {"format": "csv", "period": "year"}).content.startswith(b"period:")
    assert client.get(url(), {"format": "doc"}).status_code == 400
    # the page falls back to the defaults and says so
    page = client.get(url(), {"start": "2026-13-01", "period": "week"})
    assert page.status_code == 200
    assert page.context["report"].range == reports.Range(usage.days.start, usage.days.today, "week")
    assert any("Ignored start" in str(m) for m in page.context["messages"])


def test_grouping_by_week_and_month(usage, client_for):
    client = client_for(usage.alice)
    for period in ("week", "month"):
        report = client.get(url(), {"period": period}).context["report"]
        assert report.range.period == period
        assert sum(p["core_hours"] for p in report.points) == 19.25
        assert sum(p["jobs"] for p in report.points) == 5
        starts = [p["start"] for p in report.points]
        assert starts == sorted(starts) and starts[0] <= usage.days.start
    weeks = client.get(url(), {"period": "week"}).context["report"].points
    assert all(p["start"].weekday() == 0 and "-W" in p["label"] for p in weeks)
    # a range given explicitly; job 99 (40 days ago) only counts when it is inside
    report = client.get(url(), {"start": (usage.days.today - timedelta(days=45)).isoformat(),
                                "end": usage.days.today.isoformat()}).context["report"]
    assert report.totals["core_hours"] == 19.25 + 100 + 1
    assert report.top_jobs[0]["job_id"] == "99"
    # long ranges default to coarser grouping
    long = client.get(url(), {"start": (usage.days.today - timedelta(days=400)).isoformat()}).context["report"]
    assert long.range.period == "week"


# -- burn-down -----------------------------------------------------------------------


@pytest.fixture
def steady(offline):
    """Gamma (bob manages it) used exactly 10 core-hours on each of the last 14
    days (and 50 today, which the rate ignores)."""
    gamma = project_services.project_create(slug="gamma", name="Gamma", manager=offline.bob)
    today = reports.today_utc()
    lines = [line(f"3{i:02d}", user="bert", account="gamma", cpus=10, elapsed=3600,
                  end=epoch(today - timedelta(days=i), 6)) for i in range(1, 15)]
    lines += [line("399", user="bert", account="gamma", cpus=50, elapsed=3600, end=epoch(today, 0, 30))]
    lines += [line("398", user="bert", account="gamma", cpus=99, elapsed=3600, end=epoch(today - timedelta(days=15)))]
    services.ingest_lines(offline.cluster, lines)
    offline.gamma, offline.today = gamma, today
    return offline


def test_burndown_at_a_constant_rate(steady):
    g, today = steady.gamma, steady.today
    set_quota(g, limit=1000, used=250, reserved=50)  # 700 left at 10 a day: 70 days
    b = reports.burndown(g, today=today)
    assert (b.status, b.rate, b.remaining) == ("runs_out", 10.0, 700)
    assert b.runs_out == today + timedelta(days=70)
    assert b.sentence == (f"At the current rate (10.00 core-hours a day, the average of the last 14 days) "
                          f"the core-hour quota runs out on {(today + timedelta(days=70)).isoformat()}.")
    set_quota(g, limit=1000, used=295, reserved=0)  # 705 left: 70.5 days, rounded down
    assert reports.burndown(g, today=today).runs_out == today + timedelta(days=70)


def test_burndown_beyond_the_horizon_and_edge_cases(steady, client_for):
    g, today = steady.gamma, steady.today
    set_quota(g, limit=100_000, used=0, reserved=0)  # 10,000 days
    b = reports.burndown(g, today=today)
    assert (b.status, b.runs_out, b.horizon) == ("beyond", None, today + timedelta(days=365))
    assert "lasts beyond one year from now" in b.sentence

    # a temporary limit ending in 30 days: that is the horizon
    set_quota(g, limit=1000, used=0, reserved=0)
    QuotaRequest.objects.create(project=g, resource="core_hours", requested_limit=1000, justification="x",
                                requested_by=steady.bob, status=QuotaRequest.Status.APPROVED,
                                approved_limit=1000, previous_limit=10, end_date=today + timedelta(days=30))
    b = reports.burndown(g, today=today)
    assert (b.status, b.horizon) == ("beyond", today + timedelta(days=30))
    assert "the end of the temporary limit" in b.sentence

    set_quota(g, limit=1000, used=990, reserved=10)
    assert reports.burndown(g, today=today).status == "exhausted"
    set_quota(g, limit=0)
    assert reports.burndown(g, today=today).status == "no_quota"
    set_quota(steady.alpha, limit=10, used=0)
    b = reports.burndown(steady.alpha, today=today)  # Alpha ran nothing here
    assert b.status == "no_usage" and b.sentence.startswith("No recent usage")

    # and on the page
    QuotaRequest.objects.filter(project=g).delete()
    set_quota(g, limit=1000, used=300, reserved=0)
    page = client_for(steady.bob).get(url("gamma"))
    assert page.context["report"].burndown.runs_out == today + timedelta(days=70)
    assert f"runs out on {(today + timedelta(days=70)).isoformat()}" in page.content.decode()
