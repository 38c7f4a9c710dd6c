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
