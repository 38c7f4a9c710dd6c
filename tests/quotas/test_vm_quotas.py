"""Quota enforcement of servers, volumes and floating IPs, without a cloud:
reservations happen in `clusters.vms` before anything is sent, so these
tests stop there (the Celery dispatch on commit is switched off) and drive
the cloud's answers through `server_apply` with real `ServerRecord`s.
The same paths against the real OpenStack are in tests/clouds/test_servers.py."""
import pytest
from django.core.exceptions import ValidationError
from django.test import TestCase
from django.utils import timezone

from clusters import vms
from clusters.backends.base import ServerRecord
from clusters.models import Cloud, Flavor, FloatingIP, Image, ProfileFlavor, Server, Volume, VMProfile
from projects import services
from projects.models import Quota
from projects.quota_requests import quota_recount
from projects.services import QuotaExceeded

from .test_concurrency import run_concurrently


@pytest.fixture
def catalog(db):
    now = timezone.now()
    cloud = Cloud.objects.create(name="c1", auth_url="http://127.0.0.1:9/v3", username="u", password="p",
                                 project_name="admin")
    small = VMProfile.objects.create(name="small", vcpus=2, ram_mb=4096, disk_gb=20)
    big = VMProfile.objects.create(name="big", vcpus=8, ram_mb=16384, disk_gb=80)
    for profile, fid in ((small, "f-small"), (big, "f-big")):
        Flavor.objects.create(cloud=cloud, flavor_id=fid, name=profile.name, vcpus=profile.vcpus,
                              ram_mb=profile.ram_mb, disk_gb=profile.disk_gb, seen_at=now)
        ProfileFlavor.objects.create(cloud=cloud, profile=profile, flavor_id=fid, flavor_name=profile.name)
    image = Image.objects.create(cloud=cloud, image_id="img-1", name="debian-12", status="active", seen_at=now)
    return cloud, small, big, image


@pytest.fixture
def no_dispatch(monkeypatch):
    """Nothing reaches a cloud: the tasks queued on commit are dropped."""
    sent = []
    monkeypatch.setattr("clusters.vms.common.transaction.on_commit", lambda fn, *a, **k: sent.append(fn))
    return sent


def counters(project):
    return {q.resource: (q.used, q.reserved) for q in Quota.objects.filter(project=project)
            if q.used or q.reserved}


def request(cast, catalog, name="vm", profile=None, user=None, **extra):
    cloud, small, _, image = catalog
    return vms.server_request(owner=user or cast.alice, project=cast.alpha, cloud=cloud, profile=profile or small,
                              image=image, name=name, **extra)


def limits(project, **values):
    for resource, limit in values.items():
        services.quota_set(project=project, resource=resource, limit=limit)


def test_a_server_reserves_its_profile_and_extras_in_one_step(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3, floating_ips=1, volumes=1, volume_gb=10)
    server = request(cast, catalog, floating_ip=True, volume_gb=5)

    assert counters(cast.alpha) == {"cores": (0, 2), "ram_mb": (0, 4096), "disk_gb": (0, 20), "instances": (0, 1),
                                    "floating_ips": (0, 1), "volumes": (0, 1), "volume_gb": (0, 5)}
    assert server.quota_reserved == {"cores": 2, "ram_mb": 4096, "disk_gb": 20, "instances": 1}
    assert FloatingIP.objects.get(server=server).quota_reserved == {"floating_ips": 1}
    assert Volume.objects.get(server=server).quota_reserved == {"volumes": 1, "volume_gb": 5}
    assert len(no_dispatch) == 2  # boot and volume create, on commit only


@pytest.mark.parametrize("resource,limit", [("cores", 1), ("ram_mb", 4000), ("disk_gb", 19), ("instances", 0)])
def test_any_resource_over_its_limit_refuses_the_whole_server(cast, catalog, no_dispatch, resource, limit):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3)
    limits(cast.alpha, **{resource: limit})
    with pytest.raises(QuotaExceeded) as refused:
        request(cast, catalog)

    assert refused.value.resource == resource
    assert str(refused.value).startswith(Quota(resource=resource).get_resource_display())
    assert f"of {limit}" in str(refused.value)
    assert counters(cast.alpha) == {} and not Server.objects.exists() and not no_dispatch


def test_a_refused_extra_refuses_the_server_too(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3, floating_ips=0)
    with pytest.raises(QuotaExceeded) as refused:
        request(cast, catalog, floating_ip=True)
    assert refused.value.resource == "floating_ips"
    assert counters(cast.alpha) == {} and not Server.objects.exists()


def test_per_member_limits_apply_to_servers(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=100000, disk_gb=1000, instances=10)
    services.quota_set(project=cast.alpha, resource="instances", limit=10, per_member_limit=1)
    request(cast, catalog, name="one")
    with pytest.raises(QuotaExceeded) as refused:
        request(cast, catalog, name="two")
    assert refused.value.scope == "member" and refused.value.resource == "instances"
    request(cast, catalog, name="amys", user=cast.amy)  # another member still has room


def test_validation_names_the_field_and_reserves_nothing(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3)
    cases = {
        "name": dict(name="bad name!"),
        "user_data": dict(user_data="#cloud-config\npackages: [a\n"),
        "project": dict(user=cast.mallory),
        "volume_gb": dict(volume_gb="ten"),
        "volume_name": dict(name="n" * 60, volume_gb=1),  # the default "<name>-data" would be too long
    }
    for field, kwargs in cases.items():
        with pytest.raises(ValidationError) as err:
            request(cast, catalog, **kwargs)
        assert field in err.value.message_dict, (field, err.value)
    assert counters(cast.alpha) == {} and not Server.objects.exists()


def test_the_cloud_confirming_turns_the_reservation_into_usage(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3)
    server = request(cast, catalog)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-1")

    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-1", name="vm", status="BUILD", task_state="spawning"))
    assert counters(cast.alpha)["cores"] == (0, 2)
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-1", name="vm", status="ACTIVE"))
    assert counters(cast.alpha) == {"cores": (2, 0), "ram_mb": (4096, 0), "disk_gb": (20, 0), "instances": (1, 0)}
    server.refresh_from_db()
    assert server.state == "active" and server.launched_at and server.intervals.get().running

    # the cloud says it again: nothing moves twice
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-1", name="vm", status="ACTIVE"))
    assert counters(cast.alpha)["cores"] == (2, 0)


def test_an_accepted_server_refused_by_novas_recheck_gives_everything_back(cast, catalog, no_dispatch):
    """nova accepts (202), then its conductor's quota recheck puts the server
    in ERROR with fault code 413: a refusal, not a server."""
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3, floating_ips=1)
    server = request(cast, catalog, floating_ip=True)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-2")

    vms.server_apply(server_id=server.pk, rec=ServerRecord(
        id="os-2", name="vm", status="ERROR", fault="Quota exceeded for instances: Requested 1, but already used "
                                                    "10 of 10 instances", fault_code=413))

    server.refresh_from_db()
    assert server.state == "error" and "Quota exceeded for instances" in server.fault
    assert counters(cast.alpha) == {}
    assert server.quota_reserved == {} and server.quota_used == {}
    assert FloatingIP.objects.get(project=cast.alpha).state == "released"  # and unbound
    assert "refused" in server.events.first().message


def test_a_server_deleted_gives_back_what_it_used(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3)
    server = request(cast, catalog)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-3")
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-3", name="vm", status="ACTIVE"))
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-3", name="vm", status="DELETED"))

    server.refresh_from_db()
    assert server.state == "deleted" and server.deleted_at
    assert counters(cast.alpha) == {}
    assert server.intervals.get().ended is not None


def test_resize_reserves_the_growth_and_settles_on_the_new_flavor(cast, catalog, no_dispatch):
    cloud, small, big, _ = catalog
    limits(cast.alpha, cores=10, ram_mb=20480, disk_gb=100, instances=3)
    server = request(cast, catalog)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-4")
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-4", name="vm", status="ACTIVE"))

    vms.server_resize_request(server=server, profile=big, actor=cast.alice)
    assert counters(cast.alpha) == {"cores": (2, 6), "ram_mb": (4096, 12288), "disk_gb": (20, 60),
                                    "instances": (1, 0)}
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-4", name="vm", status="VERIFY_RESIZE",
                                                           flavor_name="big"))
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-4", name="vm", status="ACTIVE", flavor_name="big"))

    server.refresh_from_db()
    assert server.profile == big and server.resize_to is None
    assert counters(cast.alpha) == {"cores": (8, 0), "ram_mb": (16384, 0), "disk_gb": (80, 0), "instances": (1, 0)}
    assert [(i.profile.name, i.running) for i in server.intervals.all()] == [("small", True), ("big", True)]


def test_a_resize_over_quota_is_refused_before_the_cloud(cast, catalog, no_dispatch):
    cloud, small, big, _ = catalog
    limits(cast.alpha, cores=4, ram_mb=20480, disk_gb=100, instances=3)
    server = request(cast, catalog)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-5")
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-5", name="vm", status="ACTIVE"))
    sent = len(no_dispatch)
    with pytest.raises(QuotaExceeded) as refused:
        vms.server_resize_request(server=server, profile=big, actor=cast.alice)
    assert refused.value.resource == "cores" and refused.value.requested == 6
    assert len(no_dispatch) == sent
    server.refresh_from_db()
    assert server.resize_to is None and counters(cast.alpha)["cores"] == (2, 0)


def test_the_recount_rebuilds_vm_counters_from_the_records(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3, volumes=2, volume_gb=50)
    server = request(cast, catalog, volume_gb=7)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-6")
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-6", name="vm", status="ACTIVE"))
    Quota.objects.filter(project=cast.alpha, resource="cores").update(used=9, reserved=3)  # drift
    Quota.objects.filter(project=cast.alpha, resource="volume_gb").update(reserved=0)

    corrections = quota_recount(project=cast.alpha)

    fixed = {(c.quota.resource, c.field, c.stored, c.recounted) for c in corrections if c.user_id is None}
    assert fixed == {("cores", "used", 9, 2), ("cores", "reserved", 3, 0), ("volume_gb", "reserved", 0, 7)}
    assert counters(cast.alpha)["cores"] == (2, 0) and counters(cast.alpha)["volume_gb"] == (0, 7)
    assert quota_recount(project=cast.alpha) == []


def test_state_rules_refuse_impossible_actions(cast, catalog, no_dispatch):
    limits(cast.alpha, cores=10, ram_mb=10000, disk_gb=100, instances=3)
    server = request(cast, catalog)
    with pytest.raises(vms.RequestRefused, match="still being created"):
        vms.server_action_request(server=server, action="stop", actor=cast.alice)
    Server.objects.filter(pk=server.pk).update(openstack_id="os-7")
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-7", name="vm", status="SHUTOFF"))
    with pytest.raises(vms.RequestRefused, match="Cannot stop"):
        vms.server_action_request(server=server, action="stop", actor=cast.alice)
    vms.server_protect(server=server, protected=True, actor=cast.alice)
    with pytest.raises(vms.RequestRefused, match="protected"):
        vms.server_delete_request(server=server, actor=cast.alice)
    vms.server_delete_request(server=server, actor=cast.staff, force=True)
    server.refresh_from_db()
    assert server.state == "deleting"
    vms.server_apply(server_id=server.pk, rec=ServerRecord(id="os-7", name="vm", status="DELETED"))
    with pytest.raises(vms.RequestRefused, match="deleted"):
        vms.server_protect(server=server, protected=False, actor=cast.alice)


@pytest.mark.django_db(transaction=True)
def test_fifty_simultaneous_servers_on_room_for_ten(cast, catalog, no_dispatch):
    """Four resources per server, rows locked in one order: exactly 10 of 50
    win, no deadlock, every counter exact."""
    limits(cast.alpha, cores=20, ram_mb=10**6, disk_gb=10**4, instances=10)

    outcomes = run_concurrently(50, lambda i: request(cast, catalog, name=f"vm{i}",
                                                      user=cast.alice if i % 2 else cast.amy).pk)

    kinds = [k for k, _ in outcomes]
    assert kinds.count("error") == 0, [o for o in outcomes if o[0] == "error"]
    assert kinds.count("ok") == 10 and kinds.count("refused") == 40
    assert Server.objects.count() == 10
    assert counters(cast.alpha) == {"cores": (0, 20), "ram_mb": (0, 40960), "disk_gb": (0, 200),
                                    "instances": (0, 10)}
    assert quota_recount(project=cast.alpha) == []


def test_a_bad_ssh_key_is_refused_on_its_field(cast):
    with pytest.raises(ValidationError) as err:
        vms.ssh_key_add(owner=cast.alice, name="laptop", public_key="ssh-ed25519 not-base64!")
    assert list(err.value.message_dict) == ["public_key"]
    with pytest.raises(ValidationError) as err:
        vms.ssh_key_add(owner=cast.alice, name="bad name", public_key="")
    assert {"name", "public_key"} <= set(err.value.message_dict)
