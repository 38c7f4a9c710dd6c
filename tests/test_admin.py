"""The admin: every registered model's pages load for staff, search works,
the audit trail records who changed what, and only staff get in."""
import pytest
from allauth.account.models import EmailAddress
from auditlog.models import LogEntry
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.authtoken.models import Token

from clusters.models import (
    ClusterAccount,
    Cloud,
    CloudProject,
    CommandNode,
    Partition,
    PosixAccount,
    SlurmCluster,
)
from jobs.models import Job, JobTemplate
from projects import services
from projects.models import Membership, Project, Quota, QuotaCorrection

REGISTRY = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)
IDS = [model._meta.label for model, _ in REGISTRY]


def url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


@pytest.fixture
def populated(cast):
    """At least one object of every registered model."""
    invitation = services.invitation_create(
        project=cast.alpha, email="new@example.org", role="member", actor=cast.alice
    )
    services.quota_reserve(project=cast.alpha, user=cast.amy, resource="cores", amount=2)
    Token.objects.create(user=cast.alice)
    EmailAddress.objects.create(user=cast.alice, email=cast.alice.email, verified=True, primary=True)
    Group.objects.create(name="operators")
    services.membership_set(project=cast.alpha, user=cast.mallory, role="member", actor=cast.alice)
    cluster = SlurmCluster.objects.create(name="hpc", ssh_user="nephele", ssh_private_key="k", known_hosts="h")
    CommandNode.objects.create(cluster=cluster, host="login1.example.org")
    Partition.objects.create(cluster=cluster, name="debug", is_default=True)
    cloud = Cloud.objects.create(name="os", auth_url="http://keystone.example.org:5000/v3", username="admin",
                                 password="not-shown")
    CloudProject.objects.create(cloud=cloud, project=cast.alpha, openstack_project_id="0123abcd",
                                openstack_project_name="nephele-alpha")
    from clusters.models import Flavor, Image, ProfileFlavor, VMProfile

    profile = VMProfile.objects.create(name="m1.small", vcpus=1, ram_mb=2048, disk_gb=20)
    ProfileFlavor.objects.create(cloud=cloud, profile=profile, flavor_id="f-small", flavor_name="m1.small")
    Flavor.objects.create(cloud=cloud, flavor_id="f-small", name="m1.small", vcpus=1, ram_mb=2048, disk_gb=20,
                          seen_at="2026-01-01T00:00Z")
    Image.objects.create(cloud=cloud, image_id="i-cirros", name="cirros", size_bytes=4096, status="active",
                         seen_at="2026-01-01T00:00Z")
    from clusters.models import FloatingIP, Server, ServerEvent, ServerInterval, SSHKey, Volume

    key = SSHKey(owner=cast.alice, name="laptop", public_key=ED25519_KEY)
    key.full_clean()
    key.save()
    server = Server.objects.create(project=cast.alpha, owner=cast.alice, cloud=cloud, name="web", profile=profile,
                                   image_ref="i-cirros", image_name="cirros", ssh_key=key, openstack_id="s-1",
                                   state="active", addresses={"private": [{"addr": "10.0.0.5", "type": "fixed"}]})
    ServerEvent.objects.create(server=server, kind="state", message="Active")
    ServerInterval.objects.create(server=server, profile=profile, running=True, started="2026-01-01T00:00Z")
    Volume.objects.create(project=cast.alpha, owner=cast.alice, cloud=cloud, name="data", size_gb=5, server=server,
                          device="/dev/vdb", state="in_use", openstack_id="v-1")
    FloatingIP.objects.create(project=cast.alpha, owner=cast.alice, cloud=cloud, server=server,
                              address="203.0.113.9", state="allocated", openstack_id="f-1")
    from accounting.services import ingest_lines

    ingest_lines(cluster, ["1\x1fjob\x1falice\x1falpha\x1fdebug\x1fCOMPLETED\x1f0:0\x1f1\x1fcpu=1\x1f60\x1f60"
                           "\x1f100M\x1f1790000000\x1f1790000000\x1f1790000060\x1f"])
    from accounting.models import CloudDailyUsage

    CloudDailyUsage.objects.create(day="2026-01-01", cloud=cloud, project=cast.alpha, user=cast.alice,
                                   resource="vm_core_hours", amount=2.0)
    ClusterAccount.objects.create(cluster=cluster, project=cast.alpha, account="alpha")
    PosixAccount.objects.create(user=cast.alice, cluster=cluster, username="alice")
    template = JobTemplate.objects.create(name="Hello", script="echo {{ who }}",
                                          parameters=[{"name": "who", "default": "world"}])
    Job.objects.create(project=cast.alpha, owner=cast.alice, cluster=cluster, name="hello", script="echo hi",
                       template=template)
    from projects import quota_requests

    asked = quota_requests.quota_request_create(project=cast.alpha, user=cast.alice, resource="cores",
                                                requested_limit=20, justification="more")
    QuotaCorrection.objects.create(quota=asked.project.quotas.first(), field="used", stored=1, recounted=0)
    cast.invitation = invitation
    return cast


@pytest.fixture
def staff_request(cast):
    request = RequestFactory().get("/admin/")
    request.user = cast.staff
    return request


def test_registry_covers_the_portal_models():
    labels = set(IDS)
    assert {"portal.User", "projects.Project", "projects.Membership", "projects.Invitation", "projects.Quota",
            "projects.MemberUsage", "auditlog.LogEntry"} <= labels


@pytest.mark.parametrize("model, model_admin", REGISTRY, ids=IDS)
def test_changelist_loads(populated, client_for, model, model_admin):
    response = client_for(populated.staff).get(url(model, "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == model._default_manager.count()


@pytest.mark.parametrize("model, model_admin", REGISTRY, ids=IDS)
def test_add_page_loads_or_is_refused_as_declared(populated, client_for, staff_request, model, model_admin):
    response = client_for(populated.staff).get(url(model, "add"))
    expected = 200 if model_admin.has_add_permission(staff_request) else 403
    assert response.status_code == expected


@pytest.mark.parametrize("model, model_admin", REGISTRY, ids=IDS)
def test_empty_add_form_gives_errors_not_a_crash(populated, client_for, staff_request, model, model_admin):
    before = model._default_manager.count()
    response = client_for(populated.staff).post(url(model, "add"), {})
    if model_admin.has_add_permission(staff_request):
        assert response.status_code == 200  # the form again, with errors
        assert response.context["errors"]
    else:
        assert response.status_code == 403
    assert model._default_manager.count() == before


@pytest.mark.parametrize("model, model_admin", REGISTRY, ids=IDS)
def test_change_page_loads(populated, client_for, model, model_admin):
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"the fixture should create a {model._meta.label}"
    response = client_for(populated.staff).get(url(model, "change", quote(obj.pk)))
    assert response.status_code == 200
    assert response.context["original"] == obj


@pytest.mark.parametrize("model, model_admin", REGISTRY, ids=IDS)
def test_changelist_search(populated, client_for, staff_request, model, model_admin):
    if not model_admin.get_search_fields(staff_request):
        pytest.skip(f"{model._meta.label} has no search")
    client = client_for(populated.staff)
    assert client.get(url(model, "changelist"), {"q": "alpha"}).status_code == 200
    miss = client.get(url(model, "changelist"), {"q": "zz-no-such-thing-zz"})
    assert miss.status_code == 200
    assert miss.context["cl"].result_count == 0


def test_project_search_finds_the_right_rows(populated, client_for):
    client = client_for(populated.staff)
    assert [p.slug for p in client.get(url(Project, "changelist"), {"q": "alp"}).context["cl"].result_list] == ["alpha"]
    members = client.get(url(Membership, "changelist"), {"q": "amy@"}).context["cl"].result_list
    assert [(m.user.username, m.project.slug) for m in members] == [("amy", "alpha")]


# --- Audit trail ---------------------------------------------------------------------------------


def entries_for(obj):
    return LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(obj), object_pk=str(obj.pk)
    ).order_by("timestamp", "pk")


def test_service_changes_are_audited_with_the_actor(cast, client_for):
    project = services.project_create(
        slug="gamma", name="Gamma", limits={"cores": 4}, manager=cast.bob, actor=cast.staff
    )
    services.project_update(project=project, name="Gamma Two", actor=cast.staff)
    membership = services.membership_set(project=project, user=cast.amy, role="member", actor=cast.bob)
    services.membership_set(project=project, user=cast.amy, role="manager", actor=cast.bob)
    quota = services.quota_set(project=project, resource="cores", limit=8, per_member_limit=2, actor=cast.staff)

    project_log = entries_for(project)
    assert [(e.action, e.actor) for e in project_log] == [
        (LogEntry.Action.CREATE, cast.staff),
        (LogEntry.Action.UPDATE, cast.staff),
    ]
    assert project_log.last().changes_dict["name"] == ["Gamma", "Gamma Two"]

    membership_log = entries_for(membership)
    assert [(e.action, e.actor) for e in membership_log] == [
        (LogEntry.Action.CREATE, cast.bob),
        (LogEntry.Action.UPDATE, cast.bob),
    ]
    assert membership_log.last().changes_dict["role"] == ["member", "manager"]

    quota_update = entries_for(quota).filter(action=LogEntry.Action.UPDATE).get()
    assert quota_update.actor == cast.staff
    assert quota_update.changes_dict["limit"] == ["4", "8"]
    # Usage moves are deliberately not in the trail.
    services.quota_reserve(project=project, user=cast.amy, resource="cores", amount=1)
    assert entries_for(quota).filter(action=LogEntry.Action.UPDATE).count() == 1

    # The admin's log list shows the entries with their actors.
    response = client_for(cast.staff).get(url(LogEntry, "changelist"), {"q": "Gamma"})
    assert response.status_code == 200
    shown = set(response.context["cl"].result_list)
    assert set(project_log) <= shown
    html = response.content.decode()
    assert "Stella" in html


def test_removal_is_audited(cast):
    membership = Membership.objects.get(user=cast.amy, project=cast.alpha)
    pk = membership.pk
    services.membership_remove(membership=membership, actor=cast.alice)
    entry = LogEntry.objects.get(
        content_type=ContentType.objects.get_for_model(Membership), object_pk=str(pk), action=LogEntry.Action.DELETE
    )
    assert entry.actor == cast.alice


def test_admin_changes_are_audited_with_the_staff_user(cast, client_for):
    quota = Quota.objects.get(project=cast.alpha, resource="cores")
    client = client_for(cast.staff)
    page = client.get(url(Quota, "change", quota.pk))
    data = {"project": cast.alpha.pk, "resource": "cores", "limit": "12", "per_member_limit": ""}
    response = client.post(url(Quota, "change", quota.pk), data)
    assert response.status_code == 302, page.context["adminform"].form.errors
    entry = entries_for(quota).filter(action=LogEntry.Action.UPDATE).get()
    assert entry.actor == cast.staff
    assert entry.changes_dict["limit"] == ["10", "12"]


# --- Who may enter --------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "amy", "mallory"])
def test_non_staff_gets_the_staff_only_page(cast, client_for, who):
    response = client_for(getattr(cast, who)).get("/admin/", follow=True)
    assert response.status_code == 403
    assert [t.name for t in response.templates][0] == "portal/staff_only.html"
    assert "Staff only" in response.content.decode()
    assert len(response.redirect_chain) <= 2


def test_non_staff_cannot_reach_a_model_page(cast, client_for):
    response = client_for(cast.alice).get(url(Project, "changelist"), follow=True)
    assert response.status_code == 403
    assert "Staff only" in response.content.decode()


@pytest.mark.parametrize("path", ["/admin/", "/admin/projects/project/", "/admin/login/?next=/admin/"])
def test_anonymous_is_sent_to_the_one_login_page(cast, client, path):
    response = client.get(path, follow=True)
    assert response.status_code == 200
    assert response.request["PATH_INFO"] == "/accounts/login/"
    assert len(response.redirect_chain) <= 3
    assert "next=/admin/" in response.redirect_chain[-1][0].replace("%2F", "/")


def test_staff_with_next_lands_on_the_admin_page(cast, client_for):
    client = client_for(cast.staff)
    response = client.get("/admin/login/", {"next": "/admin/projects/project/"})
    assert response.status_code == 302 and response.url == "/admin/projects/project/"
    evil = client.get("/admin/login/", {"next": "https://evil.example/"})
    assert evil.status_code == 302 and evil.url == "/admin/"
