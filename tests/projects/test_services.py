"""Tenancy services: projects, memberships (by hand and from identity
provider claims) and invitations."""
from datetime import timedelta

import pytest
from django.conf import settings
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from projects import services
from projects.models import Invitation, Membership, Project, Quota, Resource
from tests.conftest import make_user

MANAGER, MEMBER = Membership.Role.MANAGER, Membership.Role.MEMBER


def membership(user, project):
    return Membership.objects.filter(user=user, project=project).first()


# --- Projects --------------------------------------------------------------------


def test_project_create_makes_one_quota_per_resource(cast):
    quotas = {q.resource: q for q in Quota.objects.filter(project=cast.alpha)}
    assert set(quotas) == set(Resource.values)
    assert quotas["cores"].limit == 10
    assert quotas["instances"].limit == 3
    assert all(q.limit == 0 for r, q in quotas.items() if r not in {"cores", "instances"})
    assert all((q.used, q.reserved, q.per_member_limit) == (0, 0, None) for q in quotas.values())
    assert membership(cast.alice, cast.alpha).role == MANAGER


def test_project_create_uses_configured_defaults(db, settings):
    settings.NEPHELE_DEFAULT_QUOTAS = {"cores": 4, "ram_mb": 8192}
    project = services.project_create(slug="gamma", name="Gamma", limits={"cores": 16})
    limits = dict(Quota.objects.filter(project=project).values_list("resource", "limit"))
    assert limits["cores"] == 16  # explicit beats default
    assert limits["ram_mb"] == 8192
    assert limits["disk_gb"] == 0
    assert not project.memberships.exists()


def test_project_create_rolls_back_on_invalid_input(cast):
    with pytest.raises(ValidationError) as info:
        services.project_create(slug="alpha", name="Second Alpha", manager=cast.bob)
    assert "slug" in info.value.message_dict
    with pytest.raises(ValidationError):
        services.project_create(slug="not a slug!", name="Bad")
    assert Project.objects.count() == 2
    assert Quota.objects.count() == 2 * len(Resource.values)


# --- Memberships ------------------------------------------------------------------


def test_membership_set_adds_a_manual_member(cast):
    m = services.membership_set(project=cast.alpha, user=cast.mallory, role=MEMBER, actor=cast.alice)
    assert (m.role, m.source) == (MEMBER, Membership.Source.MANUAL)
    assert membership(cast.mallory, cast.alpha).pk == m.pk


def test_membership_set_changes_the_role(cast):
    services.membership_set(project=cast.alpha, user=cast.amy, role=MANAGER)
    assert membership(cast.amy, cast.alpha).role == MANAGER
    services.membership_set(project=cast.alpha, user=cast.amy, role=MEMBER)
    assert membership(cast.amy, cast.alpha).role == MEMBER
    assert Membership.objects.filter(user=cast.amy).count() == 1


def test_membership_set_refuses_unknown_role(cast):
    with pytest.raises(ValidationError) as info:
        services.membership_set(project=cast.alpha, user=cast.mallory, role="owner")
    assert "role" in info.value.message_dict
    assert membership(cast.mallory, cast.alpha) is None


def test_last_manager_cannot_be_demoted(cast):
    with pytest.raises(ValidationError, match="at least one manager"):
        services.membership_set(project=cast.alpha, user=cast.alice, role=MEMBER)
    assert membership(cast.alice, cast.alpha).role == MANAGER


def test_manager_can_be_demoted_once_another_exists(cast):
    services.membership_set(project=cast.alpha, user=cast.amy, role=MANAGER)
    services.membership_set(project=cast.alpha, user=cast.alice, role=MEMBER)
    assert membership(cast.alice, cast.alpha).role == MEMBER


def test_last_manager_cannot_be_removed(cast):
    with pytest.raises(ValidationError, match="at least one manager"):
        services.membership_remove(membership=membership(cast.alice, cast.alpha))
    assert membership(cast.alice, cast.alpha) is not None


def test_member_can_be_removed(cast):
    services.membership_remove(membership=membership(cast.amy, cast.alpha), actor=cast.alice)
    assert membership(cast.amy, cast.alpha) is None
    assert membership(cast.alice, cast.alpha) is not None


# --- Claims -> grants ---------------------------------------------------------------


def test_grants_from_claims_reads_entitlements_and_groups(db):
    claims = {
        "eduperson_entitlement": [
            "urn:mace:nephele:project:alpha:role=manager",
            "urn:mace:nephele:project:gamma",
            "urn:mace:egi.eu:group:vo.example.org",
            "urn:mace:nephele:project:delta:role=owner",
        ],
        "groups": ["nephele-beta-member", "staff", "nephele-", "other-beta-manager"],
        "roles": ["nephele-epsilon-manager"],  # not a membership claim
    }
    assert services.grants_from_claims(claims) == {"alpha": MANAGER, "beta": MEMBER, "gamma": MEMBER}


@pytest.mark.parametrize(
    "values",
    [
        ["nephele-alpha-member", "nephele-alpha-manager"],
        ["nephele-alpha-manager", "nephele-alpha-member"],
        ["urn:mace:nephele:project:alpha", "nephele-alpha-manager", "urn:mace:nephele:project:alpha:role=member"],
    ],
)
def test_manager_wins_over_member(db, values):
    assert services.grants_from_claims({"groups": values}) == {"alpha": MANAGER}


def test_manager_wins_across_claims(db):
    claims = {
        "eduperson_entitlement": ["urn:mace:nephele:project:alpha:role=manager"],
        "groups": ["nephele-alpha-member"],
    }
    assert services.grants_from_claims(claims) == {"alpha": MANAGER}


def test_grants_accept_a_single_string_and_missing_claims(db):
    assert services.grants_from_claims({"groups": "nephele-beta-manager"}) == {"beta": MANAGER}
    assert services.grants_from_claims({}) == {}
    assert services.grants_from_claims({"groups": None, "eduperson_entitlement": []}) == {}


# --- Claims -> memberships ------------------------------------------------------------


def test_sync_creates_claim_memberships_and_skips_unknown_projects(cast):
    services.memberships_sync_from_claims(user=cast.mallory, grants={"alpha": MEMBER, "beta": MANAGER, "nope": MEMBER})
    got = {m.project.slug: (m.role, m.source) for m in cast.mallory.memberships.select_related("project")}
    assert got == {"alpha": (MEMBER, Membership.Source.CLAIM), "beta": (MANAGER, Membership.Source.CLAIM)}
    assert not Project.objects.filter(slug="nope").exists()


def test_sync_changes_role_and_removes_claims_no_longer_granted(cast):
    services.memberships_sync_from_claims(user=cast.mallory, grants={"alpha": MEMBER, "beta": MEMBER})
    services.memberships_sync_from_claims(user=cast.mallory, grants={"alpha": MANAGER})
    assert membership(cast.mallory, cast.alpha).role == MANAGER
    assert membership(cast.mallory, cast.beta) is None
    services.memberships_sync_from_claims(user=cast.mallory, grants={})
    assert not cast.mallory.memberships.exists()


def test_sync_leaves_manual_and_invitation_memberships_alone(cast):
    invitation = services.invitation_create(project=cast.beta, email=cast.amy.email, role=MEMBER, actor=cast.bob)
    services.invitation_accept(invitation=invitation, user=cast.amy)
    assert membership(cast.amy, cast.beta).source == Membership.Source.INVITATION

    # Claims name neither project: both stay.
    services.memberships_sync_from_claims(user=cast.amy, grants={})
    assert membership(cast.amy, cast.alpha).role == MEMBER
    assert membership(cast.amy, cast.beta).role == MEMBER

    # Claims name them with another role: roles given by hand stay as they are.
    services.memberships_sync_from_claims(user=cast.amy, grants={"alpha": MANAGER, "beta": MANAGER})
    assert (membership(cast.amy, cast.alpha).role, membership(cast.amy, cast.alpha).source) == (MEMBER, "manual")
    assert membership(cast.amy, cast.beta).role == MEMBER


# --- Invitations -----------------------------------------------------------------------


def invite(c, email="newbie@example.org", role=MEMBER, project=None):
    return services.invitation_create(project=project or c.alpha, email=email, role=role, actor=c.alice)


def test_invitation_create_sends_one_email_with_accept_link(cast, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invitation = invite(cast, email="  NewBie@Example.ORG ")

    assert invitation.email == "newbie@example.org"
    assert invitation.status == Invitation.Status.PENDING
    assert invitation.invited_by == cast.alice
    days = (invitation.expires_at - timezone.now()).days
    assert settings.INVITATION_VALID_DAYS - 1 <= days <= settings.INVITATION_VALID_DAYS
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["newbie@example.org"]
    assert "Alpha" in message.subject
    link = settings.PORTAL_BASE_URL.rstrip("/") + f"/invitations/{invitation.token}/"
    assert link in message.body
    assert "Alice Archer" in message.body


def test_invitation_email_waits_for_commit(cast, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        invite(cast)
    assert len(callbacks) == 1
    assert mail.outbox == []


def test_invitation_revoked_before_sending_sends_nothing(cast, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        invitation = invite(cast)
    services.invitation_revoke(invitation=invitation, actor=cast.alice)
    for callback in callbacks:
        callback()
    assert mail.outbox == []


def test_duplicate_pending_invitation_refused(cast, django_capture_on_commit_callbacks):
    invite(cast)
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(ValidationError) as info:
            invite(cast, email="NEWBIE@example.org", role=MANAGER)
    assert "email" in info.value.message_dict
    assert Invitation.objects.filter(project=cast.alpha).count() == 1
    assert mail.outbox == []


def test_same_address_may_be_invited_to_another_project_or_after_revoke(cast):
    first = invite(cast)
    invite(cast, project=cast.beta)
    services.invitation_revoke(invitation=first, actor=cast.alice)
    again = invite(cast)
    assert again.pk != first.pk
    assert Invitation.objects.filter(email="newbie@example.org").count() == 3


def test_inviting_an_existing_member_refused(cast):
    with pytest.raises(ValidationError, match="already a member"):
        invite(cast, email="AMY@example.org")
    assert not Invitation.objects.exists()


def test_invitation_with_unknown_role_refused(cast):
    with pytest.raises(ValidationError) as info:
        invite(cast, role="owner")
    assert "role" in info.value.message_dict
    assert not Invitation.objects.exists()


def test_accept_creates_membership_with_invited_role(cast):
    invitation = invite(cast, email=cast.mallory.email, role=MANAGER)
    m = services.invitation_accept(invitation=invitation, user=cast.mallory)
    assert (m.role, m.source) == (MANAGER, Membership.Source.INVITATION)
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.ACCEPTED
    assert invitation.accepted_by == cast.mallory
    assert invitation.accepted_at is not None


def test_accept_twice_refused(cast):
    invitation = invite(cast, email=cast.mallory.email)
    services.invitation_accept(invitation=invitation, user=cast.mallory)
    with pytest.raises(ValidationError, match="no longer valid"):
        services.invitation_accept(invitation=invitation, user=cast.bob)
    assert membership(cast.bob, cast.alpha) is None


def test_accept_of_revoked_invitation_refused(cast):
    invitation = invite(cast, email=cast.mallory.email)
    services.invitation_revoke(invitation=invitation, actor=cast.alice)
    with pytest.raises(ValidationError, match="no longer valid"):
        services.invitation_accept(invitation=invitation, user=cast.mallory)
    assert membership(cast.mallory, cast.alpha) is None


@pytest.mark.parametrize("status", [Invitation.Status.PENDING, Invitation.Status.EXPIRED])
def test_accept_of_expired_invitation_refused(cast, status):
    invitation = invite(cast, email=cast.mallory.email)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1), status=status)
    with pytest.raises(ValidationError, match="no longer valid"):
        services.invitation_accept(invitation=invitation, user=cast.mallory)
    assert membership(cast.mallory, cast.alpha) is None
    invitation.refresh_from_db()
    assert invitation.status == status


def test_manager_invitation_promotes_but_member_invitation_never_demotes(cast):
    # amy is a member; an invitation for another address naming her as manager upgrades her.
    upgrade = invite(cast, email="amy.alt@example.org", role=MANAGER)
    services.invitation_accept(invitation=upgrade, user=cast.amy)
    assert membership(cast.amy, cast.alpha).role == MANAGER
    downgrade = invite(cast, email="alice.alt@example.org", role=MEMBER)
    services.invitation_accept(invitation=downgrade, user=cast.alice)
    assert membership(cast.alice, cast.alpha).role == MANAGER


def test_invitations_honour_for_matches_email_case_insensitively(cast):
    newbie = make_user("newbie", email="newbie@example.org")
    invite(cast, email="NewBie@Example.ORG", role=MANAGER)
    invite(cast, email="newbie@example.org", project=cast.beta)
    invite(cast, email="someone-else@example.org")
    stale = invite(cast, email="newbie@example.org", project=services.project_create(slug="old", name="Old"))
    Invitation.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(days=1))

    accepted = services.invitations_honour_for(user=newbie)

    assert {m.project.slug: m.role for m in accepted} == {"alpha": MANAGER, "beta": MEMBER}
    assert set(newbie.memberships.values_list("project__slug", flat=True)) == {"alpha", "beta"}
    assert Invitation.objects.get(email="someone-else@example.org").status == Invitation.Status.PENDING
    stale.refresh_from_db()
    assert stale.status == Invitation.Status.PENDING


def test_invitations_honour_for_user_without_email(cast):
    nobody = make_user("nobody", email="placeholder@example.org")
    nobody.email = ""
    nobody.save()
    invite(cast, email="placeholder@example.org")
    assert services.invitations_honour_for(user=nobody) == []
    assert not nobody.memberships.exists()


def test_invitations_expire_marks_only_overdue_pending(cast):
    overdue = invite(cast, email="late@example.org")
    current = invite(cast, email="fresh@example.org")
    accepted = invite(cast, email=cast.mallory.email)
    services.invitation_accept(invitation=accepted, user=cast.mallory)
    past = timezone.now() - timedelta(seconds=1)
    Invitation.objects.filter(pk__in=[overdue.pk, accepted.pk]).update(expires_at=past)

    assert services.invitations_expire() == 1

    statuses = dict(Invitation.objects.values_list("pk", "status"))
    assert statuses == {
        overdue.pk: Invitation.Status.EXPIRED,
        current.pk: Invitation.Status.PENDING,
        accepted.pk: Invitation.Status.ACCEPTED,
    }
    assert services.invitations_expire() == 0


def test_expire_task_runs_the_service(cast):
    from projects.tasks import expire_invitations

    overdue = invite(cast, email="late@example.org")
    Invitation.objects.filter(pk=overdue.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_invitations.delay().get() == 1
    overdue.refresh_from_db()
    assert overdue.status == Invitation.Status.EXPIRED
