"""Tenant isolation on every new URL, pages and exports alike: anonymous ->
login, non-member -> 404, plain member -> 403 where managers only, non-staff
-> 403 on the site report."""
import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

FORMATS = [{}, {"format": "csv"}, {"format": "xlsx"}, {"format": "pdf"}]


@pytest.mark.parametrize("params", FORMATS)
def test_project_report(usage, client, client_for, params):
    alpha = reverse("reports:project", args=["alpha"])
    resp = client.get(alpha, params)
    assert resp.status_code == 302 and resp["Location"].startswith("/accounts/login/")
    assert client_for(usage.mallory).get(alpha, params).status_code == 404
    assert client_for(usage.bob).get(alpha, params).status_code == 404  # manager, but of Beta
    assert client_for(usage.amy).get(alpha, params).status_code == 403  # plain member
    assert client_for(usage.alice).get(alpha, params).status_code == 200
    assert client_for(usage.staff).get(alpha, params).status_code == 200
    assert client_for(usage.staff).get(reverse("reports:project", args=["nope"]), params).status_code == 404


@pytest.mark.parametrize("params", FORMATS)
def test_site_report(usage, client, client_for, params):
    site = reverse("reports:site")
    assert client.get(site, params).status_code == 302
    for user in (usage.alice, usage.amy, usage.mallory):
        assert client_for(user).get(site, params).status_code == 403
    assert client_for(usage.staff).get(site, params).status_code == 200


@pytest.mark.parametrize("params", FORMATS)
def test_personal_report_shows_only_ones_own_usage(usage, client, client_for, params):
    me = reverse("reports:me")
    assert client.get(me, params).status_code == 302
    for user in (usage.alice, usage.amy, usage.mallory, usage.staff):
        assert client_for(user).get(me, params).status_code == 200
    if not params:
        assert client_for(usage.mallory).get(me).context["report"].totals["core_hours"] == 0
        assert client_for(usage.staff).get(me).context["report"].projects == []


def test_index_lists_only_managed_projects(usage, client, client_for):
    index = reverse("reports:index")
    assert client.get(index).status_code == 302
    assert [p.slug for p in client_for(usage.alice).get(index).context["managed"]] == ["alpha"]
    assert list(client_for(usage.amy).get(index).context["managed"]) == []
    page = client_for(usage.staff).get(index)
    assert [p.slug for p in page.context["managed"]] == ["alpha", "beta"]
    assert reverse("reports:site").encode() in page.content
    assert reverse("reports:site").encode() not in client_for(usage.alice).get(index).content


def test_nav_links_to_reports(usage, client_for):
    html = client_for(usage.amy).get(reverse("dashboard")).content.decode()
    assert f'href="{reverse("reports:index")}">Reports</a>' in html
    page = client_for(usage.amy).get(reverse("reports:me")).content.decode()
    assert 'aria-current="page" href="/reports/">Reports' in page


@pytest.mark.parametrize("query", [{"project": "alpha"}, {"project": "beta"}, {}])
def test_api_isolation(usage, client, api_for, query):
    url = reverse("api:usage")
    assert client.get(url, query).status_code in (401, 403)
    if query.get("project") == "alpha":
        assert api_for(usage.mallory).get(url, query).status_code == 404
        assert api_for(usage.bob).get(url, query).status_code == 404
    if query.get("project") == "beta":
        assert api_for(usage.alice).get(url, query).status_code == 404
        assert api_for(usage.amy).get(url, query).status_code == 404
