"""GET /api/v1/usage/: aggregates per group_by against the hand-computed
fixture, tenant rules, and 400s naming the field."""
from datetime import timedelta

import pytest
from django.urls import reverse


pytestmark = pytest.mark.django_db

URL = "/api/v1/usage/"


def get(api, **params):
    resp = api.get(URL, params)
    assert resp.status_code == 200, resp.content
    return [(r["key"], r["resource"], r["amount"]) for r in resp.json()]


def test_url_name(usage):
    assert reverse("api:usage") == URL


def test_manager_and_staff_see_the_project(usage, api_for):
    for user in (usage.alice, usage.staff):
        api = api_for(user)
        assert get(api, project="alpha", group_by="resource") == [
            ("core_hours", "core_hours", 19.25), ("gpu_hours", "gpu_hours", 3.5), ("jobs", "jobs", 5.0)]
        assert get(api, project="alpha", group_by="user") == [
            ("alice", "core_hours", 5.0), ("alice", "gpu_hours", 0.5), ("alice", "jobs", 2.0),
            ("amy", "core_hours", 12.25), ("amy", "gpu_hours", 3.0), ("amy", "jobs", 2.0),
            (None, "core_hours", 2.0), (None, "jobs", 1.0)]
        d1, d2 = usage.days.d1.isoformat(), usage.days.d2.isoformat()
        assert get(api, project="alpha", group_by="day") == [
            (d1, "core_hours", 6.25), (d1, "jobs", 3.0),
            (d2, "core_hours", 13.0), (d2, "gpu_hours", 3.5), (d2, "jobs", 2.0)]
        assert get(api, project="alpha", group_by="cluster") == [
            ("offline", "core_hours", 19.25), ("offline", "gpu_hours", 3.5), ("offline", "jobs", 5.0)]


def test_default_group_by_is_day_and_dates_bound_the_range(usage, api_for):
    api = api_for(usage.alice)
    d2 = usage.days.d2.isoformat()
    assert get(api, project="alpha", start=d2, end=d2) == [(d2, "core_hours", 13.0), (d2, "gpu_hours", 3.5),
                                                          (d2, "jobs", 2.0)]
    long = (usage.days.today - timedelta(days=45)).isoformat()
    assert get(api, project="alpha", start=long, group_by="resource")[0] == ("core_hours", "core_hours", 120.25)
    assert get(api, project="alpha", cluster="offline", group_by="resource")[0][2] == 19.25


def test_plain_member_gets_only_their_own_rows(usage, api_for):
    api = api_for(usage.amy)
    assert get(api, project="alpha", group_by="user") == [
        ("amy", "core_hours", 12.25), ("amy", "gpu_hours", 3.0), ("amy", "jobs", 2.0)]
    assert get(api, project="alpha", group_by="resource")[0] == ("core_hours", "core_hours", 12.25)


def test_without_project_everyone_gets_their_own_usage(usage, api_for):
    assert get(api_for(usage.alice), group_by="user") == [
        ("alice", "core_hours", 5.0), ("alice", "gpu_hours", 0.5), ("alice", "jobs", 2.0)]
    assert get(api_for(usage.bob), group_by="resource") == [("core_hours", "core_hours", 32.0),
                                                          ("jobs", "jobs", 1.0)]
    assert get(api_for(usage.staff), group_by="user") == []  # staff: their own too
    assert get(api_for(usage.mallory)) == []


@pytest.mark.parametrize("params, field", [
    ({"start": "2026-02-30"}, "start"),
    ({"end": "tomorrow"}, "end"),
    ({"start": "2026-05-02", "end": "2026-05-01"}, "start"),
    ({"start": "2000-01-01", "end": "2026-01-01"}, "start"),
    ({"group_by": "project"}, "group_by"),
    ({"cluster": "nope"}, "cluster"),
])
def test_bad_parameters_are_400_naming_the_field(usage, api_for, params, field):
    resp = api_for(usage.alice).get(URL, {"project": "alpha", **params})
    assert resp.status_code == 400
    assert list(resp.json()) == [field]


def test_schema_lists_the_endpoint(usage, client_for):
    resp = client_for(usage.staff).get("/api/schema/")
    assert resp.status_code == 200 and b"/api/v1/usage/" in resp.content
