"""The site report (sorting, cluster filter, pagination, exports) and the
personal usage page."""
import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from openpyxl import load_workbook

from accounting import reports, services
from clusters.models import PosixAccount, SlurmCluster
from portal.listing import PAGE_SIZE
from projects import services as project_services

from .conftest import epoch, line, set_quota

pytestmark = pytest.mark.django_db


@pytest.fixture
def site(usage):
    """+ Gamma (no usage, no core-hour limit) and a second cluster where alice
    ran 3 core-hours for Alpha on D1."""
    usage.gamma = project_services.project_create(slug="gamma", name="Gamma", manager=usage.bob)
    set_quota(usage.gamma, limit=0)
    other = SlurmCluster.objects.create(name="other", ssh_user="nephele", ssh_private_key="-", known_hosts="-")
    PosixAccount.objects.create(user=usage.alice, cluster=other, username="ada")
    services.ingest_lines(other, [line("7", user="ada", cpus=3, elapsed=3600, end=epoch(usage.days.d1))])
    usage.other = other
    return usage


def rows(resp):
    return [(r["slug"], r["core_hours"], r["limit"], r["percent"]) for r in resp.context["rows"]]


def test_sorting_by_usage_and_by_percent(site, client_for):
    client = client_for(site.staff)
    url = reverse("reports:site")
    # Alpha 22.25 of 100 (22.2 %, rounded half to even), Beta 32 of 1000 (3.2 %), Gamma 0 of 0 (no percent)
    alpha, beta, gamma = ("alpha", 22.25, 100, 22.2), ("beta", 32.0, 1000, 3.2), ("gamma", 0.0, 0, None)
    assert rows(client.get(url)) == [beta, alpha, gamma]  # default: most used first
    assert rows(client.get(url, {"sort": "usage"})) == [gamma, alpha, beta]
    assert rows(client.get(url, {"sort": "-percent"})) == [alpha, beta, gamma]  # no limit: always last
    assert rows(client.get(url, {"sort": "percent"})) == [beta, alpha, gamma]
    assert rows(client.get(url, {"sort": "name"})) == [alpha, beta, gamma]
    assert rows(client.get(url, {"sort": "bogus"})) == [beta, alpha, gamma]
    page = client.get(url)
    assert (page.context["report"].total_core_hours, page.context["report"].unmapped_core_hours) == (54.25, 0.0)
    assert 'aria-sort="descending"' in page.content.decode()


def test_cluster_and_period_filters(site, client_for):
    client = client_for(site.staff)
    url = reverse("reports:site")
    assert rows(client.get(url, {"cluster": "offline", "sort": "name"}))[0] == ("alpha", 19.25, 100, 19.2)
    assert rows(client.get(url, {"cluster": "other", "sort": "name"}))[:2] == [("alpha", 3.0, 100, 3.0),
                                                                              ("beta", 0.0, 1000, 0.0)]
    long = {"start": (site.days.today - timedelta(days=45)).isoformat(), "sort": "name"}
    assert rows(client.get(url, long))[0][1] == 22.25 + 101  # jobs 99 and 100 come in
    only_d2 = {"start": site.days.d2.isoformat(), "end": site.days.d2.isoformat(), "sort": "name"}
    assert rows(client.get(url, only_d2))[:2] == [("alpha", 13.0, 100, 13.0), ("beta", 32.0, 1000, 3.2)]
    assert client.get(url, {"cluster": "nope", "format": "csv"}).status_code == 400


def test_pagination(site, client_for):
    for i in range(PAGE_SIZE):
        project_services.project_create(slug=f"p{i:02d}", name=f"P{i:02d}")
    client = client_for(site.staff)
    first = client.get(reverse("reports:site"))
    assert len(first.context["rows"]) == PAGE_SIZE and first.context["page"].paginator.count == PAGE_SIZE + 3
    second = client.get(reverse("reports:site"), {"page": 2})
    assert [r[0] for r in rows(second)] == ["p22", "p23", "p24"]  # no usage: by name, after gamma
    # exports are never paginated
    data = list(csv.DictReader(io.StringIO(client.get(reverse("reports:site"), {"format": "csv", "table": "projects"})
                                           .content.decode())))
    assert len(data) == PAGE_SIZE + 3


def test_site_exports(site, client_for):
    client = client_for(site.staff)
    url = reverse("reports:site")
    page = rows(client.get(url, {"sort": "-percent"}))
    data = list(csv.DictReader(io.StringIO(client.get(url, {"sort": "-percent", "format": "csv", "table": "projects"})
                                           .content.decode())))
    assert [(r["Project"], float(r["Core-hours"]), int(r["Core-hour limit"]),
             float(r["Percent of limit"]) if r["Percent of limit"] else None) for r in data] == page
    wb = load_workbook(io.BytesIO(client.get(url, {"sort": "-percent", "format": "xlsx"}).content))
    assert [(r[0], r[3], r[4], r[5]) for r in list(wb["projects"].iter_rows(values_only=True))[1:]] == page
    pdf = client.get(url, {"format": "pdf"})
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_personal_report(site, client_for):
    client = client_for(site.alice)
    resp = client.get(reverse("reports:me"))
    report = resp.context["report"]
    # alice: 101 (4, D1) and 102 (1 + 0.5 GPU-h, D2) on offline, 7 (3, D1) on other; all Alpha
    assert [(p["slug"], p["core_hours"], p["gpu_hours"], p["jobs"]) for p in report.projects] == [
        ("alpha", 8.0, 0.5, 3)]
    assert [(d["day"], d["slug"], d["core_hours"], d["jobs"]) for d in report.days] == [
        (site.days.d2, "alpha", 1.0, 1), (site.days.d1, "alpha", 7.0, 2)]
    assert report.totals == {"core_hours": 8.0, "gpu_hours": 0.5, "jobs": 3}
    assert sum(p["core_hours"] for p in report.points) == 8.0
    # amy sees only hers
    amy = client_for(site.amy).get(reverse("reports:me")).context["report"]
    assert amy.totals == {"core_hours": 12.25, "gpu_hours": 3.0, "jobs": 2}
    # exports: same numbers
    data = client.get(reverse("reports:me"), {"format": "csv", "table": "days"}).content.decode()
    assert [(r["Day"], float(r["Core-hours"])) for r in csv.DictReader(io.StringIO(data))] == [
        (site.days.d2.isoformat(), 1.0), (site.days.d1.isoformat(), 7.0)]
    wb = load_workbook(io.BytesIO(client.get(reverse("reports:me"), {"format": "xlsx"}).content))
    assert list(wb["projects"].iter_rows(values_only=True))[1] == ("alpha", "Alpha", 8.0, 0.5, 3)
    assert client.get(reverse("reports:me"), {"format": "pdf"}).content.startswith(b"%PDF")
