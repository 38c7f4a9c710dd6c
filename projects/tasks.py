"""Thin Celery wrappers: load by id, call a service."""
from celery import shared_task

from . import services
from .models import Invitation


@shared_task
def send_invitation(invitation_id, url):
    invitation = Invitation.objects.select_related("project", "invited_by").filter(pk=invitation_id).first()
    if invitation is not None and invitation.status == Invitation.Status.PENDING:
        services.invitation_send(invitation=invitation, url=url)


@shared_task
def expire_invitations():
    return services.invitations_expire()


@shared_task
def send_mail_task(subject, body, recipients):
    from .quota_requests import mail_send

    mail_send(subject=subject, body=body, recipients=recipients)


@shared_task
def expire_quota_limits():
    from .quota_requests import quota_limits_expire

    return quota_limits_expire()


@shared_task
def recount_quotas():
    """Periodic: recount every active project's usage; drift is corrected and
    recorded (QuotaCorrection), and logged as a warning."""
    from .models import Project
    from .quota_requests import quota_recount

    return sum(len(quota_recount(project=p)) for p in Project.objects.exclude(status="archived"))
