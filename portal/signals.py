"""Login hooks. OIDC logins honour invitations inside the backend; local
logins do it here, but only for an e-mail address allauth has verified."""
from allauth.account.models import EmailAddress
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from projects import services as project_services


@receiver(user_logged_in)
def honour_invitations_on_local_login(sender, request, user, **kwargs):
    if getattr(user, "backend", "").endswith("OIDCBackend"):
        return
    if EmailAddress.objects.filter(user=user, email__iexact=user.email, verified=True).exists():
        project_services.invitations_honour_for(user=user)
