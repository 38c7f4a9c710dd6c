"""Writes for tenancy: projects, memberships, invitations, quotas.

Keyword-only functions named <entity>_<action>. Each runs in a transaction
and records the acting user for the audit trail.
"""
import logging
import re
from contextlib import contextmanager
from datetime import timedelta

from auditlog.context import set_actor
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from . import tasks
from .models import RESOURCE_ORDER, Invitation, MemberUsage, Membership, Project, Quota, Resource

log = logging.getLogger(__name__)


class QuotaExceeded(Exception):
    """A request would take a resource past a limit. The message names the
    resource, the limit, the current use and the amount asked for."""

    def __init__(self, *, quota, requested, scope, current, limit):
        self.resource = quota.resource
        self.requested = requested
        self.scope = scope  # "project" or "member"
        self.current = current
        self.limit = limit
        label = quota.get_resource_display()
        who = "your per-member limit" if scope == "member" else f"the project's limit"
        super().__init__(
            f"{label}: asking for {requested} would exceed {who} of {limit} "
            f"({current} already used or reserved)."
        )

    def as_dict(self):
        return {
            "resource": self.resource,
            "scope": self.scope,
            "limit": self.limit,
            "current": self.current,
            "requested": self.requested,
            "detail": str(self),
        }


@contextmanager
def _as(actor):
    """Attribute audit log entries written inside to `actor` (may be None)."""
    if actor is not None and getattr(actor, "is_authenticated", False):
        with set_actor(actor):
            yield
    else:
        yield


# --- Projects -----------------------------------------------------------------


def default_quota_limits():
    limits = {r: 0 for r in Resource.values}
    limits.update(getattr(settings, "NEPHELE_DEFAULT_QUOTAS", {}))
    return limits


@transaction.atomic
def project_create(*, slug, name, description="", actor=None, limits=None, manager=None):
    with _as(actor):
        project = Project(slug=slug, name=name, description=description)
        project.full_clean()
        project.save()
        quotas_ensure(project=project, limits=limits)
        if manager is not None:
            membership_set(project=project, user=manager, role=Membership.Role.MANAGER, actor=actor)
    return project


def quotas_ensure(*, project, limits=None):
    """Give `project` a quota row for every resource (missing ones get the
    site defaults), e.g. for projects created in the admin."""
    values = default_quota_limits()
    values.update(limits or {})
    existing = set(project.quotas.values_list("resource", flat=True))
    Quota.objects.bulk_create(
        [Quota(project=project, resource=r, limit=values[r]) for r in Resource.values if r not in existing]
    )


@transaction.atomic
def project_update(*, project, actor=None, **fields):
    with _as(actor):
        for name, value in fields.items():
            if name not in {"name", "description", "status"}:
                raise ValueError(f"cannot update {name}")
            setattr(project, name, value)
        project.full_clean()
        project.save()
    return project


# --- Memberships --------------------------------------------------------------


@transaction.atomic
def membership_set(*, project, user, role, actor=None, source=Membership.Source.MANUAL):
    """Add `user` to `project` with `role`, or change their role."""
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    with _as(actor):
        membership, created = Membership.objects.get_or_create(
            user=user, project=project, defaults={"role": role, "source": source}
        )
        if not created and membership.role != role:
            _refuse_last_manager_demotion(membership, role)
            membership.role = role
            membership.save(update_fields=["role"])
    return membership


def _refuse_last_manager_demotion(membership, new_role):
    if membership.role == Membership.Role.MANAGER and new_role != Membership.Role.MANAGER:
        others = membership.project.memberships.filter(role=Membership.Role.MANAGER).exclude(pk=membership.pk)
        if not others.exists():
            raise ValidationError("A project keeps at least one manager: appoint another manager first.")


@transaction.atomic
def membership_remove(*, membership, actor=None):
    with _as(actor):
        _refuse_last_manager_demotion(membership, None)
        membership.delete()


@transaction.atomic
def memberships_sync_from_claims(*, user, grants):
    """Apply the memberships an identity provider grants on each login.

    `grants` maps project slug -> role. Claim-given memberships are created or
    re-roled; claim-given ones no longer granted are removed. Memberships added
    by hand or by invitation are left alone. Unknown projects are skipped.
    """
    projects = {p.slug: p for p in Project.objects.filter(slug__in=grants)}
    for slug in sorted(set(grants) - set(projects)):
        log.info("claims of %s name unknown project %r: skipped", user, slug)
    existing = {m.project.slug: m for m in user.memberships.select_related("project")}
    for slug, project in projects.items():
        role = grants[slug]
        membership = existing.get(slug)
        if membership is None:
            Membership.objects.create(user=user, project=project, role=role, source=Membership.Source.CLAIM)
        elif membership.source == Membership.Source.CLAIM and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
    for slug, membership in existing.items():
        if membership.source == Membership.Source.CLAIM and slug not in grants:
            membership.delete()


# --- Invitations ---------------------------------------------------------------


@transaction.atomic
def invitation_create(*, project, email, role, actor, request=None):
    email = email.strip().lower()
    if project.memberships.filter(user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already a member of {project.name}."})
    if project.invitations.filter(email__iexact=email, status=Invitation.Status.PENDING).exists():
        raise ValidationError({"email": f"{email} already has a pending invitation."})
    with _as(actor):
        invitation = Invitation(
            project=project,
            email=email,
            role=role,
            invited_by=actor,
            expires_at=timezone.now() + timedelta(days=settings.INVITATION_VALID_DAYS),
        )
        invitation.full_clean()
        invitation.save()
    url = (request.build_absolute_uri if request else _absolute)(invitation.get_absolute_url())
    # Mail goes out from a worker, and only once the invitation is committed.
    transaction.on_commit(lambda: tasks.send_invitation.delay(invitation.pk, url))
    return invitation


def invitation_send(*, invitation, url):
    body = render_to_string(
        "projects/email/invitation.txt", {"invitation": invitation, "url": url, "site_name": settings.SITE_NAME}
    )
    send_mail(
        f"[{settings.SITE_NAME}] Invitation to {invitation.project.name}",
        body,
        settings.DEFAULT_FROM_EMAIL,
        [invitation.email],
    )


def _absolute(path):
    return settings.PORTAL_BASE_URL.rstrip("/") + path


def invitation_is_open(invitation):
    return invitation.status == Invitation.Status.PENDING and invitation.expires_at > timezone.now()


@transaction.atomic
def invitation_accept(*, invitation, user):
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not invitation_is_open(invitation):
        raise ValidationError("This invitation is no longer valid.")
    with _as(user):
        membership, created = Membership.objects.get_or_create(
            user=user,
            project=invitation.project,
            defaults={"role": invitation.role, "source": Membership.Source.INVITATION},
        )
        if not created and invitation.role == Membership.Role.MANAGER and not membership.is_manager:
            membership.role = Membership.Role.MANAGER
            membership.save(update_fields=["role"])
        invitation.status = Invitation.Status.ACCEPTED
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["status", "accepted_at", "accepted_by"])
    return membership


@transaction.atomic
def invitation_revoke(*, invitation, actor):
    with _as(actor):
        invitation.status = Invitation.Status.REVOKED
        invitation.save(update_fields=["status"])


def invitations_honour_for(*, user):
    """Accept the open invitations addressed to `user`'s (verified) e-mail."""
    if not user.email:
        return []
    accepted = []
    for invitation in Invitation.objects.filter(email__iexact=user.email, status=Invitation.Status.PENDING):
        if invitation_is_open(invitation):
            accepted.append(invitation_accept(invitation=invitation, user=user))
    return accepted


@transaction.atomic
def invitations_expire():
    return Invitation.objects.filter(status=Invitation.Status.PENDING, expires_at__lte=timezone.now()).update(
        status=Invitation.Status.EXPIRED
    )


# --- Quotas --------------------------------------------------------------------


@transaction.atomic
def quota_set(*, project, resource, limit, per_member_limit=None, actor=None):
    if resource not in Resource.values:
        raise ValidationError({"resource": f"Unknown resource {resource!r}."})
    with _as(actor):
        quota, _ = Quota.objects.select_for_update().get_or_create(project=project, resource=resource)
        quota.limit = limit
        quota.per_member_limit = per_member_limit
        quota.full_clean()
        quota.save()
    return quota


def _check_amount(amount):
    if amount < 0:
        raise ValueError("amount must not be negative")


def _locked(project, resource, user):
    quota = Quota.objects.select_for_update().get(project=project, resource=resource)
    share, _ = MemberUsage.objects.select_for_update().get_or_create(quota=quota, user=user)
    return quota, share


def _move(quota, share, *, reserved=0, used=0):
    """Shift the locked counters (never below zero) and write them with plain
    UPDATEs: usage moves with every request, the audit trail is about limits."""
    for obj in (quota, share):
        obj.reserved = max(obj.reserved + reserved, 0)
        obj.used = max(obj.used + used, 0)
    Quota.objects.filter(pk=quota.pk).update(reserved=quota.reserved, used=quota.used, updated=timezone.now())
    MemberUsage.objects.filter(pk=share.pk).update(reserved=share.reserved, used=share.used)
    return quota


def quota_reserve(*, project, user, resource, amount):
    """Claim `amount` of `resource` for `user` in `project`, or raise
    QuotaExceeded. Locks the quota row, so concurrent callers queue up.

    Every job submission passes here, so the usual case takes two guarded
    UPDATEs (see _reserve_guarded) instead of a savepoint, two SELECT ... FOR
    UPDATE and two UPDATEs. Refusals and a member's first claim (no usage
    row yet) take the locking path below, which names the limit exceeded."""
    _check_amount(amount)
    # No savepoint: the guarded path raises nothing of its own, and on a
    # database error the enclosing transaction is lost anyway.
    with transaction.atomic(savepoint=False):
        quota = _reserve_guarded(project, user, resource, amount)
    return quota if quota is not None else _reserve_locked(project, user, resource, amount)


def _reserve_guarded(project, user, resource, amount):
    """Add `amount` to the project's and the member's `reserved` only where
    it fits under the limits, in one UPDATE each. The first locks the quota
    row, as _locked does and in the same order (quota, then member), so
    concurrent callers still queue up and never deadlock with the other
    quota_* functions. Returns the quota, or None with nothing changed when
    it did not fit or the member has no usage row yet."""
    quota_table, usage_table = Quota._meta.db_table, MemberUsage._meta.db_table
    # The quota's fields but `updated`: that is the time written here (read
    # back, it would need the backend's converters on SQLite).
    fields = [f for f in Quota._meta.concrete_fields if f.attname != "updated"]
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE {quota_table} SET reserved = reserved + %s, updated = %s '
            f'WHERE project_id = %s AND resource = %s AND used + reserved + %s <= "limit" '
            f'RETURNING {", ".join(connection.ops.quote_name(f.column) for f in fields)}',
            [amount, connection.ops.adapt_datetimefield_value(now), project.pk, resource, amount])
        row = cursor.fetchone()
        if row is None:
            return None  # over the project's limit (or no such quota)
        quota = Quota.from_db(connection.alias, [f.attname for f in fields], row)
        quota.updated = now
        under_member_limit, params = "", [amount, quota.pk, user.pk]
        if quota.per_member_limit is not None:
            under_member_limit, params = " AND used + reserved + %s <= %s", [*params, amount, quota.per_member_limit]
        cursor.execute(
            f"UPDATE {usage_table} SET reserved = reserved + %s "
            f"WHERE quota_id = %s AND user_id = %s{under_member_limit} RETURNING id", params)
        if cursor.fetchone() is None:
            # Over the member's limit, or their first claim: give the
            # project's claim back (exact: we hold the row's lock; only its
            # `updated` time stays moved, undone with the job's transaction
            # when the claim is refused).
            cursor.execute(f"UPDATE {quota_table} SET reserved = reserved - %s WHERE id = %s", [amount, quota.pk])
            return None
    return quota


@transaction.atomic
def _reserve_locked(project, user, resource, amount):
    """quota_reserve the slow way: lock both rows (creating the member's),
    then check, naming the limit exceeded with the current figures."""
    quota, share = _locked(project, resource, user)
    if quota.consumed + amount > quota.limit:
        raise QuotaExceeded(quota=quota, requested=amount, scope="project", current=quota.consumed, limit=quota.limit)
    if quota.per_member_limit is not None and share.consumed + amount > quota.per_member_limit:
        raise QuotaExceeded(
            quota=quota, requested=amount, scope="member", current=share.consumed, limit=quota.per_member_limit
        )
    return _move(quota, share, reserved=amount)


@transaction.atomic
def quota_commit(*, project, user, resource, amount):
    """A reservation was confirmed by the backend: it becomes usage."""
    _check_amount(amount)
    quota, share = _locked(project, resource, user)
    return _move(quota, share, reserved=-amount, used=amount)


@transaction.atomic
def quota_release(*, project, user, resource, amount, reserved=True):
    """Give back `amount`: a failed or cancelled reservation (reserved=True),
    or usage that ended, e.g. a deleted server (reserved=False)."""
    _check_amount(amount)
    quota, share = _locked(project, resource, user)
    return _move(quota, share, **{"reserved" if reserved else "used": -amount})


@transaction.atomic
def quota_settle(*, project, user, resource, reserved, actual):
    """Finish a reservation with what was really used: the reservation goes,
    the actual amount (which may differ, e.g. core-hours) becomes usage."""
    _check_amount(reserved)
    _check_amount(actual)
    quota, share = _locked(project, resource, user)
    return _move(quota, share, reserved=-reserved, used=actual)


@transaction.atomic
def quota_reserve_many(*, project, user, amounts):
    """Claim several resources at once ({resource: amount}, e.g. a server's
    cores, RAM, disk and instance): all or none. Rows are locked in one
    fixed order, so concurrent callers never deadlock; the first resource
    over its limit raises QuotaExceeded and nothing is reserved."""
    wanted = {r: a for r, a in amounts.items() if a}
    for amount in wanted.values():
        _check_amount(amount)
    locked = []
    for resource in sorted(wanted, key=lambda r: RESOURCE_ORDER.get(r, 99)):
        quota, share = _locked(project, resource, user)
        amount = wanted[resource]
        if quota.consumed + amount > quota.limit:
            raise QuotaExceeded(quota=quota, requested=amount, scope="project", current=quota.consumed,
                                limit=quota.limit)
        if quota.per_member_limit is not None and share.consumed + amount > quota.per_member_limit:
            raise QuotaExceeded(quota=quota, requested=amount, scope="member", current=share.consumed,
                                limit=quota.per_member_limit)
        locked.append((quota, share, amount))
    for quota, share, amount in locked:
        _move(quota, share, reserved=amount)
    return wanted


@transaction.atomic
def quota_move_many(*, project, user, reserved=None, used=None):
    """Shift several counters in one transaction: `reserved` and `used` are
    {resource: delta} (negative gives back). Used by records that hold
    quota (servers, volumes, floating IPs) to commit, settle and release."""
    reserved, used = reserved or {}, used or {}
    for resource in sorted(set(reserved) | set(used), key=lambda r: RESOURCE_ORDER.get(r, 99)):
        if not reserved.get(resource) and not used.get(resource):
            continue
        quota, share = _locked(project, resource, user)
        _move(quota, share, reserved=reserved.get(resource, 0), used=used.get(resource, 0))


# --- Claims ----------------------------------------------------------------------


def grants_from_claims(claims):
    """Project memberships named by the identity provider's claims, as
    {slug: role}; the strongest role wins when a project is named twice."""
    rules = [re.compile(rule) for rule in settings.NEPHELE_CLAIM_RULES]
    grants = {}
    for claim in settings.NEPHELE_MEMBERSHIP_CLAIMS:
        values = claims.get(claim) or []
        if isinstance(values, str):
            values = [values]
        for value in values:
            for rule in rules:
                match = rule.match(str(value))
                if match:
                    slug = match.group("project")
                    role = match.groupdict().get("role") or Membership.Role.MEMBER
                    if grants.get(slug) != Membership.Role.MANAGER:
                        grants[slug] = role
                    break
    return grants
