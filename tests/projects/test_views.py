"""Project pages: what each role sees and may do, and tenant isolation."""
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from projects import services
from projects import urls as project_urls
from projects.models import Invitation, Membership, Project, Quota

MANAGER, MEMBER = Membership.Role.MANAGER, Membership.Role.MEMBER


def membership(user, project):
    return Membership.objects.filter(user=user, project=project).first()


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def world(cast):
    """The cast plus one pending invitation to Alpha."""
    cast.invitation = services.invitation_create(
        project=cast.alpha, email="newbie@example.org", role=MEMBER, actor=cast.alice
    )
    cast.amy_m = membership(cast.amy, cast.alpha)
    cast.alice_m = membership(cast.alice, cast.alpha)
    return cast


def alpha_urls(c):
    """Every URL of projects/urls.py, pointed at Alpha's objects."""
    return {
        "detail": reverse("projects:detail", args=["alpha"]),
        "edit": reverse("projects:edit", args=["alpha"]),
        "invite": reverse("projects:invite", args=["alpha"]),
        "invitation-revoke": reverse("projects:invitation-revoke", args=["alpha", c.invitation.pk]),
        "member-role": reverse("projects:member-role", args=["alpha", c.amy_m.pk]),
        "member-remove": reverse("projects:member-remove", args=["alpha", c.amy_m.pk]),
        "quota-edit": reverse("projects:quota-edit", args=["alpha", "cores"]),
        "quota-request-new": reverse("projects:quota-request-new", args=["alpha"]),
    }


POST_ONLY = {"invite", "invitation-revoke", "member-role", "member-remove"}
MANAGER_ACTIONS = ["edit", "invite", "invitation-revoke", "member-role", "member-remove", "quota-edit"]
POST_DATA = {"email": "x@example.org", "role": "manager", "name": "Hacked", "limit": "999", "status": "archived"}


def assert_alpha_untouched(c):
    c.alpha.refresh_from_db()
    assert (c.alpha.name, c.alpha.status) == ("Alpha", "active")
    assert Quota.objects.get(project=c.alpha, resource="cores").limit == 10
    assert membership(c.amy, c.alpha).role == MEMBER
    assert Invitation.objects.get(pk=c.invitation.pk).status == Invitation.Status.PENDING
    assert not Invitation.objects.filter(email="x@example.org").exists()


def test_every_project_url_is_covered(world):
    # The quota request queue is a staff page, not a project's (tests/quotas).
    names = {p.name for p in project_urls.urlpatterns} - {"list", "quota-requests", "quota-request-decide"}
    assert names == set(alpha_urls(world))


# --- Dashboard -------------------------------------------------------------------


def test_dashboard_shows_only_my_projects_with_quota_bars(world, client_for):
    services.quota_reserve(project=world.alpha, user=world.amy, resource="cores", amount=5)
    services.quota_reserve(project=world.alpha, user=world.amy, resource="instances", amount=1)
    response = client_for(world.amy).get(reverse("dashboard"))
    assert response.status_code == 200
    assert [p.slug for p in response.context["projects"]] == ["alpha"]
    html = response.content.decode()
    assert "Alpha" in html and "Beta" not in html
    assert 'style="width: 50%">50%<' in html  # 5 of 10 cores
    assert 'style="width: 33%">33%<' in html  # 1 of 3 instances


def test_dashboard_hides_inactive_projects_and_is_personal_for_staff(world, client_for):
    services.project_update(project=world.alpha, status=Project.Status.SUSPENDED)
    assert list(client_for(world.amy).get("/").context["projects"]) == []
    staff = client_for(world.staff).get("/")
    assert list(staff.context["projects"]) == []
    assert "not a member of any active project" in staff.content.decode()


# --- Project list ---------------------------------------------------------------------


def slugs(response):
    return [p.slug for p in response.context["page"].object_list]


def test_project_list_shows_only_my_projects(world, client_for):
    assert slugs(client_for(world.amy).get(reverse("projects:list"))) == ["alpha"]
    assert slugs(client_for(world.mallory).get(reverse("projects:list"))) == []
    assert slugs(client_for(world.staff).get(reverse("projects:list"))) == ["alpha", "beta"]


def test_project_list_counts_all_members_for_a_member(world, client_for):
    services.membership_set(project=world.beta, user=world.amy, role=MEMBER)
    services.membership_set(project=world.alpha, user=world.mallory, role=MEMBER)
    response = client_for(world.amy).get(reverse("projects:list"), {"sort": "members"})
    assert [(p.slug, p.member_count) for p in response.context["page"].object_list] == [("beta", 2), ("alpha", 3)]
    assert "<td>3</td>" in response.content.decode()


def test_project_list_search_filter_and_sort(world, client_for):
    services.project_update(project=world.beta, status=Project.Status.SUSPENDED, description="Particle physics")
    staff = client_for(world.staff)
    url = reverse("projects:list")
    assert slugs(staff.get(url, {"q": "ALP"})) == ["alpha"]
    assert slugs(staff.get(url, {"q": "particle"})) == ["beta"]
    assert slugs(staff.get(url, {"status": "suspended"})) == ["beta"]
    assert slugs(staff.get(url, {"status": "active"})) == ["alpha"]
    assert slugs(staff.get(url, {"status": "bogus"})) == ["alpha", "beta"]
    assert slugs(staff.get(url, {"sort": "-name"})) == ["beta", "alpha"]
    assert slugs(staff.get(url, {"sort": "-members"})) == ["alpha", "beta"]
    assert slugs(staff.get(url, {"sort": "password"})) == ["alpha", "beta"]
    # A search for another tenant's project finds nothing for a member.
    assert slugs(client_for(world.amy).get(url, {"q": "particle"})) == []


def test_project_list_paginates(world, client_for):
    for i in range(30):
        Project.objects.create(slug=f"p{i:02d}", name=f"Project {i:02d}")
    staff = client_for(world.staff)
    first = staff.get(reverse("projects:list"), {"sort": "-slug"})
    assert first.context["page"].paginator.count == 32
    assert len(slugs(first)) == 25
    assert slugs(first)[0] == "p29"
    assert "Page 1 of 2" in first.content.decode()
    assert "?sort=-slug&page=2" in first.content.decode()
    second = staff.get(reverse("projects:list"), {"sort": "-slug", "page": 2})
    assert len(slugs(second)) == 7
    assert set(slugs(first)) | set(slugs(second)) == set(Project.objects.values_list("slug", flat=True))
    # Filters and pages combine: only Alpha's description says "Project A".
    assert staff.get(reverse("projects:list"), {"q": "project", "page": 2}).context["page"].paginator.count == 31
    # A member sees one page with one project whatever the page number.
    assert slugs(client_for(world.amy).get(reverse("projects:list"), {"page": 9})) == ["alpha"]


def test_htmx_request_gets_only_the_table(world, client_for):
    client = client_for(world.staff)
    full = client.get(reverse("projects:list"), {"q": "alp"})
    partial = client.get(reverse("projects:list"), {"q": "alp"}, HTTP_HX_REQUEST="true")
    assert "<html" in full.content.decode()
    html = partial.content.decode()
    assert "<html" not in html and "<nav class=\"navbar" not in html
    assert "<table" in html and "Alpha" in html and "Beta" not in html
    assert [t.name for t in partial.templates][0] == "projects/_project_table.html"
    # Caches must not hand the partial out for a full page load, or vice versa.
    assert "HX-Request" in partial["Vary"] and "HX-Request" in full["Vary"]


def test_htmx_history_restore_gets_the_full_page(world, client_for):
    """On a history cache miss htmx refetches the URL and swaps the whole body."""
    response = client_for(world.staff).get(
        reverse("projects:list"), {"q": "alp"}, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    html = response.content.decode()
    assert "<html" in html and 'id="project-table"' in html


# --- Detail ------------------------------------------------------------------------------


def test_detail_for_member_manager_and_staff(world, client_for):
    member = client_for(world.amy).get(reverse("projects:detail", args=["alpha"]))
    assert member.status_code == 200
    assert (member.context["role"], member.context["can_manage"]) == (MEMBER, False)
    assert "Send invitation" not in member.content.decode()
    assert "newbie@example.org" not in member.content.decode()

    manager = client_for(world.alice).get(reverse("projects:detail", args=["alpha"]))
    assert (manager.context["role"], manager.context["can_manage"]) == (MANAGER, True)
    assert "Send invitation" in manager.content.decode()
    assert "newbie@example.org" in manager.content.decode()
    assert reverse("projects:quota-edit", args=["alpha", "cores"]) not in manager.content.decode()

    staff = client_for(world.staff).get(reverse("projects:detail", args=["alpha"]))
    assert (staff.context["role"], staff.context["can_manage"]) == (None, True)
    assert reverse("projects:quota-edit", args=["alpha", "cores"]) in staff.content.decode()


# --- Tenant isolation ----------------------------------------------------------------------


URL_NAMES = ["detail", "edit", "invite", "invitation-revoke", "member-role", "member-remove", "quota-edit",
             "quota-request-new"]


@pytest.mark.parametrize("name", URL_NAMES)
def test_non_member_gets_404(world, client_for, name):
    client = client_for(world.mallory)
    url = alpha_urls(world)[name]
    assert client.post(url, POST_DATA).status_code == 404
    get = client.get(url)
    if name in POST_ONLY:
        # Refused on the method before any lookup: the same answer as for a
        # project that does not exist, so nothing leaks.
        missing = client.get(url.replace("/alpha/", "/no-such-project/"))
        assert get.status_code == missing.status_code == 405
    else:
        assert get.status_code == 404
    assert_alpha_untouched(world)


@pytest.mark.parametrize("name", MANAGER_ACTIONS)
def test_plain_member_gets_403_on_manager_actions(world, client_for, name):
    client = client_for(world.amy)
    url = alpha_urls(world)[name]
    assert client.post(url, POST_DATA).status_code == 403
    if name not in POST_ONLY:
        assert client.get(url).status_code == 403
    assert_alpha_untouched(world)


@pytest.mark.parametrize("name", ["invitation-revoke", "member-role", "member-remove"])
def test_manager_of_beta_cannot_touch_alpha(world, client_for, name):
    client = client_for(world.bob)
    url = alpha_urls(world)[name]
    assert client.post(url, POST_DATA).status_code == 404
    # Nor through Beta's URLs with Alpha's object ids.
    assert client.post(url.replace("/alpha/", "/beta/"), POST_DATA).status_code == 404
    assert_alpha_untouched(world)


def test_invitation_page_with_unknown_token_is_404(world, client_for):
    client = client_for(world.mallory)
    url = reverse("invitation", args=["not-a-token"])
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 404
    assert membership(world.mallory, world.alpha) is None


# --- Manager flows -------------------------------------------------------------------------


def test_manager_invites(world, client_for, django_capture_on_commit_callbacks):
    client = client_for(world.alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("projects:invite", args=["alpha"]), {"email": "Carol@Example.org", "role": "manager"}
        )
    assert response.status_code == 302 and response.url == "/projects/alpha/"
    invitation = Invitation.objects.get(email="carol@example.org")
    assert (invitation.role, invitation.invited_by) == (MANAGER, world.alice)
    assert [m.to for m in mail.outbox] == [["carol@example.org"]]
    assert f"/invitations/{invitation.token}/" in mail.outbox[0].body
    page = client.get(response.url)
    assert "Invitation sent to carol@example.org." in messages_of(page)
    assert "carol@example.org" in page.content.decode()


@pytest.mark.parametrize(
    "data, error",
    [
        ({"email": "not-an-address", "role": "member"}, "Invitation not sent"),
        ({"email": "amy@example.org", "role": "member"}, "already a member"),
        ({"email": "newbie@example.org", "role": "member"}, "already has a pending invitation"),
        ({"email": "z@example.org", "role": "owner"}, "Invitation not sent"),
    ],
)
def test_manager_invite_refusals_are_messages(world, client_for, data, error):
    response = client_for(world.alice).post(reverse("projects:invite", args=["alpha"]), data, follow=True)
    assert response.status_code == 200
    assert any(error in m for m in messages_of(response))
    assert Invitation.objects.count() == 1
    assert mail.outbox == []


def test_manager_revokes(world, client_for):
    response = client_for(world.alice).post(alpha_urls(world)["invitation-revoke"], follow=True)
    assert "Invitation of newbie@example.org revoked." in messages_of(response)
    assert Invitation.objects.get(pk=world.invitation.pk).status == Invitation.Status.REVOKED
    # Revoking again: the invitation is no longer pending.
    assert client_for(world.alice).post(alpha_urls(world)["invitation-revoke"]).status_code == 404


def test_manager_changes_role(world, client_for):
    client = client_for(world.alice)
    response = client.post(alpha_urls(world)["member-role"], {"role": "manager"}, follow=True)
    assert membership(world.amy, world.alpha).role == MANAGER
    assert any("is now manager" in m for m in messages_of(response))
    bad = client.post(alpha_urls(world)["member-role"], {"role": "owner"}, follow=True)
    assert "Choose a valid role." in messages_of(bad)
    assert membership(world.amy, world.alpha).role == MANAGER


def test_manager_removes_member(world, client_for):
    response = client_for(world.alice).post(alpha_urls(world)["member-remove"], follow=True)
    assert membership(world.amy, world.alpha) is None
    assert any("removed from Alpha" in m for m in messages_of(response))


def test_last_manager_refusals_are_shown(world, client_for):
    client = client_for(world.alice)
    own_role = reverse("projects:member-role", args=["alpha", world.alice_m.pk])
    demote = client.post(own_role, {"role": "member"}, follow=True)
    assert any("at least one manager" in m for m in messages_of(demote))
    remove = client.post(reverse("projects:member-remove", args=["alpha", world.alice_m.pk]), follow=True)
    assert remove.status_code == 200
    assert any("at least one manager" in m for m in messages_of(remove))
    assert membership(world.alice, world.alpha).role == MANAGER


# --- Quotas (staff only) -------------------------------------------------------------------------


def test_quota_edit_is_staff_only(world, client_for):
    url = alpha_urls(world)["quota-edit"]
    assert client_for(world.alice).get(url).status_code == 403
    assert client_for(world.alice).post(url, {"limit": "99"}).status_code == 403
    assert Quota.objects.get(project=world.alpha, resource="cores").limit == 10


def test_staff_saves_quota(world, client_for):
    client = client_for(world.staff)
    url = alpha_urls(world)["quota-edit"]
    assert client.get(url).status_code == 200
    response = client.post(url, {"limit": "64", "per_member_limit": "16"})
    assert response.status_code == 302 and response.url == "/projects/alpha/"
    q = Quota.objects.get(project=world.alpha, resource="cores")
    assert (q.limit, q.per_member_limit) == (64, 16)
    assert client.get(reverse("projects:quota-edit", args=["alpha", "gpus"])).status_code == 404


@pytest.mark.parametrize(
    "data, field",
    [
        ({"limit": "-1", "per_member_limit": ""}, "limit"),
        ({"limit": "abc", "per_member_limit": ""}, "limit"),
        ({"limit": "", "per_member_limit": ""}, "limit"),
        ({"limit": str(10**20), "per_member_limit": ""}, "limit"),
        ({"limit": "5", "per_member_limit": "6"}, "per_member_limit"),
        ({"limit": "5", "per_member_limit": "-2"}, "per_member_limit"),
    ],
)
def test_invalid_quota_input_shows_form_error(world, client_for, data, field):
    response = client_for(world.staff).post(alpha_urls(world)["quota-edit"], data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    html = response.content.decode()
    assert "invalid-feedback" in html
    assert 'aria-invalid="true"' in html and "is-invalid" in html
    q = Quota.objects.get(project=world.alpha, resource="cores")
    assert (q.limit, q.per_member_limit) == (10, None)


# --- Project edit ----------------------------------------------------------------------------------


def test_manager_edits_project_but_not_status(world, client_for):
    client = client_for(world.alice)
    page = client.get(alpha_urls(world)["edit"])
    assert "status" not in page.context["form"].fields
    response = client.post(alpha_urls(world)["edit"], {"name": "Alpha Two", "description": "New", "status": "archived"})
    assert response.status_code == 302
    world.alpha.refresh_from_db()
    assert (world.alpha.name, world.alpha.description, world.alpha.status) == ("Alpha Two", "New", "active")


def test_staff_changes_status(world, client_for):
    response = client_for(world.staff).post(alpha_urls(world)["edit"], {"name": "Alpha", "status": "suspended"})
    assert response.status_code == 302
    world.alpha.refresh_from_db()
    assert world.alpha.status == Project.Status.SUSPENDED


def test_invalid_project_edit_shows_errors(world, client_for):
    response = client_for(world.staff).post(alpha_urls(world)["edit"], {"name": "", "status": "deleted"})
    assert response.status_code == 200
    assert {"name", "status"} <= set(response.context["form"].errors)
    assert_alpha_untouched(world)


# --- Invitation page ---------------------------------------------------------------------------------


def test_invitation_accept_page(world, client_for):
    client = client_for(world.mallory)
    url = reverse("invitation", args=[world.invitation.token])
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Join Alpha" in html
    assert "You are signed in as mallory@example.org, not newbie@example.org" in html
    assert membership(world.mallory, world.alpha) is None

    response = client.post(url)
    assert response.status_code == 302 and response.url == "/projects/alpha/"
    assert membership(world.mallory, world.alpha).source == Membership.Source.INVITATION
    after = client.get(url)
    assert "This invitation is accepted" in after.content.decode()
    assert "Join Alpha" not in after.content.decode()


def test_expired_invitation_page(world, client_for):
    Invitation.objects.filter(pk=world.invitation.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    client = client_for(world.mallory)
    url = reverse("invitation", args=[world.invitation.token])
    page = client.get(url)
    assert page.status_code == 200
    assert "has expired" in page.content.decode()
    assert "Join Alpha" not in page.content.decode()
    assert client.post(url).status_code == 200
    assert membership(world.mallory, world.alpha) is None


# --- Anonymous ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dashboard", "list", "api-token", "invitation", *URL_NAMES])
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_is_redirected_to_login(world, client, name, method):
    urls = alpha_urls(world) | {
        "dashboard": reverse("dashboard"),
        "list": reverse("projects:list"),
        "api-token": reverse("api-token"),
        "invitation": reverse("invitation", args=[world.invitation.token]),
    }
    response = getattr(client, method)(urls[name], POST_DATA)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login") + "?next=")
    assert_alpha_untouched(world)


def test_dashboard_counts_my_live_jobs_servers_and_volumes(world, client_for):
    from clusters.models import Cloud, Server, SlurmCluster, Volume, VMProfile
    from jobs.models import Job

    cluster = SlurmCluster.objects.create(name="hpc", ssh_user="svc", ssh_private_key="k", known_hosts="h")
    cloud = Cloud.objects.create(name="c", auth_url="http://127.0.0.1:9/v3", username="u", password="p")
    profile = VMProfile.objects.create(name="small", vcpus=1, ram_mb=1024)
    for state in ("running", "pending", "completed"):
        Job.objects.create(project=world.alpha, owner=world.amy, cluster=cluster, name=state, script="true",
                           state=state)
    Job.objects.create(project=world.alpha, owner=world.alice, cluster=cluster, name="not mine", script="true",
                       state="running")
    for state in ("active", "deleted"):
        Server.objects.create(project=world.alpha, owner=world.amy, cloud=cloud, name=state, profile=profile,
                              image_ref="i", state=state)
    Volume.objects.create(project=world.alpha, owner=world.amy, cloud=cloud, name="data", size_gb=1)

    response = client_for(world.amy).get(reverse("dashboard"))

    assert response.context["work"] == {"jobs": 2, "servers": 1, "volumes": 1}
    html = response.content.decode()
    assert "2 active jobs" in html and "1 server<" in html and "1 volume<" in html
    assert reverse("vms:server-new") in html  # amy has a project to launch in
