"""A portal cloud on the REAL OpenStack test bed, with a fresh portal project
per test module (so OpenStack project `nephele-<prefix>`), a private
network and a router to `public` in it (made by a separate openstacksdk
admin connection, as a site's staff would), the catalog synced and the
test bed's flavors offered as profiles. Everything the module created on
the cloud is deleted at the end."""
import time
import uuid

import openstack
import pytest
from django.test import TestCase

from clusters import vms
from clusters.backends.openstack import close_all
from clusters.catalog import catalog_sync
from clusters.clouds import cloud_project_ensure
from clusters.models import Image, VMProfile
from projects import services
from projects.models import Membership
from tests.conftest import make_user

from .test_openstack_quotas import Bed, make_cloud

LIMITS = {"cores": 8, "ram_mb": 16384, "disk_gb": 200, "instances": 4, "volumes": 3, "volume_gb": 30,
          "floating_ips": 2, "networks": 1}


class VMBed:
    """What a test needs: `cloud`, `project`, `manager`, `member`,
    `outsider`, `small`/`medium` profiles, `image`; `wait(...)` polls the
    cloud through the portal until a record reaches a state."""

    def __init__(self, bed, prefix):
        self.bed = bed
        self.prefix = prefix

    def wait_server(self, server, states, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            with TestCase.captureOnCommitCallbacks(execute=True):  # follow-ups: floating IP, volume
                server = vms.server_refresh(server_id=server.pk)
            if server.state in states and not server.is_busy:
                return server
            if time.monotonic() > deadline:
                raise AssertionError(f"server {server} stayed {server.state}/{server.task_state}, wanted {states}")
            time.sleep(1)

    def wait_volume(self, volume, states, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            with TestCase.captureOnCommitCallbacks(execute=True):
                volume = vms.volume_refresh(volume_id=volume.pk)
            if volume.state in states:
                return volume
            if time.monotonic() > deadline:
                raise AssertionError(f"volume {volume} stayed {volume.state}, wanted {states}")
            time.sleep(1)


def settled(read, done, timeout=30):
    """OpenStack's admin listing may lag the answer the portal acted on by a
    moment: `read()` until `done(result)` or `timeout` seconds; the last result."""
    deadline = time.monotonic() + timeout
    result = read()
    while not done(result) and time.monotonic() < deadline:
        time.sleep(0.5)
        result = read()
    return result


def _network(bed, openstack_project_id):
    """network `private` with a subnet and a router to `public` in the project."""
    conn = bed.sdk()
    if not list(conn.network.networks(name="private", project_id=openstack_project_id)):
        net = conn.network.create_network(name="private", project_id=openstack_project_id)
        sub = conn.network.create_subnet(name="private-v4", network_id=net.id, ip_version=4,
                                         cidr="10.77.0.0/24", project_id=openstack_project_id)
        public = conn.network.find_network("public", ignore_missing=False)
        router = conn.network.create_router(name="router", project_id=openstack_project_id,
                                            external_gateway_info={"network_id": public.id})
        conn.network.add_interface_to_router(router, subnet=sub.id)


def cleanup(bed, prefix):
    conn = bed.sdk()
    for project in list(conn.identity.projects()):
        if not project.name.startswith(f"nephele-{prefix}"):
            continue
        pid = project.id
        for s in conn.compute.servers(all_projects=True, project_id=pid):
            conn.compute.delete_server(s.id, ignore_missing=True)
        for ip in conn.network.ips(project_id=pid):
            conn.network.delete_ip(ip.id, ignore_missing=True)
        deadline = time.monotonic() + 60
        while list(conn.compute.servers(all_projects=True, project_id=pid)) and time.monotonic() < deadline:
            time.sleep(1)
        for v in conn.block_storage.volumes(all_projects=True, project_id=pid):
            conn.block_storage.delete_volume(v.id, ignore_missing=True)
        for router in conn.network.routers(project_id=pid):
            for port in conn.network.ports(device_id=router.id):
                if port.device_owner == "network:router_interface":
                    for ip in port.fixed_ips:
                        conn.network.remove_interface_from_router(router, subnet=ip["subnet_id"])
            conn.network.delete_router(router, ignore_missing=True)
        for port in conn.network.ports(project_id=pid):
            conn.network.delete_port(port, ignore_missing=True)
        for net in conn.network.networks(project_id=pid):
            conn.network.delete_network(net, ignore_missing=True)
        conn.identity.delete_project(pid, ignore_missing=True)


@pytest.fixture(scope="module")
def os_bed():
    b = Bed()
    b.prefix = f"vm{uuid.uuid4().hex[:8]}"
    yield b
    close_all()
    try:
        cleanup(b, b.prefix)
    finally:
        for conn in b._sdk.values():
            conn.close()


@pytest.fixture
def vmbed(db, os_bed):
    v = VMBed(os_bed, os_bed.prefix)
    v.cloud = make_cloud(os_bed, name=f"{os_bed.prefix}-cloud")
    v.small = VMProfile.objects.create(name="m1.small", vcpus=1, ram_mb=2048, disk_gb=20)
    v.medium = VMProfile.objects.create(name="m1.medium", vcpus=2, ram_mb=4096, disk_gb=40)
    catalog_sync(v.cloud)
    v.image = Image.objects.get(cloud=v.cloud, name="cirros-tiny")
    v.manager = make_user("vic", first_name="Vic")
    v.member = make_user("val", first_name="Val")
    v.outsider = make_user("oz", first_name="Oz")
    v.staff = make_user("stan", staff=True)
    # a fresh slug per test: OpenStack projects are shared by the module, portal ones are not
    v.project = services.project_create(slug=f"{os_bed.prefix}-{uuid.uuid4().hex[:6]}", name="VM test",
                                        limits=dict(LIMITS), manager=v.manager)
    services.membership_set(project=v.project, user=v.member, role=Membership.Role.MEMBER)
    mapping = cloud_project_ensure(v.cloud, v.project)
    _network(os_bed, mapping.openstack_project_id)
    return v
