"""OpenStackClient against the REAL test bed: keystone, nova (fake virt
driver), glance, neutron, cinder (fake volume driver) and placement on
127.0.0.1 (scripts/openstack/testbed-openstack, started by `make test`).

No database needed. Each test run uses a fresh project (admin creates it) so
quota changes never leak into other runs; servers are fake and boot in a few
seconds.
"""
import os
import time
import uuid

import pytest

from clusters.backends.base import (
    AuthenticationFailed,
    NotFound,
    QuotaRefused,
    ServerRecord,
)
from clusters.backends.openstack import OpenStackClient, close_all
from tests.testbed import require_env

NEEDED = ["OS_TEST_AUTH_URL", "OS_TEST_ADMIN_USER", "OS_TEST_ADMIN_PASSWORD", "OS_TEST_ADMIN_PROJECT",
          "OS_TEST_USER", "OS_TEST_PASSWORD", "OS_TEST_PROJECTS", "OS_TEST_REGIONS", "OS_TEST_IMAGE",
          "OS_TEST_FLAVORS", "OS_TEST_EXTERNAL_NETWORK"]
RUN = uuid.uuid4().hex[:8]


class Bed:
    def __init__(self):
        e = require_env("OpenStack", NEEDED)
        self.auth_url = e["OS_TEST_AUTH_URL"]
        self.regions = e["OS_TEST_REGIONS"].split(",")
        self.projects = e["OS_TEST_PROJECTS"].split(",")
        self.flavors = e["OS_TEST_FLAVORS"].split(",")
        self.image = e["OS_TEST_IMAGE"]
        self.external = e["OS_TEST_EXTERNAL_NETWORK"]
        domains = {"user_domain_name": e.get("OS_TEST_USER_DOMAIN", "Default"),
                   "project_domain_name": e.get("OS_TEST_PROJECT_DOMAIN", "Default")}
        self.admin_auth = {"auth_url": self.auth_url, "username": e["OS_TEST_ADMIN_USER"],
                           "password": e["OS_TEST_ADMIN_PASSWORD"], **domains}
        self.admin_project = e["OS_TEST_ADMIN_PROJECT"]
        self.user_auth = {"auth_url": self.auth_url, "username": e["OS_TEST_USER"],
                          "password": e["OS_TEST_PASSWORD"], **domains}

    def admin(self, region=None):
        return OpenStackClient(self.admin_auth, region or self.regions[0], project_name=self.admin_project)

    def user(self, project=None, region=None):
        return OpenStackClient(self.user_auth, region or self.regions[0], project_name=project or self.projects[0])


@pytest.fixture(scope="module")
def bed():
    b = Bed()
    yield b
    close_all()


@pytest.fixture(scope="module")
def member(bed):
    return bed.user()


@pytest.fixture(scope="module")
def scratch(bed):
    """A fresh project for quota tests, with the admin as member, and a
    client scoped to it; its servers are deleted afterwards."""
    admin = bed.admin()
    project = admin.ensure_project(f"nephele-test-{RUN}", description="pytest scratch project")
    client = OpenStackClient(bed.admin_auth, bed.regions[0], project_id=project.id)
    yield project, client
    for s in client.list_servers():
        client.delete_server(s.id)


def wait_status(client, server_id, want, timeout=60):
    deadline = time.monotonic() + timeout
    rec = None
    while time.monotonic() < deadline:
        rec = client.get_server(server_id)
        if rec.status == want:
            return rec
        if rec.status == "ERROR" and want != "ERROR":
            pytest.fail(f"server {server_id} went ERROR: {rec.fault}")
        time.sleep(0.5)
    pytest.fail(f"server {server_id} not {want} after {timeout}s (last {rec.status if rec else None})")


def wait_gone(client, server_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.get_server(server_id)
        except NotFound:
            return
        time.sleep(0.5)
    pytest.fail(f"server {server_id} still there after {timeout}s")


def wait_volume(client, volume_id, want, timeout=60):
    deadline = time.monotonic() + timeout
    vol = None
    while time.monotonic() < deadline:
        vol = client.get_volume(volume_id)
        if vol.status == want:
            return vol
        if vol.status.startswith("error"):
            pytest.fail(f"volume {volume_id} went {vol.status}")
        time.sleep(0.5)
    pytest.fail(f"volume {volume_id} not {want} after {timeout}s (last {vol.status if vol else None})")


@pytest.fixture(scope="module")
def server(member):
    """One ACTIVE server in the member's project, shared by the volume and
    floating IP tests; deleted at the end."""
    sid = member.create_server(f"t-{RUN}-shared", "m1.small", os.environ.get("OS_TEST_IMAGE", ""),
                               network="private")
    wait_status(member, sid, "ACTIVE")
    yield sid
    member.delete_server(sid)


def test_flavors_and_image_listed(bed, member):
    flavors = {f.name: f for f in member.list_flavors()}
    for name in bed.flavors:
        assert name in flavors
    assert (flavors["m1.small"].vcpus, flavors["m1.small"].ram_mb, flavors["m1.small"].disk_gb) == (1, 2048, 20)
    assert (flavors["m1.medium"].vcpus, flavors["m1.medium"].ram_mb) == (2, 4096)
    assert flavors["m1.large"].disk_gb == 80
    images = {i.name: i for i in member.list_images()}
    assert images[bed.image].status == "active"


def test_server_lifecycle(bed, member):
    sid = member.create_server(f"t-{RUN}-life", "m1.small", bed.image, network="private",
                               user_data="#cloud-config\n{}\n")
    rec = wait_status(member, sid, "ACTIVE")
    assert isinstance(rec, ServerRecord)
    assert rec.flavor_name == "m1.small" and rec.flavor_vcpus == 1 and rec.flavor_ram_mb == 2048
    assert rec.fault == ""
    assert rec.fixed_ips and rec.fixed_ips[0].startswith("10.0.0.")
    assert rec.addresses["private"][0]["type"] == "fixed"

    member.stop_server(sid)
    wait_status(member, sid, "SHUTOFF")
    member.start_server(sid)
    wait_status(member, sid, "ACTIVE")
    member.reboot_server(sid)
    wait_status(member, sid, "ACTIVE")

    member.resize_server(sid, "m1.medium")
    wait_status(member, sid, "VERIFY_RESIZE")
    member.confirm_resize(sid)
    rec = wait_status(member, sid, "ACTIVE")
    assert rec.flavor_name == "m1.medium" and rec.flavor_vcpus == 2

    member.delete_server(sid)
    wait_gone(member, sid)
    with pytest.raises(NotFound):
        member.get_server(sid)
    member.delete_server(sid)  # idempotent


def test_list_servers_is_one_api_call(bed, member, server):
    member.list_servers()  # warm up: token and version discovery
    session = member.conn.session
    calls = []
    original = session.request

    def counting(url, method, *args, **kwargs):
        calls.append((method, url))
        return original(url, method, *args, **kwargs)

    session.request = counting
    try:
        servers = member.list_servers()
    finally:
        del session.request
    assert server in {s.id for s in servers}
    assert len(calls) == 1, calls
    assert calls[0][0] == "GET" and "/servers/detail" in calls[0][1]


def test_quotas_set_and_read_with_usage(bed, scratch):
    project, client = scratch
    admin = bed.admin()
    admin.set_quotas(project.id, compute={"cores": 1, "instances": 3, "ram": 4096},
                     volume={"volumes": 4, "gigabytes": 7}, network={"floatingip": 2})
    qs = admin.get_quotas_with_usage(project.id)
    assert qs.compute["cores"].limit == 1 and qs.compute["cores"].in_use == 0
    assert qs.compute["ram"].limit == 4096 and qs.compute["instances"].limit == 3
    assert qs.volume["volumes"].limit == 4 and qs.volume["gigabytes"].limit == 7
    assert qs.network["floatingip"].limit == 2

    sid = client.create_server(f"t-{RUN}-q1", "m1.small", bed.image, network="none")
    wait_status(client, sid, "ACTIVE")
    qs = client.get_quotas_with_usage()
    assert qs.compute["cores"].in_use == 1 and qs.compute["instances"].in_use == 1
    assert qs.compute["ram"].in_use == 2048

    with pytest.raises(QuotaRefused) as err:
        client.create_server(f"t-{RUN}-q2", "m1.small", bed.image, network="none")
    assert "Quota exceeded" in str(err.value)
    assert "cores" in str(err.value)
    client.delete_server(sid)
    wait_gone(client, sid)


def test_volume_create_attach_detach_delete(member, server):
    vol = member.create_volume(1, f"t-{RUN}-vol")
    wait_volume(member, vol.id, "available")
    att = member.attach_volume(server, vol.id)
    assert att.device.startswith("/dev/")
    vol = wait_volume(member, vol.id, "in-use")
    assert vol.attachments[0]["server_id"] == server
    assert vol.id in {v.id for v in member.list_volumes()}
    member.detach_volume(server, vol.id)
    wait_volume(member, vol.id, "available")
    member.delete_volume(vol.id)
    deadline = time.monotonic() + 30
    while vol.id in {v.id for v in member.list_volumes()}:
        assert time.monotonic() < deadline, "volume not deleted"
        time.sleep(0.5)


def test_floating_ip_allocate_associate_release(bed, member, server):
    fip = member.allocate_floating_ip(bed.external)
    assert fip.address.startswith("203.0.113.")
    try:
        fip = member.associate_floating_ip(fip.id, server)
        assert fip.port_id and fip.fixed_address.startswith("10.0.0.")
        deadline = time.monotonic() + 20
        while fip.address not in member.get_server(server).floating_ips:
            assert time.monotonic() < deadline, "floating IP never showed in the server's addresses"
            time.sleep(0.5)
        fip = member.disassociate_floating_ip(fip.id)
        assert fip.port_id == ""
    finally:
        member.release_floating_ip(fip.id)
    with pytest.raises(NotFound):
        member.get_floating_ip(fip.id)


def test_second_region_is_usable(bed):
    region = bed.regions[1]
    client = bed.user(project=bed.projects[1], region=region)
    assert client.region == region
    assert {f.name for f in client.list_flavors()} >= set(bed.flavors)
    assert bed.image in {i.name for i in client.list_images()}
    client.list_servers()
    qs = client.get_quotas_with_usage()
    assert qs.compute["cores"].limit >= 1


def test_wrong_password_is_a_typed_error(bed):
    auth = dict(bed.user_auth, password="not-the-password")
    client = OpenStackClient(auth, bed.regions[0], project_name=bed.projects[0])
    with pytest.raises(AuthenticationFailed):
        client.list_flavors()


def test_missing_server_is_not_found(member):
    with pytest.raises(NotFound):
        member.get_server(str(uuid.uuid4()))
