"""The OIDC round trip against the test bed's real provider (node
oidc-provider), through a live portal server."""
import pytest
from django.contrib.auth import get_user_model

from projects import services
from projects.models import Invitation, Membership

from .conftest import oidc_login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def projects():
    return {
        "alpha": services.project_create(slug="alpha", name="Alpha Project", limits={"cores": 8}),
        "beta": services.project_create(slug="beta", name="Beta Project"),
    }


def test_first_login_creates_user_from_claims_and_maps_entitlement(live_server, projects):
    s, page = oidc_login(live_server.url, "alice", "alice-pass")

    assert page.status_code == 200
    assert page.url == live_server.url + "/"
    assert "Welcome, Alice" in page.text
    assert "Alpha Project" in page.text
    user = get_user_model().objects.get(email="alice@uni-a.example")
    assert (user.username, user.first_name, user.last_name) == ("alice", "Alice", "Archer")
    assert user.oidc_subject == "alice"
    assert not user.has_usable_password()
    membership = Membership.objects.get(user=user, project=projects["alpha"])
    assert (membership.role, membership.source) == ("manager", "claim")
    assert not Membership.objects.filter(user=user, project=projects["beta"]).exists()
    # The session really is authenticated: the API answers as alice.
    me = s.get(live_server.url + "/api/v1/me/").json()
    assert me["email"] == "alice@uni-a.example"
    assert me["memberships"] == [{"project": "alpha", "project_name": "Alpha Project", "role": "manager"}]


def test_second_login_updates_the_user_instead_of_duplicating(live_server, projects, idp_accounts):
    oidc_login(live_server.url, "alice", "alice-pass")
    idp_accounts.update(
        "alice",
        family_name="Archer-Smith",
        name="Alice Archer-Smith",
        eduperson_entitlement=["urn:mace:nephele:project:alpha:role=member", "urn:mace:nephele:project:beta"],
    )

    _, page = oidc_login(live_server.url, "alice", "alice-pass")

    assert page.status_code == 200
    users = get_user_model().objects.filter(email__iexact="alice@uni-a.example")
    assert users.count() == 1
    user = users.get()
    assert user.last_name == "Archer-Smith"
    roles = dict(Membership.objects.filter(user=user).values_list("project__slug", "role"))
    assert roles == {"alpha": "member", "beta": "member"}


def test_entitlement_removed_at_the_provider_removes_the_claim_membership(live_server, projects, idp_accounts):
    oidc_login(live_server.url, "alice", "alice-pass")
    idp_accounts.update("alice", eduperson_entitlement=[])

    oidc_login(live_server.url, "alice", "alice-pass")

    assert not Membership.objects.filter(user__email="alice@uni-a.example").exists()


def test_groups_claim_maps_to_memberships(live_server, projects):
    _, page = oidc_login(live_server.url, "bob", "bob-pass")

    assert page.status_code == 200
    roles = dict(Membership.objects.filter(user__email="bob@uni-b.example").values_list("project__slug", "role"))
    assert roles == {"alpha": "member", "beta": "member"}


def test_unverified_email_is_refused_with_a_clear_page(live_server, projects):
    s, page = oidc_login(live_server.url, "carol", "carol-pass")

    assert page.status_code == 403
    assert page.url.startswith(live_server.url + "/login/refused/")
    assert "carol@uni-c.example is not verified" in page.text
    assert not get_user_model().objects.filter(email="carol@uni-c.example").exists()
    assert s.get(live_server.url + "/api/v1/me/").status_code in (401, 403)


def test_wrong_password_stays_at_the_provider(live_server, projects):
    _, page = oidc_login(live_server.url, "alice", "wrong")

    assert page.status_code == 401
    assert "Invalid login or password" in page.text
    assert not get_user_model().objects.filter(email="alice@uni-a.example").exists()


def test_pending_invitation_is_honoured_on_first_oidc_login(live_server, projects):
    inviter = get_user_model().objects.create_user("pi", email="pi@example.org")
    invitation = services.invitation_create(
        project=projects["beta"], email="Dave@uni-a.example", role="manager", actor=inviter
    )

    _, page = oidc_login(live_server.url, "dave", "dave-pass")

    assert "Beta Project" in page.text
    dave = get_user_model().objects.get(email="dave@uni-a.example")
    membership = Membership.objects.get(user=dave, project=projects["beta"])
    assert (membership.role, membership.source) == ("manager", "invitation")
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.ACCEPTED
    assert invitation.accepted_by == dave


def test_existing_local_username_gets_a_readable_unique_one(live_server, projects):
    get_user_model().objects.create_user("alice", email="other-alice@example.org")

    oidc_login(live_server.url, "alice", "alice-pass")

    assert get_user_model().objects.get(email="alice@uni-a.example").username == "alice2"


def test_logout_ends_the_portal_session(live_server, projects):
    s, _ = oidc_login(live_server.url, "alice", "alice-pass")
    csrf = s.cookies.get("csrftoken")
    s.post(live_server.url + "/oidc/logout/", headers={"X-CSRFToken": csrf, "Referer": live_server.url + "/"})

    assert s.get(live_server.url + "/api/v1/me/").status_code in (401, 403)


def test_posix_name_claim_gives_cluster_accounts_but_never_takes_anothers(live_server, projects, settings):
    from clusters.models import PosixAccount, SlurmCluster

    settings.NEPHELE_POSIX_USERNAME_CLAIM = "uid"
    settings.OIDC_RP_SCOPES = "openid email profile groups entitlements posix"
    hpc = SlurmCluster.objects.create(name="hpc", ssh_user="svc", ssh_private_key="k", known_hosts="h")
    other = SlurmCluster.objects.create(name="other", ssh_user="svc", ssh_private_key="k", known_hosts="h")
    squatter = get_user_model().objects.create_user("someone", email="someone@example.org")
    PosixAccount.objects.create(user=squatter, cluster=other, username="ada")

    oidc_login(live_server.url, "alice", "alice-pass")

    alice = get_user_model().objects.get(email="alice@uni-a.example")
    assert dict(PosixAccount.objects.filter(user=alice).values_list("cluster__name", "username")) == {"hpc": "ada"}
    assert PosixAccount.objects.get(cluster=other, username="ada").user == squatter
    assert PosixAccount.objects.get(user=alice, cluster=hpc).source == "claim"
