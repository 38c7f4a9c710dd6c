"""Servers, volumes and floating IPs through the portal's services against
the REAL OpenStack test bed (nova's fake driver, neutron, cinder's fake
driver): each step checks the state the portal shows, the quota counters,
and what OpenStack itself holds (read through a separate admin connection)."""
import time

import pytest
from django.core.exceptions import ValidationError
from django.test import TestCase

from clusters import vms
from clusters.backends.openstack import OpenStackClient
from clusters.models import Server, Volume
from projects import services
from projects.models import Quota
from projects.quota_requests import quota_recount
from projects.services import QuotaExceeded

from .vmbed import os_bed, settled, vmbed  # noqa: F401 - fixtures


def counters(project):
    return {q.resource: (q.used, q.reserved) for q in Quota.objects.filter(project=project) if q.used or q.reserved}


def cloud_servers(v):
    """The servers OpenStack has in the project, by the admin connection."""
    pid = v.project.cloud_projects.get(cloud=v.cloud).openstack_project_id
    return list(v.bed.sdk().compute.servers(all_projects=True, project_id=pid))


def create(v, name, **extra):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=extra.pop("profile", v.small),
                                  image=v.image, name=name, **extra)


def act(fn, **kwargs):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return fn(**kwargs)


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl val@laptop"


def test_a_server_from_boot_to_delete_keeps_every_counter_exact(vmbed):
    v = vmbed
    key = vms.ssh_key_add(owner=v.member, name=f"laptop-{v.project.slug}", public_key=KEY)
    server = create(v, "life", floating_ip=True, volume_gb=2, ssh_key=key)
    held = counters(v.project)  # the volume may already be created (eager tasks): used or reserved
    assert {k: sum(held[k]) for k in held} == {"cores": 1, "ram_mb": 2048, "disk_gb": 20, "instances": 1,
                                               "floating_ips": 1, "volumes": 1, "volume_gb": 2}
    assert held["cores"] == (0, 1)  # nova has not confirmed the server yet
    server = v.wait_server(server, ["active"])
    assert counters(v.project) == {"cores": (1, 0), "ram_mb": (2048, 0), "disk_gb": (20, 0), "instances": (1, 0),
                                   "floating_ips": (1, 0), "volumes": (1, 0), "volume_gb": (2, 0)}
    volume = server.volumes.get()
    assert volume.state == "in_use" and volume.device.startswith("/dev/")
    fip = server.floating_ip_set.get()
    assert fip.state == "allocated" and fip.address
    deadline = time.monotonic() + 30  # neutron tells nova about the floating IP a few seconds later
    while fip.address not in server.floating_ips() and time.monotonic() < deadline:
        time.sleep(1)
        server = vms.server_refresh(server_id=server.pk)
    assert fip.address in server.floating_ips() and server.fixed_ips()
    (os_server,) = cloud_servers(v)
    assert os_server.id == server.openstack_id and os_server.metadata["nephele_uid"] == str(server.uid)

    act(vms.server_resize_request, server=server, profile=v.medium, actor=v.member)
    server = v.wait_server(server, ["active"])
    assert server.profile == v.medium
    assert counters(v.project)["cores"] == (2, 0) and counters(v.project)["disk_gb"] == (40, 0)
    assert v.bed.sdk().compute.get_server(server.openstack_id).flavor.original_name == "m1.medium"

    act(vms.server_action_request, server=server, action="stop", actor=v.member)
    server = v.wait_server(server, ["shutoff"])
    act(vms.server_action_request, server=server, action="start", actor=v.manager)
    server = v.wait_server(server, ["active"])
    act(vms.server_action_request, server=server, action="reboot", actor=v.member)
    server = v.wait_server(server, ["active"])
    assert [(i.profile.name, i.running) for i in server.intervals.all()] == [
        ("m1.small", True), ("m1.medium", True), ("m1.medium", False), ("m1.medium", True)]
    assert quota_recount(project=v.project) == []

    act(vms.server_delete_request, server=server, actor=v.member)
    server = v.wait_server(server, ["deleted"])
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == []
    # the volume stays (detached, still counted); the floating IP went with the server
    assert counters(v.project) == {"volumes": (1, 0), "volume_gb": (2, 0)}
    volume = v.wait_volume(volume, ["available"])
    assert volume.server is None and volume.device == ""
    messages = list(server.events.values_list("message", flat=True))
    assert any("Resized" in m for m in messages) and any("Delete requested" in m for m in messages)

    act(vms.volume_delete_request, volume=volume, actor=v.member)
    v.wait_volume(volume, ["deleted"])
    assert counters(v.project) == {}

    # the key was injected as a keypair; withdrawing the key removes it from the cloud
    nova_name = key.nova_name
    assert server.key_name == nova_name and os_server.key_name == nova_name
    assert v.bed.sdk().compute.find_keypair(nova_name, ignore_missing=False).public_key.split()[:2] == KEY.split()[:2]
    act(vms.ssh_key_delete, key=key)
    assert nova_name not in {kp.name for kp in v.bed.sdk().compute.keypairs()}


def test_over_the_portals_quota_nothing_reaches_openstack(vmbed):
    v = vmbed
    services.quota_set(project=v.project, resource="cores", limit=1)
    create(v, "fits")
    with pytest.raises(QuotaExceeded) as refused:
        create(v, "too-many")
    assert "vCPU cores" in str(refused.value) and "limit of 1" in str(refused.value)
    assert [s.name for s in cloud_servers(v)] == ["fits"]
    assert Server.objects.filter(project=v.project).count() == 1


def test_openstacks_own_refusal_is_shown_and_gives_the_reservation_back(vmbed):
    """The cloud's quota is lower than the portal's (staff changed it there):
    nova answers 403 and the user sees its message."""
    v = vmbed
    pid = v.project.cloud_projects.get(cloud=v.cloud).openstack_project_id
    sdk = v.bed.sdk()
    sdk.compute.put(f"/os-quota-sets/{pid}", json={"quota_set": {"cores": 0, "force": True}})
    try:
        server = create(v, "refused")
    finally:
        sdk.compute.put(f"/os-quota-sets/{pid}", json={"quota_set": {"cores": 20}})
    server.refresh_from_db()
    assert server.state == "error" and "Quota exceeded for cores" in server.fault
    assert counters(v.project) == {}
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == []


def test_a_retried_boot_adopts_the_server_it_already_made(vmbed):
    """The worker died after nova accepted the server: the retry finds it by
    the uid in its metadata and does not boot a second one."""
    v = vmbed
    with TestCase.captureOnCommitCallbacks(execute=False):  # recorded, not booted
        server = vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=v.small,
                                    image=v.image, name="once")
    client = vms.common._client(server)
    first_id = client.create_server("once", v.small.cloud_flavors.get().flavor_id, v.image.image_id,
                                    network="private", metadata={"nephele_uid": str(server.uid)})

    server = vms.server_boot_run(server_id=server.pk)
    assert server.openstack_id == first_id
    assert len(cloud_servers(v)) == 1
    assert v.wait_server(server, ["active"]).state == "active"


def test_the_periodic_sync_lists_once_per_project_and_notices_deletions_outside(vmbed, monkeypatch):
    v = vmbed
    a, b = create(v, "sync-a"), create(v, "sync-b")
    a, b = v.wait_server(a, ["active"]), v.wait_server(b, ["active"])
    v.bed.sdk().compute.delete_server(a.openstack_id)  # staff delete it in Horizon
    deadline = time.monotonic() + 30
    while any(s.id == a.openstack_id for s in cloud_servers(v)) and time.monotonic() < deadline:
        time.sleep(1)

    calls = []
    for name in ("list_servers", "get_server", "list_volumes"):
        real = getattr(OpenStackClient, name)
        monkeypatch.setattr(OpenStackClient, name,
                            lambda self, *args, _real=real, _name=name: calls.append(_name) or _real(self, *args))
    counts = vms.cloud_sync(v.cloud)

    assert calls == ["list_servers"]
    assert counts["servers"] == 1 and counts["servers_gone"] == 1
    a.refresh_from_db()
    assert a.state == "deleted" and "outside the portal" in a.events.first().message
    assert counters(v.project)["instances"] == (1, 0) and counters(v.project)["cores"] == (1, 0)


def test_a_volume_on_its_own_attaches_and_detaches(vmbed):
    v = vmbed
    server = v.wait_server(create(v, "host"), ["active"])
    with TestCase.captureOnCommitCallbacks(execute=True):
        volume = vms.volume_request(owner=v.member, project=v.project, cloud=v.cloud, name="data", size_gb=3)
    volume = v.wait_volume(volume, ["available"])
    assert counters(v.project)["volume_gb"] == (3, 0)
    assert v.bed.sdk().block_storage.get_volume(volume.openstack_id).size == 3

    act(vms.volume_attach_request, volume=volume, server=server, actor=v.member)
    volume = v.wait_volume(volume, ["in_use"])
    assert volume.server == server and volume.device.startswith("/dev/")
    with pytest.raises(vms.RequestRefused, match="attached"):
        vms.volume_delete_request(volume=volume, actor=v.member)

    act(vms.volume_detach_request, volume=volume, actor=v.member)
    volume = v.wait_volume(volume, ["available"])
    assert volume.server is None and volume.device == ""
    act(vms.volume_delete_request, volume=volume, actor=v.member)
    volume = v.wait_volume(volume, ["deleted"])
    assert "volume_gb" not in counters(v.project)
    assert Volume.objects.get(pk=volume.pk).deleted_at is not None


def test_staff_force_delete_a_protected_server_from_the_admin(vmbed, client):
    v = vmbed
    server = v.wait_server(create(v, "guarded"), ["active"])
    vms.server_protect(server=server, protected=True, actor=v.member)
    client.force_login(v.staff)

    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post("/admin/clusters/server/", {"action": "force_delete", "_selected_action": [server.pk]},
                               follow=True)
    assert response.status_code == 200 and "Deletion started: 1 of 1" in response.content.decode()
    server = v.wait_server(server, ["deleted"])
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == [] and counters(v.project) == {}

    response = client.post("/admin/clusters/cloud/", {"action": "sync_servers", "_selected_action": [v.cloud.pk]},
                           follow=True)
    assert "0 server(s) and 0 volume(s) in step" in response.content.decode()


def test_servers_on_two_clouds_are_kept_apart(vmbed):
    """The Planck pipeline boots on either of two clouds: the second region
    of the test bed is a second cloud, with its own catalog and mapping."""
    from clusters.catalog import catalog_sync
    from clusters.models import Image

    from .test_openstack_quotas import make_cloud

    v = vmbed
    two = make_cloud(v.bed, name=f"{v.prefix}-two", region=v.bed.regions[1])
    catalog_sync(two)
    with TestCase.captureOnCommitCallbacks(execute=True):
        there = vms.server_request(owner=v.member, project=v.project, cloud=two, profile=v.small,
                                   image=Image.objects.get(cloud=two, name="cirros-tiny"), name="region-two")
    there = v.wait_server(there, ["active"])
    assert vms.common._client(there).region == v.bed.regions[1]

    assert vms.cloud_sync(v.cloud) == {"servers": 0, "volumes": 0, "servers_gone": 0, "volumes_gone": 0,
                                       "servers_adopted": 0}
    assert vms.cloud_sync(two)["servers"] == 1
    there.refresh_from_db()
    assert there.state == "active" and there.cloud == two
    with pytest.raises(ValidationError) as wrong:  # an image of the other cloud is refused
        vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=v.small,
                           image=Image.objects.get(cloud=two, name="cirros-tiny"), name="mixed")
    assert "image" in wrong.value.message_dict
    act(vms.server_delete_request, server=there, actor=v.member)
    v.wait_server(there, ["deleted"])


def test_a_server_deleted_while_nova_creates_it_leaves_nothing_on_the_cloud(vmbed):
    v = vmbed
    with TestCase.captureOnCommitCallbacks(execute=False):  # recorded; the boot task has not run yet
        early = vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=v.small,
                                   image=v.image, name="early")
        racing = vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=v.small,
                                    image=v.image, name="racing")
        for server in (early, racing):
            vms.server_delete_request(server=server, actor=v.member)
    for server in (early, racing):
        assert vms.server_delete_run(server_id=server.pk).state == "deleted"
    assert counters(v.project) == {}

    # "early": its boot task runs after the deletion and creates nothing
    assert vms.server_boot_run(server_id=early.pk).openstack_id == ""
    # "racing": nova had accepted it just before (the boot call was in flight); the boot finishes, sees the
    # record deleted and deletes the server on the cloud as well
    client = vms.common._client(racing)
    client.create_server("racing", v.small.cloud_flavors.get().flavor_id, v.image.image_id, network="private",
                         metadata={"nephele_uid": str(racing.uid)})
    racing = vms.server_boot_run(server_id=racing.pk)
    assert racing.state == "deleted" and racing.openstack_id
    deadline = time.monotonic() + 60
    while cloud_servers(v) and time.monotonic() < deadline:
        time.sleep(1)
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == [] and counters(v.project) == {}


def test_the_sync_adopts_a_server_whose_worker_died_after_the_create_was_sent(vmbed):
    """The worker sent the create and died before recording nova's answer
    (and its task is gone): the periodic sync finds the server by the uid in
    its metadata, in the list it reads anyway, and adopts it; no second boot."""
    from datetime import timedelta

    from django.utils import timezone

    v = vmbed
    with TestCase.captureOnCommitCallbacks(execute=False):  # the boot task is lost
        server = vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=v.small,
                                    image=v.image, name="orphaned")
    vms.common._client(server).create_server("orphaned", v.small.cloud_flavors.get().flavor_id, v.image.image_id,
                                             network="private", metadata={"nephele_uid": str(server.uid)})
    assert vms.cloud_sync(v.cloud)["servers_adopted"] == 0  # too recent: its boot may still be recording it
    Server.objects.filter(pk=server.pk).update(created=timezone.now() - timedelta(minutes=3))

    assert vms.cloud_sync(v.cloud)["servers_adopted"] == 1
    server = v.wait_server(server, ["active"])
    assert len(cloud_servers(v)) == 1 and server.openstack_id == cloud_servers(v)[0].id
    assert counters(v.project)["instances"] == (1, 0)
    assert any("Adopted by the periodic sync" in m for m in server.events.values_list("message", flat=True))
