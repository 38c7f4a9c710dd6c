"""REST API: /me, projects (tenant-filtered), authentication, schema and
docs, the error format, and the API token page."""
import io
import json
import re

import pytest
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import NotFound
from rest_framework.test import APIClient

from portal.api import exception_handler
from projects import services
from projects.models import Project, Quota, Resource
from projects.services import QuotaExceeded
from tests.conftest import make_user

PROJECTS = "/api/v1/projects/"


def slugs(response):
    assert response.status_code == 200, response.content
    return [p["slug"] for p in response.json()["results"]]


# --- /me --------------------------------------------------------------------------


def test_me(cast, api_for):
    data = api_for(cast.alice).get("/api/v1/me/").json()
    assert data == {
        "id": cast.alice.pk,
        "username": "alice",
        "email": "alice@example.org",
        "first_name": "Alice",
        "last_name": "Archer",
        "is_staff": False,
        "memberships": [{"project": "alpha", "project_name": "Alpha", "role": "manager"}],
    }


def test_me_lists_every_membership(cast, api_for):
    services.membership_set(project=cast.beta, user=cast.amy, role="manager")
    memberships = api_for(cast.amy).get("/api/v1/me/").json()["memberships"]
    assert [(m["project"], m["role"]) for m in memberships] == [("alpha", "member"), ("beta", "manager")]
    assert api_for(cast.mallory).get("/api/v1/me/").json()["memberships"] == []
    assert api_for(cast.staff).get("/api/v1/me/").json()["is_staff"] is True


# --- Projects ------------------------------------------------------------------------


def test_project_list_only_mine(cast, api_for):
    response = api_for(cast.amy).get(PROJECTS)
    assert slugs(response) == ["alpha"]
    assert response.json()["count"] == 1
    item = response.json()["results"][0]
    assert set(item) == {"slug", "name", "description", "status", "created", "role"}
    assert (item["name"], item["role"]) == ("Alpha", "member")
    assert slugs(api_for(cast.bob).get(PROJECTS)) == ["beta"]
    assert slugs(api_for(cast.mallory).get(PROJECTS)) == []


def test_staff_sees_all_projects_without_a_role(cast, api_for):
    results = api_for(cast.staff).get(PROJECTS).json()["results"]
    assert [(p["slug"], p["role"]) for p in results] == [("alpha", None), ("beta", None)]


def test_project_list_search_filter_ordering(cast, api_for):
    services.project_update(project=cast.beta, status="suspended", description="Particle physics")
    staff = api_for(cast.staff)
    assert slugs(staff.get(PROJECTS, {"search": "particle"})) == ["beta"]
    assert slugs(staff.get(PROJECTS, {"search": "ALP"})) == ["alpha"]
    assert slugs(staff.get(PROJECTS, {"status": "suspended"})) == ["beta"]
    assert slugs(staff.get(PROJECTS, {"status": "active"})) == ["alpha"]
    assert slugs(staff.get(PROJECTS, {"ordering": "-name"})) == ["beta", "alpha"]
    assert slugs(staff.get(PROJECTS, {"ordering": "name"})) == ["alpha", "beta"]
    assert staff.get(PROJECTS, {"status": "deleted"}).status_code == 400
    # Search never reaches past the tenant filter.
    assert slugs(api_for(cast.amy).get(PROJECTS, {"search": "particle"})) == []


def test_project_list_paginates(cast, api_for):
    Project.objects.bulk_create(Project(slug=f"p{i:02d}", name=f"P{i:02d}") for i in range(60))
    first = api_for(cast.staff).get(PROJECTS).json()
    assert first["count"] == 62
    assert len(first["results"]) == 50
    assert first["next"].endswith("?page=2")


def test_project_detail_with_members_and_quotas(cast, api_for):
    services.quota_set(project=cast.alpha, resource="cores", limit=10, per_member_limit=4)
    services.quota_reserve(project=cast.alpha, user=cast.amy, resource="cores", amount=3)
    services.quota_commit(project=cast.alpha, user=cast.amy, resource="cores", amount=1)
    response = api_for(cast.amy).get(f"{PROJECTS}alpha/")
    assert response.status_code == 200
    data = response.json()
    assert (data["slug"], data["role"]) == ("alpha", "member")
    assert {(m["username"], m["role"]) for m in data["members"]} == {("alice", "manager"), ("amy", "member")}
    alice = next(m for m in data["members"] if m["username"] == "alice")
    assert (alice["email"], alice["name"], alice["source"]) == ("alice@example.org", "Alice Archer", "manual")
    assert [q["resource"] for q in data["quotas"]] == list(Resource.values)
    cores = data["quotas"][0]
    assert {k: cores[k] for k in ("resource", "limit", "per_member_limit", "used", "reserved", "percent")} == {
        "resource": "cores",
        "limit": 10,
        "per_member_limit": 4,
        "used": 1,
        "reserved": 2,
        "percent": 30,
    }
    assert cores["resource_label"] == "vCPU cores"
    instances = data["quotas"][Resource.values.index("instances")]
    assert (instances["limit"], instances["per_member_limit"], instances["used"]) == (3, None, 0)


def test_project_detail_queries_are_bounded(cast, api_for, django_assert_max_num_queries):
    for i in range(10):
        services.membership_set(project=cast.alpha, user=make_user(f"extra{i}"), role="member")
    client = api_for(cast.alice)
    with django_assert_max_num_queries(6):
        response = client.get(f"{PROJECTS}alpha/")
    assert len(response.json()["members"]) == 12


@pytest.mark.parametrize("who", ["mallory", "bob"])
def test_project_detail_of_another_tenant_is_404(cast, api_for, who):
    response = api_for(getattr(cast, who)).get(f"{PROJECTS}alpha/")
    assert response.status_code == 404
    assert "Alpha" not in response.content.decode()


def test_staff_gets_any_project_detail(cast, api_for):
    assert api_for(cast.staff).get(f"{PROJECTS}beta/").json()["members"][0]["username"] == "bob"


def test_api_is_read_only(cast, api_for):
    client = api_for(cast.alice)
    assert client.post(PROJECTS, {"slug": "x", "name": "X"}).status_code == 405
    assert client.patch(f"{PROJECTS}alpha/", {"name": "Renamed"}).status_code == 405
    assert client.delete(f"{PROJECTS}alpha/").status_code == 405
    assert Project.objects.get(slug="alpha").name == "Alpha"


# --- Authentication ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/me/", PROJECTS, f"{PROJECTS}alpha/"])
def test_unauthenticated_is_refused(cast, url):
    response = APIClient().get(url)
    assert response.status_code in (401, 403)
    assert "credentials were not provided" in response.json()["detail"]


def test_token_authentication(cast):
    token = Token.objects.create(user=cast.bob)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/me/").json()["username"] == "bob"
    assert slugs(client.get(PROJECTS)) == ["beta"]
    bad = APIClient(HTTP_AUTHORIZATION=f"Token {token.key[:-1]}x")
    response = bad.get("/api/v1/me/")
    assert response.status_code in (401, 403)
    assert response.json()["detail"] == "Invalid token."


def test_drf_create_token_command_gives_a_usable_token(cast):
    out = io.StringIO()
    call_command("drf_create_token", "alice", stdout=out)
    key = re.search(r"\b([0-9a-f]{40})\b", out.getvalue()).group(1)
    assert Token.objects.get(user=cast.alice).key == key
    client = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/me/").json()["username"] == "alice"


# --- Schema and docs ------------------------------------------------------------------------


def test_schema_is_openapi_3_and_lists_the_endpoints(cast, client_for):
    response = client_for(cast.alice).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Nephele API"
    assert {"/api/v1/projects/", "/api/v1/projects/{slug}/", "/api/v1/me/"} <= set(schema["paths"])
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_docs_load_only_local_assets(cast, client_for):
    client = client_for(cast.alice)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html) + re.findall(r"<link[^>]*\bhref=\"([^\"]+)\"", html)
    assert sources, "expected the Swagger UI assets"
    assert not [s for s in sources if re.match(r"(https?:)?//", s)]
    assert all(s.startswith("/") for s in sources)
    # No inline scripts: CSP (script-src 'self') would block them.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    for src in sources:
        assert client.get(src).status_code == 200, src


# --- Error format ---------------------------------------------------------------------------


def test_exception_handler_turns_field_validation_error_into_400():
    response = exception_handler(DjangoValidationError({"limit": ["Must be positive."]}), {})
    assert response.status_code == 400
    assert response.data == {"limit": ["Must be positive."]}


def test_exception_handler_turns_plain_validation_error_into_400():
    response = exception_handler(DjangoValidationError("A project keeps at least one manager."), {})
    assert response.status_code == 400
    assert response.data == {"detail": ["A project keeps at least one manager."]}


def test_exception_handler_turns_quota_exceeded_into_409(db):
    exc = QuotaExceeded(quota=Quota(resource="cores"), requested=4, scope="project", current=8, limit=10)
    response = exception_handler(exc, {})
    assert response.status_code == 409
    quota = response.data["quota"]
    assert {k: quota[k] for k in ("resource", "scope", "limit", "current", "requested")} == {
        "resource": "cores", "scope": "project", "limit": 10, "current": 8, "requested": 4,
    }
    assert "vCPU cores" in quota["detail"] and "10" in quota["detail"]
    assert json.loads(json.dumps(response.data)) == response.data  # JSON-serialisable


def test_exception_handler_leaves_the_rest_to_drf():
    assert exception_handler(NotFound(), {}).status_code == 404
    assert exception_handler(RuntimeError("boom"), {}) is None


# --- API token page ---------------------------------------------------------------------------


def test_api_token_page(cast, client_for):
    client = client_for(cast.amy)
    page = client.get("/account/api-token/")
    assert page.status_code == 200
    assert page.context["token"] is None
    assert "You have no token yet." in page.content.decode()

    response = client.post("/account/api-token/")
    assert response.status_code == 302 and response.url == "/account/api-token/"
    first = Token.objects.get(user=cast.amy)
    shown = client.get("/account/api-token/").content.decode()
    assert first.key in shown and "Regenerate token" in shown

    client.post("/account/api-token/")
    second = Token.objects.get(user=cast.amy)
    assert second.key != first.key
    assert APIClient(HTTP_AUTHORIZATION=f"Token {first.key}").get("/api/v1/me/").status_code in (401, 403)
    assert APIClient(HTTP_AUTHORIZATION=f"Token {second.key}").get("/api/v1/me/").json()["username"] == "amy"
    # Only the caller's own token is touched.
    other = Token.objects.create(user=cast.bob)
    client.post("/account/api-token/")
    assert Token.objects.filter(key=other.key).exists()


def test_the_schema_generates_without_warnings(tmp_path):
    """Every view is described (types of path ids, serializers, enums): drf-spectacular's
    own validation fails on any warning."""
    from django.core.management import call_command

    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert "/api/v1/servers/{id}/resize/" in out.read_text()
