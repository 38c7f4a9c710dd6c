"""Portal limits pushed to OpenStack quota sets, against the REAL test bed
(keystone, nova, cinder and neutron on 127.0.0.1, started by `make test`).

Every run uses its own project slugs (`os<run>-...`, so OpenStack projects
`nephele-os<run>-...`): the keystone database outlives test runs, and the
test bed's own nephele-alpha/nephele-beta are never touched. The projects
created are deleted at the end. What the portal set is checked through a
separate openstacksdk admin connection, not through the portal's client.
"""
import uuid

import openstack
import pytest
from django.urls import reverse

from clusters.backends.base import AuthenticationFailed
from clusters.backends.openstack import close_all
from clusters.clouds import openstack_client, openstack_quotas_diff, openstack_quotas_sync
from clusters.models import Cloud, CloudProject
from projects import services
from projects.models import Quota
from tests.conftest import make_user
from tests.testbed import require_env

NEEDED = ["OS_TEST_AUTH_URL", "OS_TEST_ADMIN_USER", "OS_TEST_ADMIN_PASSWORD", "OS_TEST_ADMIN_PROJECT",
          "OS_TEST_REGIONS"]
RUN = uuid.uuid4().hex[:8]
PREFIX = f"os{RUN}"
LIMITS = {"cores": 6, "ram_mb": 8192, "instances": 3, "volumes": 2, "volume_gb": 50, "floating_ips": 1,
          "networks": 1}
# portal resource -> (service, API name), as the issue specifies
API_NAMES = {"cores": ("compute", "cores"), "ram_mb": ("compute", "ram"), "instances": ("compute", "instances"),
             "volumes": ("volume", "volumes"), "volume_gb": ("volume", "gigabytes"),
             "floating_ips": ("network", "floatingip"), "networks": ("network", "network")}


class Bed:
    def __init__(self):
        e = require_env("OpenStack", NEEDED)
        self.auth_url = e["OS_TEST_AUTH_URL"]
        self.user = e["OS_TEST_ADMIN_USER"]
        self.password = e["OS_TEST_ADMIN_PASSWORD"]
        self.project = e["OS_TEST_ADMIN_PROJECT"]
        self.user_domain = e.get("OS_TEST_USER_DOMAIN", "Default")
        self.project_domain = e.get("OS_TEST_PROJECT_DOMAIN", "Default")
        self.regions = e["OS_TEST_REGIONS"].split(",")
        self._sdk = {}

    def sdk(self, region=None):
        """A separate openstacksdk admin connection (not the portal's client)."""
        region = region or self.regions[0]
        if region not in self._sdk:
            self._sdk[region] = openstack.connection.Connection(
                auth={"auth_url": self.auth_url, "username": self.user, "password": self.password,
                      "project_name": self.project, "user_domain_name": self.user_domain,
                      "project_domain_name": self.project_domain},
                auth_type="password", region_name=region, identity_api_version="3", app_name="nephele-tests",
            )
        return self._sdk[region]

    def quotas(self, project_id, region=None):
        """{portal resource: (limit, in_use)} as OpenStack has them."""
        conn = self.sdk(region)
        compute = conn.compute.get(f"/os-quota-sets/{project_id}/detail").json()["quota_set"]
        volume = conn.block_storage.get(f"/os-quota-sets/{project_id}?usage=True").json()["quota_set"]
        network = conn.network.get(f"/quotas/{project_id}/details").json()["quota"]
        by_service = {"compute": compute, "volume": volume, "network": network}
        out = {}
        for res, (service, name) in API_NAMES.items():
            v = by_service[service][name]
            out[res] = (v["limit"], v.get("in_use", v.get("used")))
        return out


@pytest.fixture(scope="module")
def bed():
    b = Bed()
    yield b
    close_all()
    conn = b.sdk()
    for project in conn.identity.projects():
        if project.name.startswith(f"nephele-{PREFIX}"):
            conn.identity.delete_project(project.id, ignore_missing=True)
    for conn in b._sdk.values():
        conn.close()


def make_cloud(bed, name="os-one", region=None, **extra):
    fields = dict(name=name, site="Test bed", auth_url=bed.auth_url, auth_type=Cloud.AuthType.PASSWORD,
                  username=bed.user, password=bed.password, user_domain_name=bed.user_domain,
                  project_name=bed.project, project_domain_name=bed.project_domain,
                  region=region or bed.regions[0], default_network="private", external_network="public")
    fields.update(extra)
    cloud = Cloud(**fields)
    cloud.full_clean()
    cloud.save()
    return cloud


def make_project(suffix, limits=LIMITS):
    return services.project_create(slug=f"{PREFIX}-{suffix}", name=f"OS test {suffix}", limits=dict(limits))


def limit_diffs(diffs):
    return sorted((d.project, d.resource, d.portal, d.cloud) for d in diffs if d.what == "limit")


def test_sync_creates_the_openstack_project_and_sets_its_quotas(db, bed):
    cloud = make_cloud(bed)
    project = make_project("a")

    before = openstack_quotas_diff(cloud)
    assert [(d.project, d.what, d.openstack_project, d.cloud) for d in before] == [
        (project.slug, "project", f"nephele-{project.slug}", "not mapped")]

    fixed = openstack_quotas_sync(cloud)
    assert not [d for d in fixed if d.error]
    assert [d.what for d in fixed].count("project") == 1
    # every limit differed from the new project's defaults (nova's cores default is 20, ...)
    assert {d.resource for d in fixed if d.what == "limit"} == set(LIMITS)

    mapping = CloudProject.objects.get(cloud=cloud, project=project)
    assert mapping.openstack_project_name == f"nephele-{project.slug}"
    found = bed.sdk().identity.find_project(mapping.openstack_project_name, domain_id="default", ignore_missing=False)
    assert found.id == mapping.openstack_project_id
    assert bed.quotas(mapping.openstack_project_id) == {res: (value, 0) for res, value in LIMITS.items()}
    cloud.refresh_from_db()
    assert cloud.last_sync is not None

    # idempotent: nothing left to do, nothing differs, the same project is kept
    assert openstack_quotas_sync(cloud) == []
    assert openstack_quotas_diff(cloud) == []
    assert CloudProject.objects.filter(cloud=cloud).count() == 1

    # the portal's admin client can act inside the new project
    assert openstack_client(cloud, project).project_id == mapping.openstack_project_id


def test_changed_limit_is_reported_and_fixed_once(db, bed):
    cloud = make_cloud(bed)
    project = make_project("b")
    openstack_quotas_sync(cloud)
    pid = CloudProject.objects.get(cloud=cloud, project=project).openstack_project_id

    services.quota_set(project=project, resource="cores", limit=8)
    services.quota_set(project=project, resource="floating_ips", limit=0)
    want = [(project.slug, "cores", "8", "6"), (project.slug, "floating_ips", "0", "1")]
    assert limit_diffs(openstack_quotas_diff(cloud)) == want

    assert limit_diffs(openstack_quotas_sync(cloud)) == want
    assert openstack_quotas_sync(cloud) == []
    got = bed.quotas(pid)
    assert got["cores"] == (8, 0) and got["floating_ips"] == (0, 0) and got["ram_mb"] == (8192, 0)


def test_missing_portal_quota_is_zero_on_the_cloud(db, bed):
    cloud = make_cloud(bed)
    project = make_project("c", limits={"cores": 2})
    openstack_quotas_sync(cloud, projects=[project])
    pid = CloudProject.objects.get(cloud=cloud, project=project).openstack_project_id
    assert bed.quotas(pid) == {res: (2 if res == "cores" else 0, 0) for res in LIMITS}


def test_usage_differences_are_reported_not_fixed(db, bed):
    cloud = make_cloud(bed)
    project = make_project("d")
    openstack_quotas_sync(cloud)
    Quota.objects.filter(project=project, resource="cores").update(used=2)

    diffs = openstack_quotas_diff(cloud)
    assert [(d.resource, d.what, d.portal, d.cloud, d.fixable) for d in diffs] == [("cores", "in use", "2", "0", False)]
    assert openstack_quotas_sync(cloud) == []  # a sync does not pretend to fix usage
    assert len(openstack_quotas_diff(cloud)) == 1


def test_second_region_is_another_cloud(db, bed):
    if len(bed.regions) < 2:
        pytest.fail("the test bed should offer two regions (OS_TEST_REGIONS)")
    one = make_cloud(bed, "os-one", bed.regions[0])
    two = make_cloud(bed, "os-two", bed.regions[1])
    project = make_project("e")

    openstack_quotas_sync(one)
    assert [d.what for d in openstack_quotas_diff(two)] == ["project"]  # mappings are per cloud
    fixed = openstack_quotas_sync(two)
    assert not [d for d in fixed if d.error]
    m1 = CloudProject.objects.get(cloud=one, project=project)
    m2 = CloudProject.objects.get(cloud=two, project=project)
    # one keystone for both regions: the same OpenStack project, found again, not duplicated
    assert m2.openstack_project_id == m1.openstack_project_id
    assert bed.quotas(m2.openstack_project_id, region=bed.regions[1]) == {r: (v, 0) for r, v in LIMITS.items()}
    assert openstack_quotas_diff(two) == [] and openstack_quotas_diff(one) == []
    assert openstack_client(two, project).region == bed.regions[1]


def test_bad_credentials_raise_and_are_shown(db, bed, client_for):
    cloud = make_cloud(bed, "os-bad", username=f"nobody-{RUN}")
    make_project("f")
    with pytest.raises(AuthenticationFailed):
        openstack_quotas_sync(cloud)
    with pytest.raises(AuthenticationFailed):
        openstack_quotas_diff(cloud)
    assert not CloudProject.objects.exists()
    staff = client_for(make_user("stella", staff=True))
    page = staff.get(reverse("clusters:limits")).content.decode()
    assert "os-bad" in page and "authentication failed" in page


def test_application_credential_model_and_clear_refusal(db, bed):
    cloud = Cloud(name="os-appcred", auth_url=bed.auth_url, auth_type=Cloud.AuthType.APPLICATION_CREDENTIAL)
    with pytest.raises(Exception) as exc:
        cloud.full_clean()
    assert "application_credential_id" in str(exc.value) and "application_credential_secret" in str(exc.value)
    cloud.application_credential_id = "abc"
    cloud.application_credential_secret = "s3cret-appcred"
    cloud.full_clean()
    cloud.save()
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT application_credential_secret FROM clusters_cloud WHERE id = %s", [cloud.pk])
        stored = cur.fetchone()[0]
    assert "s3cret-appcred" not in stored and stored.startswith("fernet:")
    with pytest.raises(AuthenticationFailed) as refused:  # keystone does not know "abc"
        openstack_quotas_diff(cloud)
    assert "Could not find Application Credential" in refused.value.stderr


def test_admin_never_renders_the_secrets(db, bed, client_for):
    cloud = make_cloud(bed, "os-admin")
    staff = client_for(make_user("stella", staff=True))
    url = reverse("admin:clusters_cloud_change", args=[cloud.pk])
    page = staff.get(url).content.decode()
    # password, application credential secret, and the (empty) project-mapping row's credential secret
    assert page.count('type="password"') == 3
    assert bed.password not in page
    # stored encrypted
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT password FROM clusters_cloud WHERE id = %s", [cloud.pk])
        assert bed.password not in cur.fetchone()[0]
    # an edit with the secret fields left empty keeps them
    from clusters.admin import CloudForm

    data = {f: getattr(cloud, f) for f in ("name", "site", "auth_url", "auth_type", "username", "user_domain_name",
                                           "project_name", "project_domain_name", "region", "default_network",
                                           "external_network", "project_name_prefix", "project_domain_id")}
    data.update(enabled="on", site="Renamed", password="", application_credential_secret="")
    form = CloudForm(data=data, instance=cloud)
    assert form.is_valid(), form.errors
    form.save()
    cloud = Cloud.objects.get(pk=cloud.pk)
    assert cloud.site == "Renamed" and cloud.password == bed.password
    # a new cloud with password auth needs the password
    form = CloudForm(data={**data, "name": "os-new"})
    assert not form.is_valid() and "password" in form.errors
    assert staff.get(reverse("admin:clusters_cloud_add")).status_code == 200
    assert staff.get(reverse("admin:clusters_cloudproject_changelist")).status_code == 200


def test_admin_action_syncs_quotas(db, bed, client_for):
    cloud = make_cloud(bed, "os-action")
    project = make_project("g")
    staff = client_for(make_user("stella", staff=True))
    resp = staff.post(reverse("admin:clusters_cloud_changelist"),
                      {"action": "sync_quotas", "_selected_action": [cloud.pk]}, follow=True)
    assert "os-action: 8 difference(s) fixed." in resp.content.decode().lower()  # the admin capitalizes
    mapping = CloudProject.objects.get(cloud=cloud, project=project)
    assert bed.quotas(mapping.openstack_project_id)["volume_gb"] == (50, 0)
    # the change page shows the mapping inline
    assert mapping.openstack_project_id in staff.get(reverse("admin:clusters_cloud_change", args=[cloud.pk])).content.decode()

    services.quota_set(project=project, resource="volume_gb", limit=60)
    resp = staff.post(reverse("admin:clusters_cloudproject_changelist"),
                      {"action": "sync_quotas", "_selected_action": [mapping.pk]}, follow=True)
    assert "os-action: 1 difference(s) fixed." in resp.content.decode().lower()
    assert bed.quotas(mapping.openstack_project_id)["volume_gb"] == (60, 0)


def test_staff_page_lists_differences_and_sync_fixes_them(db, bed, client_for):
    cloud = make_cloud(bed, "os-page")
    project = make_project("h")
    staff = client_for(make_user("stella", staff=True))
    plain = client_for(make_user("mallory"))
    page = staff.get(reverse("clusters:limits")).content.decode()
    assert "os-page" in page and project.slug in page and "not mapped" in page
    sync_url = reverse("clusters:cloud-limits-sync", args=[cloud.pk])
    assert sync_url in page

    # a plain user may neither see nor sync
    assert plain.get(reverse("clusters:limits")).status_code in (302, 403)
    assert plain.post(sync_url).status_code in (302, 403)
    assert not CloudProject.objects.exists()
    assert staff.get(sync_url).status_code == 405  # POST only

    resp = staff.post(sync_url, follow=True)
    assert resp.redirect_chain[-1][0] == reverse("clusters:limits")
    page = resp.content.decode()
    assert "os-page: 8 difference(s) fixed." in page
    assert "Projects and limits in step." in page and "not mapped" not in page

    services.quota_set(project=project, resource="instances", limit=5)
    page = staff.get(reverse("clusters:limits")).content.decode()
    assert "<td>instances</td><td>limit</td><td>5</td><td>3</td>" in page
    page = staff.post(sync_url, follow=True).content.decode()
    assert "os-page: 1 difference(s) fixed." in page and "Projects and limits in step." in page
    pid = CloudProject.objects.get(cloud=cloud, project=project).openstack_project_id
    assert bed.quotas(pid)["instances"] == (5, 0)


def test_periodic_task_syncs_enabled_clouds_only(db, bed):
    from clusters.tasks import sync_openstack_quotas

    cloud = make_cloud(bed, "os-task")
    off = make_cloud(bed, "os-off", enabled=False)
    broken = make_cloud(bed, "os-broken", username=f"nobody-{RUN}")  # logged and skipped
    project = make_project("i")
    assert sync_openstack_quotas.delay().get() == 8
    assert CloudProject.objects.filter(cloud=cloud, project=project).exists()
    assert not CloudProject.objects.filter(cloud__in=[off, broken]).exists()
    assert sync_openstack_quotas.delay().get() == 0
