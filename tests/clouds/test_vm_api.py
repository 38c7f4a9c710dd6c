"""Servers, volumes and SSH keys REST API (/api/v1/servers/, /api/v1/volumes/,
/api/v1/ssh-keys/) against the REAL OpenStack test bed.

One test boots one server through the API and follows it through every
action (stop, start, reboot, resize, floating IP, volume attach/detach,
protection, delete), checking the project's quota counters at each step.
The others need no cloud: rows made directly (no on_commit callback runs in
the rolled-back test transaction, so nothing reaches OpenStack) cover input
errors (400 naming the field), tenant isolation (404 on every endpoint and
action), state refusals (409) and quota refusals (409, nothing sent)."""
import pytest
from rest_framework.test import APIClient

from clusters.models import CloudProject
from clusters.vm_models import FloatingIP, Server, ServerState, SSHKey, Volume, VolumeState
from projects import services as project_services
from projects.models import Membership, Quota
from tests.conftest import make_user

from .vmbed import LIMITS, os_bed, settled, vmbed  # noqa: F401 (fixtures)

SERVERS = "/api/v1/servers/"
VOLUMES = "/api/v1/volumes/"
KEYS = "/api/v1/ssh-keys/"
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGTRiCuW5UzQfCzivb9SYsTkInXiVGUtVakZNqk7irTI val@laptop"
ED25519_OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM2ioLpXjqNs8VglRS7epkxVfEr4IZhe844JugmTGYOj wes@laptop"
SERVER_ACTIONS = ["start", "stop", "reboot", "resize", "protect", "unprotect", "floating-ip", "release-floating-ip"]
VOLUME_ACTIONS = ["attach", "detach"]


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def counters(project):
    """{resource: (used, reserved)} of the VM resources."""
    rows = Quota.objects.filter(project=project, resource__in=list(LIMITS)).values_list("resource", "used", "reserved")
    return {r: (u, res) for r, u, res in rows if r != "networks"}


def expect(project, **held):
    """The counters are exactly `held` ({resource: (used, reserved)}), zero elsewhere."""
    want = {r: held.get(r, (0, 0)) for r in LIMITS if r != "networks"}
    assert counters(project) == want


def cloud_servers(v):
    """The project's servers as OpenStack lists them (admin connection)."""
    pid = CloudProject.objects.get(cloud=v.cloud, project=v.project).openstack_project_id
    return list(v.bed.sdk().compute.servers(all_projects=True, project_id=pid))


def payload(v, **over):
    data = {"project": v.project.slug, "cloud": v.cloud.name, "profile": "m1.small", "image": "cirros-tiny",
            "name": "web-1"}
    data.update(over)
    return {k: val for k, val in data.items() if val is not None}


def server_row(v, owner, name="row", **fields):
    """A Server made directly (no cloud call): for visibility and state tests."""
    fields.setdefault("state", ServerState.ACTIVE)
    fields.setdefault("openstack_id", "")
    return Server.objects.create(project=v.project, owner=owner, cloud=v.cloud, name=name, profile=v.small,
                                 image=v.image, image_ref=v.image.image_id, image_name=v.image.name, **fields)


def volume_row(v, owner, name="vol", **fields):
    fields.setdefault("state", VolumeState.AVAILABLE)
    return Volume.objects.create(project=v.project, owner=owner, cloud=v.cloud, name=name, size_gb=1, **fields)


@pytest.fixture
def wes(vmbed):
    """A second plain member of the project."""
    user = make_user("wes")
    project_services.membership_set(project=vmbed.project, user=user, role=Membership.Role.MEMBER)
    return user


def errors(response, status=400):
    assert response.status_code == status, (response.status_code, response.content)
    return response.json()


# --- The whole life of one server, on the real cloud -------------------------------------------


def test_server_lifecycle_through_the_api(vmbed, django_capture_on_commit_callbacks):
    v = vmbed
    val, vic = api(v.member), api(v.manager)
    small = {"cores": 1, "ram_mb": 2048, "disk_gb": 20, "instances": 1}
    medium = {"cores": 2, "ram_mb": 4096, "disk_gb": 40, "instances": 1}

    key = errors(val.post(KEYS, {"name": "laptop", "public_key": ED25519}, format="json"), 201)
    assert key["fingerprint"].startswith("SHA256:")

    # create: server + 2 GB volume reserved in one step, sent on commit
    with django_capture_on_commit_callbacks(execute=True):
        response = val.post(SERVERS, payload(v, key_name="laptop", user_data="#cloud-config\npackages: [htop]\n",
                                             volume_gb=2, volume_name="data"), format="json")
        created = errors(response, 201)
        assert created["state"] == "building" and created["openstack_id"] == ""
        assert (created["project"], created["cloud"], created["owner"], created["profile"], created["image"],
                created["key_name"], created["protected"]) == (v.project.slug, v.cloud.name, "val", "m1.small",
                                                               "cirros-tiny", "laptop", False)
        assert created["image_id"] == v.image.image_id
        assert [e["message"] for e in created["events"]][0].startswith("Create requested")
        expect(v.project, **{r: (0, n) for r, n in small.items()}, volumes=(0, 1), volume_gb=(0, 2))
    server = Server.objects.get(pk=created["id"])
    assert server.openstack_id  # the boot task ran
    server = v.wait_server(server, {ServerState.ACTIVE})
    data_volume = v.wait_volume(Volume.objects.get(server=server), {VolumeState.IN_USE})
    expect(v.project, **{r: (n, 0) for r, n in small.items()}, volumes=(1, 0), volume_gb=(2, 0))

    detail = errors(val.get(f"{SERVERS}{server.pk}/"), 200)
    assert detail["state"] == "active" and detail["busy"] is False and detail["launched_at"]
    assert detail["openstack_id"] == server.openstack_id and detail["fixed_ips"]
    assert detail["volumes"] == [{"id": data_volume.pk, "name": "data", "size_gb": 2,
                                  "device": data_volume.device, "state": "in_use"}]
    assert {s.id for s in cloud_servers(v)} == {server.openstack_id}
    url = f"{SERVERS}{server.pk}/"

    # stop / start / reboot
    with django_capture_on_commit_callbacks(execute=True):
        stopped = errors(val.post(url + "stop/"), 202)
        assert stopped["task_state"] == "powering-off" and stopped["events"][0]["message"] == "Stop requested"
    assert v.wait_server(server, {ServerState.SHUTOFF}).state == ServerState.SHUTOFF
    assert "stop" in errors(val.post(url + "stop/"), 409)["detail"]
    assert "reboot" in errors(val.post(url + "reboot/"), 409)["detail"]
    expect(v.project, **{r: (n, 0) for r, n in small.items()}, volumes=(1, 0), volume_gb=(2, 0))
    with django_capture_on_commit_callbacks(execute=True):
        errors(val.post(url + "start/"), 202)
    v.wait_server(server, {ServerState.ACTIVE})
    assert "start" in errors(val.post(url + "start/"), 409)["detail"]
    with django_capture_on_commit_callbacks(execute=True):
        rebooted = errors(val.post(url + "reboot/", {"hard": True}, format="json"), 202)
        assert rebooted["events"][0]["message"] == "Reboot requested (hard)"
    v.wait_server(server, {ServerState.ACTIVE})

    # resize: over quota first (nothing moves), then for real
    project_services.quota_set(project=v.project, resource="cores", limit=1)
    refused = errors(val.post(url + "resize/", {"profile": "m1.medium"}, format="json"), 409)
    assert refused["quota"]["resource"] == "cores"
    project_services.quota_set(project=v.project, resource="cores", limit=LIMITS["cores"])
    assert "profile" in errors(val.post(url + "resize/", {"profile": "m1.small"}, format="json"))
    assert "profile" in errors(val.post(url + "resize/", {"profile": "m1.huge"}, format="json"))
    assert "profile" in errors(val.post(url + "resize/", {}, format="json"))
    with django_capture_on_commit_callbacks(execute=True):
        resizing = errors(val.post(url + "resize/", {"profile": "m1.medium"}, format="json"), 202)
        assert resizing["resize_to"] == "m1.medium" and resizing["busy"] is True
        expect(v.project, **{r: (n, medium[r] - n) for r, n in small.items()}, volumes=(1, 0), volume_gb=(2, 0))
        # the task has not run yet (callbacks run at the end of the block): a second resize is refused
        assert "busy" in errors(val.post(url + "resize/", {"profile": "m1.small"}, format="json"), 409)["detail"]
    server = v.wait_server(server, {ServerState.ACTIVE})
    assert server.profile == v.medium and server.resize_to is None
    expect(v.project, **{r: (n, 0) for r, n in medium.items()}, volumes=(1, 0), volume_gb=(2, 0))
    assert errors(val.get(url), 200)["profile"] == "m1.medium"

    # floating IP: over quota, then bound, then a second one refused, then released
    project_services.quota_set(project=v.project, resource="floating_ips", limit=0)
    assert errors(val.post(url + "floating-ip/"), 409)["quota"]["resource"] == "floating_ips"
    assert not FloatingIP.objects.filter(server=server).exists()
    project_services.quota_set(project=v.project, resource="floating_ips", limit=LIMITS["floating_ips"])
    with django_capture_on_commit_callbacks(execute=True):
        errors(val.post(url + "floating-ip/"), 202)
    server = v.wait_server(server, {ServerState.ACTIVE})
    fip = FloatingIP.objects.get(server=server)
    assert fip.state == "allocated" and fip.address
    assert fip.address in errors(val.get(url), 200)["floating_ips"]
    expect(v.project, **{r: (n, 0) for r, n in medium.items()}, volumes=(1, 0), volume_gb=(2, 0),
           floating_ips=(1, 0))
    assert "already has" in errors(val.post(url + "floating-ip/"), 409)["detail"]
    with django_capture_on_commit_callbacks(execute=True):
        errors(val.post(url + "release-floating-ip/"), 202)
    fip.refresh_from_db()
    assert fip.state == "released"
    expect(v.project, **{r: (n, 0) for r, n in medium.items()}, volumes=(1, 0), volume_gb=(2, 0))
    assert "no floating IP" in errors(val.post(url + "release-floating-ip/"), 409)["detail"]

    # a second volume through /volumes/: create, attach, detach, delete
    with django_capture_on_commit_callbacks(execute=True):
        vol = errors(val.post(VOLUMES, {"project": v.project.slug, "cloud": v.cloud.name, "name": "scratch",
                                        "size_gb": 3}, format="json"), 201)
        assert (vol["state"], vol["size_gb"], vol["server"], vol["owner"]) == ("creating", 3, None, "val")
    volume = v.wait_volume(Volume.objects.get(pk=vol["id"]), {VolumeState.AVAILABLE})
    expect(v.project, **{r: (n, 0) for r, n in medium.items()}, volumes=(2, 0), volume_gb=(5, 0))
    vurl = f"{VOLUMES}{volume.pk}/"
    assert "not attached" in errors(val.post(vurl + "detach/"), 409)["detail"]
    with django_capture_on_commit_callbacks(execute=True):
        attaching = errors(val.post(vurl + "attach/", {"server": server.pk}, format="json"), 202)
        assert attaching["server"] == server.pk
    volume = v.wait_volume(volume, {VolumeState.IN_USE})
    assert errors(val.get(vurl), 200)["device"]
    assert {x["name"] for x in errors(val.get(url), 200)["volumes"]} == {"data", "scratch"}
    assert "attached" in errors(val.delete(vurl), 409)["detail"]
    assert "not available" in errors(val.post(vurl + "attach/", {"server": server.pk}, format="json"), 409)["detail"]
    with django_capture_on_commit_callbacks(execute=True):
        assert errors(val.post(vurl + "detach/"), 202)["state"] == "detaching"
    volume = v.wait_volume(volume, {VolumeState.AVAILABLE})
    assert volume.server is None
    with django_capture_on_commit_callbacks(execute=True):
        assert errors(val.delete(vurl), 202)["state"] == "deleting"
    v.wait_volume(volume, {VolumeState.DELETED})
    expect(v.project, **{r: (n, 0) for r, n in medium.items()}, volumes=(1, 0), volume_gb=(2, 0))
    assert errors(val.get(vurl), 200)["state"] == "deleted"
    assert vol["id"] not in [x["id"] for x in errors(val.get(VOLUMES), 200)["results"]]
    assert "already deleted" in errors(val.delete(vurl), 409)["detail"]

    # protection (the manager may protect a member's server), then delete
    assert errors(vic.post(url + "protect/"), 200)["protected"] is True
    assert "protected" in errors(val.delete(url), 409)["detail"]
    assert errors(val.delete(url + "?force=true"), 403)
    assert errors(val.post(url + "unprotect/"), 200)["protected"] is False
    with django_capture_on_commit_callbacks(execute=True):
        gone = errors(val.delete(url), 202)
        assert gone["state"] == "deleting"
    v.wait_server(server, {ServerState.DELETED})
    assert errors(val.get(url), 200)["state"] == "deleted"
    assert server.pk not in [s["id"] for s in errors(val.get(SERVERS), 200)["results"]]
    assert server.pk in [s["id"] for s in errors(val.get(SERVERS, {"state": "deleted"}), 200)["results"]]
    for name in ("start", "stop", "reboot", "floating-ip"):
        assert errors(val.post(url + f"{name}/"), 409)["detail"]
    assert errors(val.delete(url), 409)["detail"]
    assert errors(val.post(url + "protect/"), 409)["detail"]
    # the data volume outlives its server, detached; deleting it frees the rest
    data_volume = v.wait_volume(data_volume, {VolumeState.AVAILABLE})
    with django_capture_on_commit_callbacks(execute=True):
        errors(val.delete(f"{VOLUMES}{data_volume.pk}/"), 202)
    v.wait_volume(data_volume, {VolumeState.DELETED})
    expect(v.project)
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == []


# --- Quota refusals send nothing ------------------------------------------------------------


def test_over_quota_is_409_naming_the_resource_and_nothing_reaches_the_cloud(
        vmbed, django_capture_on_commit_callbacks):
    v = vmbed
    val = api(v.member)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        quota = errors(val.post(SERVERS, payload(v, volume_gb=LIMITS["volume_gb"] + 1), format="json"), 409)
        assert quota["quota"]["resource"] == "volume_gb"
        assert quota["quota"]["limit"] == LIMITS["volume_gb"] and quota["quota"]["requested"] == 31
        project_services.quota_set(project=v.project, resource="instances", limit=0)
        assert errors(val.post(SERVERS, payload(v), format="json"), 409)["quota"]["resource"] == "instances"
        project_services.quota_set(project=v.project, resource="instances", limit=4)
        project_services.quota_set(project=v.project, resource="floating_ips", limit=0)
        assert errors(val.post(SERVERS, payload(v, floating_ip=True), format="json"),
                      409)["quota"]["resource"] == "floating_ips"
        vol = errors(val.post(VOLUMES, {"project": v.project.slug, "cloud": v.cloud.name, "name": "big",
                                        "size_gb": 31}, format="json"), 409)
        assert vol["quota"]["resource"] == "volume_gb"
        project_services.quota_set(project=v.project, resource="volumes", limit=0)
        vol = errors(val.post(VOLUMES, {"project": v.project.slug, "cloud": v.cloud.name, "name": "one",
                                        "size_gb": 1}, format="json"), 409)
        assert vol["quota"]["resource"] == "volumes"
    assert callbacks == []  # no task was queued
    assert not Server.objects.filter(project=v.project).exists()
    assert not Volume.objects.filter(project=v.project).exists()
    assert not FloatingIP.objects.filter(project=v.project).exists()
    expect(v.project)
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == []


def test_per_member_limit_is_409_with_member_scope(vmbed):
    v = vmbed
    project_services.quota_set(project=v.project, resource="cores", limit=8, per_member_limit=0)
    quota = errors(api(v.member).post(SERVERS, payload(v), format="json"), 409)["quota"]
    assert (quota["resource"], quota["scope"]) == ("cores", "member")
    assert not Server.objects.exists()


# --- 400: bad input names the field ----------------------------------------------------------


def test_server_create_errors_name_the_field(vmbed, wes):
    v = vmbed
    val = api(v.member)
    SSHKey.objects.create(owner=wes, name="wes-key", public_key=ED25519_OTHER, fingerprint="x")

    def field_of(status=400, **over):
        body = errors(val.post(SERVERS, payload(v, **over), format="json"), status)
        return set(body)

    assert field_of(project="nope") == {"project"}
    assert field_of(cloud="nowhere") == {"cloud"}
    assert field_of(profile="m1.huge") == {"profile"}
    assert field_of(image="no-such-image") == {"image"}
    assert field_of(profile="m1.huge", image="no-such-image") == {"profile", "image"}
    assert field_of(profile="m1.huge", image=v.image.image_id) == {"profile"}  # a glance id is accepted
    assert field_of(name="bad name!") == {"name"}
    assert field_of(name="x" * 64) == {"name"}
    assert field_of(key_name="missing") == {"key_name"}
    assert field_of(key_name="wes-key") == {"key_name"}  # another user's key
    assert field_of(user_data="#cloud-config\n- just\n- a list\n") == {"user_data"}
    assert field_of(user_data="#cloud-config\nkey: [unclosed\n") == {"user_data"}
    assert field_of(user_data="x" * (16 * 1024 + 1)) == {"user_data"}
    assert field_of(floating_ip="maybe") == {"floating_ip"}
    assert field_of(volume_gb="lots") == {"volume_gb"}
    assert field_of(volume_gb=0) == {"volume_gb"}
    assert field_of(volume_gb=100_001) == {"volume_gb"}
    assert field_of(volume_gb=1, volume_name="bad name!") == {"volume_name"}
    assert field_of(volume_name="data") == {"volume_name"}  # without volume_gb
    assert field_of(name="x" * 60, volume_gb=1) == {"volume_name"}  # "<name>-data" too long
    for field in ("project", "cloud", "profile", "image", "name"):
        assert field_of(**{field: None}) == {field}
    assert set(errors(val.post(SERVERS, {}, format="json"))) == {"project", "cloud", "profile", "image", "name"}
    # a project of someone else's, a disabled cloud, a suspended project
    assert set(errors(api(v.outsider).post(SERVERS, payload(v), format="json"))) == {"project"}
    v.cloud.enabled = False
    v.cloud.save(update_fields=["enabled"])
    assert field_of() == {"cloud"}
    v.cloud.enabled = True
    v.cloud.save(update_fields=["enabled"])
    project_services.project_update(project=v.project, status="suspended")
    assert field_of() == {"project"}
    assert not Server.objects.exists()
    expect(v.project)


def test_volume_and_action_errors_name_the_field(vmbed, wes):
    v = vmbed
    val = api(v.member)

    def volume_fields(**over):
        data = {"project": v.project.slug, "cloud": v.cloud.name, "name": "vol", "size_gb": 1}
        data.update(over)
        return set(errors(val.post(VOLUMES, {k: x for k, x in data.items() if x is not None}, format="json")))

    assert volume_fields(size_gb="ten") == {"size_gb"}
    assert volume_fields(size_gb=1.5) == {"size_gb"}
    assert volume_fields(size_gb=0) == {"size_gb"}
    assert volume_fields(size_gb=None) == {"size_gb"}
    assert volume_fields(project="nope") == {"project"}
    assert volume_fields(cloud="nowhere") == {"cloud"}
    assert volume_fields(name="no spaces") == {"name"}
    assert set(errors(api(v.outsider).post(VOLUMES, {"project": v.project.slug, "cloud": v.cloud.name,
                                                     "name": "vol", "size_gb": 1}, format="json"))) == {"project"}
    assert not Volume.objects.exists()

    server = server_row(v, v.member, openstack_id="not-sent")
    others = server_row(v, wes, name="wes-server", openstack_id="not-sent")
    volume = volume_row(v, v.member, openstack_id="not-sent")
    attach = f"{VOLUMES}{volume.pk}/attach/"
    assert set(errors(val.post(attach, {}, format="json"))) == {"server"}
    assert set(errors(val.post(attach, {"server": "abc"}, format="json"))) == {"server"}
    assert set(errors(val.post(attach, {"server": 999999}, format="json"))) == {"server"}
    assert set(errors(val.post(attach, {"server": others.pk}, format="json"))) == {"server"}  # not visible
    # a server of another project (visible to staff) or on another cloud
    other_project = project_services.project_create(slug=f"{v.project.slug}-b", name="B", limits=dict(LIMITS),
                                                    manager=v.manager)
    foreign = Server.objects.create(project=other_project, owner=v.manager, cloud=v.cloud, name="b", profile=v.small,
                                    image_ref="x", state=ServerState.ACTIVE, openstack_id="not-sent")
    assert set(errors(api(v.staff).post(attach, {"server": foreign.pk}, format="json"))) == {"server"}
    url = f"{SERVERS}{server.pk}/"
    assert set(errors(val.post(url + "reboot/", {"hard": "maybe"}, format="json"))) == {"hard"}
    assert set(errors(val.post(url + "resize/", {"profile": ""}, format="json"))) == {"profile"}
    assert set(errors(val.get(SERVERS, {"state": "flying"}))) == {"state"}
    assert set(errors(val.get(VOLUMES, {"state": "flying"}))) == {"state"}
    assert set(errors(val.delete(url + "?force=perhaps"))) == {"force"}


def test_ssh_keys_own_only(vmbed, wes):
    v = vmbed
    val, w = api(v.member), api(wes)
    created = errors(val.post(KEYS, {"name": "laptop", "public_key": f"  {ED25519}\n"}, format="json"), 201)
    assert set(created) == {"id", "name", "public_key", "fingerprint", "created"}
    assert created["public_key"] == ED25519 and created["fingerprint"].startswith("SHA256:")
    assert set(errors(val.post(KEYS, {"name": "laptop", "public_key": ED25519}, format="json"))) == {"name"}
    assert set(errors(val.post(KEYS, {"name": "bad name", "public_key": ED25519}, format="json"))) == {"name"}
    for bad in ("", "ssh-ed25519", "ssh-dss AAAAB3NzaC1kc3M= x", "ssh-ed25519 !!notbase64!!",
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGTRiCuW5UzQfCzivb9SYsTkInXiVGUtVakZNqk7irTI",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"):
        assert set(errors(val.post(KEYS, {"name": "other", "public_key": bad}, format="json"))) == {"public_key"}, bad
    assert set(errors(val.post(KEYS, {}, format="json"))) == {"name", "public_key"}
    # the same name is fine for another user
    errors(w.post(KEYS, {"name": "laptop", "public_key": ED25519_OTHER}, format="json"), 201)
    assert [k["name"] for k in errors(val.get(KEYS), 200)["results"]] == ["laptop"]
    assert errors(api(v.staff).get(KEYS), 200)["results"] == []  # staff see only their own keys too
    url = f"{KEYS}{created['id']}/"
    errors(w.get(url), 404)
    errors(w.delete(url), 404)
    errors(api(v.staff).delete(url), 404)
    assert errors(val.get(url), 200)["name"] == "laptop"
    assert val.put(url, {"name": "x", "public_key": ED25519}, format="json").status_code == 405
    assert val.delete(url).status_code == 204
    assert SSHKey.objects.filter(owner=v.member).count() == 0
    assert SSHKey.objects.filter(owner=wes).count() == 1


# --- 404: tenant isolation on every endpoint and action ---------------------------------------


def test_servers_and_volumes_of_others_are_404_everywhere(vmbed, wes):
    v = vmbed
    server = server_row(v, v.member, name="vals", openstack_id="not-sent")
    volume = volume_row(v, v.member, name="vals-vol", openstack_id="not-sent")
    server_url, volume_url = f"{SERVERS}{server.pk}/", f"{VOLUMES}{volume.pk}/"
    before = (server.events.count(), Server.objects.values_list("state", "protected", "task_state").get(pk=server.pk),
              Volume.objects.values_list("state", "server_id").get(pk=volume.pk))
    for user in (v.outsider, wes):  # not in the project / another member of it
        client = api(user)
        assert errors(client.get(server_url), 404)
        assert errors(client.delete(server_url), 404)
        assert errors(client.delete(server_url + "?force=true"), 404)
        for name in SERVER_ACTIONS:
            assert errors(client.post(f"{server_url}{name}/", {"profile": "m1.medium", "hard": True},
                                      format="json"), 404), name
        assert errors(client.get(volume_url), 404)
        assert errors(client.delete(volume_url), 404)
        for name in VOLUME_ACTIONS:
            assert errors(client.post(f"{volume_url}{name}/", {"server": server.pk}, format="json"), 404), name
        assert server.pk not in [s["id"] for s in errors(client.get(SERVERS), 200)["results"]]
        assert volume.pk not in [x["id"] for x in errors(client.get(VOLUMES), 200)["results"]]
    assert (server.events.count(), Server.objects.values_list("state", "protected", "task_state").get(pk=server.pk),
            Volume.objects.values_list("state", "server_id").get(pk=volume.pk)) == before
    assert errors(api(v.outsider).get(SERVERS), 200)["count"] == 0
    # the owner, the project's manager and staff see and act
    for user in (v.member, v.manager, v.staff):
        client = api(user)
        assert errors(client.get(server_url), 200)["name"] == "vals"
        assert errors(client.get(volume_url), 200)["name"] == "vals-vol"
        assert server.pk in [s["id"] for s in errors(client.get(SERVERS), 200)["results"]]
    assert errors(api(v.manager).post(server_url + "protect/"), 200)["protected"] is True
    assert errors(api(v.staff).post(server_url + "unprotect/"), 200)["protected"] is False
    # a member who left the project no longer sees their own server
    Membership.objects.filter(project=v.project, user=v.member).delete()
    assert errors(api(v.member).get(server_url), 404)
    assert errors(api(v.member).post(server_url + "stop/"), 404)


def test_anonymous_is_refused(vmbed):
    server = server_row(vmbed, vmbed.member)
    for url in (SERVERS, f"{SERVERS}{server.pk}/", VOLUMES, KEYS):
        assert APIClient().get(url).status_code in (401, 403)
    assert APIClient().post(f"{SERVERS}{server.pk}/stop/").status_code in (401, 403)


# --- 409: actions the state does not allow (no cloud needed) ----------------------------------


def test_state_refusals_are_409(vmbed, django_capture_on_commit_callbacks):
    v = vmbed
    val, stan = api(v.member), api(v.staff)
    building = server_row(v, v.member, name="new", state=ServerState.BUILDING)  # not yet on the cloud
    url = f"{SERVERS}{building.pk}/"
    for name, body in (("start", {}), ("stop", {}), ("reboot", {}), ("resize", {"profile": "m1.medium"}),
                       ("floating-ip", {})):
        assert "still being created" in errors(val.post(f"{url}{name}/", body, format="json"), 409)["detail"], name
    assert "no floating IP" in errors(val.post(url + "release-floating-ip/"), 409)["detail"]
    creating = volume_row(v, v.member, name="new-vol", state=VolumeState.CREATING)
    assert "still being created" in errors(val.delete(f"{VOLUMES}{creating.pk}/"), 409)["detail"]
    up = server_row(v, v.member, name="up", openstack_id="not-sent")
    assert "not available" in errors(val.post(f"{VOLUMES}{creating.pk}/attach/",
                                              {"server": up.pk}, format="json"), 409)["detail"]
    available = volume_row(v, v.member, name="free")
    assert "must be active" in errors(val.post(f"{VOLUMES}{available.pk}/attach/",
                                               {"server": building.pk}, format="json"), 409)["detail"]
    assert "not attached" in errors(val.post(f"{VOLUMES}{available.pk}/detach/"), 409)["detail"]
    # protected: refused, unless staff force it
    errors(val.post(url + "protect/"), 200)
    assert "protected" in errors(val.delete(url), 409)["detail"]
    assert errors(val.delete(url + "?force=1"), 403)
    assert Server.objects.get(pk=building.pk).state == ServerState.BUILDING
    with django_capture_on_commit_callbacks(execute=True):  # never on the cloud: deleted at once by the task
        assert errors(stan.delete(url + "?force=true"), 202)["state"] == "deleting"
    assert Server.objects.get(pk=building.pk).state == ServerState.DELETED
    expect(v.project)
    assert settled(lambda: cloud_servers(v), lambda found: found == []) == []


# --- Listing: filters, search, ordering, pagination -------------------------------------------


def test_server_and_volume_lists(vmbed, wes):
    v = vmbed
    a = server_row(v, v.member, name="alpha-1")
    b = server_row(v, v.member, name="beta-2", state=ServerState.SHUTOFF, openstack_id="abc-123")
    c = server_row(v, wes, name="gamma-3")
    d = server_row(v, v.member, name="old", state=ServerState.DELETED)

    def ids(user, url=SERVERS, **params):
        body = errors(api(user).get(url, params), 200)
        assert body["count"] == len(body["results"])
        return [s["id"] for s in body["results"]]

    assert ids(v.member) == [b.pk, a.pk]  # newest first, deleted hidden, only mine
    assert ids(v.manager) == [c.pk, b.pk, a.pk]
    assert ids(v.manager, state="shutoff") == [b.pk]
    assert ids(v.manager, state=["shutoff", "deleted"]) == [d.pk, b.pk]
    assert ids(v.manager, state="deleted") == [d.pk]
    assert ids(v.manager, project=v.project.slug, cloud=v.cloud.name) == [c.pk, b.pk, a.pk]
    assert ids(v.manager, project="other") == []
    assert ids(v.manager, cloud="other") == []
    assert ids(v.manager, owner="wes") == [c.pk]
    assert ids(v.manager, search="BETA") == [b.pk]
    assert ids(v.manager, search="abc-123") == [b.pk]
    assert ids(v.manager, ordering="name") == [a.pk, b.pk, c.pk]
    assert ids(v.manager, ordering="-name") == [c.pk, b.pk, a.pk]
    page = errors(api(v.manager).get(SERVERS, {"page": 2}), 404)
    assert page
    item = errors(api(v.manager).get(SERVERS), 200)["results"][0]
    assert {"id", "name", "state", "project", "cloud", "profile", "image", "addresses", "fixed_ips", "floating_ips",
            "fault", "protected", "volumes", "created", "launched_at", "openstack_id", "busy"} <= set(item)
    assert "events" not in item and "user_data" not in item
    detail = errors(api(v.manager).get(f"{SERVERS}{a.pk}/"), 200)
    assert "events" in detail and "user_data" in detail

    x = volume_row(v, v.member, name="x-vol", server=b, state=VolumeState.IN_USE, device="/dev/vdb")
    y = volume_row(v, wes, name="y-vol")
    z = volume_row(v, v.member, name="z-vol", state=VolumeState.DELETED)
    assert ids(v.member, VOLUMES) == [x.pk]
    assert ids(v.manager, VOLUMES) == [y.pk, x.pk]
    assert ids(v.manager, VOLUMES, server=b.pk) == [x.pk]
    assert ids(v.manager, VOLUMES, state="deleted") == [z.pk]
    assert ids(v.manager, VOLUMES, search="y-v") == [y.pk]
    assert ids(v.manager, VOLUMES, ordering="name") == [x.pk, y.pk]
    vol = errors(api(v.member).get(f"{VOLUMES}{x.pk}/"), 200)
    assert (vol["server"], vol["server_name"], vol["device"], vol["state"]) == (b.pk, "beta-2", "/dev/vdb", "in_use")
    assert errors(api(v.member).get(f"{SERVERS}{b.pk}/"), 200)["volumes"] == [
        {"id": x.pk, "name": "x-vol", "size_gb": 1, "device": "/dev/vdb", "state": "in_use"}]


# --- OpenAPI schema ---------------------------------------------------------------------------


def test_schema_lists_the_endpoints_without_warnings(db, capsys, tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--file", str(tmp_path / "schema.yaml"))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "Warning [" in line or line.startswith("Warning:")]
    ours = [line for line in warnings if "jobs/api.py" not in line]
    assert ours == [], ours  # (the jobs API's own warnings are not this module's business)
    schema = (tmp_path / "schema.yaml").read_text()
    for path in ("/api/v1/servers/", "/api/v1/servers/{id}/", "/api/v1/volumes/{id}/attach/",
                 "/api/v1/servers/{id}/floating-ip/", "/api/v1/servers/{id}/release-floating-ip/",
                 "/api/v1/ssh-keys/{id}/"):
        assert f"  {path}:\n" in schema, path
    assert "ServerStateEnum:" in schema and "VolumeStateEnum:" in schema
