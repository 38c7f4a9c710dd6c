"""The three ways a cloud authenticates, against the REAL keystone of the
test bed: user and password (the other tests), an application credential,
and a named entry of the portal's clouds.yaml."""
import uuid

import pytest
from django.contrib.admin.utils import quote

from clusters.backends.base import InvalidRequest
from clusters.backends.openstack import close_all
from clusters.catalog import catalog_sync
from clusters.clouds import cloud_project_ensure, openstack_client, openstack_quotas_sync
from clusters.models import Cloud, CloudProject, Flavor
from projects import services
from tests.conftest import make_user

from .test_openstack_quotas import Bed
from .vmbed import cleanup

RUN = uuid.uuid4().hex[:8]
PREFIX = f"cred{RUN}"


@pytest.fixture(scope="module")
def bed():
    b = Bed()
    b.credentials = []
    yield b
    close_all()
    conn = b.sdk()
    for user_id, cred_id in b.credentials:
        conn.identity.delete_application_credential(user_id, cred_id, ignore_missing=True)
    cleanup(b, PREFIX)
    for c in b._sdk.values():
        c.close()


def application_credential(bed, project_id=None):
    """(id, secret) of a new credential of the admin user, scoped to
    `project_id` (default: the admin project)."""
    import openstack

    scope = {"project_id": project_id} if project_id else {"project_name": bed.project}
    conn = openstack.connection.Connection(
        auth={"auth_url": bed.auth_url, "username": bed.user, "password": bed.password,
              "user_domain_name": bed.user_domain, "project_domain_name": bed.project_domain, **scope},
        auth_type="password", region_name=bed.regions[0], identity_api_version="3", app_name="nephele-tests")
    try:
        cred = conn.identity.create_application_credential(conn.current_user_id, f"nephele-{PREFIX}-{uuid.uuid4().hex[:6]}",
                                                           secret=uuid.uuid4().hex, roles=[{"name": "admin"}])
        bed.credentials.append((conn.current_user_id, cred.id))
        return cred.id, cred.secret
    finally:
        conn.close()


def test_a_cloud_with_an_application_credential_syncs_and_needs_one_per_project(db, bed):
    cred_id, secret = application_credential(bed)
    cloud = Cloud(name="appcred", auth_url=bed.auth_url, auth_type=Cloud.AuthType.APPLICATION_CREDENTIAL,
                  application_credential_id=cred_id, application_credential_secret=secret, region=bed.regions[0],
                  username="", password="", project_name="")
    cloud.full_clean()
    cloud.save()

    assert catalog_sync(cloud)["flavors"] >= 3
    assert Flavor.objects.filter(cloud=cloud, name="m1.small").exists()
    project = services.project_create(slug=f"{PREFIX}-a", name="Cred A", limits={"cores": 3})
    openstack_quotas_sync(cloud, projects=[project])
    mapping = CloudProject.objects.get(cloud=cloud, project=project)
    assert bed.quotas(mapping.openstack_project_id)["cores"][0] == 3

    with pytest.raises(InvalidRequest, match="its own application credential"):
        openstack_client(cloud, project)

    mapping.application_credential_id, mapping.application_credential_secret = application_credential(
        bed, mapping.openstack_project_id)
    mapping.save()
    client = openstack_client(cloud, project)
    assert client.project_id == mapping.openstack_project_id
    assert client.list_servers() == []


def test_a_cloud_from_a_clouds_yaml_entry(db, bed, tmp_path, settings):
    path = tmp_path / "clouds.yaml"
    path.write_text(
        "clouds:\n"
        "  testbed:\n"
        "    auth:\n"
        f"      auth_url: {bed.auth_url}\n"
        f"      username: {bed.user}\n"
        f"      password: '{bed.password}'\n"
        f"      project_name: {bed.project}\n"
        f"      user_domain_name: {bed.user_domain}\n"
        f"      project_domain_name: {bed.project_domain}\n"
        f"    region_name: {bed.regions[0]}\n")
    settings.NEPHELE_CLOUDS_YAML = str(path)
    cloud = Cloud(name="yaml", auth_type=Cloud.AuthType.CLOUDS_YAML, clouds_yaml_entry="testbed",
                  region=bed.regions[0], username="", password="", project_name="")
    cloud.full_clean()
    cloud.save()
    assert cloud.password == "" and cloud.username == ""  # the secret stays in the file

    assert catalog_sync(cloud)["flavors"] >= 3
    project = services.project_create(slug=f"{PREFIX}-y", name="Yaml", limits={"cores": 2})
    mapping = cloud_project_ensure(cloud, project)
    assert openstack_client(cloud, project).project_id == mapping.openstack_project_id  # re-scoped

    cloud.clouds_yaml_entry = "nope"
    with pytest.raises(InvalidRequest, match="'nope'"):
        catalog_sync(cloud)


def test_the_admin_checks_the_entry_and_never_shows_credential_secrets(db, bed, client, tmp_path, settings):
    settings.NEPHELE_CLOUDS_YAML = str(tmp_path / "missing.yaml")
    staff = make_user("cora", staff=True)
    client.force_login(staff)
    response = client.post("/admin/clusters/cloud/add/", {
        "name": "y2", "region": "RegionOne", "auth_type": "clouds_yaml", "clouds_yaml_entry": "absent",
        "enabled": "on", "project_name_prefix": "nephele-", "project_domain_id": "default",
        "cloud_projects-TOTAL_FORMS": "0", "cloud_projects-INITIAL_FORMS": "0"})
    assert response.status_code == 200
    assert "clouds.yaml entry" in response.context["adminform"].form.errors["clouds_yaml_entry"][0]
    assert not Cloud.objects.filter(name="y2").exists()

    cloud = Cloud.objects.create(name="c3", auth_url=bed.auth_url, username="u", password="p")
    project = services.project_create(slug=f"{PREFIX}-s", name="Secret")
    mapping = CloudProject.objects.create(cloud=cloud, project=project, openstack_project_id="x" * 32,
                                          application_credential_id="cred", application_credential_secret="s3cr3t-value")
    page = client.get(f"/admin/clusters/cloudproject/{quote(mapping.pk)}/change/").content.decode()
    assert "s3cr3t-value" not in page and "Stored; leave empty to keep it." in page
    page = client.get(f"/admin/clusters/cloud/{cloud.pk}/change/").content.decode()
    assert 'name="password"' in page and "value=\"p\"" not in page


def test_the_admin_reads_a_keystone_url_without_a_scheme_as_https(db, client):
    client.force_login(make_user("cody", staff=True))
    response = client.post("/admin/clusters/cloud/add/", {
        "name": "bare", "region": "RegionOne", "auth_type": "password", "auth_url": "keystone.example.org/v3",
        "username": "admin", "password": "pw", "enabled": "on", "project_name_prefix": "nephele-",
        "project_domain_id": "default", "user_domain_id": "default",
        "cloud_projects-TOTAL_FORMS": "0", "cloud_projects-INITIAL_FORMS": "0"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Cloud.objects.get(name="bare").auth_url == "https://keystone.example.org/v3"
