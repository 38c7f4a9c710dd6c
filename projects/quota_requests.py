"""Quota rules beyond reservation: change requests and their decisions,
limits that expire, and the recount that catches drifting counters.

Split from projects.services (which keeps reservation itself) by subject.
"""
import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from . import selectors
from .models import MemberUsage, Membership, Quota, QuotaCorrection, QuotaRequest
from .services import _as, quota_set

log = logging.getLogger(__name__)


# --- Requests and decisions ------------------------------------------------------


@transaction.atomic
def quota_request_create(*, project, user, resource, requested_limit, justification, end_date=None):
    if not selectors.role_of(user, project):
        raise PermissionDenied("Only the project's members can ask for a quota change.")
    quota = project.quotas.filter(resource=resource).first()
    if quota is None:
        raise ValidationError({"resource": "Unknown resource."})
    if requested_limit == quota.limit:
        raise ValidationError({"requested_limit": f"The limit is already {quota.limit}."})
    if end_date is not None and end_date <= timezone.localdate():
        raise ValidationError({"end_date": "The end date must be in the future."})
    if not justification.strip():
        raise ValidationError({"justification": "Say what the change is for."})
    if project.quota_requests.filter(resource=resource, status=QuotaRequest.Status.PENDING).exists():
        raise ValidationError({"resource": "There is already an open request for this resource."})
    with _as(user):
        request = QuotaRequest(project=project, resource=resource, requested_limit=requested_limit,
                               justification=justification.strip(), end_date=end_date, requested_by=user)
        request.full_clean()
        request.save()
    return request


@transaction.atomic
def quota_request_decide(*, request, staff, decision, approved_limit=None, comment=""):
    """Approve (the requested limit), partially approve (another value) or
    deny. An approval applies at once. One e-mail to the requester and the
    project's managers."""
    if not staff.is_staff:
        raise PermissionDenied("Only staff decide quota requests.")
    request = QuotaRequest.objects.select_for_update().select_related("project").get(pk=request.pk)
    if not request.is_open:
        raise ValidationError(f"This request was already {request.get_status_display().lower()}.")
    Status = QuotaRequest.Status
    if decision not in (Status.APPROVED, Status.PARTIAL, Status.DENIED):
        raise ValidationError({"decision": "Approve, partially approve or deny."})
    if decision == Status.PARTIAL:
        if approved_limit is None or approved_limit < 0:
            raise ValidationError({"approved_limit": "Give the limit you grant."})
        if approved_limit == request.requested_limit:
            decision = Status.APPROVED
    if decision == Status.DENIED and not comment.strip():
        raise ValidationError({"comment": "Tell the requester why."})
    if decision == Status.APPROVED:
        approved_limit = request.requested_limit
    quota = Quota.objects.select_for_update().get(project=request.project, resource=request.resource)
    if decision != Status.DENIED:
        request.previous_limit = quota.limit
        quota_set(project=request.project, resource=request.resource, limit=approved_limit,
                  per_member_limit=_capped(quota.per_member_limit, approved_limit), actor=staff)
    request.status = decision
    request.approved_limit = approved_limit if decision != Status.DENIED else None
    request.decided_by = staff
    request.decided_at = timezone.now()
    request.comment = comment.strip()
    with _as(staff):
        request.save()
    _notify(request, "projects/email/quota_decision.txt",
            f"Quota request for {request.project.name}: {request.get_status_display().lower()}")
    return request


def _capped(per_member, limit):
    return None if per_member is None else min(per_member, limit)


def _notify(request, template, subject):
    """One message to the requester and the project's managers."""
    managers = request.project.memberships.filter(role=Membership.Role.MANAGER).select_related("user")
    recipients = sorted({request.requested_by.email, *(m.user.email for m in managers)} - {""})
    body = render_to_string(template, {"request": request, "site_name": settings.SITE_NAME,
                                       "url": settings.PORTAL_BASE_URL.rstrip("/") + request.project.get_absolute_url()})
    from . import tasks

    transaction.on_commit(lambda: tasks.send_mail_task.delay(f"[{settings.SITE_NAME}] {subject}", body, recipients))


def mail_send(*, subject, body, recipients):
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)


# --- Expiry ---------------------------------------------------------------------------


def quota_limits_expire(*, today=None):
    """Periodic: warn before approved limits end, and fall back when they do.
    Returns (warned, expired) counts."""
    today = today or timezone.localdate()
    warn_days = settings.QUOTA_EXPIRY_WARNING_DAYS
    granted = QuotaRequest.objects.filter(
        status__in=[QuotaRequest.Status.APPROVED, QuotaRequest.Status.PARTIAL],
        end_date__isnull=False, expired_at__isnull=True,
    ).select_related("project", "requested_by")
    warned = expired = 0
    for request in granted:
        with transaction.atomic():
            request = QuotaRequest.objects.select_for_update().get(pk=request.pk)
            if request.expired_at:
                continue
            if request.end_date <= today:
                quota = Quota.objects.select_for_update().get(project=request.project, resource=request.resource)
                if quota.limit == request.approved_limit:  # staff may have set another limit since
                    quota_set(project=request.project, resource=request.resource, limit=request.previous_limit,
                              per_member_limit=_capped(quota.per_member_limit, request.previous_limit))
                request.expired_at = timezone.now()
                request.save(update_fields=["expired_at"])
                _notify(request, "projects/email/quota_expired.txt",
                        f"{request.get_resource_display()} limit of {request.project.name} ended")
                expired += 1
            elif request.expiry_warned_at is None and request.end_date - today <= timedelta(days=warn_days):
                request.expiry_warned_at = timezone.now()
                request.save(update_fields=["expiry_warned_at"])
                _notify(request, "projects/email/quota_expiry_warning.txt",
                        f"{request.get_resource_display()} limit of {request.project.name} ends on {request.end_date}")
                warned += 1
    return warned, expired


# --- Recount -------------------------------------------------------------------------

# resource -> function(project) -> {user_id: (used, reserved)}, registered by the
# apps that own the source records (jobs: core-hours; servers: cores, RAM, ...).
RECOUNTERS = {}


def register_recounter(resource, function):
    RECOUNTERS[resource] = function


@transaction.atomic
def quota_recount(*, project):
    """Recompute used/reserved from the source records; record and correct
    every difference. Returns the corrections made."""
    corrections = []
    for resource, recount in RECOUNTERS.items():
        quota = Quota.objects.select_for_update().filter(project=project, resource=resource).first()
        if quota is None:
            continue
        per_user = recount(project)
        totals = (sum(u for u, _ in per_user.values()), sum(r for _, r in per_user.values()))
        corrections += _correct(quota, None, quota, totals)
        shares = {s.user_id: s for s in MemberUsage.objects.select_for_update().filter(quota=quota)}
        for user_id in set(shares) | set(per_user):
            share = shares.get(user_id) or MemberUsage.objects.create(quota=quota, user_id=user_id)
            corrections += _correct(quota, user_id, share, per_user.get(user_id, (0, 0)))
    for c in corrections:
        log.warning("quota drift corrected: %s (user %s) %s %s -> %s", c.quota, c.user_id, c.field, c.stored,
                    c.recounted)
    return corrections


def _correct(quota, user_id, obj, recounted):
    made = []
    for field, value in zip(("used", "reserved"), recounted):
        stored = getattr(obj, field)
        if stored != value:
            made.append(QuotaCorrection.objects.create(quota=quota, user_id=user_id, field=field, stored=stored,
                                                       recounted=value))
            type(obj).objects.filter(pk=obj.pk).update(**{field: value})
            setattr(obj, field, value)
    return made
