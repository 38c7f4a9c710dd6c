"""Server, volume and SSH key pages (/servers/, /volumes/, /account/ssh-keys/)
on the REAL OpenStack test bed: the launch form with its errors and quota,
the detail page with live state and every action, volumes, SSH keys, the
htmx fragments, and tenant isolation on every page.

Only two tests boot a server (one through the form, one for the actions);
the others use rows the cloud never sees, so nothing they do may reach it:
their requests run without executing on-commit callbacks (the Celery
hand-off), and the tests check that none were queued.
"""
import base64
import os
import re
import uuid

import pytest
from django.urls import reverse

from clusters import vms
from clusters.models import VMProfile
from clusters.vm_models import FloatingIP, Server, ServerState, SSHKey, Volume, VolumeState
from projects import services as project_services
from projects.models import Membership, Quota
from tests.conftest import make_user
from tests.e2e.test_browser import browser  # noqa: F401  (fixture)

from .vmbed import os_bed, vmbed  # noqa: F401  (fixtures)

S, V = ServerState, VolumeState
POLL_ROW = 'hx-trigger="every 5s"'
POLL_STATUS = 'hx-trigger="every 3s"'


def public_key(comment="me@laptop"):
    """A well-formed ssh-ed25519 public key line (random key material)."""
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + (32).to_bytes(4, "big") + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def add_key(owner, name="laptop"):
    key = SSHKey(owner=owner, name=name, public_key=public_key())
    key.clean()
    key.save()
    return key


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def field_errors(response):
    return {name: list(errors) for name, errors in response.context["form"].errors.items()}


def listed(response, key="page"):
    assert response.status_code == 200
    return sorted(obj.name for obj in response.context[key])


def launch_data(bed, **over):
    data = {"project": bed.project.slug, "cloud": bed.cloud.name, "name": "web-1", "profile": str(bed.small.pk),
            "image": str(bed.image.pk), "ssh_key": "", "user_data": "", "volume_gb": "", "volume_name": ""}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def record_server(bed, owner, name, **fields):
    """A server row the cloud never sees (for pages and permissions only)."""
    fields.setdefault("state", S.ACTIVE)
    fields.setdefault("openstack_id", f"not-on-the-cloud-{uuid.uuid4().hex[:8]}")
    fields.setdefault("addresses", {"private": [{"addr": "10.77.0.9", "type": "fixed"}]})
    return Server.objects.create(project=bed.project, owner=owner, cloud=bed.cloud, name=name, profile=bed.small,
                                 image=bed.image, image_ref=bed.image.image_id, image_name=bed.image.name, **fields)


def record_volume(bed, owner, name, **fields):
    fields.setdefault("state", V.AVAILABLE)
    fields.setdefault("openstack_id", f"not-on-the-cloud-{uuid.uuid4().hex[:8]}")
    fields.setdefault("size_gb", 1)
    return Volume.objects.create(project=bed.project, owner=owner, cloud=bed.cloud, name=name, **fields)


def cloud_servers(bed):
    """The servers OpenStack has in the bed's project (admin view)."""
    mapping = bed.project.cloud_projects.get(cloud=bed.cloud)
    return list(bed.bed.sdk().compute.servers(all_projects=True, project_id=mapping.openstack_project_id))


def assert_no_inline_script(html):
    """The CSP forbids inline scripts and handlers (as tests/test_security.py checks)."""
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"\son[a-z]+\s*=\s*[\"']", html)


@pytest.fixture
def pages(vmbed, client_for):  # noqa: F811
    """The bed plus a second member `vera`, a logged-in client per person."""
    bed = vmbed
    bed.other = make_user("vera", first_name="Vera")
    project_services.membership_set(project=bed.project, user=bed.other, role=Membership.Role.MEMBER)
    bed.as_ = {name: client_for(getattr(bed, name)) for name in ("manager", "member", "other", "outsider", "staff")}
    return bed


# --- Launch form ------------------------------------------------------------------------------


def test_form_offers_the_clouds_profiles_images_keys_and_quota(pages):
    add_key(pages.member, "laptop")
    add_key(pages.manager, "vics-key")
    VMProfile.objects.create(name="m1.unmapped", vcpus=4, ram_mb=8192, disk_gb=80)
    response = pages.as_["member"].get(reverse("vms:server-new"))
    assert response.status_code == 200
    html = response.content.decode()
    assert_no_inline_script(html)
    assert "m1.small — 1 vCPU, 2 GB RAM, 20 GB disk" in html
    assert "m1.medium — 2 vCPU, 4 GB RAM, 40 GB disk" in html
    assert "m1.unmapped" not in html  # not offered on this cloud
    assert "cirros-tiny" in html
    assert "laptop (SHA256:" in html and "vics-key" not in html
    assert f'<option value="{pages.project.slug}" selected>' in html
    # the choices reload when the project or cloud changes; the quota panel when the project does
    assert 'hx-trigger="change from:#id_project, change from:#id_cloud"' in html
    assert reverse("vms:server-choices") in html and reverse("vms:server-quota") in html
    panel = response.context["quota_rows"]
    assert {row["quota"].resource: row["left"] for row in panel}["cores"] == 8
    assert "Left in VM test" in html

    choices = pages.as_["member"].get(reverse("vms:server-choices"),
                                      {"project": pages.project.slug, "cloud": pages.cloud.name,
                                       "profile": pages.medium.pk}, HTTP_HX_REQUEST="true")
    fragment = choices.content.decode()
    assert "<html" not in fragment and 'id="server-choices"' in fragment
    assert f'<option value="{pages.medium.pk}" selected>' in fragment
    quota = pages.as_["member"].get(reverse("vms:server-quota"), {"project": pages.project.slug}).content.decode()
    assert 'id="quota-panel"' in quota and "vCPU cores" in quota
    # another tenant's project gives an empty panel, not its numbers
    other = project_services.project_create(slug=f"{pages.prefix}-x{uuid.uuid4().hex[:4]}", name="Other",
                                            limits={"cores": 99})
    assert "99" not in pages.as_["member"].get(reverse("vms:server-quota"), {"project": other.slug}).content.decode()


INVALID = {
    "bad name": ({"name": "web 1!"}, "name", "Letters, digits"),
    "bad #cloud-config": ({"user_data": "#cloud-config\npackages: [htop\n"}, "user_data", "not valid YAML"),
    "#cloud-config not a mapping": ({"user_data": "#cloud-config\n- a\n- b\n"}, "user_data", "YAML mapping"),
    "profile not offered": (None, "profile", "not offered on the chosen cloud"),
    "another user's key": (None, "ssh_key", "Choose one of your SSH keys"),
    "volume name without size": ({"volume_name": "data"}, "volume_gb", "Give the volume a size"),
    "another tenant's project": (None, "project", "Select a valid choice"),
}


def test_launch_errors_are_shown_at_the_field_and_nothing_is_created(pages, django_capture_on_commit_callbacks):
    """One test for all cases: each test's bed costs an OpenStack project."""
    unoffered = VMProfile.objects.create(name="m1.huge", vcpus=2, ram_mb=1024)
    other_project = project_services.project_create(slug=f"{pages.prefix}-y{uuid.uuid4().hex[:4]}", name="Other")
    computed = {"profile not offered": {"profile": str(unoffered.pk)},
                "another user's key": {"ssh_key": str(add_key(pages.manager).pk)},
                "another tenant's project": {"project": other_project.slug}}
    for case, (over, field, text) in INVALID.items():
        with django_capture_on_commit_callbacks() as callbacks:
            response = pages.as_["member"].post(reverse("vms:server-new"),
                                                launch_data(pages, **(over or computed[case])))
        assert response.status_code == 200, case
        errors = field_errors(response)
        assert field in errors and text in " ".join(errors[field]), (case, errors)
        html = response.content.decode()
        assert 'aria-invalid="true"' in html and "invalid-feedback" in html, case
        assert not Server.objects.exists() and not callbacks, case


def test_quota_exceeded_names_the_resource_and_nothing_reaches_the_cloud(pages, django_capture_on_commit_callbacks):
    project_services.quota_set(project=pages.project, resource="cores", limit=1)
    with django_capture_on_commit_callbacks() as callbacks:
        response = pages.as_["member"].post(reverse("vms:server-new"),
                                            launch_data(pages, profile=str(pages.medium.pk)))
    assert response.status_code == 200
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1 and "vCPU cores" in errors[0] and "limit of 1" in errors[0], errors
    assert 'role="alert"' in response.content.decode()
    assert not Server.objects.exists() and not callbacks
    assert Quota.objects.get(project=pages.project, resource="cores").reserved == 0
    assert Quota.objects.get(project=pages.project, resource="instances").reserved == 0
    assert cloud_servers(pages) == []


def test_launch_through_the_form_and_follow_it_to_active(pages, django_capture_on_commit_callbacks):
    key = add_key(pages.member, "laptop")
    data = launch_data(pages, name="web-1", ssh_key=str(key.pk), user_data="#cloud-config\npackages: [htop]\n",
                       floating_ip="on", volume_gb="1", volume_name="web-data")
    with django_capture_on_commit_callbacks(execute=True):
        response = pages.as_["member"].post(reverse("vms:server-new"), data)
    server = Server.objects.get(name="web-1")
    assert response.status_code == 302 and response.url == reverse("vms:server", args=[server.pk])
    assert (server.owner, server.project, server.profile, server.ssh_key) == (
        pages.member, pages.project, pages.small, key)
    assert server.want_floating_ip and server.user_data.startswith("#cloud-config")
    assert server.volumes.get().name == "web-data"

    member = pages.as_["member"]
    page = member.get(response.url)
    assert "requested on" in " ".join(messages_of(page))
    if server.is_busy:  # still building: the page polls its status, the list polls the row
        assert POLL_STATUS in page.content.decode()
        assert POLL_ROW in member.get(reverse("vms:server-list")).content.decode()

    server = pages.wait_server(server, [S.ACTIVE])
    page = member.get(reverse("vms:server", args=[server.pk]))
    html = page.content.decode()
    assert_no_inline_script(html)
    assert POLL_STATUS not in html
    assert 'data-state="active"' in html
    fip = FloatingIP.objects.get(server=server)
    assert fip.state == "allocated" and fip.address in html
    for ip in server.fixed_ips():
        assert ip in html
    volume = Volume.objects.get(name="web-data")
    assert volume.state == V.IN_USE and volume.device and volume.device in html
    assert "m1.small — 1 vCPU" in html and "cirros-tiny" in html and key.fingerprint in html
    events = [e.message for e in page.context["events"]]
    assert events[-1].startswith("Create requested") and events[0] != events[-1]  # newest first
    for name in ("server-stop", "server-reboot", "server-floating-ip-release", "server-delete"):
        assert reverse(f"vms:{name}", args=[server.pk]) in html
    assert reverse("vms:server-start", args=[server.pk]) not in html  # only when shut off

    # settled: the status fragment no longer polls and brings the state-dependent parts out of band
    fragment = member.get(reverse("vms:server-status", args=[server.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert POLL_STATUS not in fragment and fragment.count('hx-swap-oob="true"') == 4
    row = member.get(reverse("vms:server-row", args=[server.pk])).content.decode()
    assert row.lstrip().startswith("<tr") and POLL_ROW not in row and fip.address in row

    # the list searches addresses too; the volume shows its server and device
    assert listed(member.get(reverse("vms:server-list"), {"q": fip.address})) == ["web-1"]
    volume_page = member.get(reverse("vms:volume", args=[volume.pk])).content.decode()
    assert "web-1" in volume_page and volume.device in volume_page and 'data-state="in_use"' in volume_page


# --- Detail and actions on a real server -------------------------------------------------------


def post(client, name, server, data=None, **kwargs):
    return client.post(reverse(f"vms:{name}", args=[server.pk]), data or {}, **kwargs)


def test_actions_on_a_real_server(pages, django_capture_on_commit_callbacks):
    member, manager, other = pages.as_["member"], pages.as_["manager"], pages.as_["other"]
    with django_capture_on_commit_callbacks(execute=True):
        server = vms.server_request(owner=pages.member, project=pages.project, cloud=pages.cloud,
                                    profile=pages.small, image=pages.image, name="act-1")
    server = pages.wait_server(server, [S.ACTIVE])

    def act(client, name, data=None, wait=(S.ACTIVE,)):
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client, name, server, data)
        assert response.status_code == 302 and response.url == server.get_absolute_url(), response
        return pages.wait_server(server, list(wait)) if wait else Server.objects.get(pk=server.pk)

    # another member sees nothing of it; the manager may act on it
    assert other.get(server.get_absolute_url()).status_code == 404
    assert post(other, "server-stop", server).status_code == 404
    assert act(manager, "server-stop", wait=[S.SHUTOFF]).state == S.SHUTOFF
    page = member.get(server.get_absolute_url()).content.decode()
    assert reverse("vms:server-start", args=[server.pk]) in page
    assert reverse("vms:server-stop", args=[server.pk]) not in page
    assert act(member, "server-start").state == S.ACTIVE
    act(member, "server-reboot")
    assert any("Reboot requested" in e.message for e in server.events.all())

    # a refused action is a message, not an error page
    refused = member.post(reverse("vms:server-start", args=[server.pk]), follow=True)
    assert "Cannot start" in " ".join(messages_of(refused))

    # resize to another offered profile
    resized = act(member, "server-resize", {"profile": str(pages.medium.pk)})
    assert resized.profile == pages.medium
    assert Quota.objects.get(project=pages.project, resource="cores").used == 2

    # floating IP: add, then release
    act(member, "server-floating-ip")
    fip = FloatingIP.objects.get(server=server)
    assert fip.state == "allocated" and fip.address in member.get(server.get_absolute_url()).content.decode()
    act(member, "server-floating-ip-release", wait=None)
    assert FloatingIP.objects.get(pk=fip.pk).state == "released"

    # attach an available volume of the project (made through the volume form), detach it again
    with django_capture_on_commit_callbacks(execute=True):
        response = member.post(reverse("vms:volume-new"), {"project": pages.project.slug, "cloud": pages.cloud.name,
                                                            "name": "scratch", "size_gb": "1"})
    volume = Volume.objects.get(name="scratch")
    assert response.url == volume.get_absolute_url()
    volume = pages.wait_volume(volume, [V.AVAILABLE])
    page = member.get(server.get_absolute_url()).content.decode()
    assert f'<option value="{volume.pk}">scratch (1 GB)</option>' in page
    act(member, "server-attach", {"volume": str(volume.pk)})
    volume = pages.wait_volume(volume, [V.IN_USE])
    assert volume.server_id == server.pk and volume.device in member.get(server.get_absolute_url()).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = member.post(reverse("vms:volume-detach", args=[volume.pk]), {"next": server.get_absolute_url()})
    assert response.url == server.get_absolute_url()
    volume = pages.wait_volume(volume, [V.AVAILABLE])
    assert volume.server_id is None

    # protected: no delete button, the confirmation page says why, and a POST is refused
    act(member, "server-protect", {"protected": "1"}, wait=None)
    page = member.get(server.get_absolute_url()).content.decode()
    assert "Protected servers cannot be deleted" in page and reverse("vms:server-delete", args=[server.pk]) not in page
    confirm = member.get(reverse("vms:server-delete", args=[server.pk])).content.decode()
    assert "protected servers cannot be deleted" in confirm and "<form method=\"post\">" not in confirm
    with django_capture_on_commit_callbacks() as callbacks:
        refused = member.post(reverse("vms:server-delete", args=[server.pk]), follow=True)
    assert "is protected" in " ".join(messages_of(refused)) and not callbacks
    assert Server.objects.get(pk=server.pk).state == S.ACTIVE
    act(member, "server-protect", {"protected": "0"}, wait=None)

    # delete through the confirmation page
    confirm = member.get(reverse("vms:server-delete", args=[server.pk]))
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    gone = act(member, "server-delete", wait=[S.DELETED])
    assert gone.state == S.DELETED
    assert "deleted" in member.get(server.get_absolute_url()).content.decode()
    assert listed(member.get(reverse("vms:server-list"))) == []
    assert listed(member.get(reverse("vms:server-list"), {"state": "deleted"})) == ["act-1"]
    assert Quota.objects.get(project=pages.project, resource="instances").consumed == 0

    # the volume outlives the server; delete it through its confirmation page
    assert member.get(reverse("vms:volume-delete", args=[volume.pk])).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        member.post(reverse("vms:volume-delete", args=[volume.pk]))
    assert pages.wait_volume(volume, [V.DELETED]).state == V.DELETED


# --- Records only: permissions, fragments, lists ------------------------------------------------


SERVER_GET = ("server", "server-status", "server-row", "server-delete")
SERVER_POST = ("server-start", "server-stop", "server-reboot", "server-resize", "server-floating-ip",
               "server-floating-ip-release", "server-attach", "server-protect", "server-delete")
VOLUME_GET = ("volume", "volume-status", "volume-row", "volume-delete")
VOLUME_POST = ("volume-attach", "volume-detach", "volume-delete")


def test_every_page_is_isolated_between_tenants(pages, django_capture_on_commit_callbacks):
    val_server = record_server(pages, pages.member, "vals-server")
    val_volume = record_volume(pages, pages.member, "vals-volume")
    vera_server = record_server(pages, pages.other, "veras-server")
    key = add_key(pages.member)
    before = (Server.objects.filter(protected=True).count(), Volume.objects.filter(state=V.DELETED).count())
    with django_capture_on_commit_callbacks() as callbacks:
        for who in ("outsider", "other"):  # neither sees val's records
            client = pages.as_[who]
            for name in SERVER_GET:
                assert client.get(reverse(f"vms:{name}", args=[val_server.pk])).status_code == 404, (who, name)
            for name in SERVER_POST:
                assert client.post(reverse(f"vms:{name}", args=[val_server.pk]),
                                   {"protected": "1", "profile": str(pages.medium.pk),
                                    "volume": str(val_volume.pk)}).status_code == 404, (who, name)
            for name in VOLUME_GET:
                assert client.get(reverse(f"vms:{name}", args=[val_volume.pk])).status_code == 404, (who, name)
            for name in VOLUME_POST:
                assert client.post(reverse(f"vms:{name}", args=[val_volume.pk]),
                                   {"server": str(val_server.pk)}).status_code == 404, (who, name)
            for method in ("get", "post"):
                response = getattr(client, method)(reverse("vms:ssh-key-delete", args=[key.pk]))
                assert response.status_code == 404, (who, method)
        # val cannot attach vera's server to her volume, nor her volume to vera's server
        assert pages.as_["member"].post(reverse("vms:volume-attach", args=[val_volume.pk]),
                                        {"server": str(vera_server.pk)}, follow=True).status_code == 200
        assert pages.as_["member"].post(reverse("vms:server-attach", args=[vera_server.pk]),
                                        {"volume": str(val_volume.pk)}).status_code == 404
    assert not callbacks
    assert (Server.objects.filter(protected=True).count(), Volume.objects.filter(state=V.DELETED).count()) == before
    assert SSHKey.objects.filter(pk=key.pk).exists()
    assert Volume.objects.get(pk=val_volume.pk).server is None

    # lists: each sees what they may
    url = reverse("vms:server-list")
    assert listed(pages.as_["outsider"].get(url)) == []
    assert listed(pages.as_["member"].get(url)) == ["vals-server"]
    assert listed(pages.as_["other"].get(url)) == ["veras-server"]
    assert listed(pages.as_["manager"].get(url)) == ["vals-server", "veras-server"]
    assert listed(pages.as_["staff"].get(url, {"project": pages.project.slug})) == ["vals-server", "veras-server"]
    assert listed(pages.as_["outsider"].get(reverse("vms:volume-list"))) == []
    assert listed(pages.as_["other"].get(reverse("vms:volume-list"))) == []
    assert listed(pages.as_["manager"].get(reverse("vms:volume-list"))) == ["vals-volume"]

    # managers and staff see and may act on a member's server (protect touches no cloud)
    for who, protected in (("manager", True), ("staff", False)):
        client = pages.as_[who]
        page = client.get(val_server.get_absolute_url())
        assert page.status_code == 200 and page.context["can_act"]
        assert client.post(reverse("vms:server-protect", args=[val_server.pk]),
                           {"protected": "1" if protected else "0"}).status_code == 302
        assert Server.objects.get(pk=val_server.pk).protected is protected
        assert client.get(reverse("vms:volume", args=[val_volume.pk])).status_code == 200


def test_delete_of_a_protected_server_is_refused(pages, django_capture_on_commit_callbacks):
    server = record_server(pages, pages.member, "keep-me", protected=True)
    member = pages.as_["member"]
    page = member.get(server.get_absolute_url()).content.decode()
    assert "Protected servers cannot be deleted" in page
    assert reverse("vms:server-delete", args=[server.pk]) not in page
    confirm = member.get(reverse("vms:server-delete", args=[server.pk])).content.decode()
    assert "protected servers cannot be deleted" in confirm and 'type="submit"' not in confirm.split("<main")[1]
    with django_capture_on_commit_callbacks() as callbacks:
        response = member.post(reverse("vms:server-delete", args=[server.pk]), follow=True)
    assert response.redirect_chain[-1][0] == server.get_absolute_url()
    assert "is protected; remove the protection" in " ".join(messages_of(response))
    assert not callbacks and Server.objects.get(pk=server.pk).state == S.ACTIVE
    # GET on a POST-only action is refused
    assert member.get(reverse("vms:server-stop", args=[server.pk])).status_code == 405


def test_status_fragment_polls_while_busy_and_stops_when_settled(pages):
    member = pages.as_["member"]
    server = record_server(pages, pages.member, "busy-1", state=S.BUILDING, task_state="spawning")
    page = member.get(server.get_absolute_url()).content.decode()
    assert POLL_STATUS in page and "More actions appear once the cloud has finished" in page
    # no Delete while the cloud is still creating it (it has no cloud id yet)
    assert reverse("vms:server-delete", args=[server.pk]) in page
    unborn = record_server(pages, pages.member, "unborn", state=S.BUILDING, openstack_id="")
    assert reverse("vms:server-delete", args=[unborn.pk]) not in member.get(unborn.get_absolute_url()).content.decode()
    fragment = member.get(reverse("vms:server-status", args=[server.pk]), HTTP_HX_REQUEST="true")
    html = fragment.content.decode()
    assert "<html" not in html and POLL_STATUS in html and "spawning" in html
    assert "hx-swap-oob" not in html  # small while busy
    row = member.get(reverse("vms:server-list")).content.decode()
    assert POLL_ROW in row and reverse("vms:server-row", args=[server.pk]) in row

    Server.objects.filter(pk=server.pk).update(state=S.SHUTOFF, task_state="")
    html = member.get(reverse("vms:server-status", args=[server.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert POLL_STATUS not in html and 'data-state="shutoff"' in html
    for part in ("server-details", "server-actions", "server-volumes", "server-events"):
        assert f'id="{part}" class="card mb-3" aria-labelledby' in html
    assert html.count('hx-swap-oob="true"') == 4
    assert reverse("vms:server-start", args=[server.pk]) in html  # the actions of the new state
    row = member.get(reverse("vms:server-row", args=[server.pk])).content.decode()
    assert POLL_ROW not in row and 'data-state="shutoff"' in row

    # a busy floating IP keeps the server busy
    FloatingIP.objects.create(project=pages.project, owner=pages.member, cloud=pages.cloud, server=server)
    assert POLL_STATUS in member.get(reverse("vms:server-status", args=[server.pk])).content.decode()

    volume = record_volume(pages, pages.member, "vol-busy", state=V.CREATING)
    html = member.get(reverse("vms:volume-status", args=[volume.pk])).content.decode()
    assert POLL_STATUS in html
    Volume.objects.filter(pk=volume.pk).update(state=V.AVAILABLE)
    html = member.get(reverse("vms:volume-status", args=[volume.pk])).content.decode()
    assert POLL_STATUS not in html and reverse("vms:volume-delete", args=[volume.pk]) in html


def test_list_filters_search_sort_and_htmx_table(pages):
    member = pages.as_["manager"]
    record_server(pages, pages.member, "alpha-web")
    record_server(pages, pages.manager, "beta-db", state=S.SHUTOFF,
                  addresses={"private": [{"addr": "10.77.0.42", "type": "fixed"}]})
    record_server(pages, pages.member, "gone", state=S.DELETED)
    url = reverse("vms:server-list")
    page = member.get(url)
    assert listed(page) == ["alpha-web", "beta-db"]
    assert_no_inline_script(page.content.decode())
    assert listed(member.get(url, {"state": "shutoff"})) == ["beta-db"]
    assert listed(member.get(url, {"state": "deleted"})) == ["gone"]
    assert listed(member.get(url, {"q": "10.77.0.42"})) == ["beta-db"]
    assert listed(member.get(url, {"q": "WEB"})) == ["alpha-web"]
    assert listed(member.get(url, {"cloud": "no-such-cloud"})) == []
    assert listed(member.get(url, {"project": pages.project.slug})) == ["alpha-web", "beta-db"]
    assert [s.name for s in member.get(url, {"sort": "name"}).context["page"]] == ["alpha-web", "beta-db"]
    assert [s.name for s in member.get(url, {"sort": "-name"}).context["page"]] == ["beta-db", "alpha-web"]
    assert member.get(url, {"sort": "owner__password"}).context["sort"] == "-created"  # not a column
    partial = member.get(url, {"q": "beta"}, HTTP_HX_REQUEST="true")
    html = partial.content.decode()
    assert "<html" not in html and "<table" in html and "beta-db" in html and "alpha-web" not in html
    assert "HX-Request" in partial["Vary"]
    assert 'aria-sort="none"' in html

    record_volume(pages, pages.member, "data-a", server=Server.objects.get(name="alpha-web"), state=V.IN_USE,
                  device="/dev/vdb")
    record_volume(pages, pages.manager, "data-b", size_gb=5)
    vurl = reverse("vms:volume-list")
    assert listed(member.get(vurl)) == ["data-a", "data-b"]
    assert listed(member.get(vurl, {"q": "alpha-web"})) == ["data-a"]
    assert listed(member.get(vurl, {"state": "in_use"})) == ["data-a"]
    assert "/dev/vdb" in member.get(vurl).content.decode()


def test_nav_links(db, client_for):
    """No cloud needed: the Servers and Volumes items and the SSH keys link."""
    client = client_for(make_user("nina"))

    def nav(path, label):
        html = client.get(path).content.decode()
        return re.search(rf'<a class="nav-link( active)?"\s*(aria-current="page")?\s*href="[^"]+">{label}</a>', html)

    servers, volumes = reverse("vms:server-list"), reverse("vms:volume-list")
    assert nav(servers, "Servers").groups() == (" active", 'aria-current="page"')
    assert nav(servers, "Volumes").groups() == (None, None)
    assert nav(volumes, "Volumes").groups() == (" active", 'aria-current="page"')
    assert nav(reverse("vms:ssh-keys"), "Servers").groups() == (None, None)
    assert f'<a class="dropdown-item" href="{reverse("vms:ssh-keys")}">SSH keys</a>' in client.get("/").content.decode()


# --- Volumes -----------------------------------------------------------------------------------


def test_volume_form_errors_and_quota(pages, django_capture_on_commit_callbacks):
    member = pages.as_["member"]
    page = member.get(reverse("vms:volume-new"))
    assert page.status_code == 200 and "Volume storage (GB)" in page.content.decode()
    assert_no_inline_script(page.content.decode())
    data = {"project": pages.project.slug, "cloud": pages.cloud.name, "name": "bad name", "size_gb": "1"}
    with django_capture_on_commit_callbacks() as callbacks:
        bad = member.post(reverse("vms:volume-new"), data)
        assert "name" in field_errors(bad)
        too_big = member.post(reverse("vms:volume-new"), {**data, "name": "big", "size_gb": "31"})
    errors = too_big.context["form"].non_field_errors()
    assert "Volume storage (GB)" in errors[0] and "limit of 30" in errors[0]
    assert not Volume.objects.exists() and not callbacks


# --- SSH keys -----------------------------------------------------------------------------------


def test_ssh_keys_add_validate_and_delete(pages):
    member = pages.as_["member"]
    url = reverse("vms:ssh-keys")
    page = member.get(url)
    assert page.status_code == 200 and "No keys yet" in page.content.decode()
    assert_no_inline_script(page.content.decode())

    line = public_key("val@laptop")
    response = member.post(url, {"name": "laptop", "public_key": f"  {line}\n"}, follow=True)
    key = SSHKey.objects.get(owner=pages.member)
    assert (key.name, key.public_key) == ("laptop", line) and key.fingerprint.startswith("SHA256:")
    assert "SSH key laptop added." in messages_of(response) and key.fingerprint in response.content.decode()

    cases = [
        ({"name": "laptop", "public_key": public_key()}, "name", "already have a key named laptop"),
        ({"name": "bad name", "public_key": public_key()}, "name", "Letters, digits"),
        ({"name": "other", "public_key": "ssh-ed25519 not-base64!"}, "public_key", "not valid base64"),
        ({"name": "other", "public_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n"}, "public_key",
         "Unsupported key type"),
        ({"name": "other", "public_key": "ssh-rsa " + public_key().split()[1]}, "public_key", "does not match"),
        ({"name": "twice", "public_key": line}, "public_key", "already in your list as laptop"),
    ]
    for data, field, text in cases:
        response = member.post(url, data)
        assert response.status_code == 200
        errors = field_errors(response)
        assert field in errors and text in " ".join(errors[field]), (data, errors)
    assert SSHKey.objects.filter(owner=pages.member).count() == 1

    # the same name is fine for someone else; nobody sees another's keys
    pages.as_["other"].post(url, {"name": "laptop", "public_key": public_key()})
    assert SSHKey.objects.filter(name="laptop").count() == 2
    assert [k.owner for k in member.get(url).context["keys"]] == [pages.member]

    # delete with a confirmation page; a server launched with the key keeps it
    server = record_server(pages, pages.member, "uses-key", ssh_key=key, key_name=key.nova_name)
    confirm = member.get(reverse("vms:ssh-key-delete", args=[key.pk]))
    assert confirm.status_code == 200 and "1 server launched with it keeps it" in confirm.content.decode()
    assert pages.as_["other"].post(reverse("vms:ssh-key-delete", args=[key.pk])).status_code == 404
    response = member.post(reverse("vms:ssh-key-delete", args=[key.pk]), follow=True)
    assert "SSH key laptop deleted." in messages_of(response)
    assert not SSHKey.objects.filter(pk=key.pk).exists()
    server.refresh_from_db()
    assert server.ssh_key is None and server.key_name == key.nova_name
    assert "key since deleted" in member.get(server.get_absolute_url()).content.decode()


# --- In a real browser ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_browser_reloads_choices_and_follows_a_server_until_it_settles(live_server, browser, pages):  # noqa: F811
    """Headless Chromium: htmx reloads the profiles and images when the cloud
    changes and the quota panel when the project does; a busy server's page
    follows it and shows the new actions once it has settled, without a reload."""
    from django.conf import settings
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from clusters.models import Cloud

    Cloud.objects.create(name="aaa-empty", auth_url="http://127.0.0.1:9/v3")  # first by name, offers nothing
    second = project_services.project_create(slug=f"{pages.prefix}-b{uuid.uuid4().hex[:4]}", name="Second",
                                             limits={"volumes": 1, "volume_gb": 5})
    project_services.membership_set(project=second, user=pages.member, role=Membership.Role.MEMBER)
    session = pages.as_["member"].cookies[settings.SESSION_COOKIE_NAME].value
    browser.get(live_server.url + "/healthz")
    browser.add_cookie({"name": settings.SESSION_COOKIE_NAME, "value": session})
    wait = WebDriverWait(browser, 20)

    browser.get(live_server.url + reverse("vms:server-new"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "server-choices"), "No profile is offered"))
    Select(browser.find_element(By.ID, "id_cloud")).select_by_visible_text(pages.cloud.name)
    wait.until(EC.text_to_be_present_in_element((By.ID, "server-choices"), "m1.small — 1 vCPU"))
    assert "cirros-tiny" in browser.find_element(By.ID, "id_image").text
    Select(browser.find_element(By.ID, "id_project")).select_by_visible_text("Second")
    wait.until(EC.text_to_be_present_in_element((By.ID, "quota-panel"), "Left in Second"))
    panel = browser.find_element(By.ID, "quota-panel").text
    assert "vCPU cores 0 0" in panel and "Volume storage (GB) 5 5" in panel

    server = record_server(pages, pages.member, "busy-1", state=S.BUILDING, task_state="spawning")
    browser.get(live_server.url + reverse("vms:server-list"))
    row = (By.ID, f"server-row-{server.pk}")
    wait.until(EC.text_to_be_present_in_element(row, "spawning"))
    Server.objects.filter(pk=server.pk).update(task_state="networking")
    wait.until(EC.text_to_be_present_in_element(row, "networking"))  # the row re-read itself

    browser.get(live_server.url + server.get_absolute_url())
    wait.until(EC.text_to_be_present_in_element((By.ID, "server-status"), "networking"))
    assert not browser.find_elements(By.XPATH, "//button[normalize-space()='Stop']")
    Server.objects.filter(pk=server.pk).update(state=S.ACTIVE, task_state="")
    wait.until(EC.presence_of_element_located((By.XPATH, "//button[normalize-space()='Stop']")))
    assert browser.find_element(By.ID, "server-state").text == "Active"
    assert not browser.find_elements(By.CSS_SELECTOR, "#server-status[hx-trigger]")  # polling stopped
